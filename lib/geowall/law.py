"""Stage 2: the geometric law, log alpha ~ geometry, within models.

Stage 2 model (errors in variables, both sides)
-----------------------------------------------
For training layers j of models m(j) and predictors p (geometric summaries,
standardised with the *training set's* mean and sd, stored so that a new model is
scaled the same way)::

    x_obs[j,p] ~ N(x_true[j,p], se[j,p])          bootstrap SE of the summary
    x_true[j,p] ~ N(0, 1)                          structural prior (standardised scale)
    y_true[j]   = b0[m(j)] + sum_p b[p] * x_true[j,p] + eps_j,   eps_j ~ N(0, sigma)
    y_obs[j]    ~ N(y_true[j], sd_j)               Stage 1 posterior sd of the target

The target ``y`` is the Stage 1 posterior mean of ``log alpha`` by default (the scale
Stage 1 pools exponents on; ``floor`` works the same way and defaults to identified
floors only). **Model effects**: whenever the training layers come from more than one
model, every model has its own intercept ``b0[m]`` (``model_effects=None`` decides
this), so the slopes ``b`` are the *within-model* relation between geometry and
exponent: models that differ in both (a between-model difference) do not pass for a
law. ``y_true`` is integrated out analytically; given only ``x_obs``, ``x_true`` is
Normal with mean ``x_obs / (1 + se^2)`` and variance ``se^2 / (1 + se^2)``, sampled
non-centred around that conditional. Predictors without SE (relative depth) enter as
fixed data.

Priors (standardised scales): ``b0[m] ~ N(0, 1)``, ``b[p] ~ N(0, 1)``, ``sigma ~
HalfNormal(1)``.

Baselines and nulls. :func:`compare_laws` fits every predictor set on the same layers
with two baselines: ``"models"`` (per-model intercepts only) and ``"depth"`` (relative
depth, :func:`geowall.layers.relative_depth`, read from the geometry table), and
reports ELPD differences against both with standard errors and the Pareto k of every
fit. The permutation nulls and leave-one-model-out, which refit the same law in closed
form thousands of times, are :mod:`geowall.nulls`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.geometry import SUMMARY_NAMES
from geowall.io import require_columns

__all__ = [
    "SUMMARIES",
    "DEFAULT_LAW_SETS",
    "GEOMETRY_SETS",
    "DEPTH_SETS",
    "BASELINES",
    "model_kind",
    "model_kinds",
    "stage2_table",
    "build_law_model",
    "fit_law",
    "law_coefficients",
    "posterior_predictive_table",
    "compare_laws",
    "fixed_law",
    "train_table",
    "SCOPE_MIN_LAYERS",
    "min_training_layers",
    "scopes",
    "geometry_wide",
    "standardisation",
    "design_matrix",
    "law_meta",
    "use_model_effects",
]

SUMMARIES = SUMMARY_NAMES  # defined once, in geowall.geometry
BASELINES = ("models", "depth")
GEOMETRY_SETS: dict[str, tuple[str, ...]] = {
    "id": ("id_twonn",),
    "curvature": ("curvature",),
    "id+curvature": ("id_twonn", "curvature"),
    "all4": SUMMARIES,
}
# Geometry beyond depth: each geometric set with relative depth beside it. The geometry verdict
# compares these with the depth baseline (geowall.verdicts), so depth cannot pass for geometry.
DEPTH_SETS: dict[str, tuple[str, ...]] = {f"depth+{k}": ("depth", *v) for k, v in GEOMETRY_SETS.items()}
DEFAULT_LAW_SETS: dict[str, tuple[str, ...]] = {
    "models": (),
    "depth": ("depth",),
    **GEOMETRY_SETS,
    **DEPTH_SETS,
}
MODEL_KINDS = ("pretrained", "random", "zoo")


def model_kind(source: str) -> str:
    """What a profile's model is, from its ``source``: ``"zoo"`` (the synthetic manifold zoo,
    a known-answer check), ``"random"`` (a random-init twin, a geometry contrast) or
    ``"pretrained"`` (a real trained network: the claims are about these)."""
    if source == "synthetic":
        return "zoo"
    return "random" if str(source).endswith("-random") else "pretrained"


def model_kinds(models) -> dict[str, str]:
    """``{name: model_kind(source)}`` for a profile's models (``cfg.models``)."""
    return {m.name: model_kind(m.source) for m in models}


GEOMETRY_COLUMNS = ("model", "layer", "summary", "estimate", "se")


# --------------------------------------------------------------------------- tables


def _validate_geometry(geometry_df: pd.DataFrame) -> pd.DataFrame:
    g = require_columns(geometry_df, "geometry_df", GEOMETRY_COLUMNS)
    g["model"] = g["model"].astype(str)
    g["layer"] = g["layer"].astype(int)
    dup = g.duplicated(["model", "layer", "summary"])
    if dup.any():
        raise ValueError(
            f"geometry_df: duplicated (model, layer, summary) rows, e.g. "
            f"{g.loc[dup, ['model', 'layer', 'summary']].head(3).to_dict('records')}"
        )
    return g


def geometry_wide(geometry_df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, layer): summaries, ``<summary>_se`` and ``depth`` (the
    geometry table's relative depth, :func:`geowall.layers.relative_depth`; NaN when the
    table has none)."""
    g = _validate_geometry(geometry_df)
    est = g.pivot(index=["model", "layer"], columns="summary", values="estimate")
    se = g.pivot(index=["model", "layer"], columns="summary", values="se").add_suffix("_se")
    wide = est.join(se).reset_index()
    wide.columns.name = None
    if "depth" in g.columns:
        d = g.groupby(["model", "layer"], as_index=False)["depth"].first()
        wide = wide.merge(d, on=["model", "layer"], how="left")
    else:
        wide["depth"] = np.nan
    wide["depth_se"] = 0.0
    return wide


def stage2_table(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    *,
    predictors: Sequence[str] = SUMMARIES,
    target: str = "log_alpha",
    models: Iterable[str] | None = None,
    identified_only: bool | None = None,
) -> pd.DataFrame:
    """One row per (model, layer) present in both tables: ``model, layer, depth, y,
    y_sd`` (target posterior mean and sd) and, per predictor, the estimate and ``<p>_se``.

    ``identified_only`` (default: True for ``target="floor"``) keeps only layers with
    ``floor_identified``. Rows with a missing target or predictor are dropped."""
    ex = require_columns(
        exponents_df,
        "exponents_df",
        ["model", "layer", f"{target}_mean", f"{target}_sd"],
        what=f"target={target!r} needs",
    )
    wide = geometry_wide(geometry_df)
    for p in predictors:
        if p not in wide.columns:
            raise ValueError(
                f"predictors: {p!r} is not a summary in geometry_df "
                f"(has {sorted(set(geometry_df['summary']))} and 'depth')"
            )
        if p == "depth" and wide["depth"].isna().all():
            raise ValueError("predictors: 'depth' needs a 'depth' column in geometry_df (layers.relative_depth)")
    ex["model"] = ex["model"].astype(str)
    ex["layer"] = ex["layer"].astype(int)
    if identified_only is None:
        identified_only = target == "floor"
    if identified_only:
        if "floor_identified" not in ex.columns:
            raise ValueError("exponents_df: identified_only needs a 'floor_identified' column")
        ex = ex[ex["floor_identified"].astype(bool)]
    ex = ex[["model", "layer", f"{target}_mean", f"{target}_sd"]].rename(
        columns={f"{target}_mean": "y", f"{target}_sd": "y_sd"}
    )
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


def standardisation(tab: pd.DataFrame, predictors: Sequence[str]) -> dict[str, Any]:
    """The training layers' mean and sd of the target (``y_mean``, ``y_sd``) and of each
    predictor (``x[p]``): the law is fitted, and predicts, on these standardised scales."""
    sc: dict[str, Any] = {"y_mean": float(tab["y"].mean()), "y_sd": float(tab["y"].std(ddof=1)), "x": {}}
    if not np.isfinite(sc["y_sd"]) or sc["y_sd"] <= 0:
        raise ValueError("target: needs at least two training layers with different values")
    for p in predictors:
        m, s = float(tab[p].mean()), float(tab[p].std(ddof=1))
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"predictors: {p!r} is constant over the training layers; cannot standardise")
        sc["x"][p] = {"mean": m, "sd": s}
    return sc


def design_matrix(tab: pd.DataFrame, predictors: Sequence[str], sc: Mapping[str, Any]):
    """Standardised predictors ``X`` (rows of ``tab``, columns ``predictors``) and their
    measurement sds ``SE`` on the same scale (0 for depth, which is known exactly)."""
    n, P = len(tab), len(predictors)
    X = np.zeros((n, P))
    SE = np.zeros((n, P))
    for i, p in enumerate(predictors):
        X[:, i] = (tab[p].to_numpy(float) - sc["x"][p]["mean"]) / sc["x"][p]["sd"]
        if p != "depth":
            # an SE the resampling could not estimate (NaN: too few replicates had the summary) counts as 0
            SE[:, i] = np.nan_to_num(tab[f"{p}_se"].to_numpy(float), nan=0.0) / sc["x"][p]["sd"]
    return X, SE


SCOPE_MIN_LAYERS = 8  # a scope (or the floor law) is fitted only with at least this many layers
SCOPE_KINDS = {"real": "pretrained", "synthetic": "zoo"}  # scope -> model kind; random twins are a transfer contrast


def min_training_layers(n_predictors: int, n_models: int = 1) -> int:
    """The fewest training layers :func:`fit_law` accepts for ``n_predictors`` predictors on
    ``n_models`` models (per-model intercepts when there are several): one more than the
    coefficients, and at least 3."""
    return max(3, n_predictors + (n_models if n_models > 1 else 1) + 1)


def scopes(kinds: Mapping[str, str], n_layers: Mapping[str, int]) -> dict[str, list[str]]:
    """The Stage 2 scopes a run fits: the pretrained networks (``real``) and the synthetic
    zoo (``synthetic``), each with the models of its kind (``kinds``: model -> kind, from
    :func:`model_kinds`), kept where its models have at least :data:`SCOPE_MIN_LAYERS`
    layers together (``n_layers``: model -> layers with geometry and an exponent)."""
    out = {}
    for scope, kind in SCOPE_KINDS.items():
        models = [m for m, k in kinds.items() if k == kind]
        if models and sum(n_layers.get(m, 0) for m in models) >= SCOPE_MIN_LAYERS:
            out[scope] = models
    return out


def use_model_effects(tab: pd.DataFrame, model_effects: bool | None) -> bool:
    """Per-model intercepts or not: ``model_effects`` when given, else whenever the
    training layers come from more than one model."""
    return tab["model"].nunique() > 1 if model_effects is None else bool(model_effects)


def build_law_model(
    tab: pd.DataFrame, predictors: Sequence[str], sc: Mapping[str, Any], *, model_effects: bool | None = None
):
    """PyMC model of the Stage 2 law on a :func:`stage2_table` (see module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    predictors = list(predictors)
    X, SE = design_matrix(tab, predictors, sc)
    y = (tab["y"].to_numpy(float) - sc["y_mean"]) / sc["y_sd"]
    ysd = tab["y_sd"].to_numpy(float) / sc["y_sd"]
    layer_ids = [f"{m}/L{l}" for m, l in zip(tab["model"], tab["layer"])]
    effects = use_model_effects(tab, model_effects)
    models = sorted(tab["model"].unique()) if effects else ["all"]
    midx = np.array([models.index(m) for m in tab["model"]]) if effects else np.zeros(len(tab), int)
    coords = {"layer_id": layer_ids, "predictor": predictors, "train_model": models}
    with pm.Model(coords=coords) as model:
        b0 = pm.Normal("b0", 0.0, 1.0, dims="train_model")
        sigma = pm.HalfNormal("sigma", 1.0)
        mu = b0[midx]
        if predictors:
            b = pm.Normal("b", 0.0, 1.0, dims="predictor")
            noisy = SE.max(axis=0) > 0
            if noisy.any():
                v = SE**2 / (1.0 + SE**2)
                m = X / (1.0 + SE**2)
                z = pm.Normal("z_x", 0.0, 1.0, dims=("layer_id", "predictor"))
                x_true = pm.Deterministic(
                    "x_true", pt.as_tensor(m) + pt.as_tensor(np.sqrt(v)) * z, dims=("layer_id", "predictor")
                )
                # predictors without SE enter exactly (m = X, v = 0 there)
            else:
                x_true = pt.as_tensor(X)
            mu = mu + pt.dot(x_true, b)
            pm.Deterministic("coef", b * sc["y_sd"], dims="predictor")
        pm.Deterministic("intercept", sc["y_mean"] + b0 * sc["y_sd"], dims="train_model")
        pm.Deterministic("sigma_target", sigma * sc["y_sd"])
        pm.Normal("y", mu=mu, sigma=pt.sqrt(sigma**2 + ysd**2), observed=y, dims="layer_id")
    return model


def _set_name(predictors: Sequence[str]) -> str:
    if not predictors:
        return "models"
    return "+".join(predictors)


def fit_law(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    *,
    predictors: Sequence[str] = SUMMARIES,
    target: str = "log_alpha",
    settings: bayes.SamplerSettings | None = None,
    seed: int = 0,
    models: Iterable[str] | None = None,
    identified_only: bool | None = None,
    layers: pd.DataFrame | None = None,
    name: str | None = None,
    progressbar: bool = True,
    posterior_predictive: bool = True,
    model_effects: bool | None = None,
):
    """Fit the Stage 2 law ``target ~ model intercepts + standardised geometry`` with
    errors in variables, sampled with ``settings`` (:class:`geowall.bayes.SamplerSettings`).

    ``predictors``: summary names and/or ``"depth"``; ``()`` fits the intercepts-only
    baseline. ``models`` restricts the training layers (e.g. model A only for transfer);
    ``layers`` (columns model, layer) restricts them further (used by
    :func:`compare_laws` so every candidate sees the same layers). ``model_effects``:
    per-model intercepts (default: when the training layers come from more than one
    model).

    Returns InferenceData with ``posterior`` (``b0`` and ``intercept`` along
    ``train_model``, ``b, coef`` along ``predictor``, ``sigma, sigma_target``,
    ``x_true``), ``log_likelihood`` (``y``), ``posterior_predictive`` (``y``,
    standardised), ``observed_data``, ``constant_data`` (the training table as
    variables ``row_<column>`` along ``layer_id``; :func:`train_table`); attrs
    ``geowall_stage`` = "stage2", ``geowall_target``, ``geowall_predictors`` (JSON
    list), ``geowall_predictor_set``, ``geowall_scaling`` (JSON: training means/sds),
    ``geowall_train_models`` (JSON), ``geowall_model_effects``.
    """
    import pymc as pm

    predictors = tuple(predictors)
    tab = stage2_table(
        exponents_df, geometry_df, predictors=predictors, target=target, models=models, identified_only=identified_only
    )
    if layers is not None:
        keep = set(zip(layers["model"].astype(str), layers["layer"].astype(int)))
        tab = tab[[(m, l) in keep for m, l in zip(tab["model"], tab["layer"])]].reset_index(drop=True)
    effects = use_model_effects(tab, model_effects)
    need = min_training_layers(len(predictors), tab["model"].nunique() if effects else 1)
    if len(tab) < need:
        raise ValueError(
            f"fit_law: {len(tab)} training layers for {len(predictors)} predictor(s); "
            f"need at least {need} (target={target!r}, models={models})"
        )
    sc = standardisation(tab, predictors)
    model = build_law_model(tab, predictors, sc, model_effects=effects)
    idata = bayes.sample_model(model, settings, seed=seed, progressbar=progressbar, loglik_vars=["y"])
    if posterior_predictive:
        with bayes.quiet_pymc():
            pp = pm.sample_posterior_predictive(
                idata, model=model, var_names=["y"], random_seed=seed + 2, progressbar=False
            )
        idata.extend(pp)
    rows = tab.assign(layer_id=[f"{m}/L{l}" for m, l in zip(tab["model"], tab["layer"])])
    bayes.put_table(idata, rows[["layer_id"] + [c for c in tab.columns]], dim="layer_id", prefix="row_")
    idata.attrs.update(
        {
            "geowall_stage": "stage2",
            "geowall_target": target,
            "geowall_predictors": json.dumps(list(predictors)),
            "geowall_predictor_set": name or _set_name(predictors),
            "geowall_scaling": json.dumps(sc),
            "geowall_train_models": json.dumps(sorted(tab["model"].unique().tolist())),
            "geowall_model_effects": int(effects),
            "geowall_sampler": idata.posterior.attrs["sampler"],
            "geowall_seed": int(seed),
        }
    )
    return idata


def law_meta(idata) -> tuple[list[str], dict[str, Any], str, str]:
    """What a fitted law carries: ``(predictors, standardisation, predictor set, target)``."""
    try:
        preds = json.loads(idata.attrs["geowall_predictors"])
        sc = json.loads(idata.attrs["geowall_scaling"])
    except KeyError as e:
        raise ValueError(f"law_idata: missing attribute {e}; expected an InferenceData from fit_law") from None
    return (
        preds,
        sc,
        idata.attrs.get("geowall_predictor_set", _set_name(preds)),
        idata.attrs.get("geowall_target", "log_alpha"),
    )


def train_table(idata) -> pd.DataFrame:
    """The training table a law was fitted on (from ``constant_data``)."""
    t = bayes.get_table(idata, dim="layer_id", prefix="row_")
    t["layer"] = t["layer"].astype(int)
    return t


def law_coefficients(idata, *, hdi_prob: float = 0.94) -> pd.DataFrame:
    """One row per predictor (plus one intercept per training model and the residual
    sd): posterior mean, sd, HDI (``az.hdi``) of the coefficient in target units per
    training-SD (``coef``) and standardised (``b``), and ``p_gt0`` = posterior
    probability that it is positive."""
    preds, sc, set_name, target = law_meta(idata)
    post = idata.posterior
    rows = []

    def summ(x, pre):
        d = bayes.summarise_draws(np.asarray(x), hdi_prob)
        return {
            f"{pre}_mean": d["mean"],
            f"{pre}_sd": d["sd"],
            f"{pre}_hdi_3": d["hdi_lo"],
            f"{pre}_hdi_97": d["hdi_hi"],
        }

    for i, p in enumerate(preds):
        c = post["coef"].isel(predictor=i).values
        rows.append(
            {
                "term": p,
                **summ(c, "coef"),
                **summ(post["b"].isel(predictor=i).values, "b"),
                "p_gt0": float((c > 0).mean()),
            }
        )
    nan_b = {"b_mean": np.nan, "b_sd": np.nan, "b_hdi_3": np.nan, "b_hdi_97": np.nan}
    icpt = post["intercept"]
    for m in icpt["train_model"].values if "train_model" in icpt.dims else [None]:
        v = icpt.sel(train_model=m).values if m is not None else icpt.values
        term = "intercept" if m in (None, "all") else f"intercept[{m}]"
        rows.append({"term": term, **summ(v, "coef"), **nan_b, "p_gt0": float((v > 0).mean())})
    v = post["sigma_target"].values
    rows.append({"term": "sigma", **summ(v, "coef"), **nan_b, "p_gt0": 1.0})
    out = pd.DataFrame(rows)
    out.insert(0, "predictor_set", set_name)
    out.insert(1, "target", target)
    return out


def posterior_predictive_table(idata, *, interval: float = 0.9) -> pd.DataFrame:
    """Per training layer: observed target, posterior predictive mean and equal-tailed
    ``interval`` (target units, includes the Stage 1 measurement sd), whether covered,
    and the partial residual of each predictor (observed minus the fitted contribution
    of the model intercept and all *other* predictors at their posterior means)."""
    preds, sc, set_name, target = law_meta(idata)
    tab = train_table(idata)
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
        X, _ = design_matrix(tab, preds, sc)
        if "x_true" in post:
            X = post["x_true"].mean(("chain", "draw")).to_numpy()
        coef = post["coef"].mean(("chain", "draw")).to_numpy()
        icpt = post["intercept"].mean(("chain", "draw"))
        names = [str(v) for v in icpt["train_model"].values]
        per_row = np.array(
            [float(icpt.values[names.index(m)]) if m in names else float(icpt.values.mean()) for m in tab["model"]]
        )
        fitted = per_row + X @ coef
        for i, p in enumerate(preds):
            out[f"partial_resid_{p}"] = out["observed"] - (fitted - X[:, i] * coef[i])
            out[f"x_std_{p}"] = X[:, i]
    out.insert(0, "predictor_set", set_name)
    return out


def compare_laws(
    exponents_df: pd.DataFrame,
    geometry_df: pd.DataFrame,
    *,
    sets: Mapping[str, Sequence[str]] | None = None,
    target: str = "log_alpha",
    models: Iterable[str] | None = None,
    settings: bayes.SamplerSettings | None = None,
    seed: int = 0,
    progressbar: bool = False,
    check: bool = True,
    model_effects: bool | None = None,
    pareto_k_max: float = 0.7,
):
    """Fit one law per predictor set on the *same* layers and compare them by PSIS-LOO.

    ``sets`` defaults to :data:`DEFAULT_LAW_SETS` (the baselines ``"models"``,
    per-model intercepts only, and ``"depth"``; ID, curvature, ID + curvature, all
    four). Layers missing any predictor of any set are dropped from all fits. Every fit is
    sampled with ``settings``; with ``check`` it goes through
    :func:`geowall.bayes.check_fit` with the same settings' thresholds (raises, with
    advice naming the profile key).

    Returns ``(comparison, fits)``. ``comparison`` has one row per set: ``predictor_set,
    rank, elpd_loo, se, p_loo, weight`` (``az.compare``), then for each baseline ``B``
    in :data:`BASELINES` that was fitted ``elpd_diff_vs_B`` (set minus baseline, > 0:
    the set predicts better) and ``se_diff_vs_B`` (standard error of that paired
    difference), and ``max_pareto_k`` / ``n_pareto_k_bad`` (k > ``pareto_k_max``).
    """
    import arviz as az

    sets = dict(sets or DEFAULT_LAW_SETS)
    all_preds = tuple(dict.fromkeys(p for s in sets.values() for p in s))
    common = stage2_table(exponents_df, geometry_df, predictors=all_preds, target=target, models=models)
    fits = {}
    for i, (name, preds) in enumerate(sets.items()):
        fits[name] = fit_law(
            exponents_df,
            geometry_df,
            predictors=preds,
            target=target,
            models=models,
            layers=common[["model", "layer"]],
            settings=settings,
            seed=seed + 17 * i,
            name=name,
            progressbar=progressbar,
            model_effects=model_effects,
        )
        if check:
            bayes.check_fit(fits[name], settings, label=f"stage 2 law {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loos = {k: az.loo(f, pointwise=True, var_name="y") for k, f in fits.items()}
        cmp = az.compare(fits, ic="loo", var_name="y") if len(fits) > 1 else None
    rows = []
    for name, lo in loos.items():
        k = np.asarray(lo.pareto_k)
        row = {
            "predictor_set": name,
            "elpd_loo": float(lo.elpd_loo),
            "se": float(lo.se),
            "p_loo": float(lo.p_loo),
            "max_pareto_k": float(np.nanmax(k)),
            "n_pareto_k_bad": int((k > pareto_k_max).sum()),
            "n_layers": int(len(k)),
        }
        for base in BASELINES:
            if base in loos:
                d = np.asarray(lo.loo_i) - np.asarray(loos[base].loo_i)
                row[f"elpd_diff_vs_{base}"] = float(d.sum())
                row[f"se_diff_vs_{base}"] = float(np.sqrt(len(d) * d.var(ddof=1))) if name != base else 0.0
        rows.append(row)
    out = pd.DataFrame(rows)
    if cmp is not None:
        out["rank"] = out["predictor_set"].map(cmp["rank"]).astype(int)
        out["weight"] = out["predictor_set"].map(cmp["weight"]).astype(float)
    else:
        out["rank"], out["weight"] = 0, 1.0
    out.insert(1, "target", target)
    out.insert(2, "train_models", "+".join(sorted(common["model"].unique())))
    return out.sort_values("rank").reset_index(drop=True), fits


def fixed_law(
    *,
    predictors: Sequence[str],
    b0: float,
    b: Sequence[float],
    sigma: float,
    scaling: Mapping[str, Any],
    target: str = "log_alpha",
    name: str | None = None,
    n_draws: int = 1000,
):
    """An InferenceData shaped like :func:`fit_law`'s output with fixed coefficients
    (standardised scale, one intercept): for known-answer tests and what-if predictions."""
    import arviz as az

    predictors = list(predictors)
    ones = np.ones((1, n_draws))
    post = {
        "b0": (b0 * ones)[..., None],
        "sigma": sigma * ones,
        "intercept": ((scaling["y_mean"] + b0 * scaling["y_sd"]) * ones)[..., None],
        "sigma_target": sigma * scaling["y_sd"] * ones,
    }
    dims = {"b0": ["train_model"], "intercept": ["train_model"]}
    if predictors:
        bb = np.broadcast_to(np.asarray(b, float), (1, n_draws, len(predictors))).copy()
        post["b"] = bb
        post["coef"] = bb * scaling["y_sd"]
        dims.update({"b": ["predictor"], "coef": ["predictor"]})
    idata = az.from_dict(posterior=post, coords={"predictor": predictors, "train_model": ["all"]}, dims=dims)
    idata.attrs.update(
        {
            "geowall_stage": "stage2",
            "geowall_target": target,
            "geowall_predictors": json.dumps(predictors),
            "geowall_predictor_set": name or _set_name(predictors),
            "geowall_scaling": json.dumps(dict(scaling)),
            "geowall_train_models": json.dumps([]),
            "geowall_model_effects": 0,
        }
    )
    return idata
