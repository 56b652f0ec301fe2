# %% [markdown]
# # 06 · Floors at the showcase layers
#
# The study's claim is a geometry-set wall: floors rise with curvature and intrinsic
# dimension. Only floors that Stage 1 *identified* on the layer's own evidence count
# (notebook 03's two-sided rule: a grid rich enough for a floor term, a floor neither
# indistinguishable from 0 nor from the smallest error, and a layer-level LOO preference
# for the floor). They are ranked *within each model*, where all floors are width
# asymptotes at the same reference sparsity; draw by draw we compute the rank correlation
# of floor with curvature and with ID, giving its posterior and the probability that
# floors are ordered as the geometry is. A model with fewer than three identified floors is
# too few to rank, and the table says so.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import arviz as az

from geowall import charts, notebook
from geowall.io import read_parquet, write_parquet

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
stage1 = az.from_netcdf(run_dir / f"stage1_{cfg.stage1.primary_form}.nc")
geo = read_parquet(run_dir / "geometry.parquet")
exps = read_parquet(run_dir / "exponents.parquet")
showcase = cfg.showcase()
print(f"showcase layers: {showcase}")
exps[exps.primary & exps.showcase][
    ["model", "layer", "n_widths", "width_span", "alpha_mean", "alpha_floor_mean", "floor_mean", "floor_identified"]
].round(3)

# %%
from geowall import floors as floors_

# %% [markdown]
# ## Floors and their ordering
#
# The summaries are redrawn from their bootstrap SEs in each posterior draw.

# %%
floors = floors_.floor_ordering(stage1, exps[exps.primary], geo, seed=RANDOM_SEED)
write_parquet(run_dir / "floors.parquet", floors)
floors.round(3)

# %%
rho = floors[floors.row_type == "spearman"]
assert rho.p_gt0.dropna().between(0, 1).all() and set(rho.summary) == {"curvature", "id_twonn"}
for r in rho.itertuples():
    if r.status != "ranked":
        print(f"{r.model}, {r.summary}: {r.status}")

# %% [markdown]
# ## Can this profile test the claim?
#
# Ranking floors needs at least three identified floors in one real pretrained model, so
# at least three layers whose width grid can identify a floor (showcase layers). With
# fewer, the verdict is "not testable with this profile" (and `geowall check` warns),
# whatever the floors read; the synthetic zoo's showcase layers are a known-answer check
# and never decide it.

# %%
from geowall import law, verdicts

floor_v = verdicts.floor_verdict(floors, exps, law.model_kinds(cfg.models))
print(f"floor claim: {floor_v['verdict']} ({floor_v['numbers']}; {floor_v['power']})")

# %%
#| label: fig-floors
#| fig-cap: "Identified floors (width asymptote of fvu at the model's reference sparsity, 94% HDI) against curvature and TwoNN intrinsic dimension, one colour per model. Compare within a colour: floors rising from left to right are the geometric wall. A summary withheld at every identified floor's layer gets no panel (the subtitle says so)."
charts.floors(floors)

# %%
notebook.versions()
