"""Stage 1: Bayesian hierarchical scaling surfaces of SAE error vs width and sparsity.

One row of the metrics table is one trained (or loaded) SAE: ``model, layer, width,
l0, fvu, ...``. For every layer we fit a surface ``fvu(W, l0)``. The exponents are
partially pooled across the layers of each model (non-centred hierarchical priors,
per-model hyper-means, hyper-standard-deviations shared across models); nuisance
amplitudes and the floor are per-layer with fixed weakly informative priors, so that
"the data moved the floor" means *this layer's* data, not borrowed strength. The
likelihood is Normal on ``log fvu`` with a per-model noise scale ``sigma``.

Scales. Width and sparsity enter through normalised log scales

    w = log(W / W_ref[model]),   s = log(l0 / l0_ref[model])

with ``W_ref`` the geometric mean of the model's distinct widths and ``l0_ref`` the
geometric mean of the model's measured l0 (both overridable, both stored in
``idata.attrs['geowall_refs']``). Normalising makes amplitudes the error *at the
reference point*, which decorrelates them from the exponents and keeps NUTS well
conditioned.

The floor (both forms)
----------------------
``floor = lim_{W -> inf} L(W, l0_ref)``: the width asymptote at the reference
sparsity. With it the width exponent is ``alpha = -d log(L - floor) / d log W`` at
``l0_ref`` (the DESIGN definition). It is parametrised as ``floor = f * U`` with
``f = sigmoid(logit_f)`` in (0, 1) and ``U = 1.05 x`` the smallest fvu among the
layer's SAEs with ``l0 <= l0_ref`` (the width asymptote cannot exceed those errors
since L decreases in l0; 5% slack for evaluation noise; the layer's largest fvu if no
SAE is that sparse). Whether the floor is identified is judged per layer by
:func:`exponents`.

Forms
-----
``"additive"`` (Chinchilla-style, with an irreducible term)::

    L = E + A * (W/W_ref)^(-alpha) + B * (l0/l0_ref)^(-beta)

  evaluated as ``logsumexp(log E, log A - alpha*w, log B - beta*s)``, with
  ``floor = E + B`` and ``E = g * floor``, ``B = (1 - g) * floor``, ``g`` in (0, 1).
  ``E`` (reported as ``E_inf``) is the double asymptote W, l0 -> infinity; it is
  identified only through the l0 direction and is usually weak.

``"joint"`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", L(n, k))::

    log(L - E_irr(l0)) = a - alpha*w - beta*s + d*w*s,   E_irr(l0) = floor * exp(eta*s)

  log-linear in log W, log l0 and their product, plus an l0-dependent irreducible term
  (the full form, not simplified). In unnormalised terms
  ``log(L - E_irr) = a' + b log W + c log l0 + d log W log l0`` and the width exponent at
  sparsity l0 is ``-(b + d log l0)``; centring at ``l0_ref`` makes the parameter
  ``alpha = alpha(l0_ref) = -(b + d log l0_ref)`` directly. ``floor = E_irr(l0_ref)``.

Priors (weakly informative)
---------------------------
* ``log alpha_j = mu_log_alpha[m] + sd_log_alpha[m] * z_j`` (non-centred; location and
  spread per model ``m``); ``mu_log_alpha ~ N(log 0.3, 0.5)``,
  ``sd_log_alpha ~ HalfNormal(0.4)``: SAE width exponents in the literature sit in
  about 0.1-0.6 (Gao et al. 2024); the prior's 95% range of a model's typical exponent
  is ~0.11-0.8, and layers may differ by a factor ~2. The spread is per model because
  models differ in how alike their layers are (one spread shared by MiniLM and the
  synthetic zoo gave divergences and low ESS on the default profile's table).
* ``log beta_j`` likewise, ``mu ~ N(log 0.4, 0.6)``, ``sd ~ HalfNormal(0.4)``: TopK
  sparsity exponents are of the same order, less well known, so a looser prior.
* ``logit f_j ~ N(-1, 1)``: a priori the floor is typically ~1/4 of the best error
  of a sparse SAE, but anywhere in (0, 1) is allowed.
* additive: ``log A_j ~ N(log(median fvu of the layer / 2), 1)``: the width-reducible
  error at the reference is a sizeable share of the typical error, within ~e^2;
  ``logit g_j ~ N(0, 1.5)``: no preference for how the floor splits into E and B.
* joint: ``a_j ~ N(log(median fvu / 2), 1)`` as ``log A``; ``d_j`` hierarchical,
  ``mu ~ N(0, 0.1)``, ``sd ~ HalfNormal(0.05)``: Gao et al. find a small
  interaction; ``eta_j`` hierarchical, ``mu ~ N(-0.3, 0.5)``, ``sd ~ HalfNormal(0.3)``:
  the irreducible error falls slowly with l0.
* ``sigma[m] ~ HalfNormal(0.2)`` on log fvu: fvu noise across seeds and evaluation
  batches is a few per cent; 0.2 leaves room for misfit of the functional form.

The prior is sampled along with the posterior (group ``prior``) so that
:func:`exponents` can report how much the data moved each quantity.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from geowall.io import require_columns

__all__ = [
    "FORMS",
    "FitDiagnosticsError",
    "build_stage1_model",
    "fit_stage1",
    "prior_predictive",
    "prior_predictive_summary",
    "exponents",
    "check_fit",
    "compare_forms",
    "simulate_metrics",
    "layer_table",
    "surface_predictions",
    "resolve_sampler",
    "sample_model",
]

FORMS = ("additive", "joint")
REQUIRED_COLUMNS = ("model", "layer", "width", "l0", "fvu")
HDI_PROB = 0.94
FLOOR_BOUND_SLACK = 1.05  # floor bound U = 1.05 x smallest fvu with l0 <= l0_ref (room for noise)

PRIORS: dict[str, dict[str, str]] = {
    "additive": {
        "mu_log_alpha": "Normal(log 0.3, 0.5) per model: SAE width exponents are typically 0.1-0.6",
        "sd_log_alpha": "HalfNormal(0.4) per model: layers of one model differ by up to ~2x",
        "mu_log_beta": "Normal(log 0.4, 0.6) per model: sparsity exponents of the same order, looser",
        "sd_log_beta": "HalfNormal(0.4) per model",
        "logit_f": "Normal(-1, 1) per layer: floor ~1/4 of its data bound, anywhere in (0, 1) allowed",
        "log_A": "Normal(log(median fvu of layer / 2), 1): width-reducible error is a sizeable share",
        "logit_g": "Normal(0, 1.5): no preference how the floor splits into E (l0-irreducible) and B",
        "sigma": "HalfNormal(0.2) per model on log fvu: fvu noise is a few per cent, room for misfit",
    },
    "joint": {
        "mu_log_alpha": "Normal(log 0.3, 0.5) per model: alpha at l0_ref; width exponents typically 0.1-0.6",
        "sd_log_alpha": "HalfNormal(0.4) per model",
        "mu_log_beta": "Normal(log 0.4, 0.6) per model",
        "sd_log_beta": "HalfNormal(0.4) per model",
        "logit_f": "Normal(-1, 1) per layer: irreducible error at l0_ref as a fraction of its bound",
        "a": "Normal(log(median fvu of layer / 2), 1): reducible error at the reference point",
        "mu_d": "Normal(0, 0.1) per model: Gao et al. find a small log W x log l0 interaction",
        "sd_d": "HalfNormal(0.05) per model",
        "mu_eta": "Normal(-0.3, 0.5) per model: irreducible error falls slowly with l0",
        "sd_eta": "HalfNormal(0.3) per model",
        "sigma": "HalfNormal(0.2) per model on log fvu",
    },
}


class FitDiagnosticsError(RuntimeError):
    """A posterior failed a convergence diagnostic. ``.failures`` lists dicts with
    keys ``diagnostic``, ``variable``, ``value``, ``threshold``."""

    def __init__(self, failures: list[dict[str, Any]], label: str = "fit"):
        self.failures = failures
        lines = []
        for f in failures:
            where = f" at {f['variable']}" if f.get("variable") else ""
            lines.append(f"{f['diagnostic']} = {_fmt(f['value'])} (threshold {f['threshold']}){where}")
        super().__init__(f"{label} failed convergence diagnostics: " + "; ".join(lines))


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


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


def layer_table(metrics_df: pd.DataFrame, *, w_ref: float | Mapping[str, float] | None = None,
                l0_ref: float | Mapping[str, float] | None = None) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per-layer table (index order = the ``layer_id`` dimension) and per-model references."""
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
        rows.append({
            "layer_id": f"{m}/L{int(layer)}",
            "model": m,
            "layer": int(layer),
            "model_idx": models.index(m),
            "n_obs": int(len(sub)),
            "n_widths": int(len(widths)),
            "n_k": int(sub["k"].nunique() if "k" in sub.columns and sub["k"].notna().all()
                       else np.round(np.log(sub["l0"]), 1).nunique()),
            "width_span": float(widths.max() / widths.min()),
            "min_fvu": float(sub["fvu"].min()),
            "median_fvu": float(sub["fvu"].median()),
            "floor_bound": float(FLOOR_BOUND_SLACK * (sparse.min() if len(sparse) else sub["fvu"].max())),
            "showcase": bool(sub["showcase"].astype(bool).any()) if "showcase" in sub.columns else False,
        })
    return pd.DataFrame(rows), refs


def _ref_value(spec, model: str, default: float) -> float:
    if spec is None:
        return default
    if isinstance(spec, Mapping):
        return float(spec.get(model, default))
    return float(spec)


# --------------------------------------------------------------------------- model


def build_stage1_model(metrics_df: pd.DataFrame, *, form: str = "additive",
                       w_ref: float | Mapping[str, float] | None = None,
                       l0_ref: float | Mapping[str, float] | None = None):
    """Build the PyMC model. Returns ``(model, layers, refs)``.

    Dimensions: ``model`` (one per model), ``layer_id`` (one per model+layer, labels
    ``"<model>/L<layer>"``), ``obs`` (one per SAE row). Per-layer quantities of interest
    are Deterministics ``alpha``, ``beta`` and ``E`` over ``layer_id``.
    """
    import pymc as pm
    import pytensor.tensor as pt

    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    df = _validate_metrics(metrics_df).sort_values(["model", "layer", "width", "l0"]).reset_index(drop=True)
    layers, refs = layer_table(df, w_ref=w_ref, l0_ref=l0_ref)
    models = sorted(refs)
    lid = {(r.model, r.layer): i for i, r in enumerate(layers.itertuples())}
    layer_idx = np.array([lid[(m, int(l))] for m, l in zip(df["model"], df["layer"])])
    model_of_layer = layers["model_idx"].to_numpy()
    model_of_obs = model_of_layer[layer_idx]
    w = np.log(df["width"].to_numpy() / np.array([refs[m]["w_ref"] for m in df["model"]]))
    s = np.log(df["l0"].to_numpy() / np.array([refs[m]["l0_ref"] for m in df["model"]]))
    y = np.log(df["fvu"].to_numpy())
    log_med_layer = np.log(layers["median_fvu"].to_numpy() / 2.0)

    coords = {"model": models, "layer_id": layers["layer_id"].tolist(), "obs": np.arange(len(df))}
    with pm.Model(coords=coords) as model:
        w_d = pm.Data("w", w, dims="obs")
        s_d = pm.Data("s", s, dims="obs")
        li = pm.Data("layer_idx", layer_idx, dims="obs")
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

        # floor = width asymptote at the reference sparsity, lim_{W->inf} L(W, l0_ref),
        # as a fraction f in (0, 1) of its data bound U (not pooled across layers: each
        # layer's floor is identified, or not, by its own data)
        logit_f = pm.Normal("logit_f", -1.0, 1.0, dims="layer_id")
        log_floor = pm.Deterministic(
            "log_floor", pt.log(layers["floor_bound"].to_numpy()) + pt.log(pm.math.sigmoid(logit_f)), dims="layer_id"
        )
        if form == "additive":
            log_A = pm.Normal("log_A", log_med_layer, 1.0, dims="layer_id")
            # share g of the reference floor that is irreducible in l0 too: E = g*floor, B = (1-g)*floor
            logit_g = pm.Normal("logit_g", 0.0, 1.5, dims="layer_id")
            log_E = pm.Deterministic("log_E", log_floor + pt.log(pm.math.sigmoid(logit_g)), dims="layer_id")
            log_B = pm.Deterministic("log_B", log_floor + pt.log(pm.math.sigmoid(-logit_g)), dims="layer_id")
            pm.Deterministic("E", pt.exp(log_E), dims="layer_id")
            terms = pt.stack([
                log_E[li],
                log_A[li] - alpha[li] * w_d,
                log_B[li] - beta[li] * s_d,
            ])
            mu = pm.math.logsumexp(terms, axis=0, keepdims=False)
        else:
            a = pm.Normal("a", log_med_layer, 1.0, dims="layer_id")
            d = hier("d", 0.0, 0.1, 0.05)
            eta = hier("eta", -0.3, 0.5, 0.3)
            red = a[li] - alpha[li] * w_d - beta[li] * s_d + d[li] * w_d * s_d
            irr = log_floor[li] + eta[li] * s_d
            mu = pm.math.logsumexp(pt.stack([red, irr]), axis=0, keepdims=False)
        pm.Deterministic("floor", pt.exp(log_floor), dims="layer_id")
        pm.Normal("log_fvu", mu=mu, sigma=sigma[model_of_obs], observed=y, dims="obs")
    return model, layers, refs


def resolve_sampler(sampler: str = "auto") -> str:
    """``"auto"`` -> ``"nutpie"`` when importable, else ``"pymc"``."""
    if sampler not in ("auto", "nutpie", "pymc"):
        raise ValueError(f"sampler: expected 'auto', 'nutpie' or 'pymc', got {sampler!r}")
    if sampler == "auto":
        try:
            import nutpie  # noqa: F401  (availability probe)
            return "nutpie"
        except ImportError:
            return "pymc"
    return sampler


def sample_model(model, *, draws: int, tune: int, chains: int, seed: int, sampler: str = "auto",
                 target_accept: float = 0.9, progressbar: bool = True, loglik_vars: Iterable[str] = (),
                 prior_draws: int = 0, cores: int | None = None, nutpie_kwargs: dict | None = None):
    """Sample ``model`` with nutpie or PyMC's NUTS; add log-likelihood and prior groups.

    ``cores`` defaults to ``min(chains, 2)``. Returns InferenceData with
    ``posterior.attrs['sampling_wall_s']`` and ``['sampler']`` set.
    """
    import pymc as pm

    sampler = resolve_sampler(sampler)
    cores = cores or min(chains, 2)
    t0 = time.perf_counter()
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*idata_kwargs.*")
        if sampler == "nutpie":
            idata = pm.sample(
                draws=draws, tune=tune, chains=chains, random_seed=seed, nuts_sampler="nutpie",
                target_accept=target_accept, progressbar=progressbar,
                nuts_sampler_kwargs={"cores": cores, **(nutpie_kwargs or {})},
            )
        else:
            idata = pm.sample(
                draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed,
                target_accept=target_accept, progressbar=progressbar, compute_convergence_checks=False,
            )
    wall = time.perf_counter() - t0
    # nutpie (0.16) stores warm-up draws in extra groups; keep only what ArviZ needs.
    for grp in ("warmup_posterior", "warmup_sample_stats"):
        if grp in idata.groups():
            del idata[grp]
    # nutpie also returns the unconstrained copies (``x_log__``); PyMC does not: drop them
    unconstrained = [v for v in idata.posterior.data_vars if str(v).endswith("__")]
    if unconstrained:
        idata.posterior = idata.posterior.drop_vars(unconstrained)
    sampling_time = float(idata.posterior.attrs.get("sampling_time", wall))
    loglik_vars = list(loglik_vars)
    if loglik_vars:
        pm.compute_log_likelihood(idata, var_names=loglik_vars, model=model, progressbar=False)
    if prior_draws:
        prior = pm.sample_prior_predictive(draws=prior_draws, model=model, random_seed=seed + 1)
        idata.extend(prior)
    idata.posterior.attrs["sampler"] = sampler
    idata.posterior.attrs["sampling_wall_s"] = wall
    idata.posterior.attrs["sampling_time_s"] = sampling_time
    return idata


def fit_stage1(metrics_df: pd.DataFrame, *, form: str = "additive", draws: int = 1000, chains: int = 2,
               tune: int = 1000, seed: int = 0, sampler: str = "auto", target_accept: float = 0.9,
               prior_draws: int = 1000, w_ref: float | Mapping[str, float] | None = None,
               l0_ref: float | Mapping[str, float] | None = None, progressbar: bool = True,
               nutpie_kwargs: dict | None = None):
    """Fit the Stage 1 hierarchical scaling surface; return ``arviz.InferenceData``.

    Groups: ``posterior`` (hyper-parameters, non-centred offsets ``z_*``, per-layer
    parameters and the per-layer Deterministics ``alpha``, ``beta``, ``floor`` and, for
    the additive form, ``E``), ``sample_stats``,
    ``log_likelihood`` (``log_fvu``, for :func:`compare_forms` / ``az.loo``),
    ``prior`` and ``prior_predictive`` (``prior_draws`` draws; used for the
    prior-vs-posterior contraction in :func:`exponents`), ``observed_data``,
    ``constant_data``.

    ``idata.attrs``: ``geowall_stage`` = "stage1", ``geowall_form``, ``geowall_layers``
    (JSON records of :func:`layer_table`, in ``layer_id`` order), ``geowall_refs`` (JSON:
    per-model ``w_ref``, ``l0_ref``), ``geowall_priors`` (JSON), ``geowall_sampler``,
    ``geowall_seed``. The posterior also carries non-index coordinates ``layer_model``
    and ``layer_number`` along ``layer_id``.

    Sampler: nutpie where available (``sampler="auto"``), else PyMC's NUTS; ``cores =
    min(chains, 2)``. Check the result with :func:`check_fit` before using it.

    Bad input (missing column, non-positive or non-finite width/l0/fvu, unknown form,
    non-positive draws) raises ``ValueError`` naming it before anything is compiled.
    """
    for name, v in (("draws", draws), ("chains", chains), ("tune", tune)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    model, layers, refs = build_stage1_model(metrics_df, form=form, w_ref=w_ref, l0_ref=l0_ref)
    # nutpie_kwargs go to nutpie.sample. Its low-rank mass matrix
    # ({"low_rank_modified_mass_matrix": True}) cuts leapfrog steps ~3x here but mixed the
    # hierarchical sds worse (min bulk ESS 242 vs 802 per 2000 draws in
    # tests/benchmarks/bench_stage1.py), so the default diagonal adaptation is kept.
    idata = sample_model(model, draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler,
                         target_accept=target_accept, progressbar=progressbar, loglik_vars=["log_fvu"],
                         prior_draws=prior_draws, nutpie_kwargs=nutpie_kwargs)
    _annotate(idata, layers)
    idata.attrs.update({
        "geowall_stage": "stage1",
        "geowall_form": form,
        "geowall_layers": layers.to_json(orient="records"),
        "geowall_refs": json.dumps(refs),
        "geowall_priors": json.dumps(PRIORS[form]),
        "geowall_sampler": idata.posterior.attrs["sampler"],
        "geowall_seed": int(seed),
    })
    return idata


def _annotate(idata, layers: pd.DataFrame) -> None:
    for grp in ("posterior", "prior"):
        if grp in idata.groups() and "layer_id" in idata[grp].dims:
            idata[grp] = idata[grp].assign_coords(
                layer_model=("layer_id", layers["model"].to_numpy().astype(str)),
                layer_number=("layer_id", layers["layer"].to_numpy().astype(int)),
            )


def stored_layers(idata) -> pd.DataFrame:
    """The layer table stored by :func:`fit_stage1` (``layer_id`` order)."""
    from io import StringIO

    return pd.read_json(StringIO(idata.attrs["geowall_layers"]), orient="records")


def prior_predictive(metrics_df: pd.DataFrame, *, form: str = "additive", draws: int = 500, seed: int = 0,
                     w_ref=None, l0_ref=None):
    """Prior predictive draws for the Stage 1 model (no posterior sampling).

    Returns InferenceData with ``prior`` (incl. ``alpha``, ``beta``, ``E``),
    ``prior_predictive`` (``log_fvu``) and ``observed_data``; summarise it with
    :func:`prior_predictive_summary`.
    """
    import pymc as pm

    model, layers, refs = build_stage1_model(metrics_df, form=form, w_ref=w_ref, l0_ref=l0_ref)
    idata = pm.sample_prior_predictive(draws=draws, model=model, random_seed=seed)
    _annotate(idata, layers)
    idata.attrs.update({"geowall_form": form, "geowall_layers": layers.to_json(orient="records"),
                        "geowall_refs": json.dumps(refs)})
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
    layer_idx = idata.constant_data["layer_idx"].to_numpy() if "constant_data" in idata.groups() else None
    if layer_idx is None:
        raise ValueError("idata: needs constant_data.layer_idx (produced by prior_predictive / fit_stage1)")
    rows = []
    for i, r in layers.iterrows():
        sel = layer_idx == i
        rows.append({
            "model": r["model"], "layer": r["layer"],
            "fvu_obs_min": float(np.exp(obs[sel].min())), "fvu_obs_max": float(np.exp(obs[sel].max())),
            f"fvu_pp_lo{int(interval*100)}": float(np.exp(np.median(lo[sel]))),
            f"fvu_pp_hi{int(interval*100)}": float(np.exp(np.median(hi[sel]))),
            "frac_obs_inside": float(np.mean((obs[sel] >= lo[sel]) & (obs[sel] <= hi[sel]))),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- summaries


def _hdi(x: np.ndarray, prob: float = HDI_PROB) -> tuple[float, float]:
    """Highest-density interval of a 1-d sample (ArviZ's definition)."""
    x = np.sort(np.asarray(x, dtype=float))
    n = len(x)
    k = int(np.floor(prob * n))
    if k < 1 or n < 2:
        return float(x.min()), float(x.max())
    widths = x[k:] - x[: n - k]
    i = int(np.argmin(widths))
    return float(x[i]), float(x[i + k])


def _draws(group, var: str) -> np.ndarray:
    """(n_samples, layer) array of a per-layer variable."""
    return group[var].stack(sample=("chain", "draw")).transpose("sample", "layer_id").to_numpy()


def exponents(idata, metrics_df: pd.DataFrame | None = None, *, min_widths: int = 4,
              max_sd_ratio: float = 0.5, min_width_span: float = 8.0) -> pd.DataFrame:
    """Per model+layer exponent and floor summaries (the ``exponents.parquet`` table).

    Columns: ``model, layer, form, alpha_mean, alpha_sd, alpha_hdi_3, alpha_hdi_97,
    alpha_prior_sd, alpha_sd_ratio`` (posterior sd / prior sd: small = the data moved
    it), the same for ``beta``, ``floor`` (width asymptote at ``l0_ref``, both forms) and
    ``E_inf`` (additive form's double asymptote; NaN for the joint form), then
    ``n_obs, n_widths, width_span, n_k`` (distinct k, or distinct l0 to 10% when there is
no k column), ``l0_ref, w_ref, floor_identified, showcase``.
    Intervals are 94% highest-density intervals.

    Floor identification rule (``floor_identified``): True only where all of
    (a) ``floor_sd_ratio <= max_sd_ratio`` (default 0.5: this layer's data at least
    halved the prior sd of its floor; the floor is not pooled, so this is the layer's
    own evidence); (b) ``n_widths >= min_widths`` (default 4) distinct widths spanning
    at least ``min_width_span`` (default 8x): a width asymptote needs curvature in W to
    be seen; (c) the upper end of the 94% HDI of ``f = floor / U`` is < 0.99, i.e. the
    floor is not merely pressed against the smallest observed error. The prior sds come
    from the ``prior`` group sampled by :func:`fit_stage1`; without it they are NaN and
    no floor is marked identified. Exponents are pooled, so ``alpha_sd_ratio`` includes
    strength borrowed from the model's other layers.

    ``showcase`` is passed through from ``metrics_df['showcase']`` (any SAE of the layer
    flagged) when present, else from the layer table stored at fit time.
    """
    layers = stored_layers(idata)
    form = idata.attrs.get("geowall_form", "additive")
    refs = json.loads(idata.attrs["geowall_refs"])
    post = idata.posterior
    prior = idata["prior"] if "prior" in idata.groups() else None
    out = layers[["model", "layer", "n_obs", "n_widths", "width_span", "n_k"]].copy()
    out.insert(2, "form", form)
    for var, col in (("alpha", "alpha"), ("beta", "beta"), ("floor", "floor"), ("E", "E_inf")):
        if var not in post:
            for suf in ("mean", "sd", "hdi_3", "hdi_97", "prior_sd", "sd_ratio"):
                out[f"{col}_{suf}"] = np.nan
            continue
        d = _draws(post, var)
        out[f"{col}_mean"] = d.mean(0)
        out[f"{col}_sd"] = d.std(0, ddof=1)
        hd = np.array([_hdi(d[:, j]) for j in range(d.shape[1])])
        out[f"{col}_hdi_3"] = hd[:, 0]
        out[f"{col}_hdi_97"] = hd[:, 1]
        if prior is not None and var in prior:
            p = _draws(prior, var)
            out[f"{col}_prior_sd"] = p.std(0, ddof=1)
        else:
            out[f"{col}_prior_sd"] = np.nan
        out[f"{col}_sd_ratio"] = out[f"{col}_sd"] / out[f"{col}_prior_sd"]
    out["l0_ref"] = [refs[m]["l0_ref"] for m in out["model"]]
    out["w_ref"] = [refs[m]["w_ref"] for m in out["model"]]
    if "logit_f" in post:
        f = 1.0 / (1.0 + np.exp(-_draws(post, "logit_f")))
        f_hi = np.array([_hdi(f[:, j])[1] for j in range(f.shape[1])])
    else:
        f_hi = np.full(len(out), np.nan)
    out["floor_identified"] = (
        (out["floor_sd_ratio"] <= max_sd_ratio)
        & (out["n_widths"] >= min_widths)
        & (out["width_span"] >= min_width_span)
        & (f_hi < 0.99)
    ).fillna(False).astype(bool)
    if metrics_df is not None and "showcase" in metrics_df.columns:
        sc = (metrics_df.assign(model=metrics_df["model"].astype(str), layer=metrics_df["layer"].astype(int))
              .groupby(["model", "layer"])["showcase"].apply(lambda v: bool(v.astype(bool).any())))
        out["showcase"] = [bool(sc.get((m, l), False)) for m, l in zip(out["model"], out["layer"])]
    else:
        out["showcase"] = layers["showcase"].astype(bool).to_numpy()
    return out.reset_index(drop=True)


def surface_predictions(idata, grid: pd.DataFrame, *, interval: float = 0.94, include_noise: bool = False,
                        max_draws: int = 400, seed: int = 0) -> pd.DataFrame:
    """Posterior mean and interval of fvu on ``grid`` (columns model, layer, width, l0),
    for plotting fitted surfaces over the data. ``include_noise`` adds the log-normal
    observation noise (posterior predictive band instead of the mean-surface band)."""
    layers = stored_layers(idata)
    refs = json.loads(idata.attrs["geowall_refs"])
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

    def P(name):
        return post[name].transpose("layer_id", "sample").to_numpy()[:, take][j]

    alpha, beta = P("alpha"), P("beta")
    if form == "additive":
        mu = np.logaddexp(np.logaddexp(P("log_E"), P("log_A") - alpha * w), P("log_B") - beta * s)
    else:
        mu = np.logaddexp(P("a") - alpha * w - beta * s + P("d") * w * s, P("log_floor") + P("eta") * s)
    if include_noise:
        midx = layers["model_idx"].to_numpy()[j]
        sig = post["sigma"].transpose("model", "sample").to_numpy()[:, take][midx]
        mu = mu + sig * rng.standard_normal(mu.shape)
    q = (1 - interval) / 2
    g["fvu_mean"] = np.exp(mu).mean(1)
    g["fvu_lo"] = np.exp(np.quantile(mu, q, axis=1))
    g["fvu_hi"] = np.exp(np.quantile(mu, 1 - q, axis=1))
    return g


# --------------------------------------------------------------------------- diagnostics


def check_fit(idata, *, rhat_max: float = 1.01, ess_min: float = 400, allow_divergences: int = 0,
              bfmi_min: float = 0.3, var_names: Iterable[str] | None = None, label: str = "fit") -> dict[str, Any]:
    """The one convergence check every fit goes through.

    Checks, over all posterior variables (or ``var_names``): max rank-normalised split
    R-hat <= ``rhat_max``; min bulk ESS and min tail ESS >= ``ess_min``; number of
    divergent transitions after tuning <= ``allow_divergences``; min per-chain E-BFMI
    >= ``bfmi_min``. Elements that are constant across all draws (e.g. a Deterministic
    fixed by data) are skipped. Fewer than two chains fails R-hat outright.

    Raises :class:`FitDiagnosticsError` naming every failed diagnostic, the variable
    (with coordinates) and the value. Returns a dict with ``max_rhat, min_ess_bulk,
    min_ess_tail, divergences, min_bfmi, n_chains, n_draws`` and the worst variables
    when all pass.
    """
    import arviz as az

    if "posterior" not in idata.groups():
        raise ValueError("idata: has no posterior group")
    post = idata.posterior
    if var_names is not None:
        post = post[list(var_names)]
    n_chains, n_draws = int(post.sizes["chain"]), int(post.sizes["draw"])
    failures: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"n_chains": n_chains, "n_draws": n_draws}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(post)
        ess_b = az.ess(post, method="bulk")
        ess_t = az.ess(post, method="tail")

    def worst(ds, pick_max: bool):
        best_val, best_name = (-np.inf if pick_max else np.inf), None
        for name, da in ds.data_vars.items():
            vals = np.asarray(da.values, dtype=float)
            const = _constant_mask(post[name])
            vals = np.where(const, np.nan, vals)
            if np.all(np.isnan(vals)):
                continue
            idx = np.nanargmax(vals) if pick_max else np.nanargmin(vals)
            v = float(vals.flat[idx])
            if (pick_max and v > best_val) or (not pick_max and v < best_val):
                best_val, best_name = v, _label(da, name, idx)
        return best_val, best_name

    if n_chains < 2:
        failures.append({"diagnostic": "r_hat", "variable": None, "value": f"not computable with {n_chains} chain",
                         "threshold": "needs >= 2 chains"})
        summary["max_rhat"], summary["worst_rhat"] = np.nan, None
    else:
        # a non-finite R-hat on a non-constant element means a stuck chain: treat as failure
        rh_val, rh_var = worst(rhat.fillna(np.inf), True)
        summary["max_rhat"], summary["worst_rhat"] = rh_val, rh_var
        if not rh_val <= rhat_max:
            failures.append({"diagnostic": "r_hat", "variable": rh_var, "value": rh_val, "threshold": f"<= {rhat_max}"})
    for key, ds in (("ess_bulk", ess_b), ("ess_tail", ess_t)):
        v, name = worst(ds.fillna(0.0), False)
        summary[f"min_{key}"], summary[f"worst_{key}"] = v, name
        if not v >= ess_min:
            failures.append({"diagnostic": key, "variable": name, "value": v, "threshold": f">= {ess_min}"})

    ss = idata["sample_stats"] if "sample_stats" in idata.groups() else None
    if ss is None or "diverging" not in ss:
        failures.append({"diagnostic": "divergences", "variable": None, "value": "sample_stats.diverging missing",
                         "threshold": f"<= {allow_divergences}"})
        summary["divergences"] = np.nan
    else:
        ndiv = int(np.asarray(ss["diverging"].values).sum())
        summary["divergences"] = ndiv
        if ndiv > allow_divergences:
            failures.append({"diagnostic": "divergences", "variable": "sample_stats.diverging", "value": ndiv,
                             "threshold": f"<= {allow_divergences}"})
    if ss is not None and "energy" in ss:
        bfmi = np.atleast_1d(az.bfmi(idata))
        summary["min_bfmi"] = float(np.min(bfmi))
        if not summary["min_bfmi"] >= bfmi_min:
            failures.append({"diagnostic": "bfmi", "variable": f"chain {int(np.argmin(bfmi))}",
                             "value": summary["min_bfmi"], "threshold": f">= {bfmi_min}"})
    else:
        failures.append({"diagnostic": "bfmi", "variable": None, "value": "sample_stats.energy missing",
                         "threshold": f">= {bfmi_min}"})
        summary["min_bfmi"] = np.nan
    if failures:
        raise FitDiagnosticsError(failures, label=label)
    return summary


def _constant_mask(da) -> np.ndarray:
    v = np.asarray(da.values, dtype=float)
    flat = v.reshape(v.shape[0] * v.shape[1], -1)
    return (np.nanmax(flat, 0) - np.nanmin(flat, 0) == 0).reshape(v.shape[2:]) if flat.size else np.array(False)


def _label(da, name: str, flat_idx) -> str:
    if da.ndim == 0:
        return name
    idx = np.unravel_index(int(flat_idx), da.shape)
    parts = []
    for dim, i in zip(da.dims, idx):
        parts.append(str(da[dim].values[i]) if dim in da.coords else str(i))
    return f"{name}[{', '.join(parts)}]"


def compare_forms(idatas: Mapping[str, Any], *, ic: str = "loo", var_name: str = "log_fvu") -> pd.DataFrame:
    """PSIS-LOO comparison (``az.compare``) of Stage 1 fits of the same metrics table.

    Keys of ``idatas`` name the forms. Check the ``warning`` column (Pareto k > 0.7)."""
    import arviz as az

    if len(idatas) < 2:
        raise ValueError("idatas: need at least two fits to compare")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(dict(idatas), ic=ic, var_name=var_name)


# --------------------------------------------------------------------------- simulation


@dataclass
class SimulatedStage1:
    metrics: pd.DataFrame
    truth: pd.DataFrame  # model, layer, alpha, beta, E, A, B


def simulate_metrics(*, models: Iterable[str] = ("simA",), n_layers: int = 8,
                     widths: Iterable[int] = (768, 1536, 3072, 6144), ks: Iterable[int] = (8, 16, 32),
                     showcase_layers: Iterable[int] = (), showcase_widths: Iterable[int] = (384, 768, 1536, 3072, 6144, 12288, 24576),
                     alpha_range=(0.15, 0.6), beta_range=(0.2, 0.5), floor_range=(0.01, 0.06),
                     A: float = 0.15, B: float = 0.1, noise: float = 0.02, seed: int = 0,
                     alpha: np.ndarray | None = None,
                     layer_widths: Mapping[int, Iterable[int]] | None = None) -> SimulatedStage1:
    """Metrics table from known additive laws ``fvu = E + A*(W/W0)^-alpha + B*(l0/k0)^-beta``
    with log-normal noise ``noise`` (W0 = geometric mean width, k0 = geometric mean k).
    ``truth`` holds the per-layer parameters and ``floor``, the width asymptote at the
    l0_ref that :func:`fit_stage1` will use.

    Measured ``l0`` is ``k`` times U(0.95, 1). Layer ``i`` of each model has true alpha
    spread over ``alpha_range`` (shuffled), or given by ``alpha``. Layers in
    ``showcase_layers`` use ``showcase_widths``; ``layer_widths`` overrides the widths of
    given layers (e.g. a Gemma-Scope-like layer with two widths).
    """
    rng = np.random.default_rng(seed)
    widths, ks, sw = list(widths), list(ks), list(showcase_widths)
    showcase_layers = set(showcase_layers)
    w0 = float(np.exp(np.mean(np.log(widths))))
    k0 = float(np.exp(np.mean(np.log(ks))))
    rows, truth = [], []
    for m in models:
        if alpha is None:
            a_true = rng.permutation(np.linspace(*alpha_range, n_layers))
        else:
            a_true = np.asarray(alpha, float)
        for layer in range(n_layers):
            a = float(a_true[layer])
            b = float(rng.uniform(*beta_range))
            e = float(rng.uniform(*floor_range))
            amp_a = A * float(np.exp(rng.normal(0, 0.2)))
            amp_b = B * float(np.exp(rng.normal(0, 0.2)))
            truth.append({"model": m, "layer": layer, "alpha": a, "beta": b, "E": e, "A": amp_a, "B": amp_b})
            lw = (layer_widths or {}).get(layer)
            for W in (list(lw) if lw is not None else sw if layer in showcase_layers else widths):
                for k in ks:
                    l0 = k * rng.uniform(0.95, 1.0)
                    f = e + amp_a * (W / w0) ** (-a) + amp_b * (l0 / k0) ** (-b)
                    fvu = f * float(np.exp(rng.normal(0, noise)))
                    rows.append({
                        "model": m, "layer": layer, "width": int(W), "k": int(k), "l0": l0, "fvu": fvu,
                        "mse": fvu, "dead_frac": 0.0, "n_tokens": 4096, "source": "simulated",
                        "sae_id": f"{m}/L{layer}/W{W}/k{k}", "train_tokens": 100_000, "seed": seed,
                        "showcase": layer in showcase_layers,
                    })
    metrics, truth = pd.DataFrame(rows), pd.DataFrame(truth)
    # the floor as fit_stage1 defines it: width asymptote at l0_ref (geometric mean l0)
    l0_ref = metrics.groupby("model")["l0"].apply(lambda v: float(np.exp(np.mean(np.log(v)))))
    truth["l0_ref"] = truth["model"].map(l0_ref)
    truth["floor"] = truth["E"] + truth["B"] * (truth["l0_ref"] / k0) ** (-truth["beta"])
    return SimulatedStage1(metrics, truth)
