"""Preflight: every precondition a step asserts is refused before work, naming the key.

Known answers per registered check (each at its boundary, where the library's own check
agrees), the runner refusing before it writes anything, and a Hypothesis property test:
overrides drawn from the schema's own fields either make ``geowall check`` refuse with
one ``geowall: error:`` line naming a key, or pass every step's preflight and then the
library's own argument checks too. No internal exception reaches the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from geowall import cli, config, geometry, law, pipeline, preflight
from geowall import sae as sae_mod
from geowall.bayes import SamplerSettings
from geowall.config import Profile, ProfileError, load_profile
from geowall.preflight import PreflightError
from geowall.sae.train import grid_pairs


def _problems(overrides, steps=None):
    return preflight.problems(load_profile("smoke", overrides), steps)


@pytest.mark.parametrize("name", ["smoke", "default", "full", "gemma-2"])
def test_shipped_profiles_pass_every_step(name):
    assert preflight.problems(load_profile(name), machine=False) == []


def test_every_check_names_a_step_and_a_library_rule():
    rows = preflight.inventory()
    assert len(rows) >= 10
    for r in rows:
        assert r["steps"] and r["where"] and r["key"]
        assert set(r["steps"].split(", ")) <= set(preflight.ALL_STEPS)
    assert set(preflight.ALL_STEPS) == {s.name for s in pipeline.STEPS}


# (override(s), the key named, text of the message, the steps it concerns)
CASES = [
    (["stage2.draws=1"], "stage2.draws", "expected stage2.draws >= 3", {"stage2", "transfer"}),
    (["stage1.chains=1"], "stage1.chains", "expected >= 2", {"stage1"}),
    (["stage2.checks.ess_min=10000"], "stage2.draws", "expected stage2.draws >= 5000", {"stage2", "transfer"}),
    (["geometry.n_points=50"], "geometry.n_points", "expected >= 130 points", {"geometry"}),
    (["geometry.k_neighbors=300"], "geometry.n_points", "expected >= 602 points", {"geometry"}),
    (["geometry.k_neighbors=12"], "geometry.k_neighbors", "expected >= 16", {"geometry"}),
    (["activations.n_train=60"], "activations.n_train", "each half-sample replicate needs more points", {"geometry"}),
    (["sae.width_multiples=[1, 1.001]"], "sae.width_multiples", "at least 2 distinct widths", {"stage1"}),
    (
        ["sae.showcase_width_multiples=[0.01, 1, 2, 3, 4, 5]"],
        "sae.showcase_width_multiples",
        "must exceed the largest k",
        {"sae_grid"},
    ),
    (
        ["sae.showcase_width_multiples=[1, 2, 3, 4, 5, 6]"],
        "sae.showcase_width_multiples",
        "spanning >= 16x",
        {"stage1"},
    ),
    (
        ["sae.showcase_layers={synth-a: [4], synth-b: [5]}"],
        "sae.showcase_layers.synth-b",
        "[5] not among the layers",
        {"sae_grid"},
    ),
    (
        [
            "models.0.layers=[1]",
            "models.1.layers=[1]",
            "models.2.layers=[1, 4]",
            "models.3.layers=[6]",
            "sae.showcase_layers={synth-a: [1, 4]}",
            "transfer=[]",
        ],
        "models",
        "no scope (real or synthetic",
        {"stage2"},
    ),
    (["transfer=[[minilm, synth-a]]"], "transfer.0", "model 'minilm' has 3 layers", {"transfer"}),
]


@pytest.mark.parametrize("overrides, key, needle, steps", CASES, ids=[c[1] + ":" + c[0][0] for c in CASES])
def test_each_precondition_names_its_key_and_steps(overrides, key, needle, steps):
    found = _problems(overrides)
    assert {p.key for p in found} == {key}, found
    assert needle in found[0].message, found[0].message
    assert set(found[0].steps) == steps
    others = set(preflight.ALL_STEPS) - steps
    assert preflight.problems(load_profile("smoke", overrides), others) == []  # only the steps that need it


def test_point_count_boundary_agrees_with_the_geometry_step():
    """At the preflight's minimum every summary has a standard error; one point fewer and the
    half-sample replicates are too small for the tangent patch (se NaN: step 02 fails)."""
    need = preflight.geometry_min_points(load_profile("smoke").geometry)
    assert need == 2 * (geometry.PATCH_K + 1) == 130
    rng = np.random.default_rng(0)
    for n, ok in ((need, True), (need - 1, False)):
        assert (_problems([f"geometry.n_points={n}"]) == []) is ok
        X = rng.standard_normal((n, 3)) @ rng.standard_normal((3, 16))
        s = geometry.summaries(X, n_boot=3, seed=0, n_base=20)
        assert bool(np.isfinite(s.se).all()) is ok, s


def test_ess_boundary():
    assert _problems(["stage2.checks.ess_min=800", "stage2.draws=400"]) == []
    assert [p.key for p in _problems(["stage2.checks.ess_min=801", "stage2.draws=400"])] == ["stage2.draws"]


def _law_tables(n_layers: int):
    import pandas as pd

    rng = np.random.default_rng(0)
    alpha = rng.uniform(0.2, 0.8, n_layers)
    exps = pd.DataFrame(
        {
            "model": "m",
            "layer": range(n_layers),
            "alpha_mean": alpha,
            "alpha_sd": 0.05,
            "log_alpha_mean": np.log(alpha),
            "log_alpha_sd": 0.1,
        }
    )
    geo = pd.DataFrame(
        [
            {"model": "m", "layer": i, "summary": s, "estimate": rng.uniform(1, 5), "se": 0.1}
            for i in range(n_layers)
            for s in law.SUMMARIES
        ]
    )
    return exps, geo


@pytest.mark.parametrize("predictors", [law.SUMMARIES, ("curvature",), ()])
def test_stage2_layer_count_is_the_laws_own_rule(predictors):
    need = law.min_training_layers(len(predictors))
    exps, geo = _law_tables(need - 1)
    with pytest.raises(ValueError, match=f"need at least {need}"):  # refused before the model is built
        law.fit_law(exps, geo, predictors=predictors, settings=SamplerSettings(draws=10, tune=10))


def test_several_problems_are_reported_together():
    with pytest.raises(PreflightError) as e:
        preflight.check(load_profile("smoke", ["stage2.draws=1", "stage1.chains=1"]))
    msg = str(e.value)
    assert msg.startswith("stage1.chains: ") and "\n  also stage2.draws: " in msg
    assert isinstance(e.value, ProfileError)


def test_device_is_a_machine_check(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_profile("smoke", ["device=cuda"])
    assert preflight.problems(cfg, machine=False) == []
    assert [p.key for p in preflight.problems(cfg)] == ["device"]


def test_run_refuses_before_writing_anything(tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(PreflightError, match="stage2.draws"):
        pipeline.run("smoke", overrides=["stage2.draws=1"], runs_dir=runs, progress=False)
    assert not runs.exists()


def test_cli_refuses_with_one_line(capsys):
    assert cli.main(["check", "--profile", "default", "--set", "stage2.draws=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geowall: error: stage2.draws: ") and err.count("\n") == 1 and "Traceback" not in err


# ---------------------------------------------------------------------------- property test


def _leaves(model: type[BaseModel], prefix: str, base) -> list[tuple[str, typing.Any]]:
    """(dotted key, annotation) of every schema field, list items of ``models`` expanded."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        out.append((key, ann))
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(_leaves(ann, key + ".", (base or {}).get(name)))
        elif (
            typing.get_origin(ann) is list
            and typing.get_args(ann)
            and isinstance(typing.get_args(ann)[0], type)
            and issubclass(typing.get_args(ann)[0], BaseModel)
        ):
            for i in range(len((base or {}).get(name) or [])):
                out.extend(_leaves(typing.get_args(ann)[0], f"{key}.{i}.", None))
    return out


SMOKE = config.load_profile("smoke")
NAMES = [m.name for m in SMOKE.models]
FIELDS = _leaves(Profile, "", SMOKE.model_dump(mode="json"))
KEYS = sorted(
    {k for k, _ in FIELDS} | {".".join(k.split(".")[:i]) for k, _ in FIELDS for i in (1, 2)}, key=len, reverse=True
)

EXTREME_INTS = [-(2**63), -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 183, 10**6, 2**31, 10**12]
EXTREME_FLOATS = [0.0, -0.0, -1.0, 1e-300, 1e-9, 0.5, 0.99, 1.0, 1.01, 2.0, 8.0, 1e300, math.inf, -math.inf, math.nan]
model_names = st.sampled_from(NAMES + ["nope", "Synth-A", ""])


def _strategy(ann, depth=0) -> st.SearchStrategy:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[_strategy(a, depth) for a in args])
    if getattr(ann, "__metadata__", None) is not None:  # Annotated (PositiveInt, ...)
        return _strategy(args[0], depth)
    if origin is typing.Literal:
        return st.sampled_from(list(args) + ["unknown", "NUTS"])
    if ann is type(None):
        return st.none()
    if ann is bool:
        return st.booleans()
    if ann is int:
        return st.one_of(st.sampled_from(EXTREME_INTS), st.integers(-10, 5000))
    if ann is float:
        return st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
    if ann is str:
        return st.one_of(model_names, st.text(max_size=12))
    if ann is Path:
        return st.sampled_from(["/no/such/file.txt", "", "."])
    if origin is list:
        inner = _strategy(args[0], depth + 1) if depth < 2 else st.integers(0, 9)
        return st.one_of(
            st.just([]), st.lists(inner, min_size=1, max_size=8), inner.map(lambda v: [v, v])
        )  # duplicates
    if origin is tuple:
        return st.tuples(*[_strategy(a, depth + 1) for a in args])
    if origin is dict:
        return st.dictionaries(model_names, st.lists(st.sampled_from(EXTREME_INTS[:12]), max_size=4), max_size=3)
    if isinstance(ann, type) and issubclass(ann, BaseModel):  # a whole section: empty, or a wrong type
        return st.sampled_from([{}, [], "x", 0])
    raise AssertionError(f"no strategy for {ann!r}")


def _wrong_types() -> st.SearchStrategy:
    return st.sampled_from([None, "abc", [], {}, [[1]], {"a": 1}, True, -1, 0.5, "1e999"])


override = st.sampled_from(FIELDS).flatmap(
    lambda kv: st.tuples(st.just(kv[0]), st.one_of(_strategy(kv[1]), _wrong_types()))
)


def _yaml(v) -> str:
    if isinstance(v, float):
        return ".nan" if math.isnan(v) else (".inf" if v == math.inf else "-.inf" if v == -math.inf else repr(v))
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


INTERNAL = (
    "Traceback",
    "TypeError",
    "KeyError",
    "IndexError",
    "AttributeError",
    "ZeroDivisionError",
    "empty sequence",
    "object has no attribute",
    "not subscriptable",
    "unsupported operand",
    "NoneType",
    "OverflowError",
    "RecursionError",
    "not supported between",
)


def _library_accepts(cfg: Profile) -> None:
    """The library's own argument checks on what an accepted profile would pass them."""
    from geowall.plan import widths_of
    from geowall.sources import model_info

    for m in cfg.models:
        if m.sae_source != "trained":
            continue
        d = model_info(m).d
        grids = [cfg.sae.width_multiples]
        if cfg.sae.showcase_layers.get(m.name):
            grids.append(cfg.sae.showcase_width_multiples)
        for mults in grids:
            grid_pairs(widths_of(mults, d), cfg.ks_of(m))
    with pytest.raises(ValueError) as e:  # summaries checks n_boot first, then refuses the empty X
        geometry.summaries(np.zeros((0, 2)), n_boot=cfg.geometry.n_boot)
    assert "n_boot" not in str(e.value), e.value
    from geowall.geometry.estimators import _check_patch_args

    g = cfg.geometry
    half = min(g.n_points, cfg.activations.n_train) // 2  # a half-sample replicate
    _check_patch_args(half, g.n_base, g.k_neighbors or geometry.PATCH_K, g.tangent_tol)
    assert g.k_neighbors is None or g.k_neighbors <= half - 1
    for s in (cfg.stage1, cfg.stage2):
        assert s.chains >= 2 and s.chains * s.draws >= s.checks.ess_min
    need = law.min_training_layers(len(law.SUMMARIES))
    assert all(len(cfg.layers_of(cfg.model(x))) >= need for pair in cfg.transfer for x in pair)
    scopes = [[m for m in cfg.models if (m.source == "synthetic") is synth] for synth in (False, True)]
    sizes = [(sum(len(cfg.layers_of(m)) for m in ms), len(ms)) for ms in scopes]
    fitted = [(n, k) for n, k in sizes if n >= law.SCOPE_MIN_LAYERS]
    assert fitted and all(n >= law.min_training_layers(len(law.SUMMARIES), k) for n, k in fitted)
    showcase = {(m, layer) for m, ls in cfg.sae.showcase_layers.items() for layer in ls}
    assert all(layer in cfg.layers_of(cfg.model(m)) for m, layer in showcase)


STATS = {"examples": 0, "refused": 0}


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(override, min_size=1, max_size=3))
def test_check_refuses_with_a_key_or_every_step_accepts(items):
    overrides = [f"{key}={_yaml(value)}" for key, value in items]
    args = ["check", "--profile", "smoke"] + [a for o in overrides for a in ("--set", o)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(args)
    text = out.getvalue() + err.getvalue()
    STATS["examples"] += 1
    assert not any(s in text for s in INTERNAL), (args, text)
    if rc == 0:
        cfg = load_profile("smoke", overrides)
        assert preflight.problems(cfg, machine=False) == []
        _library_accepts(cfg)
        return
    STATS["refused"] += 1
    assert rc == 2, (args, text)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("geowall: error: ") and sum(x.startswith("geowall: error:") for x in lines) == 1
    assert any(f"{k}:" in text or f"{k}." in text or f"--set {k}" in text for k in KEYS), (args, text)


def test_subprocess_refusals_are_one_line():
    for over, key in (("sae.ks=[]", "sae.ks"), ("stage2.draws=1", "stage2.draws")):
        r = subprocess.run(
            [sys.executable, "-m", "geowall.cli", "check", "--profile", "default", "--set", over],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("geowall: error: ") and key in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------- advice after a failed fit


def _ar1_idata(draws: int, chains: int = 2, rho: float = 0.9, seed: int = 0):
    """Chains of an AR(1) process: ESS about chains x draws x (1 - rho) / (1 + rho)."""
    import arviz as az

    rng = np.random.default_rng(seed)
    x = np.zeros((chains, draws))
    x[:, 0] = rng.standard_normal(chains)
    eps = rng.standard_normal((chains, draws)) * np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + eps[:, t]
    stats = {"diverging": np.zeros((chains, draws), bool), "energy": rng.standard_normal((chains, draws))}
    return az.from_dict(posterior={"theta": x}, sample_stats=stats)


def _settings(section="stage2", **kw):
    from geowall.bayes import Checks, SamplerSettings

    checks = kw.pop("checks", {})
    return SamplerSettings(checks=Checks(**checks), **kw).named(section)


def test_ess_advice_names_draws_that_then_pass():
    from geowall import bayes

    st = _settings(draws=500, tune=500, checks={"ess_min": 400})
    with pytest.raises(bayes.FitDiagnosticsError) as e:
        bayes.check_fit(_ar1_idata(500), st)
    lines = e.value.advice
    assert lines == st.advice(e.value.failures) and "; to pass: " + "; ".join(lines) in str(e.value)
    assert lines[0].startswith("raise stage2.draws to >= ") and "min bulk ESS" in lines[0], lines
    assert all(x.startswith(("raise stage2.draws", "raise stage2.tune")) for x in lines), lines  # R-hat may fail too
    draws = int(lines[0].split(">= ")[1].split()[0])
    assert 2000 < draws < 10000  # ESS ~ 53 of 1000 samples: about 400 / 53 x 500 x 1.25
    bayes.check_fit(_ar1_idata(draws, seed=1), st)  # the advised setting passes


def test_divergence_rhat_bfmi_and_chain_advice():
    f = [
        {"diagnostic": "divergences", "value": 12, "threshold_value": 0},
        {"diagnostic": "r_hat", "value": 1.05, "threshold_value": 1.01},
        {"diagnostic": "bfmi", "value": 0.1, "threshold_value": 0.3},
    ]
    lines = _settings("stage1", draws=1000, chains=2, tune=800, target_accept=0.95).advice(f)
    assert lines[0].startswith("raise stage1.draws to >= 2000 (R-hat 1.05")
    assert lines[1].startswith("raise stage1.target_accept to 0.99 (12 divergent transitions")
    assert lines[2].startswith("raise stage1.tune to >= 1600")
    one = [{"diagnostic": "r_hat", "value": "not computable with 1 chain", "threshold_value": 2}]
    assert _settings(draws=10, chains=1, tune=10).advice(one) == [
        "raise stage2.chains to 2 (R-hat needs at least 2 chains)"
    ]
    top = _settings(draws=10, tune=10, target_accept=0.995).advice(f[:1])
    assert "reparameterisation" in top[0] and "stage2.checks.allow_divergences" in top[0]


def test_profile_sampler_settings_name_their_section():
    """The profile's stage1 / stage2 settings know their key, so a failed check in any step
    that samples with them (stage 1, the law, transfer) names the key to change."""
    from geowall import bayes

    cfg = load_profile("default", ["stage2.target_accept=0.95"])
    assert (cfg.stage1.section, cfg.stage2.section) == ("stage1", "stage2")
    with pytest.raises(bayes.FitDiagnosticsError) as e:
        bayes.check_fit(_ar1_idata(500), cfg.stage2, label="stage 2 law 'all4'")
    assert str(e.value).startswith("stage 2 law 'all4' failed convergence diagnostics: ")
    assert "ess_bulk = " in str(e.value)
    assert "; to pass: raise stage2.draws to >= " in str(e.value)
    assert bayes.FitDiagnosticsError([], "x").advice == []


def test_width_trend_failure_names_the_slack_that_passes():
    import re

    import pandas as pd

    rows = [("net", 0, 4, w, f) for w, f in zip((10, 20, 40, 80), (0.4, 0.3, 0.36, 0.2))]  # a +20% step
    trend = sae_mod.width_trend(pd.DataFrame(rows, columns=["model", "layer", "k", "width", "fvu"]))
    with pytest.raises(ValueError, match="raise sae.steps") as e:
        sae_mod.check_width_trend(trend, slack=0.15)
    advised = float(re.search(r"sae.monotone_slack to >= ([0-9.]+)", str(e.value)).group(1))
    assert 0.2 <= advised <= 0.21
    sae_mod.check_width_trend(trend, slack=advised)  # the advised setting passes


def test_missing_upstream_is_refused_before_the_first_step(tmp_path):
    runs = tmp_path / "runs"
    # geometry would run first (its upstream is chosen), then stage1 lacks sae_grid: nothing may run
    with pytest.raises(pipeline.StepFailed, match=r"step 'stage1' needs upstream step\(s\) \['sae_grid'\]"):
        pipeline.run("smoke", only=["activations", "stage1"], runs_dir=runs, progress=False)
    assert not runs.exists()


def test_gemma_scope_release_and_layers_are_checked_against_the_registry():
    assert preflight.problems(load_profile("gemma-2"), machine=False) == []
    found = preflight.problems(load_profile("gemma-2", ["models.0.sae_release=gemma-scope-nope"]), machine=False)
    assert [p.key for p in found] == ["models.0.sae_release"] and "not in the sae-lens registry" in found[0].message


def test_disk_budget_is_a_preflight_check():
    found = preflight.problems(load_profile("gemma-2", ["sae.cache_budget_gb=20"]), machine=False)
    assert [p.key for p in found] == ["sae.cache_budget_gb"] and found[0].message.startswith("20 GB cannot hold")
    others = preflight.problems(
        load_profile("gemma-2", ["sae.cache_budget_gb=20", "models.1.layers=[0, 1]"]), ["sae_grid"], machine=False
    )
    assert "sae.cache_budget_gb" not in {p.key for p in others}
