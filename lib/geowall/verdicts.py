"""The paper's claims against this run: explicit decision rules over the artefacts.

Each rule reads the tables the pipeline wrote and returns ``supported``, ``not
supported``, ``inconclusive`` or ``not testable with this profile``, the decisive numbers
in a few words (``numbers``), what the design could detect (``power``) and the full
evidence; ``index.qmd`` shows claim, verdict, numbers and power in the table
(:func:`verdict_table`, via :mod:`geowall.results`) and the rules (:data:`RULES`) in a
note below it. The rules are tested on constructed tables and on simulated runs where
the answer is known (tests/test_verdicts.py): an exponent caused by depth, with the
geometry tracking depth, is not "supported"; a planted geometric law on geometry that is
correlated with depth still is.

The claims are about real pretrained networks: the synthetic zoo is a known-answer check
and a random-init twin a contrast (:func:`geowall.law.model_kind`); both are shown apart
and never decide a verdict.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from geowall.floors import MIN_LAYERS
from geowall.law import DEPTH_SETS
from geowall.power import detectable_slope, power_words
from geowall.transfer import FEW_LAYERS, law_rows

__all__ = [
    "RULES",
    "CLAIMS",
    "NOT_TESTABLE",
    "geometry_verdict",
    "transfer_verdict",
    "floor_verdict",
    "verdict_table",
]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
NOT_TESTABLE = "not testable with this profile"
ELPD_Z = 2.0
ALPHA = 0.05

CLAIMS = {
    "geometry": "Geometry predicts the per-layer width exponent beyond depth",
    "transfer": "The law transfers across real models",
    "floors": "Floors track curvature and intrinsic dimension",
}
RULES = {
    "geometry": (
        f"On the real pretrained networks, with per-model intercepts, each geometric predictor set is fitted "
        f"beside relative depth and compared with depth alone by PSIS-LOO; the set with the largest gain is "
        f"judged. Supported if that gain exceeds {ELPD_Z:g} standard errors, the within-model permutation null "
        f"of the geometry residualised on depth gives p < {ALPHA:g}, and some geometric slope's 94% HDI "
        f"excludes 0. Where none of the three holds: not supported if the design analysis says a slope as "
        f"large as the 94% HDIs allow would have been detected with 80% probability (powered, no effect above "
        f"X), else inconclusive (underpowered below X). Otherwise inconclusive. Power: the whole rule, in "
        f"closed form, on simulated runs with this run's layers, depth relation, Stage 1 sds and geometry "
        f"SEs and a planted slope (Gelman and Carlin 2014)."
    ),
    "transfer": (
        f"Only directions between two real pretrained models count (the zoo's directions are the known-answer "
        f"check, shown apart; a random twin is a contrast). For the four-summary law in each direction, a "
        f"direction transfers if the Spearman 94% HDI lies above 0, the permutation p < {ALPHA:g} and the "
        f"law's level-shift R² beats the depth baseline's on the same test layers; it fails if p >= {ALPHA:g} "
        f"or it does not beat depth. Supported if every real direction with at least {FEW_LAYERS} test layers "
        f"transfers; not supported if every such direction fails; inconclusive otherwise, and when no real "
        f"direction has {FEW_LAYERS} test layers."
    ),
    "floors": (
        f"On the real pretrained networks, within each model with at least {MIN_LAYERS} identified floors, "
        f"the posterior of the Spearman correlation of floor with curvature and with intrinsic dimension: "
        f"supported if both 94% HDIs lie above 0 in some model; not supported if in every ranked model both "
        f"HDIs include or lie below 0 and their posterior means are <= 0; inconclusive otherwise. Not testable "
        f"with this profile when no real model has {MIN_LAYERS} layers whose width grid can identify a floor "
        f"(showcase layers)."
    ),
}


def _f(x, nd=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def _out(verdict: str, numbers: str, power: str, evidence: str | None = None) -> dict:
    return {"verdict": verdict, "numbers": numbers, "power": power, "evidence": evidence or numbers}


# --------------------------------------------------------------------------- geometry


def geometry_verdict(
    compare: pd.DataFrame | None,
    coefs: pd.DataFrame | None,
    null: pd.DataFrame | None,
    power: pd.DataFrame | None = None,
    scope: str = "real",
) -> dict:
    """Decide the geometry claim (see :data:`RULES`) from ``law_compare``, ``law`` and
    ``law_null`` (each with a ``scope`` column) and the design analysis ``law_power``
    (:func:`geowall.power.design_analysis`, with a ``scope`` column)."""

    if compare is None or coefs is None or null is None:
        return _out(INCONCLUSIVE, "Stage 2 not run", "n/a")
    c = compare[(compare["scope"] == scope) & compare["predictor_set"].isin(list(DEPTH_SETS))]
    if len(c) == 0 or "elpd_diff_vs_depth" not in c:
        return _out(INCONCLUSIVE, f"no depth + geometry law fitted on the {scope} networks", "n/a")
    pw = power[power["scope"] == scope] if power is not None and "scope" in power else power
    pw = pw if pw is not None and len(pw) else None
    det = detectable_slope(pw) if pw is not None else {}
    pwords = power_words(pw)
    best = c.sort_values("elpd_diff_vs_depth", ascending=False).iloc[0]
    name = str(best["predictor_set"])
    gain, se = float(best["elpd_diff_vs_depth"]), float(best["se_diff_vs_depth"])
    n = null[(null["scope"] == scope) & (null["predictor_set"] == name)]
    p = float(n["p_value"].iloc[0]) if len(n) else np.nan
    k = coefs[
        (coefs["scope"] == scope)
        & (coefs["predictor_set"] == name)
        & coefs["b_mean"].notna()
        & (coefs["term"] != "depth")
    ]
    excl = k[(k["coef_hdi_3"] > 0) | (k["coef_hdi_97"] < 0)]
    tests = [gain > ELPD_Z * se, bool(p < ALPHA), len(excl) > 0]
    finite = [v for v in det.values() if np.isfinite(v)]
    x = max(finite) if finite else np.inf
    bound = float(np.nanmax(np.abs(k[["coef_hdi_3", "coef_hdi_97"]].to_numpy()))) if len(k) else np.inf
    powered = bool(np.isfinite(x) and bound < x)
    if all(tests):
        verdict, note = SUPPORTED, ""
    elif not any(tests):
        if pw is None:
            verdict, note = NOT_SUPPORTED, ""
        elif powered:
            verdict, note = NOT_SUPPORTED, f"powered, no effect above {x:.2f}"
        else:
            verdict, note = INCONCLUSIVE, f"underpowered below {_f(x)}" if np.isfinite(x) else "underpowered"
    else:
        verdict = INCONCLUSIVE
        note = (
            ""
            if pw is None
            else f"powered, no effect above {x:.2f}"
            if powered
            else (f"underpowered below {x:.2f}" if np.isfinite(x) else "underpowered")
        )
    depth = compare[(compare["scope"] == scope) & (compare["predictor_set"] == "depth")]
    dgain = (
        f"; depth alone over model intercepts {_f(float(depth['elpd_diff_vs_models'].iloc[0]), 1)} "
        f"± {_f(float(depth['se_diff_vs_models'].iloc[0]), 1)}"
        if len(depth) and "elpd_diff_vs_models" in depth
        else ""
    )
    slopes = "; ".join(f"{r.term} {_f(r.coef_mean)} [{_f(r.coef_hdi_3)}, {_f(r.coef_hdi_97)}]" for r in k.itertuples())
    numbers = (
        f"'{name}' over depth: ΔELPD {_f(gain, 1)} ± {_f(se, 1)}, permutation p {_f(p, 3)} (geometry residualised "
        f"on depth), slopes {slopes or 'none'}{dgain}"
    )
    power_col = pwords + (f"; {note}" if note else "")
    others = "; ".join(
        f"{r.predictor_set} {_f(r.elpd_diff_vs_depth, 1)} ± {_f(r.se_diff_vs_depth, 1)}"
        for r in c.sort_values("elpd_diff_vs_depth", ascending=False).itertuples()
    )
    ev = (
        f"{numbers} (log alpha per SD; max Pareto k {_f(float(best['max_pareto_k']))}); every depth + geometry "
        f"set over depth: {others}"
    )
    if pw is not None:
        fp = pw[pw["slope"] == 0]["p_supported"]
        ev += f"; design analysis: {pwords}" + (f", false-positive rate at slope 0 {fp.max():.2f}" if len(fp) else "")
    return {**_out(verdict, numbers, power_col, ev), "detectable": det}


# --------------------------------------------------------------------------- transfer


def _kind(scores: pd.DataFrame, kinds: Mapping[str, str] | None, col: str) -> pd.Series:
    model = scores[col].astype(str)
    if kinds is not None:
        return model.map(lambda m: kinds.get(m, "pretrained"))
    kc = col.replace("_model", "_kind")
    return scores[kc] if kc in scores else pd.Series("pretrained", index=scores.index)


def _beats_depth(r, depth_rows: pd.DataFrame) -> tuple[bool, float]:
    """The law's level-shift R^2 against depth's on the same test layers: the law row's own
    ``depth_r2_shift`` (depth scored on the law's layers, :func:`geowall.transfer.run_transfer`),
    else the direction's depth row when it was scored on as many layers."""
    d = getattr(r, "depth_r2_shift", np.nan)
    if not (isinstance(d, float) and np.isfinite(d)):
        same = depth_rows[
            (depth_rows["train_model"] == r.train_model)
            & (depth_rows["test_model"] == r.test_model)
            & (depth_rows["n_layers"] == r.n_layers)
        ]
        d = float(same["r2_shift"].iloc[0]) if len(same) else np.nan
    return bool(np.isfinite(d) and r.r2_shift > d), d


def _rho_crit(n: int) -> float:
    """The Spearman a permutation test at ALPHA (one-sided) needs over n layers (normal approximation)."""
    return float(1.6449 / np.sqrt(n - 1)) if n > 1 else np.nan


def transfer_verdict(
    scores: pd.DataFrame | None, law_set: str | None = None, kinds: Mapping[str, str] | None = None
) -> dict:
    """Decide the transfer claim (see :data:`RULES`) from ``transfer.parquet``: per direction,
    the four-summary law where it was fitted, else the curvature-free law
    (:func:`geowall.transfer.law_rows`); ``law_set`` judges one set only. ``kinds``
    (``{model: "pretrained" | "random" | "zoo"}``, :func:`geowall.law.model_kinds`) says
    which directions are between real models; without it, the table's ``train_kind`` /
    ``test_kind`` columns, else every model counts as pretrained."""

    if scores is None or len(scores) == 0:
        return _out(INCONCLUSIVE, "transfer not run", "n/a")
    scores = scores.assign(
        kind_a=_kind(scores, kinds, "train_model").to_numpy(), kind_b=_kind(scores, kinds, "test_model").to_numpy()
    )
    depth_rows = scores[scores["predictor_set"] == "depth"]
    s = scores[scores["predictor_set"] == law_set] if law_set else law_rows(scores)
    if "note" in s:  # pairs not scored (a summary withheld at every layer): named, not judged
        skipped = [f"{r.train_model}->{r.test_model}: not scored ({r.note})" for r in s[s["note"].notna()].itertuples()]
        s = s[s["note"].isna()]
    else:
        skipped = []
    real, apart, status, numbers, ns = [], [], [], [], []
    for r in s.itertuples():
        is_real = r.kind_a == "pretrained" and r.kind_b == "pretrained"
        beats, d = _beats_depth(r, depth_rows)
        ok = r.spearman_hdi_3 > 0 and r.p_perm_spearman < ALPHA and beats
        fail = not (r.p_perm_spearman < ALPHA) or not beats
        few = r.n_layers < FEW_LAYERS
        text = (
            f"{r.train_model}->{r.test_model} ({r.predictor_set}, n={r.n_layers}{', few' if few else ''}): Spearman "
            f"{_f(r.spearman)} [{_f(r.spearman_hdi_3)}, {_f(r.spearman_hdi_97)}], p {_f(r.p_perm_spearman, 3)}, "
            f"level-shift R2 {_f(r.r2_shift)} vs depth {_f(d)} on the same layers, R2 {_f(r.r2)} "
            f"(ceiling {_f(r.ceiling_r2)})"
        )
        if is_real:
            real.append(text)
            if not few:
                status.append("ok" if ok else "fail" if fail else "mixed")
                ns.append(int(r.n_layers))
                numbers.append(
                    f"{r.train_model}→{r.test_model} ({r.n_layers} layers): Spearman {_f(r.spearman)}, p "
                    f"{_f(r.p_perm_spearman, 3)}, shift R² {_f(r.r2_shift)} vs depth {_f(d)}"
                )
        else:
            what = "known-answer check (zoo)" if "zoo" in (r.kind_a, r.kind_b) else "contrast (random twin)"
            apart.append(f"{what}: {text}")
    if not status:
        verdict = INCONCLUSIVE
    elif all(x == "ok" for x in status):
        verdict = SUPPORTED
    elif all(x == "fail" for x in status):
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    if not numbers:
        numbers = [f"no direction between real models with {FEW_LAYERS} or more test layers"] + [
            t.split(": Spearman")[0] for t in real
        ]
    power = (
        "; ".join(f"{n} test layers: significant from Spearman {_rho_crit(n):.2f}" for n in ns)
        if ns
        else f"needs {FEW_LAYERS} test layers of a real model"
    )
    ev = "; ".join(real + apart + skipped) or "no law rows"
    return _out(verdict, "; ".join(numbers), power, ev)


# --------------------------------------------------------------------------- floors


def floor_verdict(
    floors: pd.DataFrame | None,
    exponents: pd.DataFrame | None = None,
    kinds: Mapping[str, str] | None = None,
) -> dict:
    """Decide the floor claim (see :data:`RULES`) from ``floors.parquet``; ``exponents``
    (``exponents.parquet``) says how many layers of each model have a grid that can identify
    a floor (``floor_term``); ``kinds`` which models are real pretrained networks."""
    if floors is None:
        return _out(INCONCLUSIVE, "floor step not run", "n/a")
    kind = (lambda m: kinds.get(str(m), "pretrained")) if kinds is not None else (lambda m: "pretrained")
    sp = floors[floors["row_type"] == "spearman"]
    real = sp[sp["model"].map(kind) == "pretrained"]
    zoo = sp[sp["model"].map(kind) != "pretrained"]
    n_id = {m: int(g["n_layers"].iloc[0]) for m, g in real.groupby("model")}
    counts = ", ".join(f"{m}: {n}" for m, n in n_id.items()) or "no real model"
    capable = {}
    if exponents is not None and "floor_term" in exponents:
        e = exponents[exponents["primary"]] if "primary" in exponents else exponents
        capable = {
            str(m): int(g["floor_term"].astype(bool).sum()) for m, g in e.groupby("model") if kind(m) == "pretrained"
        }
    cap = ", ".join(f"{m}: {n}" for m, n in capable.items())
    power = (
        f"ranking needs {MIN_LAYERS} identified floors per model; floor-capable (showcase) layers {cap}"
        if capable
        else f"ranking needs {MIN_LAYERS} identified floors per model"
    )
    zoo_ev = "; ".join(
        f"known-answer check (zoo) {r.model} {r.summary}: "
        + (f"rho {_f(r.rho_mean)} [{_f(r.rho_hdi_3)}, {_f(r.rho_hdi_97)}]" if r.status == "ranked" else str(r.status))
        for r in zoo.itertuples()
    )
    if capable and all(n < MIN_LAYERS for n in capable.values()):
        nums = f"floor-capable layers per real model ({cap}) < {MIN_LAYERS}; identified floors ({counts})"
        return _out(NOT_TESTABLE, nums, power, "; ".join(x for x in (nums, zoo_ev) if x))
    ranked = real[real["status"] == "ranked"]
    if len(ranked) == 0:
        nums = f"identified floors per real model ({counts}): fewer than {MIN_LAYERS} in every model, too few to rank"
        return _out(INCONCLUSIVE, nums, power, "; ".join(x for x in (nums, zoo_ev) if x))
    per_model = []
    for _m, g in ranked.groupby("model"):
        g = g.set_index("summary")
        both_pos = all(g.loc[s, "rho_hdi_3"] > 0 for s in ("curvature", "id_twonn") if s in g.index)
        both_null = all(
            g.loc[s, "rho_hdi_3"] <= 0 and g.loc[s, "rho_mean"] <= 0 for s in ("curvature", "id_twonn") if s in g.index
        )
        per_model.append((both_pos, both_null))
    nums = "; ".join(
        f"{r.model} {r.summary}: rho {_f(r.rho_mean)} [{_f(r.rho_hdi_3)}, {_f(r.rho_hdi_97)}] over {r.n_layers} floors"
        for r in ranked.itertuples()
    )
    verdict = (
        SUPPORTED if any(p for p, _ in per_model) else NOT_SUPPORTED if all(n for _, n in per_model) else INCONCLUSIVE
    )
    ev = f"identified floors per real model ({counts}); {nums}" + (f"; {zoo_ev}" if zoo_ev else "")
    return _out(verdict, nums, power, ev)


def verdict_table(
    *, compare=None, coefs=None, null=None, power=None, transfer=None, floors=None, exponents=None, kinds=None
) -> pd.DataFrame:
    """One row per claim: ``key, claim, verdict, numbers, power, evidence, rule``.

    Any table may be None (its step did not run); a table without the columns its verdict
    reads (an artefact written before that verdict existed) counts as None too, so every
    reader of a run folder can pass what it finds."""
    compare = compare if compare is not None and "scope" in compare else None
    transfer = transfer if transfer is not None and "p_perm_spearman" in transfer else None
    floors = floors if floors is not None and "status" in floors else None
    rows = []
    for key, v in (
        ("geometry", geometry_verdict(compare, coefs, null, power)),
        ("transfer", transfer_verdict(transfer, kinds=kinds)),
        ("floors", floor_verdict(floors, exponents, kinds)),
    ):
        v = {k: v[k] for k in ("verdict", "numbers", "power", "evidence")}
        rows.append({"key": key, "claim": CLAIMS[key], **v, "rule": RULES[key]})
    return pd.DataFrame(rows)
