# %% [markdown]
# # 04 · Stage 2: does geometry predict the width exponent?
#
# The per-layer width exponent α from Stage 1 is regressed on the four standardised
# geometric summaries from step 02. Both kinds of uncertainty are carried into the fit
# (errors in variables): α's Stage 1 posterior sd is a known measurement error on the
# outcome, and each summary's bootstrap SE is a measurement error on a latent true
# predictor. The full law is compared by PSIS-LOO with subsets (ID only, curvature only,
# ID + curvature) and with a depth-only baseline.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import pandas as pd

from geowall import charts, law, notebook, scaling
from geowall.io import atomic_path, read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
s2 = cfg.stage2
exps = read_parquet(run_dir / "exponents.parquet")
exps = exps[exps.primary].reset_index(drop=True)
geo = read_parquet(run_dir / "geometry.parquet")
table = law.stage2_table(exps, geo)
print(f"Stage 2 on {len(table)} layers of {table.model.nunique()} models (form {cfg.stage1.primary_form!r}); "
      f"{s2.chains} chains x {s2.draws} draws")
table.round(3).head(10)

# %% [markdown]
# ## Priors
#
# On standardised scales (outcome and predictors centred and scaled by the training
# layers' mean and sd): intercept and coefficients ~ N(0, 1), residual sd ~ HalfNormal(1),
# each latent true summary ~ N(0, 1) around which its observed value scatters with its
# bootstrap SE. A coefficient of 1 would mean one sd of geometry moves α by one sd of α:
# large effects are allowed, implausibly large ones are not.

# %% [markdown]
# ## Which predictors? A LOO comparison
#
# Every candidate law is fitted on the same layers, checked by the same diagnostics
# function, and ranked by expected log predictive density (PSIS-LOO). `depth` is the
# baseline: relative layer depth alone.

# %%
comparison, fits = law.compare_laws(exps, geo, draws=s2.draws, tune=s2.tune, chains=s2.chains,
                                    seed=RANDOM_SEED, check_kwargs=s2.checks.model_dump(),
                                    target_accept=s2.target_accept)
write_parquet(run_dir / "law_compare.parquet", comparison.reset_index(names="predictor_set"))
comparison

# %% [markdown]
# ## The full law's coefficients
#
# Standardised coefficients `b` (α-sd per geometry-sd) with 94% HDIs and the posterior
# probability that each is positive.

# %%
full = fits["all4"]
coefs = law.law_coefficients(full)
write_parquet(run_dir / "law.parquet", pd.concat([law.law_coefficients(f) for f in fits.values()], ignore_index=True))
with atomic_path(run_dir / "stage2.nc", ".nc") as tmp:
    full.to_netcdf(str(tmp))
coefs.round(3)

# %% [markdown]
# ## Posterior predictive check
#
# Observed α against the law's posterior predictive mean and 90% interval, per layer: the
# interval should cover about 90% of layers.

# %%
ppc = law.posterior_predictive_table(full)
coverage = ppc.covered.mean()
print(f"90% posterior predictive coverage of the training layers: {coverage:.2f}")
assert coverage >= 0.5, "the law's predictive intervals miss most layers: misspecified"

# %%
#| label: fig-law-coefs
#| fig-cap: "Stage 2: standardised coefficients of the full geometric law (94% HDIs), and observed against predicted width exponents with 90% posterior predictive intervals."
charts.law_coefficients(coefs, ppc)

# %% [markdown]
# ## Partial residuals
#
# For each summary: α minus the fitted contribution of the other three, against that
# summary (standardised). A slope here is the summary's own effect on α.

# %%
#| label: fig-law-partials
#| fig-cap: "Partial-residual plots of the full law: width exponent adjusted for the other three summaries, against each standardised summary."
charts.partial_residuals(ppc)

# %% [markdown]
# ## The floor, where identified
#
# The same law for the floor needs enough layers with an identified floor; with fewer
# than six it is not fitted (and the notebook says so).

# %%
floor_layers = exps[exps.floor_identified]
if len(floor_layers) >= 6:
    floor_fit = law.fit_law(exps, geo, target="floor", draws=s2.draws, tune=s2.tune, chains=s2.chains,
                            seed=RANDOM_SEED, target_accept=s2.target_accept)
    scaling.check_fit(floor_fit, label="stage 2 floor law", **s2.checks.model_dump())
    display(law.law_coefficients(floor_fit).round(3))
else:
    print(f"only {len(floor_layers)} layers with an identified floor: the floor law is not fitted")

# %%
notebook.versions()
