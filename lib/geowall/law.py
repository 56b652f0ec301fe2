"""Stage 2: the geometric law (exponent ~ geometry), cross-model transfer, floor ordering.

Stage 2 model (errors in variables, both sides)
-----------------------------------------------
For training layers j and predictors p (geometric summaries, standardised with the
*training set's* mean and sd, stored so that a new model is scaled the same way)::

    x_obs[j,p] ~ N(x_true[j,p], se[j,p])          bootstrap SE of the summary
    x_true[j,p] ~ N(0, 1)                          structural prior (standardised scale)
    y_true[j]   = b0 + sum_p b[p] * x_true[j,p] + eps_j,   eps_j ~ N(0, sigma)
    y_obs[j]    ~ N(y_true[j], sd_j)               Stage 1 posterior sd of the exponent

``y`` is the Stage 1 posterior mean of the target (``alpha`` by default; ``floor``
works the same way and defaults to identified floors only), standardised with the
training mean and sd. ``y_true`` is integrated out analytically (``y_obs ~ N(mu,
sqrt(sigma^2 + sd_j^2))``). Given only ``x_obs``, ``x_true`` is Normal with mean
``x_obs / (1 + se^2)`` and variance ``se^2 / (1 + se^2)``; the model samples
``x_true`` non-centred around that conditional, which is exact (``p(x_obs)`` does not
depend on the parameters) and samples well whatever the size of the SEs. Predictors
without SE (relative depth) enter as fixed data.

Priors (standardised scales): ``b0 ~ N(0, 1)``, ``b[p] ~ N(0, 1)`` (one training-SD of
a summary moves the exponent by at most about two training-SDs of the exponent),
``sigma ~ HalfNormal(1)`` (residual spread up to the exponent's whole spread across
layers). Coefficients are reported in target units per training-SD of the summary
(``coef``) and fully standardised (``b``).

Relative depth of a layer is ``layer / max layer of that model`` (max over the rows of
the geometry table for that model).
"""
from __future__ import annotations

import json
from io import StringIO
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from geowall.geometry import SUMMARY_NAMES
from geowall.io import require_columns

from . import scaling as _scaling

__all__ = [
    "SUMMARIES",
    "DEFAULT_LAW_SETS",
    "relative_depth",
    "stage2_table",
    "build_law_model",
    "fit_law",
    "law_coefficients",
    "posterior_predictive_table",
    "compare_laws",
    "fixed_law",
    "transfer",
    "transfer_scores",
    "run_transfer",
    "floor_ordering",
    "simulate_geometry",
]

SUMMARIES = SUMMARY_NAMES  # defined once, in geowall.geometry
DEFAULT_LAW_SETS: dict[str, tuple[str, ...]] = {
    "id": ("id_twonn",),
    "curvature": ("curvature",),
    "id+curvature": ("id_twonn", "curvature"),
    "all4": SUMMARIES,
    "depth": ("depth",),
}
GEOMETRY_COLUMNS = ("model", "layer", "summary", "estimate", "se")


# --------------------------------------------------------------------------- tables


def _validate_geometry(geometry_df: pd.DataFrame) -> pd.DataFrame:
    g = require_columns(geometry_df, "geometry_df", GEOMETRY_COLUMNS)
    g["model"] = g["model"].astype(str)
    g["layer"] = g["layer"].astype(int)
    dup = g.duplicated(["model", "layer", "summary"])
    if dup.any():
        raise ValueError(f"geometry_df: duplicated (model, layer, summary) rows, e.g. "
                         f"{g.loc[dup, ['model', 'layer', 'summary']].head(3).to_dict('records')}")
    return g


def relative_depth(df: pd.DataFrame) -> pd.Series:
    """``layer / max layer of that model`` for a frame with ``model`` and ``layer``."""
    mx = df.groupby("model")["layer"].transform("max").astype(float)
    return (df["layer"].astype(float) / mx.where(mx > 0, 1.0)).rename("depth")


def _geometry_wide(geometry_df: pd.DataFrame) -> pd.DataFrame:
    g = _validate_geometry(geometry_df)
    est = g.pivot(index=["model", "layer"], columns="summary", values="estimate")
    se = g.pivot(index=["model", "layer"], columns="summary", values="se").add_suffix("_se")
    wide = est.join(se).reset_index()
    wide.columns.name = None
    depth_src = g[["model", "layer"]].drop_duplicates()
    depth_src = depth_src.assign(depth=relative_depth(depth_src))
    wide = wide.merge(depth_src, on=["model", "layer"], how="left")
    wide["depth_se"] = 0.0
    return wide


def stage2_table(exponents_df: pd.DataFrame, geometry_df: pd.DataFrame, *,
                 predictors: Sequence[str] = SUMMARIES, target: str = "alpha",
                 models: Iterable[str] | None = None, identified_only: bool | None = None) -> pd.DataFrame:
    """One row per (model, layer) present in both tables: ``model, layer, depth, y,
    y_sd`` (target posterior mean and sd) and, per predictor, the estimate and ``<p>_se``.

    ``identified_only`` (default: True for ``target="floor"``) keeps only layers with
    ``floor_identified``. Rows with a missing target or predictor are dropped."""
    ex = require_columns(exponents_df, "exponents_df", ["model", "layer", f"{target}_mean", f"{target}_sd"],
                         what=f"target={target!r} needs")
    wide = _geometry_wide(geometry_df)
    for p in predictors:
        if p not in wide.columns:
            raise ValueError(f"predictors: {p!r} is not a summary in geometry_df "
                             f"(has {sorted(set(geometry_df['summary']))} and 'depth')")
    ex["model"] = ex["model"].astype(str)
    ex["layer"] = ex["layer"].astype(int)
    if identified_only is None:
        identified_only = target == "floor"
    if identified_only:
        if "floor_identified" not in ex.columns:
            raise ValueError("exponents_df: identified_only needs a 'floor_identified' column")
        ex = ex[ex["floor_identified"].astype(bool)]
    ex = ex[["model", "layer", f"{target}_mean", f"{target}_sd"]].rename(
        columns={f"{target}_mean": "y", f"{target}_sd": "y_sd"})
    cols = ["model", "layer", "depth"] + [c for p in predictors if p != "depth" for c in (p, f"{p}_se")]
    tab = ex.merge(wide[list(dict.fromkeys(cols))], on=["model", "layer"], how="inner")
    if models is not None:
        models = [str(m) for m in models]
        tab = tab[tab["model"].isin(models)]
    need = ["y", "y_sd"] + [p for p in predictors]
    tab = tab.dropna(subset=need).sort_values(["model", "layer"]).reset_index(drop=True)
    for p in predictors:
        if p != "depth":
            tab[f"{p}_se"] = tab[f"{p}_se"].fillna(0.0).clip(lower=0.0)
    return tab


# --------------------------------------------------------------------------- model


def _scaling_from(tab: pd.DataFrame, predictors: Sequence[str]) -> dict[str, Any]:
    sc: dict[str, Any] = {"y_mean": float(tab["y"].mean()), "y_sd": float(tab["y"].std(ddof=1)), "x": {}}
    if not np.isfinite(sc["y_sd"]) or sc["y_sd"] <= 0:
        raise ValueError("target: needs at least two training layers with different values")
    for p in predictors:
        m, s = float(tab[p].mean()), float(tab[p].std(ddof=1))
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"predictors: {p!r} is constant over the training layers; cannot standardise")
        sc["x"][p] = {"mean": m, "sd": s}
    return sc


def _design(tab: pd.DataFrame, predictors: Sequence[str], sc: Mapping[str, Any]):
    n, P = len(tab), len(predictors)
    X = np.zeros((n, P))
    SE = np.zeros((n, P))
    for i, p in enumerate(predictors):
        X[:, i] = (tab[p].to_numpy(float) - sc["x"][p]["mean"]) / sc["x"][p]["sd"]
        if p != "depth":
            SE[:, i] = tab[f"{p}_se"].to_numpy(float) / sc["x"][p]["sd"]
    return X, SE


def build_law_model(tab: pd.DataFrame, predictors: Sequence[str], sc: Mapping[str, Any]):
    """PyMC model of the Stage 2 law on a :func:`stage2_table` (see module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    predictors = list(predictors)
    X, SE = _design(tab, predictors, sc)
    y = (tab["y"].to_numpy(float) - sc["y_mean"]) / sc["y_sd"]
    ysd = tab["y_sd"].to_numpy(float) / sc["y_sd"]
    layer_ids = [f"{m}/L{l}" for m, l in zip(tab["model"], tab["layer"])]
    coords = {"layer_id": layer_ids, "predictor": predictors}
    with pm.Model(coords=coords) as model:
        b0 = pm.Normal("b0", 0.0, 1.0)
        sigma = pm.HalfNormal("sigma", 1.0)
        mu = b0
        if predictors:
            b = pm.Normal("b", 0.0, 1.0, dims="predictor")
            noisy = SE.max(axis=0) > 0
            if noisy.any():
                v = SE**2 / (1.0 + SE**2)
                m = X / (1.0 + SE**2)
                z = pm.Normal("z_x", 0.0, 1.0, dims=("layer_id", "predictor"))
                x_true = pm.Deterministic("x_true", pt.as_tensor(m) + pt.as_tensor(np.sqrt(v)) * z,
                                          dims=("layer_id", "predictor"))
                # predictors without SE enter exactly (m = X, v = 0 there)
            else:
                x_true = pt.as_tensor(X)
            mu = b0 + pt.dot(x_true, b)
            pm.Deterministic("coef", b * sc["y_sd"], dims="predictor")
        pm.Deterministic("intercept", sc["y_mean"] + b0 * sc["y_sd"])
        pm.Deterministic("sigma_target", sigma * sc["y_sd"])
        pm.Normal("y", mu=mu, sigma=pt.sqrt(sigma**2 + ysd**2), observed=y, dims="layer_id")
    return model


def _set_name(predictors: Sequence[str]) -> str:
    if not predictors:
        return "mean"
    return "+".join(predictors)


def fit_law(exponents_df: pd.DataFrame, geometry_df: pd.DataFrame, *,
            predictors: Sequence[str] = SUMMARIES, target: str = "alpha", draws: int = 1000,
            chains: int = 2, tune: int = 1000, seed: int = 0, sampler: str = "auto",
            models: Iterable[str] | None = None, identified_only: bool | None = None,
            layers: pd.DataFrame | None = None, name: str | None = None, target_accept: float = 0.9,
            progressbar: bool = True, posterior_predictive: bool = True):
    """Fit the Stage 2 law ``target ~ standardised geometry`` with errors in variables.

    ``predictors``: summary names from the geometry table and/or ``"depth"`` (relative
    layer depth, no measurement error: the depth-only baseline is
    ``predictors=("depth",)``); ``()`` fits the intercept-only model (the "A's mean
    exponent" baseline with a predictive spread). ``models`` restricts the training
    layers (e.g. model A only for transfer); ``layers`` (columns model, layer) restricts
    them further (used by :func:`compare_laws` so every candidate sees the same layers).

    Returns InferenceData with ``posterior`` (``b0, b, coef, intercept, sigma,
    sigma_target, x_true``), ``log_likelihood`` (``y``), ``posterior_predictive``
    (``y``, standardised), ``observed_data``; ``idata.attrs``: ``geowall_stage`` =
    "stage2", ``geowall_target``, ``geowall_predictors`` (JSON list),
    ``geowall_predictor_set`` (``name`` or the predictors joined by "+", "mean" for
    none), ``geowall_scaling`` (JSON: training means/sds of target and predictors),
    ``geowall_train_models`` (JSON), ``geowall_table`` (the training table, JSON).
    """
    import pymc as pm

    predictors = tuple(predictors)
    tab = stage2_table(exponents_df, geometry_df, predictors=predictors, target=target, models=models,
                       identified_only=identified_only)
    if layers is not None:
        keep = set(zip(layers["model"].astype(str), layers["layer"].astype(int)))
        tab = tab[[(m, l) in keep for m, l in zip(tab["model"], tab["layer"])]].reset_index(drop=True)
    if len(tab) < max(3, len(predictors) + 2):
        raise ValueError(f"fit_law: {len(tab)} training layers for {len(predictors)} predictor(s); "
                         f"need at least {max(3, len(predictors) + 2)} (target={target!r}, models={models})")
    sc = _scaling_from(tab, predictors)
    model = build_law_model(tab, predictors, sc)
    idata = _scaling.sample_model(model, draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler,
                                  target_accept=target_accept, progressbar=progressbar, loglik_vars=["y"])
    if posterior_predictive:
        pp = pm.sample_posterior_predictive(idata, model=model, var_names=["y"], random_seed=seed + 2,
                                            progressbar=False)
        idata.extend(pp)
    idata.attrs.update({
        "geowall_stage": "stage2",
        "geowall_target": target,
        "geowall_predictors": json.dumps(list(predictors)),
        "geowall_predictor_set": name or _set_name(predictors),
        "geowall_scaling": json.dumps(sc),
        "geowall_train_models": json.dumps(sorted(tab["model"].unique().tolist())),
        "geowall_table": tab.to_json(orient="records"),
        "geowall_sampler": idata.posterior.attrs["sampler"],
        "geowall_seed": int(seed),
    })
    return idata


def _law_meta(idata) -> tuple[list[str], dict[str, Any], str, str]:
    try:
        preds = json.loads(idata.attrs["geowall_predictors"])
        sc = json.loads(idata.attrs["geowall_scaling"])
    except KeyError as e:
        raise ValueError(f"law_idata: missing attribute {e}; expected an InferenceData from fit_law") from None
    return preds, sc, idata.attrs.get("geowall_predictor_set", _set_name(preds)), idata.attrs.get("geowall_target", "alpha")


def _train_table(idata) -> pd.DataFrame:
    return pd.read_json(StringIO(idata.attrs["geowall_table"]), orient="records")


def law_coefficients(idata, *, hdi_prob: float = 0.94) -> pd.DataFrame:
    """One row per predictor (plus intercept and residual sd): posterior mean, sd, HDI
    of the coefficient in target units per training-SD (``coef``) and standardised
    (``b``), and ``p_gt0`` = posterior probability that it is positive."""
    preds, sc, set_name, target = _law_meta(idata)
    post = idata.posterior
    rows = []

    def summ(x):
        x = np.asarray(x).ravel()
        lo, hi = _scaling._hdi(x, hdi_prob)
        return float(x.mean()), float(x.std(ddof=1)), lo, hi

    for i, p in enumerate(preds):
        c = post["coef"].isel(predictor=i).values
        b = post["b"].isel(predictor=i).values
        cm, cs, clo, chi = summ(c)
        bm, bs, blo, bhi = summ(b)
        rows.append({"term": p, "coef_mean": cm, "coef_sd": cs, "coef_hdi_3": clo, "coef_hdi_97": chi,
                     "b_mean": bm, "b_sd": bs, "b_hdi_3": blo, "b_hdi_97": bhi, "p_gt0": float((c > 0).mean())})
    for term, var in (("intercept", "intercept"), ("sigma", "sigma_target")):
        m, s, lo, hi = summ(post[var].values)
        rows.append({"term": term, "coef_mean": m, "coef_sd": s, "coef_hdi_3": lo, "coef_hdi_97": hi,
                     "b_mean": np.nan, "b_sd": np.nan, "b_hdi_3": np.nan, "b_hdi_97": np.nan,
                     "p_gt0": float((post[var].values > 0).mean())})
    out = pd.DataFrame(rows)
    out.insert(0, "predictor_set", set_name)
    out.insert(1, "target", target)
    return out


def posterior_predictive_table(idata, *, interval: float = 0.9) -> pd.DataFrame:
    """Per training layer: observed target, posterior predictive mean and equal-tailed
    ``interval`` (target units, includes the Stage 1 measurement sd), whether covered,
    and the partial residual of each predictor (observed minus the fitted contribution
    of all *other* predictors at their posterior means) for partial-residual plots."""
    preds, sc, set_name, target = _law_meta(idata)
    tab = _train_table(idata)
    if "posterior_predictive" not in idata.groups():
        raise ValueError("idata: no posterior_predictive group (fit_law(..., posterior_predictive=True))")
    pp = idata.posterior_predictive["y"].stack(sample=("chain", "draw")).transpose("layer_id", "sample").to_numpy()
    pp = sc["y_mean"] + sc["y_sd"] * pp
    q = (1 - interval) / 2
    out = tab[["model", "layer", "depth", "y", "y_sd"]].rename(columns={"y": "observed", "y_sd": "observed_sd"})
    out["pred_mean"] = pp.mean(1)
    out["pred_lo"] = np.quantile(pp, q, axis=1)
    out["pred_hi"] = np.quantile(pp, 1 - q, axis=1)
    out["covered"] = (out["observed"] >= out["pred_lo"]) & (out["observed"] <= out["pred_hi"])
    if preds:
        post = idata.posterior
        X, _ = _design(tab, preds, sc)
        if "x_true" in post:
            X = post["x_true"].mean(("chain", "draw")).to_numpy()
        coef = post["coef"].mean(("chain", "draw")).to_numpy()
        intercept = float(post["intercept"].mean())
        fitted = intercept + X @ coef
        for i, p in enumerate(preds):
            out[f"partial_resid_{p}"] = out["observed"] - (fitted - X[:, i] * coef[i])
            out[f"x_std_{p}"] = X[:, i]
    out.insert(0, "predictor_set", set_name)
    return out


def compare_laws(exponents_df: pd.DataFrame, geometry_df: pd.DataFrame, *,
                 sets: Mapping[str, Sequence[str]] | None = None, target: str = "alpha",
                 models: Iterable[str] | None = None, draws: int = 1000, chains: int = 2, tune: int = 1000,
                 seed: int = 0, sampler: str = "auto", progressbar: bool = False, check: bool = True,
                 check_kwargs: Mapping[str, Any] | None = None, target_accept: float = 0.9):
    """Fit one law per predictor set on the *same* layers and compare them by PSIS-LOO.

    ``sets`` defaults to :data:`DEFAULT_LAW_SETS` (ID only, curvature only, ID +
    curvature, all four, depth only). Layers missing any predictor of any set are
    dropped from all fits so the LOO scores are comparable. With ``check`` every fit
    goes through :func:`geowall.scaling.check_fit` (raises on failure).

    Returns ``(comparison, fits)``: ``az.compare`` output (index = set name) and the
    dict of InferenceData.
    """
    import arviz as az
    import warnings

    sets = dict(sets or DEFAULT_LAW_SETS)
    all_preds = tuple(dict.fromkeys(p for s in sets.values() for p in s))
    common = stage2_table(exponents_df, geometry_df, predictors=all_preds, target=target, models=models)
    fits = {}
    for i, (name, preds) in enumerate(sets.items()):
        fits[name] = fit_law(exponents_df, geometry_df, predictors=preds, target=target, models=models,
                             layers=common[["model", "layer"]], draws=draws, chains=chains, tune=tune,
                             seed=seed + 17 * i, sampler=sampler, name=name, progressbar=progressbar,
                             target_accept=target_accept)
        if check:
            _scaling.check_fit(fits[name], label=f"stage 2 law {name!r}", **dict(check_kwargs or {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmp = az.compare(fits, ic="loo", var_name="y")
    return cmp, fits


# --------------------------------------------------------------------------- transfer


def fixed_law(*, predictors: Sequence[str], b0: float, b: Sequence[float], sigma: float,
              scaling: Mapping[str, Any], target: str = "alpha", name: str | None = None,
              n_draws: int = 1000):
    """An InferenceData shaped like :func:`fit_law`'s output with fixed coefficients
    (standardised scale): for known-answer tests and what-if predictions."""
    import arviz as az

    predictors = list(predictors)
    ones = np.ones((1, n_draws))
    post = {"b0": b0 * ones, "sigma": sigma * ones, "intercept": (scaling["y_mean"] + b0 * scaling["y_sd"]) * ones,
            "sigma_target": sigma * scaling["y_sd"] * ones}
    if predictors:
        bb = np.broadcast_to(np.asarray(b, float), (1, n_draws, len(predictors))).copy()
        post["b"] = bb
        post["coef"] = bb * scaling["y_sd"]
    idata = az.from_dict(posterior=post, coords={"predictor": predictors},
                         dims={"b": ["predictor"], "coef": ["predictor"]})
    idata.attrs.update({
        "geowall_stage": "stage2", "geowall_target": target, "geowall_predictors": json.dumps(predictors),
        "geowall_predictor_set": name or _set_name(predictors), "geowall_scaling": json.dumps(dict(scaling)),
        "geowall_train_models": json.dumps([]), "geowall_table": "[]",
    })
    return idata


def transfer(law_idata, geometry_B: pd.DataFrame, exponents_B: pd.DataFrame | None = None, *,
             models: Iterable[str] | None = None, interval: float = 0.9, include_stage1_sd: bool = True,
             max_draws: int = 4000, seed: int = 0) -> pd.DataFrame:
    """Predict model B's per-layer target from B's geometry alone with a fitted law.

    B's summaries are standardised with the *training* means/sds stored in the law. B's
    true summaries get a flat prior around B's observations (``x_true_B ~ N(x_obs_B,
    se_B)`` per draw): B's layers are not assumed to come from A's population. The
    predictive draw is ``b0 + x_true_B . b + N(0, sigma)``, plus ``N(0, sd_B)`` with B's
    Stage 1 posterior sd when ``exponents_B`` is given and ``include_stage1_sd`` (we
    predict B's *measured* exponent). Intervals are equal-tailed.

    Returns one row per layer of B: ``train_model, test_model, predictor_set, model,
    layer, depth, pred_mean, pred_sd, pred_lo, pred_hi, observed, observed_sd, covered``
    (observed columns NaN without ``exponents_B``).
    """
    preds, sc, set_name, target = _law_meta(law_idata)
    wide = _geometry_wide(geometry_B)
    if models is not None:
        wide = wide[wide["model"].isin([str(m) for m in models])]
    for p in preds:
        if p not in wide.columns:
            raise ValueError(f"geometry_B: lacks summary {p!r} needed by the law ({set_name})")
    wide = wide.dropna(subset=list(preds)).sort_values(["model", "layer"]).reset_index(drop=True)
    if exponents_B is not None:
        ex = exponents_B.assign(model=exponents_B["model"].astype(str), layer=exponents_B["layer"].astype(int))
        ex = ex[["model", "layer", f"{target}_mean", f"{target}_sd"]].rename(
            columns={f"{target}_mean": "observed", f"{target}_sd": "observed_sd"})
        wide = wide.merge(ex, on=["model", "layer"], how="inner")
    else:
        wide["observed"] = np.nan
        wide["observed_sd"] = np.nan
    if len(wide) == 0:
        raise ValueError("transfer: no layers of model B with both geometry and (if given) exponents")

    rng = np.random.default_rng(seed)
    post = law_idata.posterior.stack(sample=("chain", "draw"))
    S = post.sizes["sample"]
    take = rng.choice(S, size=min(S, max_draws), replace=False)
    b0 = post["b0"].values[take]
    sigma = post["sigma"].values[take]
    mu = np.broadcast_to(b0[None, :], (len(wide), len(take))).copy()
    if preds:
        b = post["b"].transpose("predictor", "sample").values[:, take]  # (P, S)
        X, SE = _design(wide, preds, sc)  # (n, P)
        xt = X[:, :, None] + SE[:, :, None] * rng.standard_normal((len(wide), len(preds), len(take)))
        mu = mu + np.einsum("nps,ps->ns", xt, b)
    pred = mu + sigma[None, :] * rng.standard_normal(mu.shape)
    if exponents_B is not None and include_stage1_sd:
        pred = pred + (wide["observed_sd"].to_numpy(float)[:, None] / sc["y_sd"]) * rng.standard_normal(mu.shape)
    pred = sc["y_mean"] + sc["y_sd"] * pred
    q = (1 - interval) / 2
    out = wide[["model", "layer", "depth"]].copy()
    # the predictive mean is E[mu]; averaging mu (not the noisy draws) avoids Monte Carlo
    # jitter, so an intercept-only law gives exactly the same prediction for every layer
    out["pred_mean"] = sc["y_mean"] + sc["y_sd"] * mu.mean(1)
    out["pred_sd"] = pred.std(1, ddof=1)
    out["pred_lo"] = np.quantile(pred, q, axis=1)
    out["pred_hi"] = np.quantile(pred, 1 - q, axis=1)
    out["observed"] = wide["observed"].to_numpy(float)
    out["observed_sd"] = wide["observed_sd"].to_numpy(float)
    out["covered"] = (out["observed"] >= out["pred_lo"]) & (out["observed"] <= out["pred_hi"])
    out.insert(0, "train_model", "+".join(json.loads(law_idata.attrs.get("geowall_train_models", "[]"))))
    out.insert(1, "test_model", "+".join(sorted(out["model"].unique())))
    out.insert(2, "predictor_set", set_name)
    out.attrs["interval"] = interval
    return out


def transfer_scores(pred_df: pd.DataFrame) -> dict[str, Any]:
    """Scores of one transfer prediction table (one law, one test model):

    * ``r2``: predictive R^2 = 1 - sum (obs - pred_mean)^2 / sum (obs - mean(obs))^2,
      with mean(obs) B's own mean (so a constant prediction scores <= 0);
    * ``spearman``: rank correlation of pred_mean with obs (NaN for a constant prediction);
    * ``coverage90``: fraction of observed values inside the predictive interval;
    * ``n_layers``.
    """
    from scipy.stats import spearmanr

    d = pred_df.dropna(subset=["observed"])
    if len(d) == 0:
        raise ValueError("pred_df: no observed values to score")
    obs = d["observed"].to_numpy(float)
    pm_ = d["pred_mean"].to_numpy(float)
    sst = float(np.sum((obs - obs.mean()) ** 2))
    r2 = 1.0 - float(np.sum((obs - pm_) ** 2)) / sst if sst > 0 else np.nan
    if np.ptp(pm_) <= 1e-12 * max(1.0, np.abs(pm_).max()) or np.ptp(obs) == 0 or len(d) < 3:
        rho = np.nan
    else:
        rho = float(spearmanr(obs, pm_).statistic)
    row = {
        "train_model": d["train_model"].iloc[0] if "train_model" in d else None,
        "test_model": d["test_model"].iloc[0] if "test_model" in d else None,
        "predictor_set": d["predictor_set"].iloc[0] if "predictor_set" in d else None,
        "r2": r2, "spearman": rho, "coverage90": float(d["covered"].mean()), "n_layers": int(len(d)),
    }
    return row


def run_transfer(exponents_df: pd.DataFrame, geometry_df: pd.DataFrame, pairs: Iterable[tuple[str, str]], *,
                 predictor_sets: Mapping[str, Sequence[str]] | None = None, target: str = "alpha",
                 draws: int = 1000, chains: int = 2, tune: int = 1000, seed: int = 0, sampler: str = "auto",
                 check: bool = True, check_kwargs: Mapping[str, Any] | None = None, progressbar: bool = False,
                 target_accept: float = 0.9):
    """Fit each law on model A and predict model B, for every ``(A, B)`` in ``pairs``.

    ``predictor_sets`` defaults to ``{"law": all four summaries, "depth": ("depth",),
    "mean": ()}`` (the law and the two null baselines: depth-only and A's mean exponent
    with A's spread). Fits on the same A are shared across pairs. With ``check`` every
    fit goes through :func:`geowall.scaling.check_fit`.

    Returns ``(scores, predictions, fits)``: the ``transfer.parquet`` rows (train_model,
    test_model, predictor_set, r2, spearman, coverage90, n_layers), the per-layer
    predictions and the dict ``{(A, set): idata}``.
    """
    sets = dict(predictor_sets or {"law": SUMMARIES, "depth": ("depth",), "mean": ()})
    fits: dict[tuple[str, str], Any] = {}
    scores, preds = [], []
    for a, b in pairs:
        a, b = str(a), str(b)
        for i, (name, ps) in enumerate(sets.items()):
            key = (a, name)
            if key not in fits:
                fits[key] = fit_law(exponents_df, geometry_df, predictors=ps, target=target, models=[a],
                                    draws=draws, chains=chains, tune=tune, seed=seed + 31 * i, sampler=sampler,
                                    name=name, progressbar=progressbar, target_accept=target_accept)
                if check:
                    _scaling.check_fit(fits[key], label=f"transfer law {name!r} on {a}", **dict(check_kwargs or {}))
            p = transfer(fits[key], geometry_df, exponents_df, models=[b], seed=seed)
            preds.append(p)
            scores.append(transfer_scores(p))
    return pd.DataFrame(scores), pd.concat(preds, ignore_index=True), fits


# --------------------------------------------------------------------------- floors


def floor_ordering(stage1_idata, geometry_df: pd.DataFrame, showcase_layers, *,
                   summaries: Sequence[str] = ("curvature", "id_twonn"), propagate_se: bool = True,
                   max_draws: int = 4000, seed: int = 0, hdi_prob: float = 0.94) -> pd.DataFrame:
    """Are the showcase layers' floors ordered as their geometry? (``floors.parquet``)

    ``showcase_layers``: a DataFrame with ``model, layer`` or an iterable of
    ``(model, layer)``; they are pooled into one set (floors are on the common fvu
    scale). For every posterior draw of the Stage 1 floors (variable ``floor``: the width
    asymptote at l0_ref) we compute the Spearman rank correlation across the showcase
    layers between floor and each summary; with ``propagate_se`` each summary is also
    redrawn per draw from ``N(estimate, se)``. With n layers the correlation takes few
    distinct values (n = 2 gives only +-1), so read ``p_gt0`` with n in mind.

    Returns rows of two kinds (``row_type``):
    ``"floor"``: ``model, layer, floor_mean, floor_sd, floor_hdi_3, floor_hdi_97`` and the
    summaries' estimates/SEs; ``"spearman"``: ``summary, rho_mean, rho_sd, rho_hdi_3,
    rho_hdi_97, p_gt0`` (posterior probability that the correlation is > 0),
    ``n_layers``.
    """
    from scipy.stats import rankdata

    layers = _scaling.stored_layers(stage1_idata)
    if "floor" not in stage1_idata.posterior:
        raise ValueError("stage1_idata: posterior has no 'floor' variable; expected a fit_stage1 result")
    if isinstance(showcase_layers, pd.DataFrame):
        wanted = list(zip(showcase_layers["model"].astype(str), showcase_layers["layer"].astype(int)))
    else:
        wanted = [(str(m), int(l)) for m, l in showcase_layers]
    lid = {(r.model, int(r.layer)): i for i, r in enumerate(layers.itertuples())}
    missing = [w for w in wanted if w not in lid]
    if missing:
        raise ValueError(f"showcase_layers: {missing} not in the Stage 1 fit")
    if len(wanted) < 2:
        raise ValueError("showcase_layers: need at least two layers to rank")
    wide = _geometry_wide(geometry_df).set_index(["model", "layer"])
    for s in summaries:
        if s not in wide.columns:
            raise ValueError(f"summaries: {s!r} not in geometry_df")
    gmiss = [w for w in wanted if w not in wide.index]
    if gmiss:
        raise ValueError(f"geometry_df: no geometry for showcase layer(s) {gmiss}")

    rng = np.random.default_rng(seed)
    fl = stage1_idata.posterior["floor"].stack(sample=("chain", "draw")).transpose("layer_id", "sample").to_numpy()
    S = fl.shape[1]
    take = rng.choice(S, size=min(S, max_draws), replace=False)
    F = fl[[lid[w] for w in wanted]][:, take]  # (n, S)
    n = len(wanted)
    rows = []
    for i, (m, l) in enumerate(wanted):
        lo, hi = _scaling._hdi(F[i], hdi_prob)
        row = {"row_type": "floor", "model": m, "layer": l, "floor_mean": float(F[i].mean()),
               "floor_sd": float(F[i].std(ddof=1)), "floor_hdi_3": lo, "floor_hdi_97": hi}
        for s in summaries:
            row[s] = float(wide.loc[(m, l), s])
            row[f"{s}_se"] = float(wide.loc[(m, l), f"{s}_se"])
        rows.append(row)

    def spearman_rows(a, b):  # rank-correlate along axis 0, per column
        ra = rankdata(a, axis=0)
        rb = rankdata(b, axis=0)
        ra = ra - ra.mean(0)
        rb = rb - rb.mean(0)
        den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)

    for s in summaries:
        est = np.array([wide.loc[w, s] for w in wanted], float)
        se = np.array([wide.loc[w, f"{s}_se"] for w in wanted], float)
        se = np.nan_to_num(se, nan=0.0)
        G = est[:, None] + (se[:, None] * rng.standard_normal((n, len(take))) if propagate_se else 0.0)
        G = np.broadcast_to(G, F.shape)
        rho = spearman_rows(F, G)
        rho = rho[np.isfinite(rho)]
        lo, hi = _scaling._hdi(rho, hdi_prob) if len(rho) else (np.nan, np.nan)
        rows.append({"row_type": "spearman", "summary": s, "rho_mean": float(rho.mean()) if len(rho) else np.nan,
                     "rho_sd": float(rho.std(ddof=1)) if len(rho) > 1 else np.nan, "rho_hdi_3": lo, "rho_hdi_97": hi,
                     "p_gt0": float((rho > 0).mean()) if len(rho) else np.nan, "n_layers": n})
    out = pd.DataFrame(rows)
    cols = ["row_type", "model", "layer", "summary", "floor_mean", "floor_sd", "floor_hdi_3", "floor_hdi_97",
            "rho_mean", "rho_sd", "rho_hdi_3", "rho_hdi_97", "p_gt0", "n_layers"]
    for c in cols:
        if c not in out.columns:
            out[c] = np.nan
    rest = [c for c in out.columns if c not in cols]
    out = out[cols + rest]
    out["layer"] = out["layer"].astype("Int64")
    out["n_layers"] = out["n_layers"].astype("Int64")
    return out


# --------------------------------------------------------------------------- simulation


def simulate_geometry(exponents_or_layers: pd.DataFrame, *, coefs: Mapping[str, float] | None = None,
                      intercept: float = 0.35, resid_sd: float = 0.02, se_frac: float = 0.05,
                      alpha_sd: float = 0.02, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a geometry table and exponents from a known linear law, for tests.

    For each (model, layer) of the input, true summaries are drawn (``id_twonn`` ~
    U(4, 20), ``pr`` = 2*id + noise, ``curvature`` ~ U(0.1, 1), ``local_residual`` ~
    U(0.05, 0.4)); ``alpha = intercept + sum_p coefs[p] * z_p + N(0, resid_sd)`` with
    ``z_p`` the summary standardised over the input layers; observed summaries get
    noise with SE = ``se_frac`` x |value|; the observed alpha gets ``N(0, alpha_sd)``.
    Returns ``(geometry_df, exponents_df)``; ``exponents_df.attrs['truth']`` holds the
    true alpha and the coefficients."""
    rng = np.random.default_rng(seed)
    base = exponents_or_layers[["model", "layer"]].drop_duplicates().reset_index(drop=True)
    n = len(base)
    coefs = dict(coefs or {"id_twonn": 0.06, "curvature": 0.04})
    true = pd.DataFrame({
        "id_twonn": rng.uniform(4, 20, n),
        "curvature": rng.uniform(0.1, 1.0, n),
        "local_residual": rng.uniform(0.05, 0.4, n),
    })
    true["pr"] = 2.0 * true["id_twonn"] + rng.normal(0, 3.0, n)
    z = (true - true.mean()) / true.std(ddof=1)
    alpha_true = intercept + sum(c * z[p] for p, c in coefs.items()) + rng.normal(0, resid_sd, n)
    geo_rows = []
    for s in SUMMARIES:
        se = se_frac * np.abs(true[s].to_numpy())
        est = true[s].to_numpy() + se * rng.standard_normal(n)
        for i in range(n):
            geo_rows.append({"model": base["model"][i], "layer": int(base["layer"][i]), "summary": s,
                             "estimate": float(est[i]), "se": float(se[i]), "lo": float(est[i] - 2 * se[i]),
                             "hi": float(est[i] + 2 * se[i]), "n": 2000, "k": 10})
    ex = base.copy()
    ex["alpha_mean"] = alpha_true + rng.normal(0, alpha_sd, n)
    ex["alpha_sd"] = alpha_sd
    ex.attrs["truth"] = {"alpha": alpha_true.tolist(), "coefs": coefs, "intercept": intercept,
                         "true_summaries": true.to_dict("list")}
    return pd.DataFrame(geo_rows), ex
