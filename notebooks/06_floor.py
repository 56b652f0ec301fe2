# %% [markdown]
# # 06 · Floors at the showcase layers
#
# At showcase layers the width grid is rich enough (at least six widths spanning 32× or
# more) for the error floor, the width asymptote, to be identified. The study's claim is a
# geometry-set wall: floors rise with curvature and intrinsic dimension. Here we read the
# Stage 1 posterior of each showcase floor and compute, draw by draw, the rank correlation
# of floor with curvature and with ID across the showcase layers, giving the posterior
# probability that floors are ordered as the geometry is.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import arviz as az

from geowall import charts, law, notebook
from geowall.io import read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
stage1 = az.from_netcdf(run_dir / f"stage1_{cfg.stage1.primary_form}.nc")
geo = read_parquet(run_dir / "geometry.parquet")
exps = read_parquet(run_dir / "exponents.parquet")
showcase = [(m, layer) for m, layers_ in cfg.sae.showcase_layers.items() for layer in layers_]
print(f"showcase layers: {showcase}")
exps[exps.primary & exps.showcase][["model", "layer", "n_widths", "width_span", "floor_mean", "floor_sd_ratio",
                                    "floor_identified"]].round(3)

# %% [markdown]
# ## Floors and their ordering
#
# Floors are pooled across models on the common fvu scale. With n showcase layers the
# rank correlation takes few distinct values (n = 2 gives only ±1), so read the posterior
# probability with n in mind. The summaries are redrawn from their bootstrap SEs in each
# posterior draw.

# %%
floors = law.floor_ordering(stage1, geo, showcase, seed=RANDOM_SEED)
write_parquet(run_dir / "floors.parquet", floors)
floors.round(3)

# %%
rho = floors[floors.row_type == "spearman"]
assert rho.p_gt0.between(0, 1).all() and len(rho) == 2

# %%
#| label: fig-floors
#| fig-cap: "Showcase-layer floors (width asymptote of fvu at the reference sparsity, 94% HDI) against curvature and TwoNN intrinsic dimension."
charts.floors(floors)

# %%
notebook.versions()
