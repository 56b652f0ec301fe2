# %% [markdown]
# # 04 · Stage 2: does geometry predict the width exponent, within a model?
#
# The per-layer log width exponent, log α (the scale Stage 1 pools on), is regressed on
# the standardised geometric summaries from step 02, with **one intercept per model**:
# the slopes are then the *within-model* relation, and two models that differ in both
# exponent and geometry cannot pass for a law. Both kinds of uncertainty are carried
# (errors in variables): log α's Stage 1 posterior sd on the outcome, each summary's
# bootstrap SE on a latent true predictor. Candidate laws are compared by PSIS-LOO against
# two baselines (model intercepts only; relative depth), and each geometric set is also
# fitted *beside* depth: geometry counts only where it adds to depth, since summaries like
# intrinsic dimension rise with depth in real networks. Checks: a permutation null (with
# the geometry residualised on depth for the depth + geometry sets) and
# leave-one-model-out prediction. A design analysis then says which slopes this run could
# have detected. The real pretrained networks and the synthetic zoo are analysed apart:
# the headline law is the pretrained networks'; the zoo is a known-answer check; a
# random-init twin is a contrast for the transfer (notebook 05), not part of the law.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import pandas as pd

from geowall import bayes, charts, law, notebook, nulls, power
from geowall.io import atomic_path, read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
s2 = cfg.stage2
exps = read_parquet(run_dir / "exponents.parquet")
exps = exps[exps.primary].reset_index(drop=True)
geo = read_parquet(run_dir / "geometry.parquet")
table = law.stage2_table(exps, geo)
print(
    f"Stage 2 on {len(table)} layers of {table.model.nunique()} models (form {cfg.stage1.primary_form!r}); "
    f"{s2.chains} chains x {s2.draws} draws"
)
table.round(3).head(10)

# %%
kinds = law.model_kinds(cfg.models)
scopes = law.scopes(kinds, table.groupby("model").size().to_dict())
print("scopes:", scopes)

# %% [markdown]
# ## Priors
#
# On standardised scales (outcome and predictors centred and scaled by the training
# layers' mean and sd): each model's intercept and each slope ~ N(0, 1), residual sd ~
# HalfNormal(1), each latent true summary ~ N(0, 1) around which its observed value
# scatters with its bootstrap SE. A slope of 1 would mean one sd of geometry moves log α
# by one sd of log α within a model: large effects allowed, implausibly large ones not.

# %% [markdown]
# ## Which predictors? A LOO comparison against two baselines
#
# In each scope every candidate law is fitted on the same layers, checked by the same
# diagnostics function, and scored by expected log predictive density (PSIS-LOO). The
# table gives each set's ELPD difference from the intercepts-only baseline (`models`) and
# from the depth baseline, with the standard error of each paired difference, and the
# largest Pareto k (values above 0.7 make that fit's LOO unreliable). The `depth+...` sets
# hold depth and geometry together: their difference from `depth` is what geometry adds
# beyond depth, the quantity the geometry verdict judges.

# %%
comparisons, coef_tables, fits = [], [], {}
for scope, models_ in scopes.items():
    cmp_, fits[scope] = law.compare_laws(
        exps,
        geo,
        models=models_,
        settings=s2,
        seed=RANDOM_SEED,
    )
    comparisons.append(cmp_.assign(scope=scope))
    coef_tables += [law.law_coefficients(f).assign(scope=scope) for f in fits[scope].values()]
comparison = pd.concat(comparisons, ignore_index=True)
write_parquet(run_dir / "law_compare.parquet", comparison)
write_parquet(run_dir / "law.parquet", pd.concat(coef_tables, ignore_index=True))
comparison[
    [
        "scope",
        "predictor_set",
        "rank",
        "elpd_loo",
        "se",
        "elpd_diff_vs_models",
        "se_diff_vs_models",
        "elpd_diff_vs_depth",
        "se_diff_vs_depth",
        "max_pareto_k",
        "n_pareto_k_bad",
        "n_layers",
    ]
].round(2)

# %% [markdown]
# ## Permutation null and leave-one-model-out
#
# The null: each model's geometry is shuffled across its own layers (keeping the model
# levels and the exponents), 200 times, and the law refitted in closed form (the same
# Gaussian model without the summaries' measurement error; it matches the sampled fit in
# `tests/test_law.py`). For a depth + geometry set, depth stays in place and each summary
# is residualised on depth within its model before its residuals are shuffled, so the null
# keeps geometry's own trend with depth and asks only what geometry adds beyond it. The
# statistic is the Wald statistic of the (geometric) slopes. Leave one model
# out: the law fitted on the other models predicts the held-out model's layer ordering
# (its level is that model's own and unknown to a within-model law), scored by Spearman
# and a level-shifted R².

# %%
null_table, lomo = nulls.nulls_and_lomo(exps, geo, scopes, n_perm=200, seed=RANDOM_SEED)
write_parquet(run_dir / "law_null.parquet", null_table)
write_parquet(run_dir / "law_lomo.parquet", lomo)
null_table.round(3)

# %%
lomo.round(3)

# %% [markdown]
# ## Design analysis: which slopes could this run detect?
#
# Before reading the verdict, what could it have found (Gelman and Carlin 2014)? Data sets
# are simulated on this run's own design: the headline scope's layers, their relative
# depths and measured geometry (taken as the truth, observed again with each summary's
# bootstrap SE), the run's depth relation and residual sd (the depth-only law fitted in
# closed form), each layer's Stage 1 posterior sd, and a planted within-model slope on
# intrinsic dimension or on curvature (log α per SD of the summary). Each is judged by the
# geometry verdict's whole rule (best depth + geometry set against depth by LOO, the
# residualised permutation null, a slope interval excluding 0), in closed form: the
# probability of "supported" per planted slope is the power curve, and the slope reached
# with 80% probability is quoted in the verdict table. At slope 0 it is the rule's
# false-positive rate.

# %%
head_scope = "real" if "real" in fits else next(iter(fits))
n_sim = max(20, min(100, s2.draws // 20))  # 100 data sets per slope on full-length profiles
power_curve = power.design_analysis(exps, geo, models=scopes[head_scope], n_sim=n_sim, seed=RANDOM_SEED)
power_curve = power_curve.assign(scope=head_scope)
write_parquet(run_dir / "law_power.parquet", power_curve)
detectable = power.detectable_slope(power_curve)
print(f"{head_scope}: {power.power_words(power_curve)} ({n_sim} simulated runs per slope)")
assert power_curve[power_curve.slope == 0].p_supported.max() <= 0.2, "the rule reports geometry where there is none"
power_curve.pivot_table(index="slope", columns="summary", values="p_supported").round(2)

# %% [markdown]
# ## The headline law's coefficients (real networks)
#
# Slopes in log α per training-SD of each summary, with 94% HDIs (`az.hdi`) and the
# posterior probability that each is positive; one intercept per model.

# %%
full = fits[head_scope]["all4"]
coefs = law.law_coefficients(full)
with atomic_path(run_dir / "stage2.nc", ".nc") as tmp:
    full.to_netcdf(str(tmp))
coefs.round(3)

# %% [markdown]
# ## Posterior predictive check
#
# Observed log α against the law's posterior predictive mean and 90% interval, per layer:
# the interval should cover about 90% of layers.

# %%
ppc = law.posterior_predictive_table(full)
coverage = ppc.covered.mean()
print(f"90% posterior predictive coverage of the training layers: {coverage:.2f}")
assert coverage >= 0.5, "the law's predictive intervals miss most layers: misspecified"

# %%
#| label: fig-law-coefs
#| fig-cap: "Stage 2 on the real networks: standardised slopes of the four-summary law with per-model intercepts (94% HDIs), and observed against predicted log width exponents with 90% posterior predictive intervals."
charts.law_coefficients(coefs, ppc)

# %% [markdown]
# ## Partial residuals
#
# For each summary: log α minus the fitted contribution of the model intercept and the
# other three summaries, against that summary (standardised). A slope here is the
# summary's own within-model effect.

# %%
#| label: fig-law-partials
#| fig-cap: "Partial-residual plots of the four-summary law on the real networks: log width exponent adjusted for the model intercept and the other three summaries, against each standardised summary."
charts.partial_residuals(ppc)

# %% [markdown]
# ## The zoo as a known-answer check
#
# The synthetic zoo's manifolds have known geometry, so we can plant a within-model
# relation on the zoo's measured geometry and ask whether the law finds it, and shuffle it
# away and ask whether it then finds nothing: log α is replaced by 0.1 per SD of ID plus
# the model's own level and noise of the size of Stage 1's sds (planted), or by the same
# values shuffled within each model (none).

# %%
if "synthetic" in scopes:
    zoo_check = nulls.planted_check(exps, geo, scopes["synthetic"], slope=0.1, n_perm=200, seed=RANDOM_SEED)
    display(zoo_check.round(3))
else:
    print("no synthetic zoo in this profile")

# %% [markdown]
# ## The floor, where identified
#
# The same law for the floor needs enough layers with an identified floor; with fewer
# than eight it is not fitted (and the notebook says so).

# %%
floor_layers = exps[exps.primary & exps.floor_identified]
if len(floor_layers) >= law.SCOPE_MIN_LAYERS:
    floor_fit = law.fit_law(
        exps[exps.primary],
        geo,
        target="floor",
        settings=s2,
        seed=RANDOM_SEED,
    )
    bayes.check_fit(floor_fit, s2, label="stage 2 floor law")
    display(law.law_coefficients(floor_fit).round(3))
else:
    print(f"only {len(floor_layers)} layers with an identified floor: the floor law is not fitted")

# %%
notebook.versions()
