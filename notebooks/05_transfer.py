# %% [markdown]
# # 05 · Transfer: does a law learnt on one model predict another?
#
# The Stage 2 law is fitted on model A's layers and used to predict model B's per-layer
# width exponents from B's geometry alone, in both directions, for each pair in the
# profile (in the default MiniLM with MPNet, MPNet with Gemma 3, the synthetic zoos with each
# other, pretrained MiniLM with its random-init twin; Gemma 3 with SmolLM2 in the `decoders`
# profile; Gemma 2 2B with 9B in the `gemma-2` profile), on the log scale Stage 1 pools.
# The four-summary law has a curvature-free sibling (TwoNN, PR, local residual). Two
# baselines get the same treatment: A's mean exponent (intercept only) and relative
# depth alone. Every score comes with its per-draw distribution, a permutation null for
# the target model, and the target model's in-sample fit as the ceiling. Only directions
# between two real pretrained models bear on the claim, and a direction counts only if the
# geometric law beats depth on the same test layers; the zoo's directions are the
# known-answer check and a random twin is a contrast, shown apart.

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
pairs = list(dict.fromkeys(p for a, b in cfg.transfer for p in ((a, b), (b, a))))  # each direction once
print("transfer directions:", pairs)

# %%
from geowall import transfer

# %% [markdown]
# ## Fit on A, predict B
#
# B's summaries are standardised with A's training means and sds; B's true summaries are
# drawn around B's observations with B's bootstrap SEs, and the predictive includes B's
# Stage 1 sd. Scores, each as the value at the posterior mean prediction and a 94% HDI
# over posterior draws:
#
# * `r2`: predictive R² against B's own mean (a constant prediction scores ≤ 0): did the
#   *level* transfer?
# * `r2_shift`: R² after shifting the prediction to B's mean: did the *ordering and
#   spread* transfer?
# * `spearman`: rank correlation; `coverage90`: share of B's values inside the 90%
#   predictive intervals;
# * `p_perm_spearman`, `p_perm_r2_shift`: the share of 500 shuffles of B's geometry over
#   its layers (law fixed) that score at least as well;
# * `ceiling_r2`, `ceiling_spearman`: the same predictors fitted on B itself, the best a
#   law of this form can do on B.

# %%
scores, predictions, fits = transfer.run_transfer(
    exps,
    geo,
    pairs,
    settings=s2,
    seed=RANDOM_SEED,
    kinds=law.model_kinds(cfg.models),
)
write_parquet(run_dir / "transfer.parquet", scores)
write_parquet(run_dir / "transfer_predictions.parquet", predictions)
scores[
    [
        "train_model",
        "test_model",
        "predictor_set",
        "n_layers",
        "r2",
        "r2_hdi_3",
        "r2_hdi_97",
        "r2_shift",
        "spearman",
        "spearman_hdi_3",
        "spearman_hdi_97",
        "p_perm_spearman",
        "coverage90",
        "ceiling_r2",
        "ceiling_spearman",
    ]
].round(3)

# %%
assert set(scores.predictor_set) >= {"law", "law3", "depth", "mean"}
scored = scores[scores["note"].isna()] if "note" in scores else scores  # rows with a note: a summary withheld
assert len(scored) and scored.coverage90.between(0, 1).all()

# %% [markdown]
# In words, for the four-summary law and the curvature-free law (TwoNN, PR, local residual):
# curvature exists at every layer (notebook 02), so the verdict uses the four-summary law, and
# the curvature-free row beside it shows what curvature adds to each direction.

# %%
for r in scores[scores.predictor_set.isin(transfer.LAW_SETS)].to_dict("records"):
    print(f"[{r['train_kind']} -> {r['test_kind']}] {transfer.words(r)}")

# %% [markdown]
# Against depth on the same test layers (the law may see fewer layers of B than depth
# where a layer lacks an exponent): the verdict counts a direction between real models only
# if the law's level-shift R² beats depth's there.

# %%
rows = transfer.law_rows(scores)
rows = rows[rows["note"].isna()] if "note" in rows else rows
cols = ["train_model", "test_model", "train_kind", "test_kind", "predictor_set", "n_layers", "spearman", "r2_shift"]
rows[[c for c in cols + ["depth_spearman", "depth_r2_shift"] if c in rows]].round(3)

# %%
#| label: fig-transfer
#| fig-cap: "Transfer: observed log width exponents of model B against predictions from a law fitted on model A (90% predictive intervals), for the geometric law and the two baselines."
charts.transfer(predictions)

# %%
notebook.versions()
