"""Floors vs geometry: are identified floors ordered as curvature and intrinsic dimension?

Only floors that Stage 1 calls identified (:func:`geowall.scaling.exponents`, the
layer's own two-sided evidence) are ranked, and only *within a model*: a model's floors
are all width asymptotes at that model's reference sparsity ``l0_ref``, so they are
compared at matched sparsity, while floors of different models sit at different
sparsities and error scales. A model with fewer than :data:`MIN_LAYERS` identified
floors is reported as too few to rank (two points only ever give a rank correlation of
+-1), and says so in the ``status`` column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.law import geometry_wide

__all__ = ["MIN_LAYERS", "floor_ordering", "spearman_columns"]

MIN_LAYERS = 3
COLUMNS = [
    "row_type",
    "model",
    "layer",
    "summary",
    "status",
    "floor_mean",
    "floor_sd",
    "floor_hdi_3",
    "floor_hdi_97",
    "l0_ref",
    "rho_mean",
    "rho_sd",
    "rho_hdi_3",
    "rho_hdi_97",
    "p_gt0",
    "n_layers",
]


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation along axis 0, column by column (NaN where a column is constant)."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(0)
    rb = rb - rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def floor_ordering(
    stage1_idata,
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    *,
    summaries: Sequence[str] = ("curvature", "id_twonn"),
    min_layers: int = MIN_LAYERS,
    propagate_se: bool = True,
    max_draws: int = 4000,
    seed: int = 0,
    hdi_prob: float = 0.94,
) -> pd.DataFrame:
    """Rank correlation of identified floors with geometry, within each model
    (``floors.parquet``).

    ``exponents_df`` (from :func:`geowall.scaling.exponents` of ``stage1_idata``) says
    which floors are identified. For every posterior draw of those floors (variable
    ``floor`` along ``floor_layer``) and, with ``propagate_se``, a draw of each summary
    from ``N(estimate, se)``, the Spearman correlation across a model's identified
    layers is computed.

    Rows (``row_type``): ``"floor"`` per identified layer (``model, layer, floor_mean,
    floor_sd, floor_hdi_3, floor_hdi_97, l0_ref``, the floor surface's exponent
    ``alpha_floor_mean`` beside the plain ``alpha_mean`` where the exponents table has them,
    and the summaries with their SEs);
    ``"spearman"`` per (model, summary): ``rho_mean, rho_sd, rho_hdi_3, rho_hdi_97,
    p_gt0`` (posterior probability of a positive correlation), ``n_layers`` and
    ``status`` = ``"ranked"``, or ``"too few identified floors (n < min_layers)"`` with
    the rho columns NaN. Every model of the exponents table gets its spearman rows.
    """
    ex = exponents_df.assign(model=exponents_df["model"].astype(str), layer=exponents_df["layer"].astype(int))
    if "form" in ex and "primary" in ex:
        ex = ex[ex["primary"].astype(bool)]
    post = stage1_idata.posterior
    wide = geometry_wide(geometry_df).set_index(["model", "layer"])
    for s in summaries:
        if s not in wide.columns:
            raise ValueError(f"summaries: {s!r} not in geometry_df")
    rng = np.random.default_rng(seed)
    fl_ids: list[str] = [str(v) for v in post["floor_layer"].values] if "floor" in post else []
    F_all = (
        post["floor"].stack(sample=("chain", "draw")).transpose("floor_layer", "sample").to_numpy()
        if fl_ids
        else np.zeros((0, 1))
    )
    S = F_all.shape[1]
    take = rng.choice(S, size=min(S, max_draws), replace=False)
    rows = []
    for model, g in ex.groupby("model", sort=True):
        ident = g[g["floor_identified"].astype(bool)]
        wanted = [
            (model, int(l)) for l in ident["layer"] if f"{model}/L{int(l)}" in fl_ids and (model, int(l)) in wide.index
        ]
        n = len(wanted)
        F = F_all[[fl_ids.index(f"{m}/L{l}") for m, l in wanted]][:, take] if n else np.zeros((0, len(take)))
        for i, (m, l) in enumerate(wanted):
            s = bayes.summarise_draws(F[i], hdi_prob)
            row = {
                "row_type": "floor",
                "model": m,
                "layer": l,
                "floor_mean": s["mean"],
                "floor_sd": s["sd"],
                "floor_hdi_3": s["hdi_lo"],
                "floor_hdi_97": s["hdi_hi"],
                "l0_ref": float(ident.set_index("layer").loc[l, "l0_ref"]) if "l0_ref" in ident else np.nan,
            }
            for col in ("alpha_floor_mean", "alpha_mean"):  # the floor surface's exponent beside the plain one
                if col in ident:
                    row[col] = float(ident.set_index("layer").loc[l, col])
            for sm in summaries:
                row[sm] = float(wide.loc[(m, l), sm])
                row[f"{sm}_se"] = float(wide.loc[(m, l), f"{sm}_se"])
            rows.append(row)
        for sm in summaries:
            base = {"row_type": "spearman", "model": model, "summary": sm, "n_layers": n}
            if n < min_layers:
                rows.append({**base, "status": f"too few identified floors ({n} < {min_layers}) to rank"})
                continue
            est = np.array([wide.loc[w, sm] for w in wanted], float)
            se = np.nan_to_num(np.array([wide.loc[w, f"{sm}_se"] for w in wanted], float), nan=0.0)
            G = est[:, None] + (se[:, None] * rng.standard_normal((n, len(take))) if propagate_se else 0.0)
            rho = spearman_columns(F, np.broadcast_to(G, F.shape))
            rho = rho[np.isfinite(rho)]
            s = bayes.summarise_draws(rho, hdi_prob)
            rows.append(
                {
                    **base,
                    "status": "ranked",
                    "rho_mean": s["mean"],
                    "rho_sd": s["sd"],
                    "rho_hdi_3": s["hdi_lo"],
                    "rho_hdi_97": s["hdi_hi"],
                    "p_gt0": float((rho > 0).mean()) if len(rho) else np.nan,
                }
            )
    out = pd.DataFrame(rows)
    for c in COLUMNS + [c for sm in summaries for c in (sm, f"{sm}_se")]:
        if c not in out.columns:
            out[c] = np.nan
    out = out[COLUMNS + [c for c in out.columns if c not in COLUMNS]]
    out["layer"] = out["layer"].astype("Int64")
    out["n_layers"] = out["n_layers"].astype("Int64")
    out["status"] = out["status"].astype(object)
    return out
