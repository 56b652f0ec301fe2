"""The paper's claims against this run: explicit decision rules over the artefacts.

Each rule reads the tables the pipeline wrote and returns ``supported``, ``not
supported`` or ``inconclusive`` with the evidence that decided it; ``index.qmd`` shows
the table (:func:`verdict_table`, via :mod:`geowall.results`). The rules are stated in
:data:`RULES` and tested on constructed tables (tests/test_verdicts.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geowall.floors import MIN_LAYERS
from geowall.law import BASELINES
from geowall.transfer import FEW_LAYERS

__all__ = ["RULES", "CLAIMS", "geometry_verdict", "transfer_verdict", "floor_verdict", "verdict_table"]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
ELPD_Z = 2.0
ALPHA = 0.05

CLAIMS = {
    "geometry": "Geometry predicts the per-layer width exponent",
    "transfer": "The law transfers across models",
    "floors": "Floors track curvature and intrinsic dimension",
}
RULES = {
    "geometry": (
        f"On the real networks, with per-model intercepts, take the geometric predictor set with the largest "
        f"ELPD gain over the intercepts-only baseline. Supported if that gain exceeds {ELPD_Z:g} standard "
        f"errors, the within-model permutation null gives p < {ALPHA:g} and some slope's 94% HDI excludes 0; "
        f"not supported if none of the three holds; inconclusive otherwise."
    ),
    "transfer": (
        f"For the four-summary law in each transfer direction (the curvature-free law where curvature is "
        f"withheld at too many layers to fit it): a direction transfers if the Spearman 94% HDI "
        f"lies above 0 and the permutation p < {ALPHA:g}; it fails if the permutation p >= {ALPHA:g}. "
        f"Supported if every direction with at least {FEW_LAYERS} test layers transfers; not supported if "
        f"every such direction fails; inconclusive otherwise, and when no direction has {FEW_LAYERS} layers."
    ),
    "floors": (
        f"Within each model with at least {MIN_LAYERS} identified floors, the posterior of the Spearman "
        f"correlation of floor with curvature and with intrinsic dimension: supported if both 94% HDIs lie "
        f"above 0 in some model; not supported if in every ranked model both HDIs include or lie below 0 "
        f"and their posterior means are <= 0; inconclusive otherwise, and when no model has "
        f"{MIN_LAYERS} identified floors."
    ),
}


def _f(x, nd=2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def geometry_verdict(
    compare: pd.DataFrame | None, coefs: pd.DataFrame | None, null: pd.DataFrame | None, scope: str = "real"
) -> dict:
    """Decide the geometry claim (see :data:`RULES`) from ``law_compare``, ``law`` and
    ``law_null`` tables (each with a ``scope`` column)."""
    if compare is None or coefs is None or null is None:
        return {"verdict": INCONCLUSIVE, "evidence": "Stage 2 not run"}
    c = compare[(compare["scope"] == scope) & ~compare["predictor_set"].isin(BASELINES)]
    if len(c) == 0:
        return {"verdict": INCONCLUSIVE, "evidence": f"no geometric law fitted on the {scope} networks"}
    best = c.sort_values("elpd_diff_vs_models", ascending=False).iloc[0]
    name = best["predictor_set"]
    gain, se = float(best["elpd_diff_vs_models"]), float(best["se_diff_vs_models"])
    n = null[(null["scope"] == scope) & (null["predictor_set"] == name)]
    p = float(n["p_value"].iloc[0]) if len(n) else np.nan
    k = coefs[(coefs["scope"] == scope) & (coefs["predictor_set"] == name) & coefs["b_mean"].notna()]
    excl = k[(k["coef_hdi_3"] > 0) | (k["coef_hdi_97"] < 0)]
    tests = [gain > ELPD_Z * se, bool(p < ALPHA), len(excl) > 0]
    verdict = SUPPORTED if all(tests) else NOT_SUPPORTED if not any(tests) else INCONCLUSIVE
    slopes = "; ".join(f"{r.term} {_f(r.coef_mean)} [{_f(r.coef_hdi_3)}, {_f(r.coef_hdi_97)}]" for r in k.itertuples())
    ev = (
        f"best set '{name}': ELPD gain over model intercepts {_f(gain, 1)} (SE {_f(se, 1)}), permutation p "
        f"{_f(p, 3)}, slopes (log alpha per SD) {slopes}; max Pareto k {_f(float(best['max_pareto_k']))}"
    )
    return {"verdict": verdict, "evidence": ev}


def transfer_verdict(scores: pd.DataFrame | None, law_set: str | None = None) -> dict:
    """Decide the transfer claim (see :data:`RULES`) from ``transfer.parquet``: per direction,
    the four-summary law where it was fitted, else the curvature-free law
    (:func:`geowall.transfer.law_rows`); ``law_set`` judges one set only."""
    from geowall.transfer import law_rows

    if scores is None or len(scores) == 0:
        return {"verdict": INCONCLUSIVE, "evidence": "transfer not run"}
    s = scores[scores["predictor_set"] == law_set] if law_set else law_rows(scores)
    if "note" in s:  # pairs not scored (a summary withheld at every layer): named, not judged
        skipped = [f"{r.train_model}->{r.test_model}: not scored ({r.note})" for r in s[s["note"].notna()].itertuples()]
        s = s[s["note"].isna()]
    else:
        skipped = []
    parts, status = [], []
    for r in s.itertuples():
        ok = r.spearman_hdi_3 > 0 and r.p_perm_spearman < ALPHA
        fail = not (r.p_perm_spearman < ALPHA)
        few = r.n_layers < FEW_LAYERS
        if not few:
            status.append("ok" if ok else "fail" if fail else "mixed")
        parts.append(
            f"{r.train_model}->{r.test_model} ({r.predictor_set}, n={r.n_layers}{', few' if few else ''}): Spearman "
            f"{_f(r.spearman)} [{_f(r.spearman_hdi_3)}, {_f(r.spearman_hdi_97)}], p {_f(r.p_perm_spearman, 3)}, "
            f"R2 {_f(r.r2)}, level-shift R2 {_f(r.r2_shift)} (ceiling {_f(r.ceiling_r2)})"
        )
    if not status:
        verdict = INCONCLUSIVE
    elif all(x == "ok" for x in status):
        verdict = SUPPORTED
    elif all(x == "fail" for x in status):
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    parts += skipped
    return {"verdict": verdict, "evidence": "; ".join(parts) if parts else "no law rows"}


def floor_verdict(floors: pd.DataFrame | None) -> dict:
    """Decide the floor claim (see :data:`RULES`) from ``floors.parquet``."""
    if floors is None:
        return {"verdict": INCONCLUSIVE, "evidence": "floor step not run"}
    sp = floors[floors["row_type"] == "spearman"]
    ranked = sp[sp["status"] == "ranked"]
    n_id = {m: int(g["n_layers"].iloc[0]) for m, g in sp.groupby("model")}
    counts = ", ".join(f"{m}: {n}" for m, n in n_id.items())
    if len(ranked) == 0:
        return {
            "verdict": INCONCLUSIVE,
            "evidence": f"identified floors per model ({counts}): fewer than {MIN_LAYERS} in every model, "
            "too few to rank",
        }
    per_model = []
    for _m, g in ranked.groupby("model"):
        g = g.set_index("summary")
        both_pos = all(g.loc[s, "rho_hdi_3"] > 0 for s in ("curvature", "id_twonn") if s in g.index)
        both_null = all(
            g.loc[s, "rho_hdi_3"] <= 0 and g.loc[s, "rho_mean"] <= 0 for s in ("curvature", "id_twonn") if s in g.index
        )
        per_model.append((both_pos, both_null))
    ev = "; ".join(
        f"{r.model} {r.summary}: rho {_f(r.rho_mean)} [{_f(r.rho_hdi_3)}, {_f(r.rho_hdi_97)}] over {r.n_layers} floors"
        for r in ranked.itertuples()
    )
    verdict = (
        SUPPORTED if any(p for p, _ in per_model) else NOT_SUPPORTED if all(n for _, n in per_model) else INCONCLUSIVE
    )
    return {"verdict": verdict, "evidence": f"identified floors per model ({counts}); {ev}"}


def verdict_table(*, compare=None, coefs=None, null=None, transfer=None, floors=None) -> pd.DataFrame:
    """One row per claim: ``key, claim, verdict, evidence, rule``."""
    rows = []
    for key, v in (
        ("geometry", geometry_verdict(compare, coefs, null)),
        ("transfer", transfer_verdict(transfer)),
        ("floors", floor_verdict(floors)),
    ):
        rows.append({"key": key, "claim": CLAIMS[key], **v, "rule": RULES[key]})
    return pd.DataFrame(rows)
