"""Stage 1: Bayesian hierarchical scaling surfaces of SAE error vs width and sparsity.

One row of the metrics table is one trained (or loaded) SAE: ``model, layer, width,
l0, fvu, ...``. For every layer we fit a surface ``fvu(W, l0)``. The exponents are
partially pooled across the layers of each model (non-centred hierarchical priors on
``log alpha`` and ``log beta``, per-model hyper-means and hyper-sds); amplitudes and
floors are per layer with fixed weakly informative priors, so that "the data moved the
floor" means *this layer's* data, not borrowed strength. The likelihood is Normal on
``log fvu`` with a per-model noise scale ``sigma``.

Scales. Width and sparsity enter through normalised log scales

    w = log(W / W_ref[model]),   s = log(l0 / l0_ref[model])

with ``W_ref`` the geometric mean of the model's distinct widths and ``l0_ref`` the
geometric mean of the model's measured l0 (both overridable, both stored with the fit
as ``constant_data`` variables ``ref_*`` along ``model``).

What each layer's grid can identify
-----------------------------------
A width asymptote (floor) and a width exponent trade off along a ridge that a few
closely spaced widths cannot resolve. So the surface depends on the layer's grid:

* **floor-free surface** (every layer whose grid cannot identify a floor)::

      log L = log A - alpha*w - beta*s              ("additive")
      log L = log A - alpha*w - beta*s + d*w*s      ("joint", Gao et al. 2024's L(n, k))

  ``alpha`` is the plain width exponent at the reference sparsity,
  ``-d log L / d log W`` at ``l0_ref``.
* **surface with a floor** (layers with at least ``floor_min_widths`` distinct widths
  spanning at least ``floor_min_span``; :data:`FLOOR_GRID_RULE`, decided by simulation:
  ``tests/benchmarks/bench_floor_rule.py`` and notebook 03)::

      L = E + A*(W/W_ref)^(-alpha) + B*(l0/l0_ref)^(-beta)                   ("additive")
      log(L - E_irr(l0)) = log A - alpha*w - beta*s + d*w*s,
          E_irr(l0) = floor * exp(eta*s)                                     ("joint")

  with ``floor = lim_{W -> inf} L(W, l0_ref)`` (additive: ``floor = E + B``) and
  ``alpha = -d log(L - floor) / d log W`` at ``l0_ref``. The floor is ``f * U``,
  ``f = sigmoid(logit_f)`` in (0, 1) and ``U = 1.05 x`` the smallest fvu among the
  layer's SAEs with ``l0 <= l0_ref``.

A floor is *called identified* (:func:`exponents`) only on the layer's own evidence and
two-sided: the 94% HDI of ``f`` lies inside ``(0.05, 0.95)`` *and* the per-layer
PSIS-LOO comparison of the floor surface against the floor-free one (fitted alongside,
:func:`fit_stage1`) favours the floor by more than ``elpd_z`` standard errors
(:data:`FLOOR_IDENTIFIED_RULE`). On pure power-law tables (true floor 0) this calls at
most 5% of layers identified, and it identifies planted floors on 7-width grids
spanning 64x (``tests/test_scaling.py``).

Priors (weakly informative)
---------------------------
* ``log alpha_j = mu_log_alpha[m] + sd_log_alpha[m] * z_j`` (non-centred; location and
  spread per model ``m``); ``mu_log_alpha ~ N(log 0.3, 0.5)``,
  ``sd_log_alpha ~ HalfNormal(0.4)``: SAE width exponents in the literature sit in
  about 0.1-0.6 (Gao et al. 2024); layers may differ by a factor ~2.
* ``log beta_j`` likewise, ``mu ~ N(log 0.4, 0.6)``, ``sd ~ HalfNormal(0.4)``.
* ``log A_j ~ N(log(median fvu of the layer / 2), 1)``.
* floor layers: ``logit f_j ~ N(-1, 1)`` (a floor ~1/4 of its bound, anywhere in (0, 1)
  allowed); additive ``logit g_j ~ N(0, 1.5)`` splits the floor into ``E = g*floor``
  and ``B = (1-g)*floor``; joint ``eta_j ~ N(-0.3, 0.5)``.
* joint: ``d_j`` hierarchical, ``mu ~ N(0, 0.1)``, ``sd ~ HalfNormal(0.05)``.
* ``sigma[m] ~ HalfNormal(0.2)`` on log fvu.

The prior is sampled along with the posterior (group ``prior``) so that
:func:`exponents` can report how much the data moved each quantity.
:func:`simulation_based_calibration` checks the whole fit against its own prior
(Talts et al. 2018).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.bayes import SamplerSettings, sample_model
from geowall.io import require_columns

__all__ = [
    "PLAIN_VARS",
    "FORMS",
    "FLOOR_GRID_RULE",
    "FLOOR_IDENTIFIED_RULE",
    "build_stage1_model",
    "fit_stage1",
    "prior_predictive",
    "prior_predictive_summary",
    "exponents",
    "common_grid",
    "fit_plain",
    "compare_forms",
    "layer_table",
    "stored_layers",
    "stored_refs",
    "surface_predictions",
]

FORMS = ("additive", "joint")
REQUIRED_COLUMNS = ("model", "layer", "width", "l0", "fvu")
HDI_PROB = bayes.HDI_PROB
FLOOR_BOUND_SLACK = 1.05  # floor bound U = 1.05 x smallest fvu with l0 <= l0_ref (room for noise)
# A layer's grid supports a floor term with at least this many distinct widths spanning at
# least this ratio. Decided by simulation (tests/benchmarks/bench_floor_rule.py, notebook 03):
# with 4 widths over 8x (the default grid) or 2 widths over 4x (Gemma Scope) a planted floor
# is almost never recovered and alpha trades off against it; with 6 widths over 32x it is.
FLOOR_GRID_RULE = {"min_widths": 5, "min_width_span": 16.0}
# A fitted floor is called identified when the 94% HDI of f = floor / U lies inside
# (f_lo, f_hi) and the layer's PSIS-LOO favours the floor by more than elpd_z standard errors.
FLOOR_IDENTIFIED_RULE = {"f_lo": 0.05, "f_hi": 0.95, "elpd_z": 2.0}

PRIORS: dict[str, dict[str, str]] = {
    "additive": {
        "mu_log_alpha": "Normal(log 0.3, 0.5) per model: SAE width exponents are typically 0.1-0.6",
        "sd_log_alpha": "HalfNormal(0.4) per model: layers of one model differ by up to ~2x",
        "mu_log_beta": "Normal(log 0.4, 0.6) per model: sparsity exponents of the same order, looser",
        "sd_log_beta": "HalfNormal(0.4) per model",
        "log_A": "Normal(log(median fvu of layer / 2), 1): width-reducible error is a sizeable share",
        "logit_f": "Normal(-1, 1), floor layers only: floor ~1/4 of its data bound, anywhere in (0, 1)",
        "logit_g": "Normal(0, 1.5), floor layers only: no preference how the floor splits into E and B",
        "sigma": "HalfNormal(0.2) per model on log fvu: fvu noise is a few per cent, room for misfit",
    },
    "joint": {
        "mu_log_alpha": "Normal(log 0.3, 0.5) per model: alpha at l0_ref; width exponents typically 0.1-0.6",
        "sd_log_alpha": "HalfNormal(0.4) per model",
        "mu_log_beta": "Normal(log 0.4, 0.6) per model",
        "sd_log_beta": "HalfNormal(0.4) per model",
        "log_A": "Normal(log(median fvu of layer / 2), 1): reducible error at the reference point",
        "mu_d": "Normal(0, 0.1) per model: Gao et al. find a small log W x log l0 interaction",
        "sd_d": "HalfNormal(0.05) per model",
        "logit_f": "Normal(-1, 1), floor layers only: irreducible error at l0_ref as a fraction of its bound",
        "eta": "Normal(-0.3, 0.5), floor layers only: irreducible error falls slowly with l0",
        "sigma": "HalfNormal(0.2) per model on log fvu",
    },
}


# --------------------------------------------------------------------------- data


def _validate_metrics(metrics_df: pd.DataFrame) -> pd.DataFrame:
    df = require_columns(metrics_df, "metrics_df", REQUIRED_COLUMNS, what="expected at least")
    if len(df) == 0:
        raise ValueError("metrics_df: the table is empty")
    for col in ("width", "l0", "fvu"):
        vals = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(vals) | (vals <= 0)
        if bad.any():
            rows = df.loc[bad, ["model", "layer", col]].head(5).to_dict("records")
            raise ValueError(
                f"metrics_df: column {col!r} must be finite and > 0; {int(bad.sum())} bad row(s), e.g. {rows}"
            )
        df[col] = vals
    df["model"] = df["model"].astype(str)
    df["layer"] = df["layer"].astype(int)
    return df


def floor_supported(n_widths, width_span, *, min_widths: int | None = None, min_width_span: float | None = None):
    """The grid rule: can a layer with ``n_widths`` distinct widths spanning
    ``width_span`` identify a width asymptote? (:data:`FLOOR_GRID_RULE`)"""
    mw = FLOOR_GRID_RULE["min_widths"] if min_widths is None else min_widths
    ms = FLOOR_GRID_RULE["min_width_span"] if min_width_span is None else min_width_span
    return (np.asarray(n_widths) >= mw) & (np.asarray(width_span) >= ms * (1 - 1e-9))


def layer_table(
    metrics_df: pd.DataFrame,
    *,
    w_ref: float | Mapping[str, float] | None = None,
    l0_ref: float | Mapping[str, float] | None = None,
    floors: str = "grid",
    floor_min_widths: int | None = None,
    floor_min_span: float | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-layer table (index order = the ``layer_id`` dimension) and per-model references.

    ``floor_term`` says whether the layer's surface has a floor: ``floors="grid"`` applies
    :func:`floor_supported` to the layer's grid, ``"none"`` gives every layer the
    floor-free surface, ``"all"`` gives every layer a floor (for simulation studies)."""
    if floors not in ("grid", "none", "all"):
        raise ValueError(f"floors: expected 'grid', 'none' or 'all', got {floors!r}")
    df = _validate_metrics(metrics_df)
    models = sorted(df["model"].unique())
    refs: dict[str, dict[str, float]] = {}
    for m in models:
        sub = df[df["model"] == m]
        wr = _ref_value(w_ref, m, float(np.exp(np.mean(np.log(np.unique(sub["width"]))))))
        lr = _ref_value(l0_ref, m, float(np.exp(np.mean(np.log(sub["l0"])))))
        refs[m] = {"w_ref": wr, "l0_ref": lr, "median_fvu": float(np.median(sub["fvu"]))}
    rows = []
    for (m, layer), sub in df.groupby(["model", "layer"], sort=True):
        widths = np.unique(sub["width"])
        lr = refs[m]["l0_ref"]
        sparse = sub.loc[sub["l0"] <= lr * (1 + 1e-9), "fvu"]
        rows.append(
            {
                "layer_id": f"{m}/L{int(layer)}",
                "model": m,
                "layer": int(layer),
                "model_idx": models.index(m),
                "n_obs": int(len(sub)),
                "n_widths": int(len(widths)),
                "n_k": int(
                    sub["k"].nunique()
                    if "k" in sub.columns and sub["k"].notna().all()
                    else np.round(np.log(sub["l0"]), 1).nunique()
                ),
                "width_span": float(widths.max() / widths.min()),
                "min_fvu": float(sub["fvu"].min()),
                "median_fvu": float(sub["fvu"].median()),
                "floor_bound": float(FLOOR_BOUND_SLACK * (sparse.min() if len(sparse) else sub["fvu"].max())),
                "showcase": bool(sub["showcase"].astype(bool).any()) if "showcase" in sub.columns else False,
            }
        )
    layers = pd.DataFrame(rows)
    if floors == "grid":
        layers["floor_term"] = floor_supported(
            layers["n_widths"], layers["width_span"], min_widths=floor_min_widths, min_width_span=floor_min_span
        )
    else:
        layers["floor_term"] = floors == "all"
    layers["floor_term"] = layers["floor_term"].astype(bool)
    return layers, refs


def _ref_value(spec, model: str, default: float) -> float:
    if spec is None:
        return default
    if isinstance(spec, Mapping):
        return float(spec.get(model, default))
    return float(spec)


# --------------------------------------------------------------------------- model


def build_stage1_model(
    metrics_df: pd.DataFrame,
    *,
    form: str = "additive",
    w_ref: float | Mapping[str, float] | None = None,
    l0_ref: float | Mapping[str, float] | None = None,
    floors: str = "grid",
    floor_min_widths: int | None = None,
    floor_min_span: float | None = None,
):
    """Build the PyMC model. Returns ``(model, layers, refs)``.

    Dimensions: ``model``, ``layer_id`` (one per model+layer, labels
    ``"<model>/L<layer>"``), ``floor_layer`` (the layers with a floor term; absent when
    none has one), ``obs`` (one per SAE row). Deterministics: ``alpha``, ``log_alpha``,
    ``beta`` over ``layer_id``; ``floor``, ``f`` (floor / bound) and, additive, ``E``
    over ``floor_layer``. The observed ``log_fvu`` is a ``pm.Data`` (``log_fvu_data``)
    so a compiled model can be refitted to new data (simulation-based calibration).
    """
    import pymc as pm
    import pytensor.tensor as pt

    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    df = _validate_metrics(metrics_df).sort_values(["model", "layer", "width", "l0"]).reset_index(drop=True)
    layers, refs = layer_table(
        df, w_ref=w_ref, l0_ref=l0_ref, floors=floors, floor_min_widths=floor_min_widths, floor_min_span=floor_min_span
    )
    models = sorted(refs)
    lid = {(r.model, r.layer): i for i, r in enumerate(layers.itertuples())}
    layer_idx = np.array([lid[(m, int(l))] for m, l in zip(df["model"], df["layer"])])
    model_of_layer = layers["model_idx"].to_numpy()
    model_of_obs = model_of_layer[layer_idx]
    w = np.log(df["width"].to_numpy() / np.array([refs[m]["w_ref"] for m in df["model"]]))
    s = np.log(df["l0"].to_numpy() / np.array([refs[m]["l0_ref"] for m in df["model"]]))
    y = np.log(df["fvu"].to_numpy())
    log_med_layer = np.log(layers["median_fvu"].to_numpy() / 2.0)
    has_floor = layers["floor_term"].to_numpy(bool)
    floor_ids = layers.loc[has_floor, "layer_id"].tolist()

    coords = {"model": models, "layer_id": layers["layer_id"].tolist(), "obs": np.arange(len(df))}
    if floor_ids:
        coords["floor_layer"] = floor_ids
    with pm.Model(coords=coords) as model:
        w_d = pm.Data("w", w, dims="obs")
        s_d = pm.Data("s", s, dims="obs")
        li = pm.Data("layer_idx", layer_idx, dims="obs")
        y_d = pm.Data("log_fvu_data", y, dims="obs")
        mi = model_of_layer

        def hier(name, mu_mu, mu_sd, sd_sd):
            mu = pm.Normal(f"mu_{name}", mu_mu, mu_sd, dims="model")
            sd = pm.HalfNormal(f"sd_{name}", sd_sd, dims="model")
            z = pm.Normal(f"z_{name}", 0.0, 1.0, dims="layer_id")
            return pm.Deterministic(name, mu[mi] + sd[mi] * z, dims="layer_id")

        log_alpha = hier("log_alpha", math.log(0.3), 0.5, 0.4)
        log_beta = hier("log_beta", math.log(0.4), 0.6, 0.4)
        alpha = pm.Deterministic("alpha", pt.exp(log_alpha), dims="layer_id")
        beta = pm.Deterministic("beta", pt.exp(log_beta), dims="layer_id")
        sigma = pm.HalfNormal("sigma", 0.2, dims="model")
        log_A = pm.Normal("log_A", log_med_layer, 1.0, dims="layer_id")
        red = log_A[li] - alpha[li] * w_d - beta[li] * s_d
        if form == "joint":
            d = hier("d", 0.0, 0.1, 0.05)
            red = red + d[li] * w_d * s_d
        mu = red  # the floor-free surface, replaced below on the floor layers' rows
        if floor_ids:
            fpos = -np.ones(len(layers), int)
            fpos[has_floor] = np.arange(len(floor_ids))
            rows_f = np.flatnonzero(has_floor[layer_idx])
            k = fpos[layer_idx[rows_f]]  # floor-layer index of each such row
            j = layer_idx[rows_f]
            bound = layers.loc[has_floor, "floor_bound"].to_numpy()
            logit_f = pm.Normal("logit_f", -1.0, 1.0, dims="floor_layer")
            pm.Deterministic("f", pm.math.sigmoid(logit_f), dims="floor_layer")
            log_floor = pm.Deterministic(
                "log_floor", pt.log(bound) + pt.log(pm.math.sigmoid(logit_f)), dims="floor_layer"
            )
            wf, sf = w[rows_f], s[rows_f]
            if form == "additive":
                logit_g = pm.Normal("logit_g", 0.0, 1.5, dims="floor_layer")
                log_E = pm.Deterministic("log_E", log_floor + pt.log(pm.math.sigmoid(logit_g)), dims="floor_layer")
                log_B = pm.Deterministic("log_B", log_floor + pt.log(pm.math.sigmoid(-logit_g)), dims="floor_layer")
                pm.Deterministic("E", pt.exp(log_E), dims="floor_layer")
                mu_f = pm.math.logsumexp(
                    pt.stack([log_E[k], log_A[j] - alpha[j] * wf, log_B[k] - beta[j] * sf]), axis=0, keepdims=False
                )
            else:
                eta = pm.Normal("eta", -0.3, 0.5, dims="floor_layer")
                red_f = log_A[j] - alpha[j] * wf - beta[j] * sf + d[j] * wf * sf
                mu_f = pt.logaddexp(red_f, log_floor[k] + eta[k] * sf)
            mu = pt.set_subtensor(mu[rows_f], mu_f)
            pm.Deterministic("floor", pt.exp(log_floor), dims="floor_layer")
        pm.Normal("log_fvu", mu=mu, sigma=sigma[model_of_obs], observed=y_d, dims="obs")
    return model, layers, refs


def fit_stage1(
    metrics_df: pd.DataFrame,
    *,
    form: str = "additive",
    settings: SamplerSettings | None = None,
    seed: int = 0,
    prior_draws: int = 1000,
    w_ref: float | Mapping[str, float] | None = None,
    l0_ref: float | Mapping[str, float] | None = None,
    progressbar: bool = True,
    nutpie_kwargs: dict | None = None,
    floors: str = "grid",
    floor_min_widths: int | None = None,
    floor_min_span: float | None = None,
    compare_floor: bool = True,
):
    """Fit the Stage 1 hierarchical scaling surface; return ``arviz.InferenceData``.

    Groups: ``posterior`` (hyper-parameters, non-centred offsets ``z_*``, per-layer
    parameters, Deterministics ``alpha``, ``log_alpha``, ``beta`` over ``layer_id`` and
    ``floor``, ``f`` (and additive ``E``) over ``floor_layer``), ``sample_stats``,
    ``log_likelihood`` (``log_fvu``), ``prior`` and ``prior_predictive``
    (``prior_draws`` draws; for the prior-vs-posterior contraction in
    :func:`exponents`), ``observed_data`` and ``constant_data``: the model's data plus the
    per-layer table of :func:`layer_table` as variables ``layer_<column>`` along
    ``layer_id`` and the per-model references ``ref_<w_ref|l0_ref|median_fvu>`` along
    ``model`` (read them back with :func:`stored_layers` / :func:`stored_refs`).

    Which layers get a floor: ``floors`` (see :func:`layer_table`). With
    ``compare_floor`` and at least one floor layer, the floor-free surface is fitted too
    (same settings, no prior draws) and each floor layer's PSIS-LOO difference
    ``floor_elpd_diff`` (floor minus floor-free, summed over the layer's SAEs), its
    standard error ``floor_elpd_se`` and the larger Pareto k of the two fits
    (``floor_pareto_k``) join the layer table. ``posterior.attrs['nofloor_sampling_wall_s']``
    records that fit's time.

    Sampling: ``settings`` (:class:`geowall.bayes.SamplerSettings`: draws, tune, chains,
    target_accept, sampler; nutpie where available, else PyMC's NUTS; ``cores = min(chains,
    2)``). Check the result with :func:`geowall.bayes.check_fit` before using it.

    Bad input (missing column, non-positive or non-finite width/l0/fvu, unknown form)
    raises ``ValueError`` naming it before anything is compiled; the settings validate
    themselves (positive draws, tune, chains).
    """
    kw = dict(form=form, w_ref=w_ref, l0_ref=l0_ref, floor_min_widths=floor_min_widths, floor_min_span=floor_min_span)
    model, layers, refs = build_stage1_model(metrics_df, floors=floors, **kw)
    # nutpie_kwargs go to nutpie.sample. Its low-rank mass matrix
    # ({"low_rank_modified_mass_matrix": True}) cuts leapfrog steps ~3x here but mixed the
    # hierarchical sds worse (min bulk ESS 242 vs 802 per 2000 draws in
    # tests/benchmarks/bench_stage1.py), so the default diagonal adaptation is kept.
    sample_kw = dict(
        settings=settings,
        seed=seed,
        progressbar=progressbar,
        loglik_vars=["log_fvu"],
        nutpie_kwargs=nutpie_kwargs,
    )
    idata = sample_model(model, prior_draws=prior_draws, **sample_kw)
    for col in ("floor_elpd_diff", "floor_elpd_se", "floor_pareto_k"):
        layers[col] = np.nan
    if compare_floor and layers["floor_term"].any():
        free, _, _ = build_stage1_model(metrics_df, floors="none", **kw)
        free_idata = sample_model(free, prior_draws=0, **sample_kw)
        idata.posterior.attrs["nofloor_sampling_wall_s"] = free_idata.posterior.attrs["sampling_wall_s"]
        _floor_loo(idata, free_idata, layers)
    _store(idata, layers, refs)
    idata.attrs.update(
        {
            "geowall_stage": "stage1",
            "geowall_form": form,
            "geowall_priors": json.dumps(PRIORS[form]),
            "geowall_sampler": idata.posterior.attrs["sampler"],
            "geowall_seed": int(seed),
        }
    )
    return idata


def _floor_loo(idata, free_idata, layers: pd.DataFrame) -> None:
    """Per floor layer: PSIS-LOO of the floor surface minus the floor-free one."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = az.loo(idata, pointwise=True, var_name="log_fvu")
        b = az.loo(free_idata, pointwise=True, var_name="log_fvu")
    diff = np.asarray(a.loo_i) - np.asarray(b.loo_i)
    kmax = np.maximum(np.asarray(a.pareto_k), np.asarray(b.pareto_k))
    li = np.asarray(idata.constant_data["layer_idx"])
    for j in np.flatnonzero(layers["floor_term"].to_numpy(bool)):
        d = diff[li == j]
        layers.loc[j, "floor_elpd_diff"] = float(d.sum())
        layers.loc[j, "floor_elpd_se"] = float(np.sqrt(len(d) * d.var(ddof=1))) if len(d) > 1 else np.nan
        layers.loc[j, "floor_pareto_k"] = float(kmax[li == j].max())


def _store(idata, layers: pd.DataFrame, refs: Mapping[str, Mapping[str, float]]) -> None:
    """Per-layer table and per-model references into ``constant_data``; coordinates
    ``layer_model`` / ``layer_number`` on the posterior and prior."""
    bayes.put_table(idata, layers, dim="layer_id", prefix="layer_")
    rt = pd.DataFrame([{"model": m, **r} for m, r in refs.items()])
    bayes.put_table(idata, rt, dim="model", prefix="ref_")
    for grp in ("posterior", "prior"):
        if grp in idata.groups() and "layer_id" in idata[grp].dims:
            idata[grp] = idata[grp].assign_coords(
                layer_model=("layer_id", layers["model"].to_numpy().astype(str)),
                layer_number=("layer_id", layers["layer"].to_numpy().astype(int)),
            )


def stored_layers(idata) -> pd.DataFrame:
    """The layer table stored by :func:`fit_stage1` (``layer_id`` order)."""
    t = bayes.get_table(idata, dim="layer_id", prefix="layer_")
    for col, typ in (("layer", int), ("model_idx", int), ("n_obs", int), ("n_widths", int), ("n_k", int)):
        if col in t:
            t[col] = t[col].astype(typ)
    for col in ("showcase", "floor_term"):
        if col in t:
            t[col] = t[col].astype(bool)
    return t


def stored_refs(idata) -> dict[str, dict[str, float]]:
    """Per-model ``w_ref``, ``l0_ref``, ``median_fvu`` stored by :func:`fit_stage1`."""
    t = bayes.get_table(idata, dim="model", prefix="ref_")
    return {r["model"]: {k: float(r[k]) for k in ("w_ref", "l0_ref", "median_fvu")} for _, r in t.iterrows()}


def prior_predictive(
    metrics_df: pd.DataFrame,
    *,
    form: str = "additive",
    draws: int = 500,
    seed: int = 0,
    w_ref=None,
    l0_ref=None,
    floors: str = "grid",
):
    """Prior predictive draws for the Stage 1 model (no posterior sampling).

    Returns InferenceData with ``prior`` (incl. ``alpha``, ``beta``), ``prior_predictive``
    (``log_fvu``), ``observed_data`` and ``constant_data``; summarise it with
    :func:`prior_predictive_summary`.
    """
    import pymc as pm

    model, layers, refs = build_stage1_model(metrics_df, form=form, w_ref=w_ref, l0_ref=l0_ref, floors=floors)
    with bayes.quiet_pymc():
        idata = pm.sample_prior_predictive(draws=draws, model=model, random_seed=seed)
    _store(idata, layers, refs)
    idata.attrs.update({"geowall_form": form})
    return idata


def prior_predictive_summary(idata, *, group: str = "prior_predictive", interval: float = 0.9) -> pd.DataFrame:
    """Per layer: observed fvu range vs the prior predictive ``interval`` band, and the
    fraction of observed SAEs inside the band (expect most of them inside for a
    weakly informative prior; a band many orders of magnitude wide is also a warning)."""
    pp = idata[group]["log_fvu"].stack(sample=("chain", "draw")).transpose("obs", "sample").to_numpy()
    obs = idata.observed_data["log_fvu"].to_numpy()
    q = (1 - interval) / 2
    lo, hi = np.quantile(pp, [q, 1 - q], axis=1)
    layers = stored_layers(idata)
    layer_idx = idata.constant_data["layer_idx"].to_numpy()
    rows = []
    for i, r in layers.iterrows():
        sel = layer_idx == i
        rows.append(
            {
                "model": r["model"],
                "layer": r["layer"],
                "fvu_obs_min": float(np.exp(obs[sel].min())),
                "fvu_obs_max": float(np.exp(obs[sel].max())),
                f"fvu_pp_lo{int(interval * 100)}": float(np.exp(np.median(lo[sel]))),
                f"fvu_pp_hi{int(interval * 100)}": float(np.exp(np.median(hi[sel]))),
                "frac_obs_inside": float(np.mean((obs[sel] >= lo[sel]) & (obs[sel] <= hi[sel]))),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries


def _draws(group, var: str, dim: str = "layer_id") -> np.ndarray:
    """(n_samples, k) array of a per-layer variable."""
    return group[var].stack(sample=("chain", "draw")).transpose("sample", dim).to_numpy()


def _summ_cols(
    out: pd.DataFrame, col: str, post_d: np.ndarray | None, prior_d: np.ndarray | None, rows: np.ndarray | None = None
) -> None:
    """mean, sd, hdi_3, hdi_97, prior_sd, sd_ratio columns of ``col`` (NaN outside ``rows``)."""
    n = len(out)
    rows = np.arange(n) if rows is None else rows
    vals = {k: np.full(n, np.nan) for k in ("mean", "sd", "hdi_3", "hdi_97", "prior_sd")}
    if post_d is not None and len(rows):
        vals["mean"][rows] = post_d.mean(0)
        vals["sd"][rows] = post_d.std(0, ddof=1)
        h = bayes.hdi(post_d)
        vals["hdi_3"][rows], vals["hdi_97"][rows] = h[:, 0], h[:, 1]
        if prior_d is not None:
            vals["prior_sd"][rows] = prior_d.std(0, ddof=1)
    for k, v in vals.items():
        out[f"{col}_{k}"] = v
    out[f"{col}_sd_ratio"] = out[f"{col}_sd"] / out[f"{col}_prior_sd"]


def _ols_alpha(idata, n_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, unpooled least squares of log fvu on (1, w, s): the plain width
    exponent (-slope in w) and its standard error, from that layer's SAEs alone."""
    cd = idata.constant_data
    w, s, li = (np.asarray(cd[v]) for v in ("w", "s", "layer_idx"))
    y = np.asarray(idata.observed_data["log_fvu"])
    a, se = np.full(n_layers, np.nan), np.full(n_layers, np.nan)
    for j in range(n_layers):
        sel = li == j
        X = np.column_stack([np.ones(sel.sum()), w[sel], s[sel]])
        if sel.sum() <= 3 or np.linalg.matrix_rank(X) < 3:
            continue
        beta, *_ = np.linalg.lstsq(X, y[sel], rcond=None)
        r = y[sel] - X @ beta
        s2 = float(r @ r) / (sel.sum() - 3)
        cov = s2 * np.linalg.inv(X.T @ X)
        a[j], se[j] = -beta[1], math.sqrt(max(cov[1, 1], 0.0))
    return a, se


def exponents(
    idata,
    metrics_df: pd.DataFrame | None = None,
    *,
    f_lo: float | None = None,
    f_hi: float | None = None,
    elpd_z: float | None = None,
    own_sd_ratio: float = 0.5,
    plain=None,
) -> pd.DataFrame:
    """Per model+layer exponent and floor summaries (the ``exponents.parquet`` table).

    **One exponent, one meaning.** With ``plain`` (a floor-free :func:`fit_stage1` of the
    same form on :func:`common_grid`: ``floors="none"``), ``alpha`` and ``log_alpha`` are
    the plain width exponent at the reference sparsity, ``-d log L / d log W`` at
    ``l0_ref`` on the widths every layer of the model has, at *every* layer: the quantity
    Stage 2, the transfer and the charts over depth use. The floor surface's exponent
    (of the error above the floor, ``-d log(L - floor) / d log W``) is then
    ``alpha_floor`` / ``log_alpha_floor``, on floor-term layers only, beside the floor.
    Without ``plain`` (no floor layers, or older callers) ``alpha`` is ``idata``'s own and
    ``alpha_floor`` repeats it at floor-term layers.

    Columns: ``model, layer, form``; for ``alpha``, ``log_alpha`` (the scale Stage 1
    pools and Stage 2 models), ``beta``, ``floor`` and ``E_inf`` (additive double
    asymptote): ``_mean, _sd, _hdi_3, _hdi_97, _prior_sd, _sd_ratio`` (posterior sd /
    prior sd). ``floor`` and ``E_inf`` are NaN on layers without a floor term. Then
    ``n_obs, n_widths, width_span, n_k, l0_ref, w_ref``, ``floor_term`` (the grid
    supports a floor, :func:`floor_supported`), ``f_hdi_3, f_hdi_97`` (floor as a
    fraction of its bound), ``floor_elpd_diff, floor_elpd_se, floor_pareto_k`` (the
    layer's floor vs floor-free PSIS-LOO, :func:`fit_stage1`), ``floor_identified``,
    ``alpha_ols, alpha_ols_se`` (unpooled least-squares width exponent of the
    floor-free log-linear surface, this layer's SAEs only), ``alpha_own_evidence``
    (``alpha_ols_se / alpha_prior_sd <= own_sd_ratio``: the layer's own data determine its
    exponent; where False the pooled exponent is largely the prior's and the model's),
    ``showcase``. Intervals are 94% HDIs (``az.hdi``).

    ``floor_identified`` (:data:`FLOOR_IDENTIFIED_RULE`): a floor term, the 94% HDI of
    ``f`` inside ``(f_lo, f_hi)``, and ``floor_elpd_diff > elpd_z * floor_elpd_se``.
    Without the floor-free comparison (``compare_floor=False``) no floor is identified.
    """
    rule = dict(FLOOR_IDENTIFIED_RULE)
    rule.update({k: v for k, v in (("f_lo", f_lo), ("f_hi", f_hi), ("elpd_z", elpd_z)) if v is not None})
    layers = stored_layers(idata)
    form = idata.attrs.get("geowall_form", "additive")
    refs = stored_refs(idata)
    post = idata.posterior
    prior = idata["prior"] if "prior" in idata.groups() else None
    out = layers[["model", "layer", "n_obs", "n_widths", "width_span", "n_k"]].copy()
    out.insert(2, "form", form)
    has_floor = layers["floor_term"].to_numpy(bool)
    frows = np.flatnonzero(has_floor)
    src = idata
    if plain is not None:
        pl = stored_layers(plain)
        pos = {(m, int(l)): i for i, (m, l) in enumerate(zip(pl["model"], pl["layer"]))}
        missing = [(m, int(l)) for m, l in zip(layers["model"], layers["layer"]) if (m, int(l)) not in pos]
        if missing:
            raise ValueError(f"plain: no plain exponent for layers {missing[:3]} (fit it on common_grid(metrics))")
        if plain.attrs.get("geowall_form", form) != form:
            raise ValueError(f"plain: form {plain.attrs.get('geowall_form')!r}, expected {form!r}")
        order = np.array([pos[(m, int(l))] for m, l in zip(layers["model"], layers["layer"])])
        src = plain
    else:
        order = np.arange(len(layers))
    pprior = src["prior"] if "prior" in src.groups() else None
    for var in ("alpha", "log_alpha"):
        _summ_cols(
            out,
            var,
            _draws(src.posterior, var)[:, order],
            _draws(pprior, var)[:, order] if pprior is not None and var in pprior else None,
        )
        _summ_cols(
            out,
            f"{var.replace('alpha', 'alpha_floor')}",
            _draws(post, var)[:, frows],
            _draws(prior, var)[:, frows] if prior is not None and var in prior else None,
            frows,
        )
    _summ_cols(
        out, "beta", _draws(post, "beta"), _draws(prior, "beta") if prior is not None and "beta" in prior else None
    )
    for var, col in (("floor", "floor"), ("E", "E_inf")):
        ok = var in post and "floor_layer" in post.dims
        _summ_cols(
            out,
            col,
            _draws(post, var, "floor_layer") if ok else None,
            _draws(prior, var, "floor_layer") if ok and prior is not None and var in prior else None,
            frows if ok else np.array([], int),
        )
    out["l0_ref"] = [refs[m]["l0_ref"] for m in out["model"]]
    out["w_ref"] = [refs[m]["w_ref"] for m in out["model"]]
    out["floor_term"] = has_floor
    out["f_hdi_3"], out["f_hdi_97"] = np.nan, np.nan
    if "f" in post and len(frows):
        h = bayes.hdi(_draws(post, "f", "floor_layer"))
        out.loc[frows, "f_hdi_3"], out.loc[frows, "f_hdi_97"] = h[:, 0], h[:, 1]
    for col in ("floor_elpd_diff", "floor_elpd_se", "floor_pareto_k"):
        out[col] = layers[col].to_numpy(float) if col in layers else np.nan
    out["floor_identified"] = (
        (
            out["floor_term"]
            & (out["f_hdi_3"] > rule["f_lo"])
            & (out["f_hdi_97"] < rule["f_hi"])
            & (out["floor_elpd_diff"] > rule["elpd_z"] * out["floor_elpd_se"])
        )
        .fillna(False)
        .astype(bool)
    )
    a_ols, a_se = _ols_alpha(src, len(stored_layers(src)))
    out["alpha_ols"], out["alpha_ols_se"] = a_ols[order], a_se[order]
    out["alpha_plain"] = plain is not None or not has_floor.any()  # alpha is the plain exponent at every layer
    out["alpha_own_evidence"] = (out["alpha_ols_se"] / out["alpha_prior_sd"] <= own_sd_ratio).fillna(False)
    if metrics_df is not None and "showcase" in metrics_df.columns:
        sc = (
            metrics_df.assign(model=metrics_df["model"].astype(str), layer=metrics_df["layer"].astype(int))
            .groupby(["model", "layer"])["showcase"]
            .apply(lambda v: bool(v.astype(bool).any()))
        )
        out["showcase"] = [bool(sc.get((m, l), False)) for m, l in zip(out["model"], out["layer"])]
    else:
        out["showcase"] = layers["showcase"].astype(bool).to_numpy()
    return out.reset_index(drop=True)


def common_grid(metrics_df: pd.DataFrame) -> pd.DataFrame:
    """The SAEs at the widths every layer of their model has (the ordinary layers' grid; a
    showcase layer's richer grid contains it): the data of the plain width exponent that
    means the same at every layer (:func:`exponents` with ``plain``)."""
    m = _validate_metrics(metrics_df)
    keep = []
    for _model, g in m.groupby("model", sort=False):
        per_layer = [set(x["width"]) for _, x in g.groupby("layer")]
        common = set.intersection(*per_layer)
        if len(common) < 2:
            raise ValueError(
                f"metrics_df: model {_model!r} has {len(common)} width(s) shared by all its layers; the plain "
                f"width exponent needs 2"
            )
        keep.append(g[g["width"].isin(common)])
    return pd.concat(keep).loc[lambda d: d.index.sort_values()].reset_index(drop=True)


# What the plain fit hands on (per-layer exponents), and so what its convergence check covers.
# Its non-centred offsets (z_log_alpha) can mix slowly where a thin grid leaves a model's
# sd_log_alpha near zero (the funnel the non-centring is for): on the default run's MPNet
# layers bulk ESS 237 of 2 x 7,000 draws and R-hat 1.023, while alpha and log alpha there
# reached bulk ESS >= 9,700 and R-hat <= 1.001.
PLAIN_VARS = ("alpha", "log_alpha")


def fit_plain(
    metrics_df: pd.DataFrame,
    idata,
    settings: SamplerSettings | None = None,
    *,
    seed: int = 0,
    progressbar: bool = True,
):
    """The plain width exponent at every layer (:func:`exponents`' ``plain``): the floor-free
    surface of ``idata``'s form fitted on :func:`common_grid` at ``idata``'s own references
    (``W_ref``, ``l0_ref`` per model), so that it and the floor surface's exponent are read at
    the same sparsity, sampled with ``settings``. Returns ``None`` when no layer of ``idata`` has a floor term (its
    exponent is then already the plain one)."""
    if not stored_layers(idata)["floor_term"].any():
        return None
    refs = stored_refs(idata)
    return fit_stage1(
        common_grid(metrics_df),
        form=idata.attrs.get("geowall_form", "additive"),
        floors="none",
        compare_floor=False,
        w_ref={m: r["w_ref"] for m, r in refs.items()},
        l0_ref={m: r["l0_ref"] for m, r in refs.items()},
        settings=settings,
        seed=seed,
        progressbar=progressbar,
    )


def pooling_agreement(exps: pd.DataFrame) -> pd.DataFrame:
    """Per model: Spearman rank correlation between pooled (posterior mean) and unpooled
    (least-squares) exponents over the layers whose own data determine the exponent
    (``alpha_own_evidence``) and whose ``alpha`` is the plain exponent (every layer with
    ``alpha_plain``; else the floor-free layers), and how many layers that is."""
    from scipy.stats import spearmanr

    rows = []
    for m, g in exps.groupby("model", sort=True):
        plain = g["alpha_plain"].astype(bool) if "alpha_plain" in g else ~g["floor_term"].astype(bool)
        own = g[g["alpha_own_evidence"].astype(bool) & (plain | ~g["floor_term"].astype(bool))]
        rho = float(spearmanr(own["alpha_mean"], own["alpha_ols"]).statistic) if len(own) >= 3 else np.nan
        rows.append({"model": m, "n_layers": len(g), "n_own_evidence": len(own), "spearman_pooled_unpooled": rho})
    return pd.DataFrame(rows)


def surface_predictions(
    idata,
    grid: pd.DataFrame,
    *,
    interval: float = 0.94,
    include_noise: bool = False,
    max_draws: int = 400,
    seed: int = 0,
) -> pd.DataFrame:
    """Posterior mean and interval of fvu on ``grid`` (columns model, layer, width, l0),
    for plotting fitted surfaces over the data. ``include_noise`` adds the log-normal
    observation noise (posterior predictive band instead of the mean-surface band)."""
    layers = stored_layers(idata)
    refs = stored_refs(idata)
    form = idata.attrs["geowall_form"]
    post = idata.posterior.stack(sample=("chain", "draw"))
    n = post.sizes["sample"]
    rng = np.random.default_rng(seed)
    take = rng.choice(n, size=min(n, max_draws), replace=False)
    lid = {(r.model, int(r.layer)): i for i, r in enumerate(layers.itertuples())}
    g = grid.copy()
    g["model"] = g["model"].astype(str)
    try:
        j = np.array([lid[(m, int(l))] for m, l in zip(g["model"], g["layer"])])
    except KeyError as e:
        raise ValueError(f"grid: layer {e} was not in the fitted metrics table") from None
    w = np.log(g["width"].to_numpy(float) / np.array([refs[m]["w_ref"] for m in g["model"]]))[:, None]
    s = np.log(g["l0"].to_numpy(float) / np.array([refs[m]["l0_ref"] for m in g["model"]]))[:, None]

    def P(name, dim="layer_id", idx=j):
        return post[name].transpose(dim, "sample").to_numpy()[:, take][idx]

    alpha, beta = P("alpha"), P("beta")
    mu = P("log_A") - alpha * w - beta * s
    if form == "joint":
        mu = mu + P("d") * w * s
    has_floor = layers["floor_term"].to_numpy(bool)
    rows_f = np.flatnonzero(has_floor[j])
    if len(rows_f):
        fpos = np.cumsum(has_floor) - 1
        k = fpos[j[rows_f]]
        wf, sf = w[rows_f], s[rows_f]
        if form == "additive":
            mu[rows_f] = np.logaddexp(
                np.logaddexp(P("log_E", "floor_layer", k), P("log_A", idx=j[rows_f]) - alpha[rows_f] * wf),
                P("log_B", "floor_layer", k) - beta[rows_f] * sf,
            )
        else:
            mu[rows_f] = np.logaddexp(mu[rows_f], P("log_floor", "floor_layer", k) + P("eta", "floor_layer", k) * sf)
    if include_noise:
        midx = layers["model_idx"].to_numpy()[j]
        sig = post["sigma"].transpose("model", "sample").to_numpy()[:, take][midx]
        mu = mu + sig * rng.standard_normal(mu.shape)
    q = (1 - interval) / 2
    g["fvu_mean"] = np.exp(mu).mean(1)
    g["fvu_lo"] = np.exp(np.quantile(mu, q, axis=1))
    g["fvu_hi"] = np.exp(np.quantile(mu, 1 - q, axis=1))
    return g


def compare_forms(idatas: Mapping[str, Any], *, ic: str = "loo", var_name: str = "log_fvu") -> pd.DataFrame:
    """PSIS-LOO comparison (``az.compare``) of Stage 1 fits of the same metrics table.

    Keys of ``idatas`` name the forms. Check the ``warning`` column (Pareto k > 0.7)."""
    import arviz as az

    if len(idatas) < 2:
        raise ValueError("idatas: need at least two fits to compare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(dict(idatas), ic=ic, var_name=var_name)
