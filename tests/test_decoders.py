"""Decoder LM sources (Gemma 3 270M, SmolLM2-135M from PyPI GGUF files).

Fake inputs (always run): the GGUF is refused on a wrong hash with nothing left behind, a
missing package is named with its pip command (a different error), a converted folder is
built atomically and reused, a corrupted cache is refused, and profile validation names the
package. Real models (skipped, with the pip command, when the packages are absent): the
harvest equals transformers' own ``hidden_states`` on a short text, the last residual point is
taken before the final norm, position 0 is dropped, and the first position carries the
massive activation that the exclusion rule is about.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from geowall import activations
from geowall.config import ActivationsSpec, ModelSpec, ProfileError, validate
from geowall.sources import decoders, drops_first_position, model_info

# ---------------------------------------------------------------------------- fake GGUF releases


def _fake_release(tmp_path, payload: bytes, *, dist="geowall-fake-gguf", parts=()) -> decoders.Release:
    import hashlib

    return dataclasses.replace(
        decoders.RELEASES["smollm2"],
        source="fake",
        title="Fake LM",
        install=f"pip install {dist}",
        dist=dist,
        parts=parts,
        gguf="fake.gguf",
        nbytes=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        folder="fake-f32",
    )


def _pieces(tmp_path, payload: bytes, n: int = 3) -> list:
    cut = [0, len(payload) // 3, 2 * len(payload) // 3, len(payload)][: n + 1] if n == 3 else [0, len(payload)]
    out = []
    for i in range(len(cut) - 1):
        p = tmp_path / "pkg" / f"fake.gguf.part{i:02d}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload[cut[i] : cut[i + 1]])
        out.append(p)
    return out


def _fake_convert(calls: list):
    """Stands in for transformers' dequantisation: writes a tiny safetensors folder derived from the GGUF bytes."""

    def convert(gguf_path, dest, rel):
        import torch
        from safetensors.torch import save_file

        calls.append(gguf_path.read_bytes())
        dest.mkdir()
        data = torch.frombuffer(bytearray(gguf_path.read_bytes()), dtype=torch.uint8).float()
        save_file({"w": data}, str(dest / "model.safetensors"))
        (dest / "config.json").write_text(json.dumps({"num_hidden_layers": 1, "hidden_size": 4}))

    return convert


PAYLOAD = bytes(range(256)) * 40


def test_build_assembles_checks_converts_atomically_and_is_reused(tmp_path, monkeypatch):
    rel = _fake_release(tmp_path, PAYLOAD)
    pieces = _pieces(tmp_path, PAYLOAD)
    calls: list = []
    monkeypatch.setitem(decoders.SOURCES, "fake", rel)
    monkeypatch.setattr(decoders, "gguf_pieces", lambda r: pieces)
    monkeypatch.setattr(decoders, "dequantise", _fake_convert(calls))
    cache = tmp_path / "cache"
    out = decoders.model_dir("fake", cache=cache)
    assert out == cache / "fake-f32" and calls == [PAYLOAD]  # the pieces, concatenated in order
    rec = json.loads((out / decoders.RECORD).read_text())
    assert rec["gguf_sha256"] == rel.sha256 and set(rec["weights"]) == {"model.safetensors"}
    assert sorted(p.name for p in cache.iterdir()) == ["fake-f32"]  # no temporary folder, no GGUF copy left
    assert not (out / "gguf").exists()
    # a second call reuses the folder (re-hashing it) and converts nothing
    assert decoders.model_dir("fake", cache=cache) == out and len(calls) == 1
    # a corrupted cache is refused, naming the folder to delete; a fresh build replaces it
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(decoders.DecoderHashMismatch, match="delete .*fake-f32"):
        decoders.model_dir("fake", cache=cache)
    # a record of another conversion format is rebuilt, not trusted
    rec["format"] = decoders.FORMAT + 1
    (out / decoders.RECORD).write_text(json.dumps(rec))
    decoders.model_dir("fake", cache=cache)
    assert len(calls) == 2
    decoders.verify(out, rel)


def test_wrong_hash_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    rel = _fake_release(tmp_path, PAYLOAD)
    bad = bytearray(PAYLOAD)
    bad[100] ^= 1
    calls: list = []
    cache = tmp_path / "cache"
    with pytest.raises(decoders.DecoderHashMismatch, match="SHA-256") as e:
        decoders.build(rel, cache / rel.folder, pieces=_pieces(tmp_path, bytes(bad)), convert=_fake_convert(calls))
    assert "pip install geowall-fake-gguf" in str(e.value) and rel.sha256 in str(e.value)
    assert not isinstance(e.value, decoders.DecoderUnavailable)  # a different error from a missing package
    assert calls == [] and list(cache.iterdir()) == []
    # a truncated file (right prefix, wrong size) is refused too
    with pytest.raises(decoders.DecoderHashMismatch, match=f"expected {len(PAYLOAD):,} bytes"):
        decoders.build(rel, cache / rel.folder, pieces=_pieces(tmp_path, PAYLOAD[:-1]), convert=_fake_convert(calls))
    assert calls == [] and list(cache.iterdir()) == []


def test_a_failed_conversion_leaves_nothing(tmp_path):
    rel = _fake_release(tmp_path, PAYLOAD)

    def broken(gguf_path, dest, rel):
        dest.mkdir()
        (dest / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError, match="killed"):
        decoders.build(rel, tmp_path / "cache" / rel.folder, pieces=_pieces(tmp_path, PAYLOAD), convert=broken)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_package_names_it_and_the_pip_command(tmp_path, monkeypatch):
    rel = _fake_release(tmp_path, PAYLOAD, dist="geowall-no-such-gguf-package")
    with pytest.raises(decoders.DecoderUnavailable, match="geowall-no-such-gguf-package is not installed") as e:
        decoders.gguf_pieces(rel)
    assert "pip install geowall-no-such-gguf-package" in str(e.value)
    assert not isinstance(e.value, decoders.DecoderHashMismatch)
    parted = dataclasses.replace(rel, parts=("geowall-no-such-part1", "geowall-no-such-part2"))
    with pytest.raises(decoders.DecoderUnavailable, match="geowall-no-such-part1"):
        decoders.gguf_pieces(parted)
    # profile validation reports it before any work, naming the package
    monkeypatch.setattr(decoders, "CACHE", tmp_path / "empty-cache")
    monkeypatch.setitem(decoders.SOURCES, "smollm2", dataclasses.replace(decoders.RELEASES["smollm2"], dist=rel.dist))
    with pytest.raises(ProfileError, match="geowall-no-such-gguf-package"):
        validate(
            {
                "name": "t",
                "models": [{"name": "s", "source": "smollm2"}],
                "activations": {"n_train": 100, "n_eval": 20},
                "sae": {"width_multiples": [1, 2], "ks": [4], "showcase_layers": {}},
            }
        )


def test_preflight_names_a_missing_decoder_package(tmp_path, monkeypatch):
    """``geowall run``'s preflight (machine checks) names the model's key and the package when the
    GGUF package is absent and nothing is converted yet."""
    from geowall import preflight
    from geowall.config import load_profile

    try:
        cfg = load_profile("decoders")  # validation needs the packages or a converted cache
    except ProfileError as e:
        pytest.skip(f"decoder packages not installed: {e}")
    assert preflight.problems(cfg, machine=False) == []
    assert {m.source for m in cfg.models} == {"gemma3", "gemma3-random", "smollm2", "smollm2-random"}
    assert {tuple(p) for p in cfg.transfer} >= {("gemma3", "smollm2"), ("smollm2", "gemma3")}
    monkeypatch.setattr(decoders, "CACHE", tmp_path / "empty-cache")
    monkeypatch.setitem(
        decoders.SOURCES, "smollm2", dataclasses.replace(decoders.RELEASES["smollm2"], dist="geowall-no-such-smollm")
    )
    found = preflight.problems(cfg, ["activations"])
    assert [(p.key, p.steps) for p in found] == [("models.1.source", ("activations",))]
    assert "geowall-no-such-smollm is not installed" in found[0].message


def test_plan_counts_the_gguf_download_and_the_float32_cache(tmp_path, monkeypatch):
    from geowall import plan
    from geowall.config import load_profile

    try:
        cfg = load_profile("decoders")
    except ProfileError as e:
        pytest.skip(f"decoder packages not installed: {e}")
    monkeypatch.setattr(decoders, "CACHE", tmp_path / "empty-cache")  # as on a clean clone
    p = plan.build(cfg, throughput={"float32_flops": 1e11, "device": "cpu"})
    g, s = decoders.RELEASES["gemma3"], decoders.RELEASES["smollm2"]
    assert p.download_bytes == g.nbytes + s.nbytes  # each GGUF once (a twin shares its release's)
    cache = {k: v for k, v in p.disk.items() if "dequantised" in k}
    assert sorted(cache.values()) == [s.n_params * 4, g.n_params * 4]
    harvest = {t.model: t.flops for t in p.tasks if t.task == "harvest"}
    tokens = cfg.activations.n_train + cfg.activations.n_eval
    assert harvest["gemma3"] == 2.0 * (g.n_params - g.n_embed) * tokens  # the embedding is a lookup


def test_release_facts():
    g, s = decoders.RELEASES["gemma3"], decoders.RELEASES["smollm2"]
    assert (g.n_points, g.d, g.nbytes) == (19, 640, 253_113_024)
    assert (s.n_points, s.d, s.nbytes) == (31, 576, 98_362_432)
    assert g.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert s.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert "--no-deps" in s.install and "Gemma terms" in g.licence
    for name in ("gemma3", "gemma3-random", "smollm2", "smollm2-random"):
        assert drops_first_position(ModelSpec(name="m", source=name))
    for name in ("minilm", "mpnet"):
        assert not drops_first_position(ModelSpec(name="m", source=name))
    with pytest.raises(ValueError, match="not a GGUF decoder source"):
        decoders.release("minilm")


# ---------------------------------------------------------------------------- real models


def _installed(source: str):
    rel = decoders.release(source)
    try:
        decoders.check_installed(rel)
    except decoders.DecoderUnavailable as e:
        pytest.skip(f"{rel.title} not installed ({rel.install}): {e}")
    try:
        import gguf  # noqa: F401
    except ImportError:
        if not (decoders.CACHE / rel.folder / decoders.RECORD).is_file():
            pytest.skip("the gguf package is not installed (pip install gguf)")


@pytest.mark.slow  # converts once (about a minute) when data/cache has no converted folder yet
@pytest.mark.parametrize("source", ["smollm2", "gemma3"])
def test_residual_stream_matches_transformers_hidden_states(tmp_path, tiny_corpus, source):
    """Harvest a short text; compare with transformers' own hidden_states, one document at a
    time: points 0 .. n-2 equal hidden_states[i]; the last point is the last block's output
    before the final norm (transformers' last entry is norm(that)); special tokens and position
    0 are dropped; activations are raw (not normalised)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _installed(source)
    rel = decoders.release(source)
    spec = ModelSpec(name=source, source=source)
    info = model_info(spec)
    assert (info.n_layers, info.d) == (rel.n_points, rel.d)
    last = rel.n_points - 1
    layers = [0, last // 2, last]
    acts = ActivationsSpec(n_train=30, n_eval=10, max_seq_len=16, batch_size=2)
    activations.harvest(spec, layers, acts, run_dir=tmp_path, seed=3, corpus=tiny_corpus, progress=False)
    path = decoders.model_dir(source)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    assert not hasattr(model, "lm_head")
    special = set(tok.all_special_ids)
    for split, docs in (("train", tiny_corpus.train), ("eval", tiny_corpus.eval)):
        order = np.random.default_rng([3, activations.SPLITS.index(split)]).permutation(len(docs))
        n = getattr(acts, f"n_{split}")
        ref = {layer: [] for layer in layers}
        normed_last, ids = [], []
        for i in order:
            enc = tok(docs[i], truncation=True, max_length=16, return_tensors="pt")
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states
            assert len(hs) == rel.n_points
            keep = [j for j, t in enumerate(enc["input_ids"][0].tolist()) if t not in special and j > 0]
            for layer in layers[:-1]:
                ref[layer].append(hs[layer][0, keep].numpy())
            normed_last.append(hs[last][0, keep].numpy())
            ids.extend(enc["input_ids"][0, keep].tolist())
        for layer in layers[:-1]:
            got = activations.load(tmp_path, source, layer, split)
            want = np.concatenate(ref[layer])[:n]
            scale = np.abs(want).max()
            np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=1e-4)
        got_last = torch.from_numpy(np.array(activations.load(tmp_path, source, last, split)))
        want_last = np.concatenate(normed_last)[:n]
        with torch.no_grad():
            np.testing.assert_allclose(model.norm(got_last).numpy(), want_last, atol=1e-3, rtol=1e-3)
        assert not np.allclose(got_last.numpy(), want_last, rtol=0.1)  # not the normed entry
        np.testing.assert_array_equal(np.load(tmp_path / source / "acts" / f"tokens_{split}.npy"), ids[:n])
        assert not special.intersection(ids[:n])
    man = activations.layer_manifest(tmp_path, source, 0)
    assert man["excluded"] == "special tokens, padding, position 0" and man["d"] == rel.d


@pytest.mark.slow
@pytest.mark.parametrize("source", ["smollm2", "gemma3"])
def test_first_position_is_the_massive_attention_sink(source):
    """The evidence behind dropping position 0 (and only it): on a short text, the first
    position's residual norm is many times the other tokens' median at the middle layers,
    while the kept tokens stay within a few times the median there."""
    import torch

    _installed(source)
    from geowall.sources import transformer

    model, tok, forward = transformer.load(ModelSpec(name=source, source=source), seed=0, device=torch.device("cpu"))
    assert tok.padding_side == "right"
    text = (
        "Return a new list containing all items from the iterable in ascending order. A custom key function "
        "can be supplied to customize the sort order, and the reverse flag can be set to request the result "
        "in descending order."
    )
    enc = tok([text], return_tensors="pt")
    rel = decoders.release(source)
    layers = list(range(rel.n_points))
    with torch.no_grad():
        out = forward(dict(enc), layers)
    ratios = []
    for layer in layers[1:-1]:
        norms = out[layer][0].norm(dim=-1)
        ratios.append(float(norms[0] / norms[1:].median()))
    # measured (stdlib docstrings, 64 documents): Gemma 3 <bos> up to 29x the median (layer 1),
    # SmolLM2's first text token up to 169x (layers 12 to 28)
    assert max(ratios) > 15, ratios


@pytest.mark.slow  # loads the GGUF through transformers' own dequantisation (about 30 s)
def test_cached_folder_equals_transformers_gguf_load():
    """The float32 folder is the GGUF as transformers dequantises it: same weights, same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    _installed("smollm2")
    rel = decoders.release("smollm2")
    (piece,) = decoders.gguf_pieces(rel)
    direct = AutoModelForCausalLM.from_pretrained(str(piece.parent), gguf_file=piece.name, dtype=torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(decoders.model_dir("smollm2"), dtype=torch.float32)
    assert getattr(cached.config, "quantization_config", None) is None
    ids = torch.tensor([[504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, direct(ids).logits, rtol=0, atol=0)
