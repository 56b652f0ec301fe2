# %% [markdown]
# # 02 · Geometry of the activation manifold
#
# For every model and layer we measure four summaries of the activation point cloud, each
# with a bootstrap standard error: the TwoNN intrinsic dimension `id_twonn`, the
# participation ratio `pr` of the covariance (a linear dimension), a scale-free
# `curvature` from local quadratic fits, and the `local_residual`, the fraction of
# local-patch variance outside the best local flat, which no sparse linear dictionary can
# remove at that scale. Stage 2 regresses SAE scaling exponents on these four numbers.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
from scipy.stats import spearmanr

from geowall import charts, layers, notebook
from geowall.io import write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
print(f"profile {cfg.name!r}: {cfg.geometry.n_points} points per layer, {cfg.geometry.n_boot} bootstrap resamples")

# %% [markdown]
# ## Operational definitions
#
# The study's own estimators are not public; these are ours.
#
# * **TwoNN** (Facco et al. 2017): the ratio μ = r₂/r₁ of each point's second to first
#   neighbour distance is Pareto(d)-distributed on a manifold of dimension d; d is the
#   slope of −log(1−F(μ)) against log μ after discarding the top 10% of ratios. Exact
#   duplicate rows are removed first: MiniLM's embedding layer is a discrete set of
#   token + position vectors, and a duplicate gives r₁ = 0, which would collapse the
#   estimate towards zero.
# * **Participation ratio** (Σλ)²/Σλ² of the covariance eigenvalues, on all rows.
# * **Curvature**: at sampled base points, the k nearest neighbours are projected on the
#   local PCA tangent space of dimension round(id), capped at `geometry.max_dim` (a
#   quadratic fit in m tangent coordinates needs O(m²) neighbours, so high-dimensional
#   layers such as the random network's are fitted with their top `max_dim` local
#   directions; the `dim` column records what was used); the normal coordinates are regressed on
#   quadratic monomials of the tangent coordinates, giving the second fundamental form;
#   its magnitude times the patch radius is scale-free.
# * **Local residual**: the fraction of patch variance outside the best local flat of
#   that dimension.

# %%
geo, multi = layers.geometry_table(cfg, run_dir)
write_parquet(run_dir / "geometry.parquet", geo)
write_parquet(run_dir / "multiscale_id.parquet", multi)
wide = geo.pivot_table(index=["model", "layer"], columns="summary", values="estimate")
wide.round(3)

# %% [markdown]
# Sanity checks: every summary is finite with a positive standard error, TwoNN lies
# between 0 and the ambient dimension, and the participation ratio cannot exceed it.

# %%
assert geo["estimate"].notna().all(), geo[geo["estimate"].isna()]
assert (geo["se"] > 0).all()
ids = geo[geo.summary == "id_twonn"]
assert ((ids.estimate > 0) & (ids.estimate < 384)).all()
assert (geo[geo.summary == "local_residual"].estimate.between(0, 1)).all()

# %% [markdown]
# ## Layer profiles
#
# Each summary against relative depth (layer / last layer), one colour per model, with
# the 95% bootstrap interval as a band.

# %%
#| label: fig-geometry-profiles
#| fig-cap: "The four geometric summaries against relative depth, per model, with 95% bootstrap intervals."
charts.geometry_profiles(geo)

# %% [markdown]
# ## Is the intrinsic dimension scale-stable?
#
# TwoNN on disjoint decimated subsets probes coarser length scales (decimating by s
# multiplies neighbour distances by about s^(1/d)). A flat line means a scale-stable
# estimate; a rising or falling one means the dimension depends on the scale at which the
# manifold is looked at, which is itself informative for SAEs.

# %%
#| label: fig-multiscale-id
#| fig-cap: "TwoNN intrinsic dimension on decimated subsets (scale s uses n/s points), per layer and model."
charts.multiscale(multi)

# %% [markdown]
# ## Synthetic zoo: estimates against ground truth
#
# The zoo's layers have known intrinsic dimension and curvature (in the normalised units
# of unit RMS norm). The estimates should track the truth: TwoNN close to the diagonal,
# curvature ordered as the true curvature.

# %%
truth = layers.truth_table(cfg, run_dir)
if len(truth):
    both = truth.merge(wide.reset_index(), on=["model", "layer"])
    rel_err = (both.id_twonn - both.id_true).abs() / both.id_true
    rho = spearmanr(both.curvature_true, both.curvature).statistic
    print(f"TwoNN median relative error {rel_err.median():.3f}; Spearman(curvature, truth) = {rho:.2f}")
    assert rel_err.median() < 0.25, "TwoNN is far from the synthetic ground truth"
    assert rho > 0, "curvature estimates are not ordered like the true curvature"

# %%
#| label: fig-geometry-truth
#| fig-cap: "Synthetic zoo: estimated intrinsic dimension and curvature against the ground truth (diagonal: perfect agreement for the dimension)."
charts.truth_scatter(both) if len(truth) else None

# %%
notebook.versions()
