"""Simulated data with known answers, for the tests, the benchmarks and simulation-based
calibration. No pipeline step computes with it; notebook 03 only reads a stored SBC run
through :func:`sbc_uniformity`.

Stage 1: SAE metric grids from known power laws with or without a floor
(:func:`simulate_power_law`, :func:`simulate_metrics`), the Gemma Scope grid
(:func:`grid_from_gemma_scope`), and simulation-based calibration of the Stage 1 surface
(Talts et al. 2018: :func:`simulation_based_calibration`, :func:`sbc_uniformity`).

Stage 2: geometry tables and exponents from a known linear law
(:func:`simulate_geometry`), the between-model trap (:func:`simulate_between_models`:
model differences that a geometry-only law would mistake for geometry) and the depth
confound (:func:`simulate_depth_confound`: geometry that tracks depth).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from geowall import bayes
from geowall.bayes import SamplerSettings
from geowall.geometry import SUMMARY_NAMES as SUMMARIES
from geowall.layers import relative_depth
from geowall.scaling import build_stage1_model
from geowall.sources import gemma_scope

__all__ = [
    "SimulatedStage1",
    "simulate_metrics",
    "simulate_power_law",
    "grid_from_gemma_scope",
    "simulation_based_calibration",
    "sbc_uniformity",
    "simulate_geometry",
    "simulate_between_models",
    "simulate_depth_confound",
]


# --------------------------------------------------------------------------- Stage 1: SAE grids


@dataclass
class SimulatedStage1:
    metrics: pd.DataFrame
    truth: pd.DataFrame  # model, layer, alpha, beta, E, A, B, floor


def simulate_metrics(
    *,
    models: Iterable[str] = ("simA",),
    n_layers: int = 8,
    widths: Iterable[int] = (768, 1536, 3072, 6144),
    ks: Iterable[int] = (8, 16, 32),
    showcase_layers: Iterable[int] = (),
    showcase_widths: Iterable[int] = (384, 768, 1536, 3072, 6144, 12288, 24576),
    alpha_range=(0.15, 0.6),
    beta_range=(0.2, 0.5),
    floor_range=(0.01, 0.06),
    A: float = 0.15,
    B: float = 0.1,
    noise: float = 0.02,
    seed: int = 0,
    alpha: np.ndarray | None = None,
    layer_widths: Mapping[int, Iterable[int]] | None = None,
) -> SimulatedStage1:
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
            for W in list(lw) if lw is not None else sw if layer in showcase_layers else widths:
                for k in ks:
                    l0 = k * rng.uniform(0.95, 1.0)
                    f = e + amp_a * (W / w0) ** (-a) + amp_b * (l0 / k0) ** (-b)
                    fvu = f * float(np.exp(rng.normal(0, noise)))
                    rows.append(
                        {
                            "model": m,
                            "layer": layer,
                            "width": int(W),
                            "k": int(k),
                            "l0": l0,
                            "fvu": fvu,
                            "mse": fvu,
                            "dead_frac": 0.0,
                            "n_tokens": 4096,
                            "source": "simulated",
                            "sae_id": f"{m}/L{layer}/W{W}/k{k}",
                            "train_tokens": 100_000,
                            "seed": seed,
                            "showcase": layer in showcase_layers,
                        }
                    )
    metrics, truth = pd.DataFrame(rows), pd.DataFrame(truth)
    # the floor as fit_stage1 defines it: width asymptote at l0_ref (geometric mean l0)
    l0_ref = metrics.groupby("model")["l0"].apply(lambda v: float(np.exp(np.mean(np.log(v)))))
    truth["l0_ref"] = truth["model"].map(l0_ref)
    truth["floor"] = truth["E"] + truth["B"] * (truth["l0_ref"] / k0) ** (-truth["beta"])
    return SimulatedStage1(metrics, truth)


def simulate_power_law(
    grid: pd.DataFrame,
    *,
    alpha,
    beta: float | Iterable[float] = 0.35,
    A: float = 0.2,
    noise: float = 0.02,
    seed: int = 0,
    model: str = "sim",
) -> SimulatedStage1:
    """A pure power law, no floor: ``fvu = A (W/W0)^-alpha (l0/l0_0)^-beta`` times
    log-normal noise, on ``grid`` (columns ``layer, width, l0``; W0, l0_0 the geometric
    means the fit will use), ``alpha`` one value per distinct layer (in sorted order).
    The truth's floor is 0 and its alpha is the plain width exponent."""
    rng = np.random.default_rng(seed)
    g = grid[["layer", "width", "l0"]].copy()
    g["layer"] = g["layer"].astype(int)
    layers_ = sorted(g["layer"].unique())
    a = dict(zip(layers_, np.broadcast_to(np.asarray(alpha, float), (len(layers_),))))
    b = dict(zip(layers_, np.broadcast_to(np.asarray(beta, float), (len(layers_),))))
    w0 = float(np.exp(np.mean(np.log(np.unique(g["width"])))))
    l00 = float(np.exp(np.mean(np.log(g["l0"]))))
    f = A * (g["width"] / w0) ** (-g["layer"].map(a)) * (g["l0"] / l00) ** (-g["layer"].map(b))
    g["fvu"] = f.to_numpy() * np.exp(rng.normal(0, noise, len(g)))
    g.insert(0, "model", model)
    g["k"] = np.round(g["l0"]).astype(int)
    truth = pd.DataFrame(
        {
            "model": model,
            "layer": layers_,
            "alpha": [a[l] for l in layers_],
            "beta": [b[l] for l in layers_],
            "floor": 0.0,
        }
    )
    return SimulatedStage1(g.reset_index(drop=True), truth)


def grid_from_gemma_scope(
    n_layers: int = 6, *, model: str = "gemma-2-2b", layer: int = 0, per_width: int | None = 4, scale: float = 1 / 64
) -> pd.DataFrame:
    """A ``layer, width, l0`` grid with the shape of a typical Gemma Scope layer (read
    offline from :func:`geowall.sources.gemma_scope.manifest`): that layer's widths (two,
    4x apart, for 62 of the 68 layers) and, per width, its first ``per_width`` nominal l0
    values (all with ``None``), repeated for ``n_layers`` simulated layers. Widths are
    multiplied by ``scale`` (only ratios matter to the fit)."""

    man = gemma_scope.manifest()
    sub = man[(man["model"] == model) & (man["layer"] == layer)]
    if len(sub) == 0:
        raise ValueError(f"gemma_scope.manifest(): no SAEs for {model} layer {layer}")
    if per_width is not None:
        sub = sub.groupby("width", sort=True).head(per_width)
    one = pd.DataFrame(
        {"width": np.round(sub["width"].to_numpy() * scale).astype(int), "l0": sub["l0"].to_numpy(float)}
    )
    return pd.concat([one.assign(layer=i) for i in range(n_layers)], ignore_index=True)


# --------------------------------------------------------------------------- Stage 1: simulation-based calibration


def simulation_based_calibration(
    metrics_df: pd.DataFrame,
    *,
    n_sims: int = 100,
    form: str = "additive",
    settings: SamplerSettings | None = None,
    thin: int = 4,
    floors: str = "grid",
    seed: int = 0,
) -> pd.DataFrame:
    """Simulation-based calibration of Stage 1 (Talts et al. 2018) on the grid of
    ``metrics_df`` (its fvu values are only used to centre the amplitude priors).

    For each of ``n_sims`` draws from the model's prior, log fvu is simulated from the
    prior predictive, the model is refitted to it (compiled once with nutpie, data
    swapped), and the rank of the true value among ``draws * chains / thin`` thinned
    posterior draws is recorded for ``alpha`` of every layer and ``f`` (floor / bound) of
    every floor layer; ``settings`` default to 200 draws after 300 tuning steps, 2 chains.
    With a calibrated fit the ranks are uniform on ``0..L``
    (:func:`sbc_uniformity`). Returns one row per (sim, parameter, layer): ``sim,
    param, layer_id, rank, n_ranks`` (L + 1), plus ``divergences`` of that refit.
    """
    import nutpie
    import pymc as pm

    st = settings or SamplerSettings(draws=200, tune=300)
    draws, tune, chains, target_accept = st.draws, st.tune, st.chains, st.target_accept
    model, layers, _ = build_stage1_model(metrics_df, form=form, floors=floors)
    with bayes.quiet_pymc():
        prior = pm.sample_prior_predictive(draws=n_sims, model=model, random_seed=seed)
    y_sims = prior.prior_predictive["log_fvu"].stack(sample=("chain", "draw")).transpose("sample", "obs").to_numpy()
    params = [("alpha", "layer_id")] + ([("f", "floor_layer")] if "floor_layer" in model.coords else [])
    truth = {p: prior.prior[p].stack(sample=("chain", "draw")).transpose("sample", d).to_numpy() for p, d in params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = nutpie.compile_pymc_model(model)
    rows = []
    for i in range(n_sims):
        cm = compiled.with_data(log_fvu_data=y_sims[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = nutpie.sample(
                cm,
                draws=draws,
                tune=tune,
                chains=chains,
                seed=seed * 7919 + i,
                progress_bar=False,
                target_accept=target_accept,
                cores=min(chains, 2),
            )
        ndiv = int(np.asarray(tr.sample_stats["diverging"]).sum())
        for p, d in params:
            post = tr.posterior[p].stack(sample=("chain", "draw")).transpose("sample", d).to_numpy()[::thin]
            ranks = (post < truth[p][i][None, :]).sum(0)
            for lbl, r in zip(model.coords[d], ranks):
                rows.append(
                    {
                        "sim": i,
                        "param": p,
                        "layer_id": str(lbl),
                        "rank": int(r),
                        "n_ranks": len(post) + 1,
                        "divergences": ndiv,
                    }
                )
    return pd.DataFrame(rows)


def sbc_uniformity(ranks: pd.DataFrame, *, n_bins: int = 10) -> pd.DataFrame:
    """Chi-square test of uniform SBC ranks, per parameter (ranks of all layers pooled;
    layers with the same grid are exchangeable under the prior): ``param, n, chi2, df,
    p_value, counts`` (the histogram over ``n_bins`` equal bins of rank / n_ranks)."""
    from scipy.stats import chisquare

    rows = []
    for p, g in ranks.groupby("param", sort=True):
        u = (g["rank"].to_numpy() + 0.5) / g["n_ranks"].to_numpy()
        counts = np.histogram(u, bins=n_bins, range=(0, 1))[0]
        chi = chisquare(counts)
        rows.append(
            {
                "param": p,
                "n": int(len(u)),
                "chi2": float(chi.statistic),
                "df": n_bins - 1,
                "p_value": float(chi.pvalue),
                "counts": counts.tolist(),
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- Stage 2: geometry and exponents


def simulate_geometry(
    exponents_or_layers: pd.DataFrame,
    *,
    coefs: Mapping[str, float] | None = None,
    intercept: float = 0.35,
    resid_sd: float = 0.02,
    se_frac: float = 0.05,
    alpha_sd: float = 0.02,
    seed: int = 0,
    target: str = "log_alpha",
    model_offsets: Mapping[str, float] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a geometry table and a target from a known linear law, for tests.

    For each (model, layer) of the input, true summaries are drawn (``id_twonn`` ~
    U(4, 20), ``pr`` = 2*id + noise, ``curvature`` ~ U(0.1, 1), ``local_residual`` ~
    U(0.05, 0.4)); ``y = intercept + model_offsets[model] + sum_p coefs[p] * z_p +
    N(0, resid_sd)`` with ``z_p`` the summary standardised over the input layers;
    observed summaries get noise with SE = ``se_frac`` x |value|; the observed target
    (columns ``<target>_mean``, ``<target>_sd``) gets ``N(0, alpha_sd)``. The geometry
    table carries ``depth`` (:func:`geowall.layers.relative_depth` with the model's
    largest simulated layer as its last). Returns ``(geometry_df, exponents_df)``;
    ``exponents_df.attrs['truth']`` holds the true target and the coefficients."""
    rng = np.random.default_rng(seed)
    base = exponents_or_layers[["model", "layer"]].drop_duplicates().reset_index(drop=True)
    n = len(base)
    coefs = dict(coefs or {"id_twonn": 0.06, "curvature": 0.04})
    true = pd.DataFrame(
        {
            "id_twonn": rng.uniform(4, 20, n),
            "curvature": rng.uniform(0.1, 1.0, n),
            "local_residual": rng.uniform(0.05, 0.4, n),
        }
    )
    true["pr"] = 2.0 * true["id_twonn"] + rng.normal(0, 3.0, n)
    z = (true - true.mean()) / true.std(ddof=1)
    off = base["model"].map(lambda m: (model_offsets or {}).get(m, 0.0)).to_numpy(float)
    y_true = intercept + off + sum(c * z[p] for p, c in coefs.items()) + rng.normal(0, resid_sd, n)
    n_layers = base.groupby("model")["layer"].transform("max") + 1
    depth = [relative_depth(int(l), int(nl)) for l, nl in zip(base["layer"], n_layers)]
    geo_rows = []
    for s in SUMMARIES:
        se = se_frac * np.abs(true[s].to_numpy())
        est = true[s].to_numpy() + se * rng.standard_normal(n)
        for i in range(n):
            geo_rows.append(
                {
                    "model": base["model"][i],
                    "layer": int(base["layer"][i]),
                    "depth": depth[i],
                    "summary": s,
                    "estimate": float(est[i]),
                    "se": float(se[i]),
                    "lo": float(est[i] - 2 * se[i]),
                    "hi": float(est[i] + 2 * se[i]),
                    "n": 2000,
                    "k": 10,
                }
            )
    ex = base.copy()
    ex[f"{target}_mean"] = np.asarray(y_true) + rng.normal(0, alpha_sd, n)
    ex[f"{target}_sd"] = alpha_sd
    ex.attrs["truth"] = {
        "y": np.asarray(y_true).tolist(),
        "coefs": coefs,
        "intercept": intercept,
        "true_summaries": true.to_dict("list"),
    }
    return pd.DataFrame(geo_rows), ex


def simulate_between_models(
    *, n_layers: int = 12, seed: int = 0, target: str = "log_alpha", within_coef: float = 0.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The between-model trap: model A with exponents near 0.8 and intrinsic dimension
    near 6, model B near 0.3 and 16, ``n_layers`` each; within each model the exponent
    depends on ID only through ``within_coef`` (log alpha per unit of ID; 0: no
    within-model relation at all). Returns ``(geometry_df, exponents_df)`` with
    ``<target>_mean/_sd`` (target ``log_alpha`` or ``alpha``) and ``alpha_mean/_sd``."""
    rng = np.random.default_rng(seed)
    rows, geo = [], []
    for m, a_mu, id_mu in (("A", 0.8, 6.0), ("B", 0.3, 16.0)):
        ids = id_mu + rng.normal(0, 1.0, n_layers)
        la = np.log(a_mu) + within_coef * (ids - id_mu) + rng.normal(0, 0.06, n_layers)
        for layer in range(n_layers):
            a = float(np.exp(la[layer]))
            rows.append(
                {
                    "model": m,
                    "layer": layer,
                    "alpha_mean": a,
                    "alpha_sd": 0.02 * a,
                    "log_alpha_mean": float(la[layer]),
                    "log_alpha_sd": 0.02,
                }
            )
            i = float(ids[layer])
            for s, v in (
                ("id_twonn", i),
                ("pr", 2 * i + rng.normal(0, 1)),
                ("curvature", rng.uniform(0.1, 1)),
                ("local_residual", rng.uniform(0.05, 0.4)),
            ):
                geo.append(
                    {
                        "model": m,
                        "layer": layer,
                        "depth": relative_depth(layer, n_layers),
                        "summary": s,
                        "estimate": float(v),
                        "se": 0.05 * abs(float(v)),
                    }
                )
    return pd.DataFrame(geo), pd.DataFrame(rows)


def simulate_depth_confound(
    *,
    n_layers: Mapping[str, int] | None = None,
    depth_coef: float = 0.0,
    coefs: Mapping[str, float] | None = None,
    track_depth: Sequence[str] = ("id_twonn",),
    depth_r: float = 0.9,
    resid_sd: float = 0.03,
    alpha_sd: float = 0.03,
    se_frac: float = 0.03,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real-shaped models (default: 7 and 13 layers, as MiniLM and MPNet) where depth and
    geometry are entangled, for the geometry verdict's confound tests.

    Each summary in ``track_depth`` follows relative depth within its model with
    correlation about ``depth_r`` (rising with depth, as intrinsic dimension does in real
    networks); the others are unrelated to depth. The target is ``log alpha = level[m] +
    depth_coef * (depth - 1/2) + sum_p coefs[p] * z_p + N(0, resid_sd)`` with ``z_p`` the
    summary standardised over all layers: ``depth_coef`` alone is the depth-caused case
    (geometry tracks depth but causes nothing), ``coefs`` alone a planted geometric law on
    geometry correlated with depth. Observed summaries carry noise with SE ``se_frac`` x
    |value|; the observed target carries ``N(0, alpha_sd)``. Returns ``(geometry_df,
    exponents_df)`` shaped like notebook 04's inputs."""
    rng = np.random.default_rng(seed)
    n_layers = dict(n_layers or {"a": 7, "b": 13})
    coefs = dict(coefs or {})
    base = pd.DataFrame([(m, l) for m, n in n_layers.items() for l in range(n)], columns=["model", "layer"])
    n = len(base)
    depth = np.array([relative_depth(l, n_layers[m]) for m, l in zip(base["model"], base["layer"])])
    u = lambda: rng.standard_normal(n)  # noqa: E731
    zd = (depth - 0.5) / 0.3
    mix = lambda s: depth_r * zd + np.sqrt(1 - depth_r**2) * u() if s in track_depth else u()  # noqa: E731
    true = pd.DataFrame(
        {
            "id_twonn": 10 + 3 * mix("id_twonn"),
            "pr": 30 + 8 * mix("pr"),
            "curvature": 0.6 + 0.12 * mix("curvature"),
            "local_residual": 0.25 + 0.05 * mix("local_residual"),
        }
    )
    z = (true - true.mean()) / true.std(ddof=1)
    level = base["model"].map({m: -1.2 + 0.3 * i for i, m in enumerate(n_layers)}).to_numpy(float)
    y = level + depth_coef * (depth - 0.5) + sum(c * z[p].to_numpy() for p, c in coefs.items())
    y = y + rng.normal(0, resid_sd, n)
    geo = []
    for s in SUMMARIES:
        se = se_frac * np.abs(true[s].to_numpy())
        est = true[s].to_numpy() + se * rng.standard_normal(n)
        geo += [
            {"model": m, "layer": int(l), "depth": float(d), "summary": s, "estimate": float(e), "se": float(q)}
            for m, l, d, e, q in zip(base["model"], base["layer"], depth, est, se)
        ]
    ex = base.assign(log_alpha_mean=y + rng.normal(0, alpha_sd, n), log_alpha_sd=alpha_sd)
    ex["alpha_mean"] = np.exp(ex["log_alpha_mean"])
    ex.attrs["truth"] = {"y": y.tolist(), "depth_coef": depth_coef, "coefs": coefs}
    return pd.DataFrame(geo), ex
