# %% [markdown]
# # 05 · Transfer: does a law learnt on one model predict another?
#
# The Stage 2 law is fitted on model A's layers and used to predict model B's per-layer
# width exponents from B's geometry alone, in both directions, for each pair in the
# profile (the synthetic zoos with each other; pretrained MiniLM with its random-init
# twin; Gemma 2 2B with 9B in the `gemma-2` profile). Two null baselines get the same
# treatment: A's mean exponent (intercept only) and relative depth alone.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
from geowall import charts, law, notebook
from geowall.io import read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
s2 = cfg.stage2
exps = read_parquet(run_dir / "exponents.parquet")
exps = exps[exps.primary].reset_index(drop=True)
geo = read_parquet(run_dir / "geometry.parquet")
pairs = [p for a, b in cfg.transfer for p in ((a, b), (b, a))]
print("transfer directions:", pairs)

# %% [markdown]
# ## Fit on A, predict B
#
# B's summaries are standardised with A's training means and sds. B's true summaries are
# drawn around B's observations with B's bootstrap SEs, and the predictive includes B's
# Stage 1 sd, since we predict B's measured exponent. Scores: predictive R² against B's
# own mean (a constant prediction scores ≤ 0), Spearman rank correlation, and the
# coverage of the 90% predictive intervals.

# %%
scores, predictions, fits = law.run_transfer(exps, geo, pairs, draws=s2.draws, tune=s2.tune, chains=s2.chains,
                                             seed=RANDOM_SEED, check_kwargs=s2.checks.model_dump(),
                                             target_accept=s2.target_accept)
write_parquet(run_dir / "transfer.parquet", scores)
write_parquet(run_dir / "transfer_predictions.parquet", predictions)
scores.round(3)

# %%
assert set(scores.predictor_set) >= {"law", "depth", "mean"}
assert scores.coverage90.between(0, 1).all()

# %%
#| label: fig-transfer
#| fig-cap: "Transfer: observed width exponents of model B against predictions from a law fitted on model A (90% predictive intervals), for the geometric law and the two baselines."
charts.transfer(predictions)

# %%
notebook.versions()
