"""Variants side by side (``geowall run --as NAME``) and ``geowall diff``, on a three-notebook
toy DAG that writes tiny artefacts with the project's atomic writers (no real profile runs).

``up`` reads ``sae``; ``fit`` reads ``stage1`` and writes ``exponents.parquet`` (layer 2's
exponent moves with ``stage1.draws``); ``law`` reads ``stage2`` and, from the exponents,
writes ``law.parquet`` and ``transfer.parquet`` (the transfer verdict flips when layer 2's
exponent moves). A variant with other ``stage1.draws`` reuses ``up`` and reruns the rest.
"""

import hashlib
import os

import pandas as pd
import pytest

from geowall import cli, pipeline, rundiff
from geowall.config import load_profile
from geowall.io import read_json
from geowall.pipeline import Step

HEAD = """# %% tags=["parameters"]
profile = "x"
run_dir = None
params = None
# %%
from pathlib import Path
import pandas as pd
from geowall.io import read_parquet, write_json, write_parquet
run_dir = Path(run_dir)
"""

NB_UP = (
    HEAD
    + """write_json(run_dir / "acts" / "layer_00" / "manifest.json", {"steps": params["sae"]["steps"]})
write_json(run_dir / "corpus_stats.json", {"docs": 3})
"""
)

NB_FIT = (
    HEAD
    + """assert (run_dir / "acts" / "layer_00" / "manifest.json").is_file()  # the upstream artefact
draws = params["stage1"]["draws"]
rows = [
    {"model": "minilm", "layer": layer, "form": "f", "alpha_mean": 0.1 * (layer + 1) + (layer == 2) * draws * 1e-5}
    for layer in range(3)
]
write_parquet(run_dir / "exponents.parquet", pd.DataFrame(rows))
"""
)

NB_LAW = (
    HEAD
    + """e = read_parquet(run_dir / "exponents.parquet")
a2 = float(e.loc[e.layer == 2, "alpha_mean"].iloc[0])
law = pd.DataFrame([
    {"predictor_set": "law", "target": "log_alpha", "term": "id_twonn", "coef_mean": a2, "coef_hdi_3": a2 - 0.1,
     "coef_hdi_97": a2 + 0.1, "p_gt0": 0.9, "scope": "real"},
    {"predictor_set": "law", "target": "log_alpha", "term": "pr", "coef_mean": 0.5, "coef_hdi_3": 0.4,
     "coef_hdi_97": 0.6, "p_gt0": 1.0, "scope": "real"},
    {"predictor_set": "law", "target": "log_alpha", "term": "intercept", "coef_mean": a2, "coef_hdi_3": 0.0,
     "coef_hdi_97": 1.0, "p_gt0": 1.0, "scope": "real"},
])
write_parquet(run_dir / "law.parquet", law)
p = 0.01 if a2 < 0.31 else 0.5
transfer = pd.DataFrame([
    {"train_model": "minilm", "test_model": "minilm", "predictor_set": "law", "r2": 0.5, "r2_shift": 0.6,
     "depth_r2_shift": 0.1, "spearman": 0.8, "spearman_hdi_3": 0.2, "spearman_hdi_97": 0.95,
     "p_perm_spearman": p, "ceiling_r2": 0.7, "coverage90": 0.9, "n_layers": 10},
    {"train_model": "synth-a", "test_model": "synth-b", "predictor_set": "law", "r2": 0.1, "r2_shift": 0.2,
     "depth_r2_shift": 0.1, "spearman": 0.3, "spearman_hdi_3": -0.2, "spearman_hdi_97": 0.6,
     "p_perm_spearman": 0.2, "ceiling_r2": 0.4, "coverage90": 0.8, "n_layers": 6},
])
write_parquet(run_dir / "transfer.parquet", transfer)
"""
)

STEPS = (
    Step("up", "up", ("sae",)),
    Step("fit", "fit", ("stage1",), ("up",)),
    Step("law", "law", ("stage2",), ("fit",)),
)


@pytest.fixture
def toy(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name, text in (("up", NB_UP), ("fit", NB_FIT), ("law", NB_LAW)):
        (nbs / f"{name}.py").write_text(text)
    runs = tmp_path / "runs"

    def run(*overrides, **kw):
        cfg = load_profile("smoke", list(overrides))
        return pipeline.run(
            cfg,
            steps=STEPS,
            notebooks_dir=nbs,
            runs_dir=runs,
            progress=False,
            log=lambda *_: None,
            overrides=list(overrides),
            **kw,
        )

    return run, runs


def state(folder):
    """``{relative path: (sha256 of the bytes, mtime_ns)}`` of every file under a folder."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[p.relative_to(folder).as_posix()] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


def statuses(records):
    return [r["status"] for r in records]


def test_step_records_list_the_files_each_step_wrote(toy):
    run, runs = toy
    run()
    rec = lambda s: read_json(runs / "smoke" / "steps" / f"{s}.json")["outputs"]  # noqa: E731
    assert rec("up") == ["acts/layer_00/manifest.json", "corpus_stats.json"]
    assert rec("fit") == ["exponents.parquet"]
    assert rec("law") == ["law.parquet", "transfer.parquet"]
    # a forced rerun that rewrites its files keeps the same list; one that leaves a finished file alone keeps it too
    assert pipeline.step_outputs({"a": (1, 1, 1)}, {"a": (1, 1, 1), "b": (2, 2, 2)}, ["a"]) == ["a", "b"]
    assert pipeline.step_outputs({"a": (1, 1, 1)}, {"a": (1, 1, 1)}, ["gone"]) == []


def test_variant_links_unchanged_steps_reruns_changed_ones_and_leaves_the_base_alone(toy):
    run, runs = toy
    run()
    base, var = runs / "smoke", runs / "smoke-draws2000"
    before = state(base)
    assert statuses(run("stage1.draws=2000", as_name="smoke-draws2000")) == ["skipped", "ran", "ran"]
    # the unchanged step's artefacts, executed notebook and record are the base's files (hard links)
    for f in ("acts/layer_00/manifest.json", "corpus_stats.json", "notebooks/up.ipynb", "steps/up.json"):
        assert os.stat(var / f).st_ino == os.stat(base / f).st_ino, f
    # the changed step and the one below it reran in the variant, into files of their own
    for f in ("exponents.parquet", "law.parquet", "transfer.parquet", "notebooks/fit.ipynb", "steps/law.json"):
        assert os.stat(var / f).st_ino != os.stat(base / f).st_ino, f
    e_base, e_var = pd.read_parquet(base / "exponents.parquet"), pd.read_parquet(var / "exponents.parquet")
    assert (
        e_base.alpha_mean.iloc[2] != e_var.alpha_mean.iloc[2] and e_base.alpha_mean.iloc[0] == e_var.alpha_mean.iloc[0]
    )
    # the base run is byte-identical, mtimes included
    assert state(base) == before
    v = read_json(var / "variant.json")
    assert v["base"] == "smoke" and v["overrides"] == ["stage1.draws=2000"]
    assert v["changed"] == {"stage1.draws": [400, 2000]} and v["reused"] == {"up": "hard"}
    # the variant's own skip logic: a second call skips everything; the base still skips everything
    assert statuses(run("stage1.draws=2000", as_name="smoke-draws2000")) == ["skipped"] * 3
    assert state(base) == before
    assert statuses(run()) == ["skipped"] * 3


def test_variant_falls_back_to_symbolic_links_never_copies(toy, monkeypatch):
    run, runs = toy
    run()

    def no_hard_links(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(pipeline.os, "link", no_hard_links)
    assert statuses(run("stage2.draws=123", as_name="v2")) == ["skipped", "skipped", "ran"]
    var, base = runs / "v2", runs / "smoke"
    assert os.path.islink(var / "exponents.parquet") and os.path.islink(var / "corpus_stats.json")
    assert os.path.samefile(var / "exponents.parquet", base / "exponents.parquet")
    assert not os.path.islink(var / "law.parquet")
    assert read_json(var / "variant.json")["reused"] == {"up": "symbolic", "fit": "symbolic"}


def test_diff_names_changed_exponents_and_verdicts_and_counts_the_unchanged(toy, capsys):
    run, runs = toy
    run()
    run("stage1.draws=2000", as_name="smoke-draws2000")
    assert cli.main(["diff", "smoke", "smoke-draws2000", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    steps = out.split("== Steps")[1].split("== Verdicts")[0]
    assert "up" in steps and "reused (linked)" in steps and "rerun (inputs changed)" in steps
    assert "1 reused (linked), 2 rerun (inputs changed)" in steps
    verdicts = out.split("== Verdicts")[1].split("== Width exponents")[0]
    assert "transfer" in verdicts and "supported" in verdicts and "not supported" in verdicts
    assert "2 unchanged" in verdicts  # geometry and floors: both "not run" in both runs
    expo = out.split("== Width exponents")[1].split("== The law's slopes")[0]
    assert "1 changed" in expo and "2 unchanged" in expo
    changed_rows = expo.split("1 changed:")[1].split("unchanged")[0]
    assert "minilm" in changed_rows and "0.304" in changed_rows and "0.32" in changed_rows
    slopes = out.split("== The law's slopes")[1].split("== Transfer scores")[0]
    assert "id_twonn" in slopes and "1 changed" in slopes and "1 unchanged" in slopes and "intercept" not in slopes
    transfer = out.split("== Transfer scores")[1]
    assert "1 changed" in transfer and "1 unchanged" in transfer and "p_perm_spearman" in transfer
    # a run against itself: nothing changed; a missing artefact is reported, not a crash
    same = rundiff.diff_runs("smoke", "smoke", runs_dir=runs)
    assert "changed:" not in same and "3 unchanged (no changes)" in same
    (runs / "smoke-draws2000" / "transfer.parquet").unlink()  # the variant's own file, not the base's
    text = rundiff.diff_runs(runs / "smoke", runs / "smoke-draws2000")
    assert "missing in run B" in text.split("== Transfer scores")[1]
    assert (runs / "smoke" / "transfer.parquet").is_file()


def test_variant_refusals_name_the_fix(toy, tmp_path, capsys):
    run, runs = toy
    with pytest.raises(ValueError, match="run the profile first.*or run without --as"):
        run("stage1.draws=2000", as_name="v")
    run()
    with pytest.raises(ValueError, match="profile's own name.*run without --as"):
        run("stage1.draws=2000", as_name="smoke")
    with pytest.raises(ValueError, match="is a profile's own name"):
        run("stage1.draws=2000", as_name="default")  # another profile's folder
    for bad in ("a/b", "..", ""):
        with pytest.raises(ValueError, match="no path separators"):
            run("stage1.draws=2000", as_name=bad)
    (runs / "other").mkdir()
    with pytest.raises(ValueError, match="not a variant of profile 'smoke'"):
        run("stage1.draws=2000", as_name="other")
    assert not (runs / "v").exists() and not (runs / "a").exists()
    # the command line: one readable line, status 2
    empty = tmp_path / "empty"
    rc = cli.main(["run", "--profile", "smoke", "--set", "stage1.draws=9", "--as", "x", "--runs-dir", str(empty)])
    assert rc == 2 and "run the profile first" in capsys.readouterr().err
    assert cli.main(["diff", "nope", "smoke", "--runs-dir", str(runs)]) == 2
    assert "run 'nope'" in capsys.readouterr().err


def test_in_place_writes_through_hard_links_are_named(tmp_path):
    """The runner's guard: artefacts are replaced by rename; a file written in place that
    another run links to is named (its other run changed too)."""
    a, b = tmp_path / "run", tmp_path / "other"
    a.mkdir(), b.mkdir()
    (b / "x.txt").write_text("1")
    os.link(b / "x.txt", a / "x.txt")
    (a / "y.txt").write_text("1")
    before = pipeline.snapshot(a)
    with open(a / "x.txt", "a") as fh:  # in place, through the link
        fh.write("2")
    with open(a / "y.txt", "a") as fh:  # in place, but nobody else links it
        fh.write("2")
    assert pipeline.written_through_links(before, pipeline.snapshot(a), a) == ["x.txt"]


def test_a_base_whose_records_list_no_outputs_reruns_and_says_why(toy, tmp_path):
    run, runs = toy
    run()
    for s in ("up", "fit", "law"):  # records from before output lists existed
        rec = runs / "smoke" / "steps" / f"{s}.json"
        data = read_json(rec)
        del data["outputs"]
        rec.write_text(__import__("json").dumps(data))
    said = []
    cfg = load_profile("smoke", ["stage2.draws=7"])
    records = pipeline.run(
        cfg,
        steps=STEPS,
        notebooks_dir=tmp_path / "notebooks",
        runs_dir=runs,
        progress=False,
        log=said.append,
        as_name="v",
    )
    assert statuses(records) == ["ran", "ran", "ran"]
    assert any("[up] inputs unchanged, but its record" in m and "lists no outputs" in m for m in said)
