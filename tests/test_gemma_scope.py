"""Tests of geowall.sources.gemma_scope: the registry manifest and params.npz loading (offline)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from geowall import sae as S
from geowall.sources import gemma_scope as gs

D, W = 8, 32


def test_manifest_reproduces_the_study_totals():
    m = gs.manifest()
    assert len(m) == 844
    assert m.groupby("model").size().to_dict() == {"gemma-2-2b": 312, "gemma-2-9b": 532}
    assert m.groupby("model").layer.nunique().to_dict() == {"gemma-2-2b": 26, "gemma-2-9b": 42}
    assert m[["model", "layer"]].drop_duplicates().shape[0] == 68
    assert not m.sae_id.str.contains("embedding").any()
    assert not m.duplicated(["release", "sae_id"]).any()
    showcase = m.loc[m.showcase, ["model", "layer"]].drop_duplicates()
    assert sorted(map(tuple, showcase.to_numpy().tolist())) == [("gemma-2-2b", 12), ("gemma-2-9b", 20)]
    widths = sorted(m.loc[m.showcase, "width"].unique())
    assert widths == [2**14, 2**15, 2**16, 2**17, 2**18, 2**19, 2**20]
    assert (m.l0 > 0).all() and m.layer.between(0, 41).all()
    assert set(m.release) == set(gs.RELEASES)


def test_parse_width():
    assert [gs.parse_width(t) for t in ("4k", "16k", "65k", "131k", "524k", "1m")] == [
        4096, 16384, 65536, 131072, 524288, 1048576]


def _fake_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_enc": rng.normal(size=(D, W)).astype(np.float32),
        "W_dec": rng.normal(size=(W, D)).astype(np.float32) / 3,
        "b_enc": rng.normal(size=W).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=D).astype(np.float32),
        "threshold": rng.uniform(0.5, 1.5, size=W).astype(np.float32),
    }


@pytest.fixture()
def params_dir(tmp_path):
    params = _fake_params(np.random.default_rng(0))
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_7"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    return folder, params


def test_fake_params_load_and_evaluate(params_dir):
    import sae_lens

    folder, p = params_dir
    sae = gs.load_released_sae(folder)
    assert isinstance(sae, sae_lens.JumpReLUSAE)
    x = np.random.default_rng(1).normal(size=(300, D)).astype(np.float32) * 2
    pre = x @ p["W_enc"] + p["b_enc"]                      # no b_dec on the input
    f = np.where(pre > p["threshold"], np.maximum(pre, 0), 0)
    x_hat = f @ p["W_dec"] + p["b_dec"]
    with torch.no_grad():
        got = sae.decode(sae.encode(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got, x_hat, rtol=1e-5, atol=1e-5)
    m = S.evaluate(sae, x, batch_size=64)
    fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m["fvu"] == pytest.approx(fvu, rel=1e-5)
    assert m["l0"] == pytest.approx((f != 0).sum(1).mean())
    assert m["dead_frac"] == pytest.approx(1 - (f != 0).any(0).mean())
    assert m["n_tokens"] == 300


def test_truncated_npz_is_a_clear_error(params_dir):
    folder, _ = params_dir
    path = folder / "params.npz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"params\.npz.*(truncated or corrupt)"):
        gs.load_released_sae(folder)


def test_corrupt_member_names_the_key(params_dir):
    folder, p = params_dir
    path = folder / "params.npz"
    raw = bytearray(path.read_bytes())
    start = raw.find(b"W_dec.npy")                     # local header of the W_dec member
    assert start > 0
    pos = start + 200                                  # inside W_dec's data
    raw[pos:pos + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"params\.npz: key 'W_dec'.*(truncated or corrupt)"):
        gs.load_released_sae(folder)


@pytest.mark.parametrize("key,shape,expected", [
    ("W_dec", (W, D + 1), f"expected \\({W}, {D}\\)"),
    ("threshold", (W + 2,), f"expected \\({W},\\)"),
    ("b_dec", (D, 1), f"expected \\({D},\\)"),
    ("W_enc", (D * W,), "expected 2-D"),
])
def test_misshaped_key_names_file_key_and_shape(tmp_path, key, shape, expected):
    params = _fake_params(np.random.default_rng(2))
    params[key] = np.zeros(shape, np.float32)
    np.savez(tmp_path / "params.npz", **params)
    with pytest.raises(ValueError, match=rf"params\.npz: key '{key}' has shape .*{expected}"):
        gs.load_released_sae(tmp_path)


def test_missing_key_and_missing_file(tmp_path):
    params = _fake_params(np.random.default_rng(3))
    del params["threshold"]
    np.savez(tmp_path / "params.npz", **params)
    with pytest.raises(ValueError, match=r"params\.npz: missing key 'threshold'"):
        gs.load_released_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="params.npz"):
        gs.load_released_sae(tmp_path / "nowhere")


def test_from_pretrained_rejects_unknown_ids_before_any_download():
    with pytest.raises(ValueError, match="not in the sae-lens registry"):
        gs.from_pretrained("no-such-release", "layer_0/width_16k/average_l0_105")
    with pytest.raises(ValueError, match="not in release"):
        gs.from_pretrained("gemma-scope-2b-pt-res", "layer_99/width_16k/average_l0_1")


def test_run_manifest_evaluates_a_local_mirror_and_resumes(tmp_path, monkeypatch):
    import pandas as pd
    from types import SimpleNamespace

    import geowall.activations

    release = "gemma-scope-2b-pt-res"
    fake = pd.DataFrame([
        {"release": release, "model": "gemma-2-2b", "layer": layer, "width": width, "l0": l0,
         "sae_id": f"layer_{layer}/width_{width}/average_l0_{l0}", "showcase": False}
        for layer, width, l0 in [(3, 32, 5), (3, 64, 9), (4, 32, 7)]])
    monkeypatch.setattr(gs, "manifest", lambda releases=gs.RELEASES: fake[fake.release.isin(releases)])
    rng = np.random.default_rng(4)
    for r in fake.itertuples():
        p = _fake_params(rng) if r.width == W else {
            "W_enc": rng.normal(size=(D, r.width)).astype(np.float32), "W_dec": rng.normal(size=(r.width, D)).astype(np.float32),
            "b_enc": np.zeros(r.width, np.float32), "b_dec": np.zeros(D, np.float32),
            "threshold": np.full(r.width, 0.5, np.float32)}
        folder = tmp_path / "mirror" / release / r.sae_id
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **p)
    acts = rng.normal(size=(120, D)).astype(np.float32)
    monkeypatch.setattr(geowall.activations, "load", lambda run_dir, model, layer, split: acts)
    opened = []
    real_load = gs.load_released_sae
    monkeypatch.setattr(gs, "load_released_sae", lambda *a, **kw: opened.append(a) or real_load(*a, **kw))
    spec = SimpleNamespace(name="gemma-2-2b", sae_release=release, sae_local_dir=tmp_path / "mirror")
    metrics_path = tmp_path / "metrics.parquet"

    rows = gs.run_manifest(spec, [3], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)
    assert list(zip(rows.layer, rows.width, rows.k)) == [(3, 32, 5), (3, 64, 9)]
    table = S.read_metrics(metrics_path)
    assert list(table.k) == [5, 9] and (table.source == "gemma-scope").all() and (table.train_tokens == 0).all()
    assert table.sae_id.tolist() == [f"{release}/layer_3/width_32/average_l0_5", f"{release}/layer_3/width_64/average_l0_9"]
    want = S.evaluate(real_load(tmp_path / "mirror" / release / "layer_3/width_32/average_l0_5"), acts)
    assert table.fvu[0] == pytest.approx(want["fvu"]) and table.l0[0] == pytest.approx(want["l0"])
    assert len(opened) == 2
    gs.run_manifest(spec, [3, 4], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)
    assert len(opened) == 3 and len(S.read_metrics(metrics_path)) == 3   # layer 3 skipped
    with pytest.raises(ValueError, match=r"layers \[7\] have no residual SAEs"):
        gs.run_manifest(spec, [7], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)
