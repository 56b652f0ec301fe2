"""Design analysis of the geometry verdict: which within-model slopes could this run detect?

Gelman & Carlin (2014) ask of a design what it could have found before reading what it did
find. Here the design is this run's real layers (their models, relative depths and
measured geometry), the Stage 1 posterior sd of each layer's log width exponent and the
bootstrap SE of each summary; the decision is the whole geometry rule of
:func:`geowall.verdicts.geometry_verdict`, not one coefficient:

* every depth + geometry set of :data:`geowall.law.DEPTH_SETS` against depth alone by
  leave-one-out ELPD, the best set kept (its gain must exceed 2 standard errors),
* that set's permutation null with the geometry residualised on depth within each model
  (p < 0.05),
* some geometric slope's 94% interval excluding 0.

Each simulated data set keeps the run's layers and the run's depth relation (per-model
intercepts, the depth slope and the residual sd of the depth-only law fitted to the run),
takes the run's measured summaries as the true geometry, plants ``slope`` (log alpha per SD
of one summary over the layers) on top, adds the residual and each layer's Stage 1 sd to
the target and each summary's bootstrap SE to the observed geometry, and applies the rule.
The laws are fitted in closed form (:func:`geowall.nulls.closed_form_loo`,
:func:`geowall.bayes.gaussian_linear`: the Stage 2 priors and likelihood without the
summaries' errors in variables); ``tests/test_power.py`` checks the closed-form decision
against the sampled PyMC laws on one case. The probability of "supported" per planted
slope is the power curve; :func:`detectable_slope` reads off the smallest slope detected
with 80% probability, which the verdict table quotes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from geowall import bayes
from geowall.geometry import SUMMARY_NAMES
from geowall.law import DEPTH_SETS, stage2_table
from geowall.nulls import closed_form_loo, wald_permutation

__all__ = ["POWER", "SUMMARY_WORDS", "decide", "design_analysis", "detectable_slope", "power_words"]

# The summaries in words, as the verdict table's power phrase and the glance paragraph say them
SUMMARY_WORDS = dict(
    zip(SUMMARY_NAMES, ("intrinsic dimension", "participation ratio", "curvature", "local residual"), strict=True)
)

POWER = 0.8  # the power the verdict table quotes a detectable slope at
ELPD_Z, ALPHA, HDI = 2.0, 0.05, 0.94  # the geometry rule's thresholds (geowall.verdicts uses the same)


def _standardise(tab: pd.DataFrame, preds: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    y = tab["y"].to_numpy(float)
    ym, ys = y.mean(), y.std(ddof=1)
    X = np.column_stack([(tab[p] - tab[p].mean()) / tab[p].std(ddof=1) for p in preds]) if preds else None
    return (y - ym) / ys, tab["y_sd"].to_numpy(float) / ys, X, ys


def decide(
    tab: pd.DataFrame,
    sets: Mapping[str, Sequence[str]] | None = None,
    *,
    n_perm: int = 99,
    seed: int = 0,
    n_grid: int = 30,
) -> dict[str, Any]:
    """The geometry rule on one :func:`geowall.law.stage2_table` (several models, per-model
    intercepts), in closed form: ``{"best_set", "gain", "gain_se", "p_value", "excludes_0",
    "slopes" (target units per SD, mean and 94% bounds per geometric term), "supported"}``.
    The permutation runs only when the other two tests pass (otherwise it cannot change
    the decision; ``p_value`` is then NaN)."""
    sets = dict(sets or DEPTH_SETS)
    preds = list(dict.fromkeys(p for v in sets.values() for p in v))
    y, s, X, ys = _standardise(tab, preds)
    models = list(dict.fromkeys(tab["model"]))
    D = np.array([[m == mm for mm in models] for m in tab["model"]], float)
    groups = [np.flatnonzero(tab["model"].to_numpy() == m) for m in models]
    col = {p: X[:, i] for i, p in enumerate(preds)}
    base = closed_form_loo(np.column_stack([D, col["depth"]]), y, s, n_grid=n_grid)
    best = None
    for name, ps in sets.items():
        geo = [p for p in ps if p != "depth"]
        lo = closed_form_loo(np.column_stack([D, col["depth"], *[col[p] for p in geo]]), y, s, n_grid=n_grid)
        d = lo - base
        gain, se = float(d.sum()), float(np.sqrt(len(d) * d.var(ddof=1)))
        if best is None or gain > best[1]:
            best = (name, gain, se, geo)
    name, gain, se, geo = best
    G = col["depth"][:, None]
    Xg = np.column_stack([col[p] for p in geo])
    fit = bayes.gaussian_linear(np.column_stack([D, G, Xg]), y, s, prior_sd=1.0, sigma_sd=1.0, n_grid=n_grid)
    k = D.shape[1] + 1
    m, sd = fit.mean[k:] * ys, np.sqrt(np.diag(fit.cov)[k:]) * ys
    z = norm.ppf(0.5 + HDI / 2)
    lo, hi = m - z * sd, m + z * sd
    excl = bool(((lo > 0) | (hi < 0)).any())
    p = np.nan
    if gain > ELPD_Z * se and excl:
        rng = np.random.default_rng(seed)
        stat, null, _ = wald_permutation(D, G, Xg, y, s, groups, n_perm=n_perm, rng=rng, n_grid=n_grid)
        p = (1 + int((null >= stat).sum())) / (1 + n_perm)
    return {
        "best_set": name,
        "gain": gain,
        "gain_se": se,
        "p_value": p,
        "excludes_0": excl,
        "slopes": {t: (float(a), float(b), float(c)) for t, a, b, c in zip(geo, m, lo, hi)},
        "supported": bool(gain > ELPD_Z * se and excl and p < ALPHA),
    }


def _depth_law(tab: pd.DataFrame) -> tuple[np.ndarray, float]:
    """The run's depth-only law in closed form: fitted log alpha per layer and residual sd
    (target units)."""
    y, s, X, ys = _standardise(tab, ["depth"])
    models = list(dict.fromkeys(tab["model"]))
    D = np.array([[m == mm for mm in models] for m in tab["model"]], float)
    fit = bayes.gaussian_linear(np.column_stack([D, X]), y, s, prior_sd=1.0, sigma_sd=1.0)
    fitted = tab["y"].mean() + ys * (np.column_stack([D, X]) @ fit.mean)
    return fitted, float(ys * (fit.sigmas @ fit.weights))


def design_analysis(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    *,
    models: Sequence[str] | None = None,
    summaries: Sequence[str] = ("id_twonn", "curvature"),
    slopes: Sequence[float] | None = None,
    sets: Mapping[str, Sequence[str]] | None = None,
    n_sim: int = 100,
    n_perm: int = 99,
    seed: int = 0,
    target: str = "log_alpha",
) -> pd.DataFrame:
    """Power curve of the geometry rule on this run's design (see the module docstring).

    ``models``: the scope (the real networks); the layers are those with every summary of
    ``sets`` (as in :func:`geowall.law.compare_laws`). For each summary in ``summaries`` and
    each planted ``slope`` (log alpha per SD of the summary over these layers; default: 0
    to 2.5 x the target's within-model sd and median Stage 1 sd combined), ``n_sim``
    data sets are simulated and decided by :func:`decide`. Returns one row per (summary, slope):
    ``summary, slope, n_sim, p_supported, mcse`` (its Monte Carlo standard error), ``mean_gain``, and the design's
    ``n_layers``, ``n_models``, ``resid_sd`` (of the depth-only law), ``median_y_sd``
    (Stage 1) and ``median_se_sd`` (the summary's bootstrap SE in SDs of the summary)."""
    sets = dict(sets or DEPTH_SETS)
    preds = list(dict.fromkeys(p for v in sets.values() for p in v))
    missing = [x for x in summaries if x not in preds]
    if missing:
        raise ValueError(f"summaries: {missing} are in none of the predictor sets {list(sets)}")
    tab = stage2_table(exponents_df, geometry_df, predictors=preds, target=target, models=models)
    if tab["model"].nunique() < 1 or len(tab) < len(preds) + tab["model"].nunique() + 2:
        raise ValueError(f"design_analysis: {len(tab)} layers with every summary; too few for the rule's laws")
    fitted, resid = _depth_law(tab)
    within_sd = float(np.sqrt((tab["y"] - tab.groupby("model")["y"].transform("mean")).pow(2).mean()))
    # the grid's scale: the within-model spread of the target, or its Stage 1 sd where that is larger
    # (a poorly determined exponent shrinks towards its model's mean but cannot hide a slope that size)
    scale = float(np.hypot(within_sd, np.median(tab["y_sd"])))
    slopes = np.asarray(slopes if slopes is not None else scale * np.array([0, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5]))
    geo = [p for p in preds if p != "depth"]
    truth = {p: tab[p].to_numpy(float) for p in geo}
    ses = {p: tab[f"{p}_se"].to_numpy(float) for p in geo}
    ysd = tab["y_sd"].to_numpy(float)
    rng = np.random.default_rng(seed)
    rows = []
    for x in summaries:
        z = (truth[x] - truth[x].mean()) / truth[x].std(ddof=1)
        for b in slopes:
            got, gains = [], []
            for _ in range(n_sim):
                y_true = fitted + b * z + rng.normal(0, resid, len(tab))
                sim = tab.assign(y=y_true + rng.normal(0, ysd))
                for p in geo:
                    sim[p] = truth[p] + ses[p] * rng.standard_normal(len(tab))
                d = decide(sim, sets, n_perm=n_perm, seed=int(rng.integers(2**31)))
                got.append(d["supported"])
                gains.append(d["gain"])
            ps = float(np.mean(got))
            rows.append(
                {
                    "summary": x,
                    "slope": float(b),
                    "n_sim": n_sim,
                    "p_supported": ps,
                    "mcse": float(np.sqrt(ps * (1 - ps) / n_sim)),
                    "mean_gain": float(np.mean(gains)),
                    "n_layers": len(tab),
                    "n_models": int(tab["model"].nunique()),
                    "resid_sd": resid,
                    "median_y_sd": float(np.median(ysd)),
                    "median_se_sd": float(np.median(ses[x]) / truth[x].std(ddof=1)),
                }
            )
    return pd.DataFrame(rows)


def detectable_slope(curve: pd.DataFrame, power: float = POWER) -> dict[str, float]:
    """Per summary: the smallest planted slope whose probability of "supported" reaches
    ``power`` (linear interpolation between simulated slopes; ``inf`` when the largest
    simulated slope does not reach it)."""
    out = {}
    for x, g in curve.groupby("summary", sort=False):
        g = g.sort_values("slope")
        s, p = g["slope"].to_numpy(float), g["p_supported"].to_numpy(float)
        hit = np.flatnonzero(p >= power)
        if not len(hit):
            out[x] = float("inf")
        elif hit[0] == 0:
            out[x] = float(s[0])
        else:
            i = hit[0]
            out[x] = float(s[i - 1] + (power - p[i - 1]) * (s[i] - s[i - 1]) / (p[i] - p[i - 1]))
    return out


def power_words(curve: pd.DataFrame | None, power: float = POWER) -> str:
    """One phrase: the slopes the design detects with ``power`` probability, per summary."""
    if curve is None or not len(curve):
        return "power not computed"
    d = detectable_slope(curve, power)
    top = curve.groupby("summary")["slope"].max()
    parts = [
        f"{SUMMARY_WORDS.get(x, x)} {v:.2f}" if np.isfinite(v) else f"{SUMMARY_WORDS.get(x, x)} > {top[x]:.2f}"
        for x, v in d.items()
    ]
    return f"{power:.0%} power at slopes (log alpha per SD) of " + ", ".join(parts)
