"""Harvested activations equal what transformers returns directly; resume; bad data."""

import numpy as np
import pytest
import torch

from geowall import activations
from geowall.config import ActivationsSpec, ModelSpec
from geowall.sources import minilm_dir


def _direct_rows(model, tok, docs, order, layer_fn, max_len):
    """Reference: one document at a time, no padding, special tokens dropped by id."""
    special = set(tok.all_special_ids)
    rows, ids = [], []
    for i in order:
        enc = tok(docs[i], truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            h = layer_fn(enc)
        keep = [j for j, t in enumerate(enc["input_ids"][0].tolist()) if t not in special]
        rows.append(h[0, keep].numpy())
        ids.extend(enc["input_ids"][0, keep].tolist())
    return np.concatenate(rows), np.array(ids)


def test_minilm_matches_transformers_directly(tmp_path, tiny_corpus):
    from transformers import AutoModel, AutoTokenizer

    spec = ModelSpec(name="minilm", source="minilm")
    acts = ActivationsSpec(n_train=40, n_eval=12, max_seq_len=16, batch_size=2)
    activations.harvest(spec, [0, 3, 6], acts, run_dir=tmp_path, seed=5, corpus=tiny_corpus, progress=False)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    for split, docs in (("train", tiny_corpus.train), ("eval", tiny_corpus.eval)):
        order = np.random.default_rng([5, activations.SPLITS.index(split)]).permutation(len(docs))
        n = getattr(acts, f"n_{split}")
        ids_got = np.load(tmp_path / "minilm" / "acts" / f"tokens_{split}.npy")
        for layer in (0, 3, 6):
            ref, ids = _direct_rows(
                model,
                tok,
                docs,
                order,
                lambda enc, layer=layer: model(**enc, output_hidden_states=True).hidden_states[layer],
                16,
            )
            got = activations.load(tmp_path, "minilm", layer, split)
            assert got.shape == (n, 384)
            np.testing.assert_allclose(got, ref[:n], atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(ids_got, ids[:n])
    man = activations.layer_manifest(tmp_path, "minilm", 3)
    assert man["n_train"] == 40 and man["d"] == 384 and man["corpus_hash"] == "tiny"


def test_minilm_random_is_seeded_and_differs(tmp_path, tiny_corpus):
    acts = ActivationsSpec(n_train=20, n_eval=8, max_seq_len=16, batch_size=4)
    for run in ("r1", "r2"):
        activations.harvest(
            ModelSpec(name="rnd", source="minilm-random"),
            [2],
            acts,
            run_dir=tmp_path / run,
            seed=1,
            corpus=tiny_corpus,
            progress=False,
        )
    activations.harvest(
        ModelSpec(name="minilm", source="minilm"),
        [2],
        acts,
        run_dir=tmp_path / "p",
        seed=1,
        corpus=tiny_corpus,
        progress=False,
    )
    a, b = (activations.load(tmp_path / r, "rnd", 2) for r in ("r1", "r2"))
    assert np.array_equal(a, b)
    assert not np.allclose(a, activations.load(tmp_path / "p", "minilm", 2))


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    path = tmp_path_factory.mktemp("tiny-gemma2")
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
    )
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)
    return path


def test_tiny_gemma2_resid_post_via_hooks(tmp_path, tiny_corpus, tiny_gemma):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geowall.config import load_profile

    spec = ModelSpec(name="g", source="hf", hf_model=str(tiny_gemma))
    cfg = load_profile("smoke", {"models": [spec.model_dump(mode="json")], "sae.showcase_layers": {}, "transfer": []})
    assert cfg.layers_of(cfg.models[0]) == [0, 1, 2]
    acts = ActivationsSpec(n_train=30, n_eval=10, max_seq_len=16, batch_size=3)
    activations.harvest(spec, [0, 1, 2], acts, run_dir=tmp_path, seed=0, corpus=tiny_corpus, progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gemma)
    order = np.random.default_rng([0, 0]).permutation(len(tiny_corpus.train))
    hs = lambda enc: model(**enc, output_hidden_states=True).hidden_states  # noqa: E731
    for layer in (0, 1):  # resid_post of block i == hidden_states[i + 1] except for the last block
        ref, _ = _direct_rows(model, tok, tiny_corpus.train, order, lambda enc, layer=layer: hs(enc)[layer + 1], 16)
        np.testing.assert_allclose(activations.load(tmp_path, "g", layer), ref[:30], atol=1e-4, rtol=1e-4)
    # the last hidden state has the final norm applied: our layer 2 must NOT equal it ...
    normed, _ = _direct_rows(model, tok, tiny_corpus.train, order, lambda enc: hs(enc)[3], 16)
    last = activations.load(tmp_path, "g", 2)
    assert not np.allclose(last, normed[:30], atol=1e-3)
    # ... but the final norm applied to our layer 2 gives it back
    with torch.no_grad():
        renorm = model.model.norm(torch.from_numpy(np.array(last))).numpy()
    np.testing.assert_allclose(renorm, normed[:30], atol=1e-4, rtol=1e-4)


def test_resume_skips_complete_layers_and_redoes_stale(tmp_path, tiny_corpus, capsys):
    spec = ModelSpec(name="minilm", source="minilm")
    acts = ActivationsSpec(n_train=20, n_eval=8, max_seq_len=16, batch_size=4)
    kw = dict(run_dir=tmp_path, seed=0, corpus=tiny_corpus, progress=False)
    assert activations.harvest(spec, [1, 2], acts, **kw) == {"harvested": 2, "skipped": 0}
    before = activations.load(tmp_path, "minilm", 1).copy()
    assert activations.harvest(spec, [1, 2, 4], acts, **kw) == {"harvested": 1, "skipped": 2}
    assert "2 of 3 layers already harvested, skipped" in capsys.readouterr().out
    np.testing.assert_array_equal(activations.load(tmp_path, "minilm", 1), before)
    # a different request (more tokens) makes the old layers stale
    acts2 = ActivationsSpec(n_train=24, n_eval=8, max_seq_len=16, batch_size=4)
    assert activations.harvest(spec, [1], acts2, **kw) == {"harvested": 1, "skipped": 0}
    assert activations.load(tmp_path, "minilm", 1).shape == (24, 384)


def test_non_finite_activations_are_named(tmp_path):
    spec = ModelSpec(name="synth", source="synthetic", zoo="a")
    activations.harvest(spec, [0], ActivationsSpec(n_train=50, n_eval=10), run_dir=tmp_path, seed=0, progress=False)
    path = activations.layer_dir(tmp_path, "synth", 0) / "train.npy"
    x = np.load(path)
    x[[3, 7], 1] = np.nan
    x[9, 0] = np.inf
    np.save(path, x)
    with pytest.raises(
        activations.ActivationError, match=r"model 'synth' layer 0 train: 3 of 50 rows contain NaN or Inf"
    ):
        activations.load(tmp_path, "synth", 0, "train")


def test_corpus_too_small_is_a_clear_error(tmp_path, tiny_corpus):
    spec = ModelSpec(name="minilm", source="minilm")
    with pytest.raises(
        activations.ActivationError, match=r"only \d+ usable tokens, activations.n_train asks for 100000"
    ):
        activations.harvest(
            spec,
            [1],
            ActivationsSpec(n_train=100000, n_eval=8),
            run_dir=tmp_path,
            seed=0,
            corpus=tiny_corpus,
            progress=False,
        )
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("manifest.json"))
