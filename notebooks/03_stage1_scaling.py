# %% [markdown]
# # 03 · Stage 1: Bayesian scaling surfaces per layer
#
# For every layer we fit a surface for the SAE error `fvu` as a function of width *W* and
# measured sparsity *l0*, with layers partially pooled within each model (non-centred
# hierarchical priors on the exponents). Two functional forms are fitted and compared by
# PSIS-LOO: an additive law with a floor, and the joint law of Gao et al. (2024). The
# per-layer width exponent α and the floor (the width asymptote) go to `exponents.parquet`,
# with how much the data moved each one away from its prior.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import numpy as np
import pandas as pd

from geowall import charts, notebook, scaling
from geowall.io import atomic_path, read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
s1 = cfg.stage1
metrics = read_parquet(run_dir / "sae_metrics.parquet")
metrics = metrics[metrics.model.isin([m.name for m in cfg.models])].reset_index(drop=True)
showcase = {(m, layer) for m, layers_ in cfg.sae.showcase_layers.items() for layer in layers_}
metrics["showcase"] = [(m, layer) in showcase for m, layer in zip(metrics.model, metrics.layer)]
print(f"{len(metrics)} SAEs, {metrics.groupby(['model', 'layer']).ngroups} layers; forms {s1.forms}; "
      f"sampler {scaling.resolve_sampler()}; {s1.chains} chains x {s1.draws} draws after {s1.tune} tuning steps")

# %% [markdown]
# ## The two forms and their priors
#
# Width and sparsity enter through normalised logs, w = log(W / W_ref) and
# s = log(l0 / l0_ref), with W_ref and l0_ref the geometric means of the model's widths and
# measured l0: amplitudes are then errors at the reference point. The likelihood is
# Normal on log fvu.
#
# * **additive**: L = E + A·(W/W_ref)^−α + B·(l0/l0_ref)^−β.
# * **joint** (Gao et al. 2024): log(L − E_irr(l0)) = a − α·w − β·s + d·w·s with
#   E_irr(l0) = floor·exp(η·s); α is the width exponent at l0_ref.
#
# In both, the **floor** is the width asymptote at l0_ref (α = −d log(L − floor)/d log W
# there), parametrised as a fraction in (0, 1) of 1.05 × the smallest error of the layer's
# SAEs at least as sparse as l0_ref. The priors, each with its justification:

# %%
pd.DataFrame([{"form": f, "parameter": k, "prior and why": v} for f in s1.forms for k, v in scaling.PRIORS[f].items()])

# %% [markdown]
# ## Prior predictive check
#
# Before looking at the data through the likelihood, we draw fvu from the priors alone:
# the observed errors should sit comfortably inside the prior predictive band, which
# should not span absurd orders of magnitude.

# %%
prior_checks = {}
for form in s1.forms:
    pp = scaling.prior_predictive(metrics, form=form, draws=300, seed=RANDOM_SEED)
    prior_checks[form] = scaling.prior_predictive_summary(pp)
    inside = prior_checks[form]["frac_obs_inside"].mean()
    print(f"{form}: mean fraction of observed SAEs inside the 90% prior predictive band = {inside:.2f}")
    assert inside > 0.5, f"{form}: the prior predictive misses most observations"
prior_checks[s1.primary_form].head(8)

# %% [markdown]
# ## Fit, check, compare
#
# Every fit goes through one diagnostics function (R-hat, bulk and tail ESS,
# divergences, BFMI); it raises, naming the failed diagnostic, so an automatic rerun
# cannot publish a bad fit. The thresholds come from the profile.

# %%
fits, diagnostics = {}, []
checks = s1.checks.model_dump()
for form in s1.forms:
    fits[form] = scaling.fit_stage1(metrics, form=form, draws=s1.draws, tune=s1.tune, chains=s1.chains,
                                    seed=RANDOM_SEED, target_accept=s1.target_accept)
    diagnostics.append({"form": form, **scaling.check_fit(fits[form], label=f"stage 1 {form}", **checks)})
    with atomic_path(run_dir / f"stage1_{form}.nc", ".nc") as tmp:
        fits[form].to_netcdf(str(tmp))
pd.DataFrame(diagnostics)

# %%
comparison = scaling.compare_forms(fits) if len(fits) > 1 else None
comparison

# %% [markdown]
# ## Exponents and floors per layer
#
# `alpha_sd_ratio` and `floor_sd_ratio` are posterior sd / prior sd: small means the data
# moved the quantity. A floor is marked identified only where this layer's own data
# halved its prior sd, the layer has at least four widths spanning at least 8×, and the
# floor is not pressed against the smallest observed error (the rule is in
# `scaling.exponents`). Showcase layers, with their rich width grids, are where floors are
# read.

# %%
exps = pd.concat([scaling.exponents(fits[f], metrics) for f in s1.forms], ignore_index=True)
exps["primary"] = exps.form == s1.primary_form
write_parquet(run_dir / "exponents.parquet", exps)
cols = ["model", "layer", "form", "alpha_mean", "alpha_hdi_3", "alpha_hdi_97", "alpha_sd_ratio",
        "floor_mean", "floor_sd_ratio", "n_widths", "floor_identified", "showcase"]
exps[cols].round(3)

# %%
assert exps.alpha_mean.between(0, 3).all(), "implausible width exponents"
assert not exps[~exps.showcase & (exps.n_widths < 4)].floor_identified.any(), "a floor was marked identified on a thin grid"

# %% [markdown]
# ## Fitted surfaces over the data
#
# The primary form's posterior mean surface (line, with its 94% band) against the
# measured fvu (points), for each k, layer and model.

# %%
grid = pd.DataFrame([
    {"model": m, "layer": layer, "k": k, "l0": g.l0.mean(), "width": w}
    for (m, layer, k), g in metrics.groupby(["model", "layer", "k"])
    for w in np.geomspace(g.width.min(), g.width.max(), 12)
])
surface = scaling.surface_predictions(fits[s1.primary_form], grid[["model", "layer", "k", "width", "l0"]], seed=RANDOM_SEED)

# %%
#| label: fig-stage1-surfaces
#| fig-cap: "Stage 1 fits: measured fvu (points) and the posterior mean surface with its 94% band (primary form), against width, one colour per k, one panel per layer."
charts.stage1_surfaces(metrics, surface)

# %%
#| label: fig-exponents-depth
#| fig-cap: "Width exponent alpha and floor per layer against relative depth, with 94% HDIs, for both functional forms. Filled floor markers: identified."
charts.exponents_depth(exps, cfg)

# %%
notebook.versions()
