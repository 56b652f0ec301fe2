"""Stage 2 in closed form: the same Gaussian law without the summaries' measurement error
(:func:`geowall.bayes.gaussian_linear`; its agreement with the sampled :func:`geowall.law.fit_law`
is tested), refitted thousands of times where sampling would take hours.

:func:`closed_form_law` one fit; :func:`permutation_null` shuffles geometry within each model
(for a depth + geometry set, each summary residualised on depth first, so the null keeps
geometry's own trend with depth) and compares Wald statistics; :func:`leave_one_model_out`
predicts each model's layer ordering from a law fitted on the others; :func:`nulls_and_lomo`
runs both over a run's scopes and predictor sets (notebook 04); :func:`planted_check` plants a
known slope on measured geometry and shuffles it away (the zoo's known-answer check);
:func:`closed_form_loo` and :func:`wald_permutation` serve the design analysis
(:mod:`geowall.power`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.law import DEFAULT_LAW_SETS, design_matrix, stage2_table, standardisation, use_model_effects

__all__ = [
    "closed_form_law",
    "permutation_null",
    "leave_one_model_out",
    "wald_permutation",
    "closed_form_loo",
    "residualise",
    "nulls_and_lomo",
    "planted_check",
]


def _closed_design(tab: pd.DataFrame, predictors: Sequence[str], sc: Mapping[str, Any], effects: bool):
    X, _ = design_matrix(tab, predictors, sc)
    models = sorted(tab["model"].unique()) if effects else ["all"]
    D = np.array([[m == mm for mm in models] for m in tab["model"]], float) if effects else np.ones((len(tab), 1))
    return np.column_stack([D, X]), len(models)


def closed_form_law(
    tab: pd.DataFrame,
    predictors: Sequence[str],
    *,
    model_effects: bool | None = None,
    sc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Stage 2 law on a :func:`stage2_table`, fitted in closed form
    (:func:`geowall.bayes.gaussian_linear`: same priors and likelihood as
    :func:`build_law_model`, but the summaries enter at their observed values, without
    errors in variables). Returns ``{"fit", "scaling", "n_intercepts", "predictors",
    "b_mean", "b_cov", "coef_mean", "coef_sd"}`` (``b``: standardised slopes)."""
    predictors = list(predictors)
    effects = use_model_effects(tab, model_effects)
    sc = dict(sc or standardisation(tab, predictors))
    Z, n0 = _closed_design(tab, predictors, sc, effects)
    y = (tab["y"].to_numpy(float) - sc["y_mean"]) / sc["y_sd"]
    s = tab["y_sd"].to_numpy(float) / sc["y_sd"]
    fit = bayes.gaussian_linear(Z, y, s, prior_sd=1.0, sigma_sd=1.0)
    m, C = fit.mean, fit.cov
    b, bc = m[n0:], C[n0:, n0:]
    return {
        "fit": fit,
        "scaling": sc,
        "n_intercepts": n0,
        "predictors": predictors,
        "b_mean": b,
        "b_cov": bc,
        "coef_mean": b * sc["y_sd"],
        "coef_sd": np.sqrt(np.diag(bc)) * sc["y_sd"],
    }


def _wald(b: np.ndarray, C: np.ndarray) -> float:
    return float(b @ np.linalg.solve(C, b)) if len(b) else 0.0


def _given(predictors: Sequence[str], given: Sequence[str] | None) -> tuple[str, ...]:
    """The predictors a permutation holds fixed: ``given``, or by default relative depth when
    it sits beside geometry (so the null asks what geometry adds *beyond* depth)."""
    if given is None:
        given = ("depth",) if "depth" in predictors and len(predictors) > 1 else ()
    given = tuple(given)
    if not set(given) <= set(predictors):
        raise ValueError(f"given: {given} must be among the predictors {tuple(predictors)}")
    if len(given) == len(predictors):
        raise ValueError("given: the permutation needs at least one predictor that is not held fixed")
    return given


def residualise(X: np.ndarray, G: np.ndarray, groups: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Within each group (model), least squares of each column of ``X`` on ``[1, G]``:
    ``(fitted, residual)``. With no ``G`` the fit is the group mean."""
    fitted = np.empty_like(X)
    for g in groups:
        A = np.column_stack([np.ones(len(g)), G[g]]) if G.shape[1] else np.ones((len(g), 1))
        coef, *_ = np.linalg.lstsq(A, X[g], rcond=None)
        fitted[g] = A @ coef
    return fitted, X - fitted


def wald_permutation(
    D: np.ndarray,
    G: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    s: np.ndarray,
    groups: Sequence[np.ndarray],
    *,
    n_perm: int,
    rng: np.random.Generator,
    n_grid: int = 60,
) -> tuple[float, np.ndarray, Any]:
    """The permutation null on arrays (standardised scale): ``y ~ D (intercepts) + G (held
    fixed) + X (tested)`` in closed form; ``X`` residualised on ``G`` within each group and
    the residuals permuted within it. Returns ``(statistic, null, observed fit)`` with the
    Wald statistic of the ``X`` slopes."""
    nd, ng = D.shape[1], G.shape[1]
    sl = slice(nd + ng, nd + ng + X.shape[1])
    fit = bayes.gaussian_linear(np.column_stack([D, G, X]), y, s, prior_sd=1.0, sigma_sd=1.0, n_grid=n_grid)
    obs = _wald(fit.mean[sl], fit.cov[sl, sl])
    fitted, resid = residualise(X, G, groups)
    perms = np.tile(np.arange(len(y)), (n_perm, 1))
    for i in range(n_perm):
        for g in groups:
            perms[i, g] = rng.permutation(g)
    Xs = fitted[None] + resid[perms]  # (n_perm, n, t)
    fixed = np.broadcast_to(np.column_stack([D, G])[None], (n_perm, len(y), nd + ng))
    null = _wald_batch(np.concatenate([fixed, Xs], axis=2), y, s, sl, n_grid=n_grid)
    return obs, null, fit


def _wald_batch(Zs: np.ndarray, y: np.ndarray, s: np.ndarray, sl: slice, *, n_grid: int = 60) -> np.ndarray:
    """Wald statistics of the ``sl`` coefficients of :func:`geowall.bayes.gaussian_linear`
    (prior sd 1, sigma ~ HalfNormal(1), the same grid) for a stack of designs ``Zs`` (K, n, p),
    all at once (the permutation null's inner loop)."""
    from scipy.stats import halfnorm

    K, n, p = Zs.shape
    qs = (np.arange(n_grid) + 0.5) / n_grid
    sig = halfnorm.ppf(qs * (1 - 1e-4), scale=1.0)
    v = sig[:, None] ** 2 + np.asarray(s, float)[None] ** 2  # (G, n)
    W = 1.0 / v
    A = np.einsum("kni,gn,knj->kgij", Zs, W, Zs) + np.eye(p)
    Ai = np.linalg.inv(A)
    rhs = np.einsum("kni,gn->kgi", Zs, W * y[None])
    b = np.einsum("kgij,kgj->kgi", Ai, rhs)
    r = y[None, None] - np.einsum("kni,kgi->kgn", Zs, b)
    quad = np.einsum("gn,kgn->kg", W, r * y[None, None])
    _, logdet = np.linalg.slogdet(A)
    logw = -0.5 * (quad + np.log(v).sum(1)[None] + logdet)
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    bs, Cs = b[..., sl], Ai[..., sl, sl]
    m = np.einsum("kg,kgi->ki", w, bs)
    d = bs - m[:, None]
    C = np.einsum("kg,kgij->kij", w, Cs) + np.einsum("kg,kgi,kgj->kij", w, d, d)
    return np.einsum("ki,ki->k", m, np.linalg.solve(C, m[..., None])[..., 0])


def permutation_null(
    tab: pd.DataFrame,
    predictors: Sequence[str],
    *,
    n_perm: int = 200,
    seed: int = 0,
    model_effects: bool | None = None,
    given: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Permutation null of the law's slopes, refitted in closed form (:func:`closed_form_law`).

    The predictors in ``given`` (default: relative depth when the set holds depth and
    geometry) stay as they are; every other predictor is residualised on them within each
    model (least squares on an intercept and ``given``), and those residuals are shuffled
    *within each model* ``n_perm`` times and added back: the null is "geometry adds nothing
    beyond depth", with geometry's own relation to depth kept. Without ``given`` this is a
    plain within-model shuffle of the geometry rows. The statistic is the Wald statistic of
    the tested slopes, ``b' C^-1 b`` (posterior mean and covariance). Returns
    ``{"statistic", "null" (array), "p_value", "n_perm", "given", "b_mean", "b_sd"}`` with
    ``p = (1 + #{null >= observed}) / (1 + n_perm)`` and the observed standardised slopes
    of all predictors."""
    if not predictors:
        raise ValueError("predictors: the permutation null needs at least one predictor")
    predictors = list(predictors)
    given = _given(predictors, given)
    rng = np.random.default_rng(seed)
    obs = closed_form_law(tab, predictors, model_effects=model_effects)
    effects = use_model_effects(tab, model_effects)
    Z, n0 = _closed_design(tab, predictors, obs["scaling"], effects)
    gi = [n0 + predictors.index(p) for p in given]
    ti = [n0 + i for i, p in enumerate(predictors) if p not in given]
    sc = obs["scaling"]
    y = (tab["y"].to_numpy(float) - sc["y_mean"]) / sc["y_sd"]
    s = tab["y_sd"].to_numpy(float) / sc["y_sd"]
    groups = [np.flatnonzero(tab["model"].to_numpy() == m) for m in tab["model"].unique()]
    stat, null, _ = wald_permutation(Z[:, :n0], Z[:, gi], Z[:, ti], y, s, groups, n_perm=n_perm, rng=rng)
    p = (1 + int((null >= stat).sum())) / (1 + n_perm)
    return {
        "statistic": stat,
        "null": null,
        "p_value": float(p),
        "n_perm": int(n_perm),
        "given": list(given),
        "b_mean": obs["b_mean"],
        "b_sd": np.sqrt(np.diag(obs["b_cov"])),
    }


def closed_form_loo(Z: np.ndarray, y: np.ndarray, s: np.ndarray, *, prior_sd=1.0, sigma_sd=1.0, n_grid=40):
    """Exact leave-one-out log predictive densities of the closed-form Gaussian law
    (:func:`geowall.bayes.gaussian_linear`'s model, ``sigma`` on the same prior grid).

    For each ``sigma`` the coefficients integrate out: ``y ~ N(0, K)``, ``K = diag(sigma^2 +
    s^2) + Z P0^-1 Z'``, and ``y_i | y_-i`` is Normal with mean ``y_i - (K^-1 y)_i /
    (K^-1)_ii`` and variance ``1 / (K^-1)_ii``. Over the grid, ``p(y_i | y_-i) = 1 / sum_g
    w_g / p_g(y_i | y_-i)`` with ``w_g`` the full-data posterior weights (exact for a
    discrete prior). Returns the pointwise ``loo_i`` (length n), comparable with
    ``arviz.loo(...).loo_i`` of the sampled law on the same standardised scale."""
    from scipy.special import logsumexp
    from scipy.stats import halfnorm

    Z, y = np.asarray(Z, float), np.asarray(y, float)
    n, p = Z.shape
    s2 = np.asarray(s, float) ** 2
    P0i = np.broadcast_to(np.asarray(prior_sd, float) ** 2, (p,))
    qs = (np.arange(n_grid) + 0.5) / n_grid
    sig = halfnorm.ppf(qs * (1 - 1e-4), scale=sigma_sd)
    ZPZ = (Z * P0i) @ Z.T
    logev, logp = np.empty(n_grid), np.empty((n_grid, n))
    for g, sg in enumerate(sig):
        K = ZPZ + np.diag(sg**2 + s2)
        L = np.linalg.cholesky(K)
        Ki = np.linalg.inv(K)
        a = Ki @ y
        d = np.diag(Ki)
        logev[g] = -0.5 * (y @ a) - np.log(np.diag(L)).sum() - 0.5 * n * np.log(2 * np.pi)
        logp[g] = -0.5 * np.log(2 * np.pi / d) - 0.5 * a**2 / d
    logw = logev - logsumexp(logev)
    return -logsumexp(logw[:, None] - logp, axis=0)


def leave_one_model_out(tab: pd.DataFrame, predictors: Sequence[str]) -> pd.DataFrame:
    """For each model: fit the law in closed form on the *other* models (with their own
    intercepts) and predict the held-out model's layers from their geometry. The
    held-out model's level is unknown to a within-model law, so the scores are about the
    ordering: ``spearman`` (rank correlation of prediction and observation) and
    ``r2_shift`` (R^2 after matching the prediction's mean to the observations': the
    share of within-model variance the slopes explain; 0 for a constant prediction).
    Returns one row per held-out model: ``held_out, n_layers, spearman, r2_shift``."""
    from scipy.stats import spearmanr

    rows = []
    for m in sorted(tab["model"].unique()):
        train, test = tab[tab["model"] != m], tab[tab["model"] == m]
        if len(train) < len(predictors) + train["model"].nunique() + 1 or len(test) < 2:
            continue
        r = closed_form_law(train, predictors, model_effects=train["model"].nunique() > 1)
        sc = r["scaling"]
        X, _ = design_matrix(test, predictors, sc)
        pred = sc["y_mean"] + sc["y_sd"] * (X @ r["b_mean"]) if predictors else np.full(len(test), sc["y_mean"])
        obs = test["y"].to_numpy(float)
        shifted = pred - pred.mean() + obs.mean()
        sst = float(((obs - obs.mean()) ** 2).sum())
        rho = (
            float(spearmanr(obs, pred).statistic)
            if len(test) >= 3 and np.ptp(pred) > 1e-12 and np.ptp(obs) > 0
            else np.nan
        )
        rows.append(
            {
                "held_out": m,
                "n_layers": int(len(test)),
                "spearman": rho,
                "r2_shift": 1 - float(((obs - shifted) ** 2).sum()) / sst if sst > 0 else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["held_out", "n_layers", "spearman", "r2_shift"])


def nulls_and_lomo(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    scopes_: Mapping[str, Sequence[str]],
    *,
    sets: Mapping[str, Sequence[str]] | None = None,
    n_perm: int = 200,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """For every scope and every non-empty predictor set (:data:`DEFAULT_LAW_SETS`): the
    permutation null (:func:`permutation_null`) and, with more than one model, the
    leave-one-model-out scores (:func:`leave_one_model_out`). Returns ``(nulls, lomo)``:
    ``nulls`` one row per (scope, set) with ``given`` (what the null holds fixed),
    ``statistic``, ``null_median``, ``p_value``, ``n_perm`` (``law_null.parquet``);
    ``lomo`` the held-out models' rows with ``scope`` and ``predictor_set``
    (``law_lomo.parquet``)."""
    null_rows, lomo_rows = [], []
    for scope, models in scopes_.items():
        for name, preds in dict(sets or DEFAULT_LAW_SETS).items():
            if not preds:
                continue
            tab = stage2_table(exponents_df, geometry_df, predictors=preds, models=models)
            res = permutation_null(tab, preds, n_perm=n_perm, seed=seed)
            null_rows.append(
                {
                    "scope": scope,
                    "predictor_set": name,
                    "given": "+".join(res["given"]) or "none",
                    "statistic": res["statistic"],
                    "null_median": float(np.median(res["null"])),
                    "p_value": res["p_value"],
                    "n_perm": res["n_perm"],
                }
            )
            if tab["model"].nunique() > 1:
                lomo_rows.append(leave_one_model_out(tab, preds).assign(scope=scope, predictor_set=name))
    lomo = pd.concat(lomo_rows, ignore_index=True) if lomo_rows else pd.DataFrame()
    return pd.DataFrame(null_rows), lomo


def planted_check(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    models: Sequence[str],
    *,
    slope: float = 0.1,
    summary: str = "id_twonn",
    n_perm: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """A known-answer check of the law on measured geometry: the target of ``models`` is
    replaced by ``slope`` per SD of ``summary`` plus each model's own level and noise of
    the size of each layer's Stage 1 sd (``planted``), or by the same values shuffled within
    each model (``none``). One row per case: the closed-form slope (``coef_mean``,
    ``coef_sd``) and the permutation p-value ``p_perm``; the planted case must be found and
    the shuffled one not."""
    rng = np.random.default_rng(seed)
    tab = stage2_table(exponents_df, geometry_df, predictors=(summary,), models=models)
    z = (tab[summary] - tab[summary].mean()) / tab[summary].std()
    level = tab.groupby("model")["y"].transform("mean")
    planted = tab.assign(y=level + slope * z + rng.normal(0, tab["y_sd"]))
    none = planted.copy()
    for _m, idx in none.groupby("model").groups.items():
        none.loc[idx, "y"] = rng.permutation(none.loc[idx, "y"].to_numpy())
    rows = []
    for case, t in ((f"planted {slope:g} per SD", planted), ("none", none)):
        r = closed_form_law(t, (summary,))
        rows.append(
            {
                "case": case,
                "coef_mean": float(r["coef_mean"][0]),
                "coef_sd": float(r["coef_sd"][0]),
                "p_perm": permutation_null(t, (summary,), n_perm=n_perm, seed=seed)["p_value"],
            }
        )
    return pd.DataFrame(rows)
