# %% [markdown]
# # 02 · Geometry of the activation manifold
#
# For every model and layer we measure four summaries of the activation point cloud, each
# with a standard error from resampling whole documents: the TwoNN intrinsic dimension
# `id_twonn`, the participation ratio `pr` of the covariance (a linear dimension), the
# `curvature` of the manifold per tangent direction, and the `local_residual`, the
# fraction of local-patch variance outside the patch's own tangent space, which no
# locally low-dimensional linear model removes at that scale. Stage 2 regresses SAE
# scaling exponents on these four numbers, so each must measure what it names: the
# curvature must not grow with the dimension, the dimension must not collapse on
# near-duplicate tokens, and the ranking of layers must survive other reasonable settings.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import numpy as np

from geowall import charts, geometry, layers, notebook
from geowall.io import write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
print(f"profile {cfg.name!r}: {cfg.geometry.n_points} points per layer, {cfg.geometry.n_boot} bootstrap resamples")

# %% [markdown]
# ## Operational definitions
#
# The study's own estimators are not public; these are ours (`geowall.geometry`).
#
# * **Duplicates and near-duplicates.** Exact duplicate rows are removed, then every
#   point whose nearest neighbour is closer than `geometry.near_dup_tol` (0.1) times the
#   median nearest-neighbour distance is merged into it, repeatedly. On a clean manifold
#   of dimension d only about 0.1^d·ln 2 of the points are that close by chance (0.7% at
#   d = 2); in the randomly initialised twin a third of the tokens are (see below).
# * **TwoNN** (Facco et al. 2017): the ratio μ = r₂/r₁ of each point's second to first
#   neighbour distance is Pareto(d)-distributed on a manifold of dimension d; d is the
#   slope of −log(1−F(μ)) against log μ after discarding the top 10% of ratios.
# * **Participation ratio** (Σλ)²/Σλ² of the covariance eigenvalues, on all rows.
# * **Tangent dimension, per patch.** At each sampled base point, local PCA of the point
#   and its 64 nearest neighbours (`geometry.PATCH_K`, or `geometry.k_neighbors`): the axes
#   carrying at least a tenth (`geometry.tangent_tol`) of the leading axis's variance are
#   tangent. Not a rounded global TwoNN: a flat 8-dimensional box reads 8 in every patch.
#   No cap: real layers reach 20 to 30 tangent dimensions at this scale.
# * **Curvature** (mean curvature per tangent direction). The same patch, relative to the
#   base point, is regressed on its tangent scores and on the squared distance q to the base
#   point; the coefficient g of q is half the mean curvature vector per direction, H/(2m), and
#   the least-squares noise floor of ‖g‖² is subtracted. On a sphere of radius R the normal
#   height is exactly q/(2R) at any patch size, so spheres of every dimension read 1/R; two
#   regressors beyond the tangent scores, so neither the cost nor the bias grows with the
#   tangent dimension (the quadratic fit it replaces needed m²/2 of them and a cap of 12).
#   We report the root mean square over patches times the cloud's RMS radius. **What the
#   number means: 1 is the curvature of a sphere whose radius equals the cloud's RMS
#   radius**; a sphere of twice that radius reads 0.5, a flat 0. A second candidate, the
#   growth of the variance outside the tangent axes with the patch radius (σ² + c κ² r⁴),
#   failed the known answers above 8 dimensions (its fitted slope turned negative: the
#   patch radii of 16, 32 and 64 neighbours barely differ there) and was dropped.
# * **Local residual** (redefined): the per-point variance of each patch off that fitted model
#   (tangent flat bent by the mean curvature), over the cloud's variance: off-manifold spread
#   plus the anisotropic bend the mean does not carry (a torus's, a saddle's). 0 on a flat or
#   a sphere of any dimension. The old definition (share of a patch outside its tangent axes)
#   measured the patch radius and hence the dimension: 0.002 to 0.019 on unit spheres of
#   dimension 2 to 16.
# * **Uncertainty.** Each of `geometry.n_boot` replicates keeps a random half of the
#   documents (all their tokens) and reruns every estimator: duplicates, kNN graph, TwoNN
#   fit, base points, tangent dimensions, patch fits. The standard error is the delete-d
#   jackknife's, so it includes the kNN-graph and patch variability and the correlation of
#   tokens within a document. Half-samples rather than a bootstrap with replacement,
#   because a document drawn twice would put exact duplicates into the cloud. The zoo has
#   no documents: its points are the blocks.

# %%
geo, multi, sens = layers.geometry_table(cfg, run_dir)
write_parquet(run_dir / "geometry.parquet", geo)
write_parquet(run_dir / "multiscale_id.parquet", multi)
write_parquet(run_dir / "geometry_sensitivity.parquet", sens)
wide = geo.pivot(index=["model", "layer"], columns="summary", values="estimate")
wide.round(3)

# %% [markdown]
# Sanity checks: every summary is finite at every layer with a positive standard error (or
# exactly 0 where every half-sample reads 0: a flat box); TwoNN lies between 0 and the ambient
# dimension, the local residual between 0 and 1. No cap withholds the curvature; it is
# undefined only where the patches have no room for it: a patch of k + 1 points whose tangent
# dimension leaves fewer than `MIN_DOF` points beyond the tangent scores (a random-init
# decoder's embedding layer, about 1,300 distinct random token vectors: every patch is 64-dimensional).

# %%
too_wide = geo.dim > geo.k + 1 - 2 - geometry.estimators.MIN_DOF
undefined = (geo.summary == "curvature") & geo.estimate.isna() & too_wide
assert (geo.estimate.notna() | undefined).all(), geo[geo.estimate.isna() & ~undefined]
if undefined.any():
    print(
        "curvature undefined (patches as wide as their tangent dimension):", geo[undefined][["model", "layer", "dim"]]
    )
# a summary that reads (numerically) zero in every replicate has a zero standard error
ok_se = (geo.se > 0) | ((geo.se == 0) & (geo.estimate.abs() < 1e-9)) | (undefined & geo.se.isna())
assert ok_se.all(), geo[~ok_se]
ids = geo[geo.summary == "id_twonn"]
assert ((ids.estimate > 0) & (ids.estimate < 1024)).all()
assert (geo[geo.summary == "local_residual"].estimate.between(0, 1)).all()

# %% [markdown]
# ## Known answers
#
# Equal-radius spheres and flat boxes of dimension 2 to 16 in R^384 (MiniLM's width), clean
# and with isotropic noise making up 20% of a patch's variance (`share`; the real layers read
# the share in the last column below, an upper bound on their noise since it also holds their
# anisotropic bend). Required: spheres within 1.5x of each other, boxes at most 0.2x their
# sphere, noise moving a sphere by less than 1.5x. `tests/test_geometry.py` holds the same.

# %%
known = geometry.known_answers(shares=(0.0, 0.2), n_base=100, twonn=False)
sph = known[known.kind == "sphere"].set_index(["dim", "share"]).curvature
box = known[known.kind == "box"].set_index(["dim", "share"]).curvature
assert sph.max() / sph.min() < 1.5 and (box <= 0.2 * sph).all(), known
known.drop(columns="id_twonn").round(3)

# %% [markdown]
# Per layer: the median tangent dimension of the patches at 64 neighbours.

# %%
dims = geo[geo.summary == "curvature"][["model", "layer", "dim", "estimate"]].rename(
    columns={"dim": "median tangent dim", "estimate": "curvature"}
)
dims.round(3)

# %% [markdown]
# ## Layer profiles
#
# Each summary against relative depth (layer / last layer), one colour per model, with
# the 95% interval (estimate ± 1.96 document-block standard errors) as a band.

# %%
#| label: fig-geometry-profiles
#| fig-cap: "The four geometric summaries against relative depth, per model, with 95% intervals from document-block resampling. Curvature: 1 = a sphere whose radius equals the cloud's RMS radius."
charts.geometry_profiles(geo)

# %% [markdown]
# ## Is the intrinsic dimension scale-stable?
#
# TwoNN on disjoint decimated subsets probes coarser length scales (decimating by s
# multiplies neighbour distances by about s^(1/d)). A flat line means a scale-stable
# estimate; a rising or falling one means the dimension depends on the scale at which the
# manifold is looked at. The plateau is the median over the decimated scales (s ≥ 2);
# the layers whose TwoNN differs from it by more than 30% are listed and drawn below.

# %%
gap = geometry.id_scale_gap(geo, multi)
disagree = gap[gap.disagree]
print(
    f"{len(disagree)} of {len(gap)} layers: TwoNN differs from its multiscale plateau by > {geometry.ID_SCALE_TOL:.0%}"
)
disagree.round(2)

# %%
#| label: fig-multiscale-id
#| fig-cap: "TwoNN intrinsic dimension on decimated subsets (scale s uses n/s points) for the layers whose TwoNN differs from its plateau by more than 30% (all layers if none does)."
shown = multi.set_index(["model", "layer"]).loc[disagree.index].reset_index() if len(disagree) else multi
charts.multiscale(shown)

# %% [markdown]
# What a disagreement means. A TwoNN that *falls* below its plateau at full density says
# that at the finest scale the points sit on something lower-dimensional than at coarser
# scales, typically clusters or filaments of tokens sharing an identity; one that *rises*
# says noise or spread that only resolves at the finest scale. Either way the single
# number depends on the sample size, and Stage 2 should be read with that in mind.
#
# Which one the law uses was decided by simulation (`tests/benchmarks/bench_id_scale.py`, about
# 2 minutes): TwoNN and the plateau against the dimension a k-means quantiser of 16 to 256
# atoms reads off its error (d = 2 / exponent), on unit spheres of dimension 2, 4 and 6. Clean,
# all three agree (within 13%). Under isotropic noise (TwoNN above its plateau) both overshoot,
# the plateau less: 10 to 13 against TwoNN's 16 to 19, the quantiser 3 to 10. Under fine-scale
# filaments (TwoNN below its plateau) both undershoot, TwoNN less: about 1.2 against 0.6 to 0.9,
# the quantiser 2.3 to 7. The real layers that disagree fall below their plateau (all but
# MPNet's embedding layer on the default run), the case where TwoNN is the nearer, so the law
# keeps TwoNN; there the dimension the SAEs meet is likely higher than either reads.
#
# **The random-init twin.** Without the near-duplicate rule its TwoNN was about 1 at every
# layer past the embeddings while its participation ratio is over a hundred. The reason:
# a randomly initialised transformer barely mixes context into a token, so every
# occurrence of the same token at a given layer lands within a few percent of the
# cloud's neighbour spacing of the others: in our data a third of the tokens have such a
# twin, always the same token and always from a different document. Those pairs give
# r₂/r₁ ratios of 10 to 20 and pull TwoNN to 1. Merged, each layer of the twin collapses
# to about as many points as its embedding layer has distinct token-and-position vectors,
# and its TwoNN becomes that of a high-dimensional random cloud, a few dozen: the twin's
# intrinsic dimension is the dimension of its random embedding table, not a learned
# low-dimensional manifold. The table below shows how many points the rule merged.

# %%
merged = geo[geo.summary == "id_twonn"][["model", "layer", "n", "n_distinct", "estimate"]].rename(
    columns={"n": "points after near-duplicate rule", "n_distinct": "exactly distinct", "estimate": "id_twonn"}
)
merged.round(2)

# %% [markdown]
# ## Sensitivity and a second ID estimator
#
# Every summary again at three settings of its main knobs: the number of points for TwoNN
# and PR (a quarter, half, all); TwoNN's own fit setting at full density, the share of the
# largest ratios it discards (0.05, 0.1, 0.2); the patch size (48, 64, 96 neighbours) and
# the tangent rule (0.5, 1, 2 × `tangent_tol`) for curvature and the local residual; and the
# Levina–Bickel maximum-likelihood ID with 10, 20 and 40 neighbours (`id_mle`, computed by
# `skdim.id.MLE` on our exact neighbour lists). A quarter or half of the points is a coarser
# scale (neighbour distances grow as n^(-1/d)); the estimate there is the mean over the four
# (two) disjoint subsets, so the setting changes the scale and not how many points carry the
# estimate (for TwoNN these are the multiscale table's scales 4 and 2). Rank agreement:
# Spearman's ρ between the layer ordering of a model at each setting and at the default one.
# A setting with ρ < 0.8 over at least four layers flips the ordering and flags that summary
# for the paper. The MLE gets two checks: its own knob (10 and 40 neighbours against 20), and
# its default against TwoNN (the row "estimator (vs id_twonn)"): two estimators of one
# dimension at different scales (2 and 20 neighbours), which may order the layers differently
# where the dimension depends on the scale (the multiscale figure above), even when each is
# stable under its own knob.

# %%
agree = geometry.rank_agreement(sens)
knob_rows = agree[agree.knob != geometry.ESTIMATOR_CHECK]
FLAGGED = sorted(set(knob_rows[knob_rows.flipped].summary))
print("summaries whose layer ordering flips under a setting of their own knob:", FLAGGED or "none")
estimators = agree[agree.knob == geometry.ESTIMATOR_CHECK].set_index("model")
print("Levina-Bickel MLE (k = 20) against TwoNN, Spearman per model:", estimators.rho.round(2).to_dict())
agree.pivot_table(index=["model", "summary"], columns=["knob", "setting"], values="rho").round(2)

# %% [markdown]
# **Steps between adjacent layers: data or estimator?** Each summary's step from one layer
# to the next, against the two layers' document-block intervals (z = step / its standard
# error) and against every knob setting above: a step is *data* when the intervals resolve it
# and no setting reverses it, *noise* when the intervals overlap, and *estimator* when it is
# resolved at the default setting but a setting of the estimator reverses it.

# %%
jumps = geometry.layer_jumps(geo, sens)
kinds = jumps.pivot_table(index=["model", "summary"], columns="kind", values="z", aggfunc="size", fill_value=0)
kinds = kinds.reindex(columns=["data", "noise", "estimator"], fill_value=0)
kinds["largest ratio"] = jumps.groupby(["model", "summary"]).ratio.max().round(2)
kinds

# %%
steps_by_estimator = jumps[jumps.kind == "estimator"]
print(f"{len(steps_by_estimator)} of {len(jumps)} adjacent-layer steps are reversed by a knob setting")
steps_by_estimator.round(3)

# %%
#| label: fig-geometry-sensitivity
#| fig-cap: "Each summary per layer at three settings of its main knob (colour), and the Levina-Bickel MLE beside TwoNN."
charts.geometry_profiles(
    sens.assign(
        summary=sens.summary.where(sens.summary != "id_mle", "id_twonn"),
        lo=sens.estimate,
        hi=sens.estimate,
        model=sens.model + " · " + sens.knob + "=" + sens.setting.astype(str),
        se=np.nan,
    )
)

# %% [markdown]
# ## Synthetic zoo: estimates against ground truth
#
# The zoo's layers have known intrinsic dimension and curvature (in the normalised units
# of unit RMS norm, so a full sphere of any dimension has curvature 1, a flat box 0, a
# torus of m circles √m). Equal-radius spheres of dimension 3 to 8 and flat boxes of
# dimension 4 to 8 are in the zoo so that a curvature confounded with dimension would
# show. We require TwoNN within 15% of the true dimension at every layer, Spearman's
# ρ between estimated and true curvature of at least 0.8, equal-radius spheres within a
# factor 1.5 of each other and flat boxes below 0.2 × the spheres. These are checked at
# 2,000 points per layer or more (the default profile); a tiny profile only prints them
# (at a few hundred points an 8-dimensional patch fit spans a sizeable part of the cloud).

# %%
truth = layers.truth_table(cfg, run_dir)
if len(truth):
    both, agree_truth = geometry.truth_agreement(truth, geo)
    print(
        f"TwoNN max relative error {agree_truth['id_max_rel_err']:.3f}; Spearman(curvature, truth) = "
        f"{agree_truth['curv_rho']:.2f}; sphere curvatures within {agree_truth['sphere_ratio']:.2f}x; "
        f"flat boxes at most {agree_truth['flat_max_share']:.3f}x the spheres"
    )
    sph = both[both.kind.isin(["sphere", "flat"])].sort_values(["kind", "dim"])
    print(
        sph[["model", "layer", "kind", "dim", "id_twonn", "curvature", "curvature_true", "local_residual"]]
        .round(3)
        .to_string(index=False)
    )
    if cfg.geometry.n_points >= geometry.TRUTH_MIN_POINTS:
        assert agree_truth["passed"], (agree_truth, geometry.TRUTH_RULES)
    else:
        assert agree_truth["curv_rho"] > 0, "curvature estimates are not ordered like the true curvature"

# %%
#| label: fig-geometry-truth
#| fig-cap: "Synthetic zoo: estimated intrinsic dimension and curvature against the ground truth (diagonal: perfect agreement for the dimension; curvature 1 = a sphere whose radius equals the cloud's RMS radius)."
charts.truth_scatter(both) if len(truth) else None

# %%
notebook.versions()
