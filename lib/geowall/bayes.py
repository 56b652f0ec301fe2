"""Shared Bayesian machinery: sampling, convergence checks, interval summaries, per-layer
tables stored inside InferenceData, and a closed-form Gaussian linear model.

Stage 1 (:mod:`geowall.scaling`), the Stage 2 law (:mod:`geowall.law`), transfer
(:mod:`geowall.transfer`) and floors (:mod:`geowall.floors`) all sample through
:func:`sample_model` and are checked by :func:`check_fit`; their intervals come from
``az.hdi``. :func:`gaussian_linear` is the exact (up to a grid over the residual sd)
posterior of a Gaussian linear model with known per-row measurement sds: Stage 2 uses
it where thousands of refits are needed (permutation nulls, leave-one-model-out), and
its agreement with the PyMC fit is tested.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, PrivateAttr

from geowall.executors import ENV_EXECUTOR

__all__ = [
    "Checks",
    "SamplerSettings",
    "quiet_pymc",
    "HDI_PROB",
    "FitDiagnosticsError",
    "resolve_sampler",
    "sample_model",
    "check_fit",
    "hdi",
    "summarise_draws",
    "put_table",
    "get_table",
    "gaussian_linear",
    "GaussianFit",
]

HDI_PROB = 0.94


class Checks(BaseModel):
    """Convergence thresholds every fit must pass (:func:`check_fit`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    rhat_max: float = Field(1.01, gt=1)
    ess_min: PositiveFloat = 400
    allow_divergences: int = Field(0, ge=0)
    bfmi_min: float = Field(0.3, ge=0)


class SamplerSettings(BaseModel):
    """How long and how carefully to sample, and what a fit must pass: the one object a
    profile's ``stage1`` / ``stage2`` section is, passed whole to :func:`sample_model`,
    :func:`check_fit`, Stage 1, the Stage 2 law and transfer.

    ``section`` (set by the profile, not by YAML) names the profile key that configured
    these settings, so that a failed :func:`check_fit` can say which key to change
    (:meth:`advice`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    draws: PositiveInt = 1000
    tune: PositiveInt = 1000
    chains: PositiveInt = 2
    target_accept: float = Field(
        0.9, gt=0.5, lt=1, description="NUTS target acceptance (higher: smaller steps, fewer divergences)"
    )
    sampler: Literal["auto", "nutpie", "pymc"] = Field(
        "auto", description="auto: nutpie where importable, else PyMC's NUTS"
    )
    checks: Checks = Field(default_factory=Checks)
    _section: str = PrivateAttr("sampler")

    @property
    def section(self) -> str:
        return self._section

    def named(self, section: str) -> SamplerSettings:
        """These settings, known as profile section ``section`` (for :meth:`advice`)."""
        self._section = section
        return self

    def advice(self, failures: Iterable[dict]) -> list[str]:
        """Which profile keys to change, and to what, after a fit failed its checks.

        ``failures`` are the structured records of a :class:`FitDiagnosticsError`
        (``diagnostic``, ``value``, ``threshold_value``). Rules: ESS grows about linearly
        with draws, so a bulk or tail ESS of v against a threshold t asks for draws x t / v
        plus 25% (rounded up to a hundred); divergences ask for the next target_accept of
        0.95, 0.99, 0.995 (smaller steps), and beyond that a reparameterisation or
        ``checks.allow_divergences``; a high R-hat or a low E-BFMI asks for twice the
        tuning (and R-hat for twice the draws); R-hat with one chain asks for two. One line
        per key, in the order of the keys.
        """
        sec = self.section
        want: dict[str, tuple[float, str]] = {}  # key -> (value, why); the largest value wins

        def ask(key: str, value: float, why: str) -> None:
            if key not in want or value > want[key][0]:
                want[key] = (value, why)

        notes: list[str] = []
        for f in failures:
            diag, v, t = f.get("diagnostic"), f.get("value"), f.get("threshold_value")
            numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            numeric = numeric and bool(np.isfinite(float(v)))
            if diag in ("ess_bulk", "ess_tail") and numeric:
                need = math.ceil(self.draws * float(t) / max(float(v), 1.0) * 1.25 / 100) * 100
                ask(
                    f"{sec}.draws",
                    max(need, self.draws + 100),
                    f"min {diag.split('_')[1]} ESS {float(v):.4g} < {float(t):g} with "
                    f"{self.chains} chains x {self.draws} draws",
                )
            elif diag == "r_hat" and not numeric:
                ask(f"{sec}.chains", 2, "R-hat needs at least 2 chains")
            elif diag == "r_hat":
                why = f"R-hat {float(v):.4g}, threshold <= {t}: the chains have not mixed"
                ask(f"{sec}.tune", 2 * self.tune, why)
                ask(f"{sec}.draws", 2 * self.draws, why)
            elif diag == "divergences" and numeric:
                nxt = _next_target_accept(self.target_accept)
                if nxt is not None:
                    ask(f"{sec}.target_accept", nxt, f"{int(v)} divergent transitions, allowed {t}")
                else:
                    notes.append(
                        f"{int(v)} divergences at {sec}.target_accept={self.target_accept}: the posterior "
                        f"needs a reparameterisation, or raise {sec}.checks.allow_divergences knowingly"
                    )
            elif diag == "bfmi" and numeric:
                ask(
                    f"{sec}.tune",
                    2 * self.tune,
                    f"E-BFMI {float(v):.3g}, threshold >= {t}: the energy is poorly explored",
                )
        lines = []
        for key in sorted(want):
            value, why = want[key]
            op = "to" if key.endswith(("target_accept", "chains")) else "to >="
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            lines.append(f"raise {key} {op} {shown} ({why})")
        return lines + notes


def _next_target_accept(ta: float) -> float | None:
    for step in (0.95, 0.99, 0.995):
        if ta < step - 1e-12:
            return step
    return None


class FitDiagnosticsError(RuntimeError):
    """A posterior failed a convergence diagnostic. ``.failures`` lists dicts with keys
    ``diagnostic``, ``variable``, ``value``, ``threshold`` (text) and ``threshold_value``;
    ``.advice`` the lines of :meth:`SamplerSettings.advice` (which profile key to change),
    also appended to the message after ``; to pass: ``."""

    def __init__(self, failures: list[dict[str, Any]], label: str = "fit", advice: Sequence[str] = ()):
        self.failures = failures
        self.advice = list(advice)
        lines = []
        for f in failures:
            where = f" at {f['variable']}" if f.get("variable") else ""
            lines.append(f"{f['diagnostic']} = {_fmt(f['value'])} (threshold {f['threshold']}){where}")
        tail = ("; to pass: " + "; ".join(self.advice)) if self.advice else ""
        super().__init__(f"{label} failed convergence diagnostics: " + "; ".join(lines) + tail)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


# --------------------------------------------------------------------------- sampling


@contextlib.contextmanager
def quiet_pymc():
    """PyMC's INFO lines off (``Sampling: [y]`` from every forward-sampling call): a law is
    fitted dozens of times per step (permutations, transfer directions), and each printed
    one line into the executed notebooks and the report. Warnings still show."""
    log = logging.getLogger("pymc")
    old = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(old)


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


def sample_model(
    model,
    settings: SamplerSettings | None = None,
    *,
    seed: int = 0,
    progressbar: bool = True,
    loglik_vars: Iterable[str] = (),
    prior_draws: int = 0,
    cores: int | None = None,
    nutpie_kwargs: dict | None = None,
):
    """Sample ``model`` with nutpie or PyMC's NUTS as ``settings`` say (draws, tune,
    chains, target_accept, sampler; defaults: :class:`SamplerSettings`); add
    log-likelihood and prior groups.

    ``cores`` defaults to ``min(chains, 2)``. Returns InferenceData with
    ``posterior.attrs['sampling_wall_s']`` and ``['sampler']`` set. The progress display is
    off in kernels started by ``geowall run`` (no one watches it there, and nutpie's live
    "Sampler Progress" table would be stored in the published notebook).
    """
    import pymc as pm

    st = settings or SamplerSettings()
    draws, tune, chains, target_accept = st.draws, st.tune, st.chains, st.target_accept
    progressbar = progressbar and not os.environ.get(ENV_EXECUTOR)
    sampler = resolve_sampler(st.sampler)
    cores = cores or min(chains, 2)
    t0 = time.perf_counter()
    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*idata_kwargs.*")
        if sampler == "nutpie":
            idata = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                random_seed=seed,
                nuts_sampler="nutpie",
                target_accept=target_accept,
                progressbar=progressbar,
                nuts_sampler_kwargs={"cores": cores, **(nutpie_kwargs or {})},
            )
        else:
            idata = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                cores=cores,
                random_seed=seed,
                target_accept=target_accept,
                progressbar=progressbar,
                compute_convergence_checks=False,
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
        with quiet_pymc():
            prior = pm.sample_prior_predictive(draws=prior_draws, model=model, random_seed=seed + 1)
        idata.extend(prior)
    idata.posterior.attrs["sampler"] = sampler
    idata.posterior.attrs["sampling_wall_s"] = wall
    idata.posterior.attrs["sampling_time_s"] = sampling_time
    return idata


# --------------------------------------------------------------------------- diagnostics


def check_fit(
    idata,
    settings: SamplerSettings | None = None,
    *,
    var_names: Iterable[str] | None = None,
    label: str = "fit",
) -> dict[str, Any]:
    """The one convergence check every fit goes through, with the thresholds of
    ``settings.checks`` (defaults: :class:`Checks`).

    Checks, over all posterior variables (or ``var_names``): max rank-normalised split
    R-hat <= ``rhat_max``; min bulk ESS and min tail ESS >= ``ess_min``; number of
    divergent transitions after tuning <= ``allow_divergences``; min per-chain E-BFMI
    >= ``bfmi_min``. Elements that are constant across all draws (e.g. a Deterministic
    fixed by data) are skipped. Fewer than two chains fails R-hat outright.

    Raises :class:`FitDiagnosticsError` naming every failed diagnostic, the variable
    (with coordinates) and the value, with ``settings.advice`` (which profile key to
    change, and to what) built from the same structured failures. Returns a dict with
    ``max_rhat, min_ess_bulk, min_ess_tail, divergences, min_bfmi, n_chains, n_draws``
    and the worst variables when all pass.
    """
    st = settings or SamplerSettings()
    c = st.checks
    rhat_max, ess_min, allow_divergences, bfmi_min = c.rhat_max, c.ess_min, c.allow_divergences, c.bfmi_min
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
        failures.append(
            {
                "diagnostic": "r_hat",
                "variable": None,
                "value": f"not computable with {n_chains} chain",
                "threshold": "needs >= 2 chains",
                "threshold_value": 2,
            }
        )
        summary["max_rhat"], summary["worst_rhat"] = np.nan, None
    else:
        # a non-finite R-hat on a non-constant element means a stuck chain: treat as failure
        rh_val, rh_var = worst(rhat.fillna(np.inf), True)
        summary["max_rhat"], summary["worst_rhat"] = rh_val, rh_var
        if not rh_val <= rhat_max:
            failures.append(
                {
                    "diagnostic": "r_hat",
                    "variable": rh_var,
                    "value": rh_val,
                    "threshold": f"<= {rhat_max}",
                    "threshold_value": rhat_max,
                }
            )
    for key, ds in (("ess_bulk", ess_b), ("ess_tail", ess_t)):
        v, name = worst(ds.fillna(0.0), False)
        summary[f"min_{key}"], summary[f"worst_{key}"] = v, name
        if not v >= ess_min:
            failures.append(
                {
                    "diagnostic": key,
                    "variable": name,
                    "value": v,
                    "threshold": f">= {ess_min}",
                    "threshold_value": ess_min,
                }
            )

    ss = idata["sample_stats"] if "sample_stats" in idata.groups() else None
    if ss is None or "diverging" not in ss:
        failures.append(
            {
                "diagnostic": "divergences",
                "variable": None,
                "value": "sample_stats.diverging missing",
                "threshold": f"<= {allow_divergences}",
                "threshold_value": allow_divergences,
            }
        )
        summary["divergences"] = np.nan
    else:
        ndiv = int(np.asarray(ss["diverging"].values).sum())
        summary["divergences"] = ndiv
        if ndiv > allow_divergences:
            failures.append(
                {
                    "diagnostic": "divergences",
                    "variable": "sample_stats.diverging",
                    "value": ndiv,
                    "threshold": f"<= {allow_divergences}",
                    "threshold_value": allow_divergences,
                }
            )
    if ss is not None and "energy" in ss:
        bfmi = np.atleast_1d(az.bfmi(idata))
        summary["min_bfmi"] = float(np.min(bfmi))
        if not summary["min_bfmi"] >= bfmi_min:
            failures.append(
                {
                    "diagnostic": "bfmi",
                    "variable": f"chain {int(np.argmin(bfmi))}",
                    "value": summary["min_bfmi"],
                    "threshold": f">= {bfmi_min}",
                    "threshold_value": bfmi_min,
                }
            )
    else:
        failures.append(
            {
                "diagnostic": "bfmi",
                "variable": None,
                "value": "sample_stats.energy missing",
                "threshold": f">= {bfmi_min}",
                "threshold_value": bfmi_min,
            }
        )
        summary["min_bfmi"] = np.nan
    if failures:
        raise FitDiagnosticsError(failures, label=label, advice=st.advice(failures))
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


# --------------------------------------------------------------------------- summaries


def hdi(x, prob: float = HDI_PROB) -> np.ndarray:
    """Highest-density interval(s) by ``az.hdi``: a 1-d sample gives ``[lo, hi]``; an
    ``(n_samples, k)`` array gives a ``(k, 2)`` array (one interval per column)."""
    import arviz as az

    x = np.asarray(x, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if x.ndim == 1:
            return np.asarray(az.hdi(x, hdi_prob=prob), float)
        # az.hdi reads a 2-d array as (chain, draw): give it (1, n, k)
        return np.asarray(az.hdi(x[None, :, :], hdi_prob=prob), float).reshape(x.shape[1], 2)


def summarise_draws(x: np.ndarray, prob: float = HDI_PROB) -> dict[str, float]:
    """Mean, sd and HDI (keys ``mean, sd, hdi_lo, hdi_hi``) of a 1-d sample."""
    x = np.asarray(x, float).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": np.nan, "sd": np.nan, "hdi_lo": np.nan, "hdi_hi": np.nan}
    lo, hi = hdi(x, prob) if len(x) > 2 else (x.min(), x.max())
    return {
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if len(x) > 1 else np.nan,
        "hdi_lo": float(lo),
        "hdi_hi": float(hi),
    }


# --------------------------------------------------------------------------- tables inside InferenceData


def put_table(idata, table: pd.DataFrame, *, dim: str, prefix: str, group: str = "constant_data") -> None:
    """Store a per-row table as variables ``<prefix><column>`` along ``dim`` in ``group``
    (created if missing): the per-layer tables travel with the fit as data, not JSON."""
    import xarray as xr

    if dim not in table.columns:
        raise ValueError(f"table: needs the index column {dim!r}")
    coord = table[dim].astype(str).to_numpy()
    data = {}
    for col in table.columns:
        if col == dim:
            continue
        v = table[col].to_numpy()
        if v.dtype == object or pd.api.types.is_string_dtype(table[col]):
            v = table[col].astype(str).to_numpy().astype(str)
        elif pd.api.types.is_bool_dtype(table[col]):
            v = v.astype(bool)
        data[f"{prefix}{col}"] = ((dim,), v)
    ds = xr.Dataset(data, coords={dim: coord})
    if group in idata.groups():
        existing = idata[group]
        clash = [v for v in ds.data_vars if v in existing]
        merged = existing.drop_vars(clash).merge(ds, join="outer") if dim in existing.dims else existing.merge(ds)
        idata[group] = merged
    else:
        idata.add_groups({group: ds})


def get_table(idata, *, dim: str, prefix: str, group: str = "constant_data") -> pd.DataFrame:
    """The table stored by :func:`put_table` (rows in ``dim`` order, ``dim`` as first column)."""
    if group not in idata.groups():
        raise ValueError(f"idata: no {group!r} group holding the {prefix!r} table")
    ds = idata[group]
    names = [v for v in ds.data_vars if str(v).startswith(prefix) and ds[v].dims == (dim,)]
    if not names:
        raise ValueError(f"idata.{group}: no {prefix!r} variables along {dim!r}")
    out = pd.DataFrame({dim: ds[dim].values.astype(str)})
    for v in names:
        vals = ds[v].values
        if vals.dtype.kind in "SU" or vals.dtype == object:
            vals = vals.astype(str)
        out[str(v)[len(prefix) :]] = vals
    return out


# --------------------------------------------------------------------------- closed-form Gaussian linear model


class GaussianFit:
    """Posterior of ``y = X beta + e``, ``e_i ~ N(0, sigma^2 + s_i^2)``, ``beta ~ N(0,
    prior_sd^2 I)``, ``sigma ~ HalfNormal(sigma_sd)``: for each ``sigma`` on a grid the
    posterior of ``beta`` is Gaussian in closed form; the grid points are weighted by
    their marginal likelihood times prior (a discrete mixture over ``sigma``)."""

    def __init__(self, sigmas, weights, means, covs, log_evidence):
        self.sigmas, self.weights, self.means, self.covs = sigmas, weights, means, covs
        self.log_evidence = log_evidence

    @property
    def mean(self) -> np.ndarray:
        return np.einsum("g,gp->p", self.weights, self.means)

    @property
    def cov(self) -> np.ndarray:
        m = self.mean
        d = self.means - m
        return np.einsum("g,gpq->pq", self.weights, self.covs) + np.einsum("g,gp,gq->pq", self.weights, d, d)

    def draws(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(beta (n, p), sigma (n,))`` drawn from the mixture."""
        g = rng.choice(len(self.sigmas), size=n, p=self.weights)
        p = self.means.shape[1]
        out = np.empty((n, p))
        for k in np.unique(g):
            sel = g == k
            L = np.linalg.cholesky(self.covs[k] + 1e-12 * np.eye(p))
            out[sel] = self.means[k] + rng.standard_normal((sel.sum(), p)) @ L.T
        return out, self.sigmas[g]


def gaussian_linear(
    X: np.ndarray, y: np.ndarray, s: np.ndarray | None = None, *, prior_sd=1.0, sigma_sd: float = 1.0, n_grid: int = 60
) -> GaussianFit:
    """Closed-form posterior of a Gaussian linear model (see :class:`GaussianFit`).

    ``prior_sd`` is a scalar or one value per column of ``X``. The ``sigma`` grid runs
    over ``(0, 4 sigma_sd]`` (HalfNormal mass beyond is < 1e-4) on quantiles of the prior.
    """
    from scipy.stats import halfnorm

    X = np.asarray(X, float)
    y = np.asarray(y, float)
    n, p = X.shape
    s2 = np.zeros(n) if s is None else np.asarray(s, float) ** 2
    P0 = np.diag(1.0 / np.broadcast_to(np.asarray(prior_sd, float), (p,)) ** 2)
    qs = (np.arange(n_grid) + 0.5) / n_grid
    sigmas = halfnorm.ppf(qs * (1 - 1e-4), scale=sigma_sd)  # equal prior mass per grid point
    logw, means, covs = np.empty(n_grid), np.empty((n_grid, p)), np.empty((n_grid, p, p))
    for g, sig in enumerate(sigmas):
        v = sig**2 + s2
        Wt = 1.0 / v
        A = P0 + (X * Wt[:, None]).T @ X
        Ai = np.linalg.inv(A)
        b = Ai @ (X.T @ (Wt * y))
        means[g], covs[g] = b, Ai
        # log marginal likelihood of y: N(0, V + X P0^-1 X^T), via the Woodbury identity
        r = y - X @ b
        quad = float(np.sum(Wt * r * y))
        _, logdetA = np.linalg.slogdet(A)
        logdetP0 = float(np.sum(np.log(np.diag(P0))))
        logw[g] = -0.5 * (quad + np.sum(np.log(v)) + logdetA - logdetP0 + n * np.log(2 * np.pi))
    mx = logw.max()
    w = np.exp(logw - mx)
    log_evidence = float(mx + np.log(w.mean()))
    return GaussianFit(sigmas, w / w.sum(), means, covs, log_evidence)
