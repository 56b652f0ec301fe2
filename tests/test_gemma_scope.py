"""Tests of geowall.sources.gemma_scope: the registry manifest and params.npz loading (offline)."""

from __future__ import annotations

from pathlib import Path

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
        4096,
        16384,
        65536,
        131072,
        524288,
        1048576,
    ]


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
    pre = x @ p["W_enc"] + p["b_enc"]  # no b_dec on the input
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
    start = raw.find(b"W_dec.npy")  # local header of the W_dec member
    assert start > 0
    pos = start + 200  # inside W_dec's data
    raw[pos : pos + 16] = bytes(16)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"params\.npz: key 'W_dec'.*(truncated or corrupt)"):
        gs.load_released_sae(folder)


@pytest.mark.parametrize(
    "key,shape,expected",
    [
        ("W_dec", (W, D + 1), f"expected \\({W}, {D}\\)"),
        ("threshold", (W + 2,), f"expected \\({W},\\)"),
        ("b_dec", (D, 1), f"expected \\({D},\\)"),
        ("W_enc", (D * W,), "expected 2-D"),
    ],
)
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
    from types import SimpleNamespace

    import pandas as pd

    release = "gemma-scope-2b-pt-res"
    fake = pd.DataFrame(
        [
            {
                "release": release,
                "model": "gemma-2-2b",
                "layer": layer,
                "width": width,
                "l0": l0,
                "sae_id": f"layer_{layer}/width_{width}/average_l0_{l0}",
                "showcase": False,
            }
            for layer, width, l0 in [(3, 32, 5), (3, 64, 9), (4, 32, 7)]
        ]
    )
    monkeypatch.setattr(gs, "manifest", lambda releases=gs.RELEASES: fake[fake.release.isin(releases)])
    rng = np.random.default_rng(4)
    for r in fake.itertuples():
        p = (
            _fake_params(rng)
            if r.width == W
            else {
                "W_enc": rng.normal(size=(D, r.width)).astype(np.float32),
                "W_dec": rng.normal(size=(r.width, D)).astype(np.float32),
                "b_enc": np.zeros(r.width, np.float32),
                "b_dec": np.zeros(D, np.float32),
                "threshold": np.full(r.width, 0.5, np.float32),
            }
        )
        folder = tmp_path / "mirror" / release / r.sae_id
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **p)
    acts = rng.normal(size=(120, D)).astype(np.float32)
    monkeypatch.setattr(gs, "load_activations", lambda run_dir, model, layer, split: acts)
    opened = []
    real_load = gs.load_released_sae
    monkeypatch.setattr(gs, "load_released_sae", lambda *a, **kw: opened.append(a) or real_load(*a, **kw))
    spec = SimpleNamespace(name="gemma-2-2b", sae_release=release, sae_local_dir=tmp_path / "mirror")
    metrics_path = tmp_path / "metrics.parquet"

    rows = gs.run_manifest(spec, [3], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)
    assert list(zip(rows.layer, rows.width, rows.k)) == [(3, 32, 5), (3, 64, 9)]
    table = S.read_metrics(metrics_path)
    assert list(table.k) == [5, 9] and (table.source == "gemma-scope").all() and (table.train_tokens == 0).all()
    assert table.sae_id.tolist() == [
        f"{release}/layer_3/width_32/average_l0_5",
        f"{release}/layer_3/width_64/average_l0_9",
    ]
    want = S.evaluate(real_load(tmp_path / "mirror" / release / "layer_3/width_32/average_l0_5"), acts)
    assert table.fvu[0] == pytest.approx(want["fvu"]) and table.l0[0] == pytest.approx(want["l0"])
    assert len(opened) == 2
    gs.run_manifest(spec, [3, 4], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)
    assert len(opened) == 3 and len(S.read_metrics(metrics_path)) == 3  # layer 3 skipped
    with pytest.raises(ValueError, match=r"layers \[7\] have no residual SAEs"):
        gs.run_manifest(spec, [7], run_dir=tmp_path, metrics_path=metrics_path, seed=0, progress=False)


# ---------------------------------------------------------------------------- streamed loading

_RSS_SCRIPT = r"""
import json, sys, torch
from pathlib import Path
from geowall.sources import gemma_scope as gs

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
path, device, verify, chunk = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
gs.npz_members(path)                                   # imports and zip parsing before the baseline
before = status("VmRSS")
params = gs.read_params(path, device=device, verify=verify, check_finite=verify, chunk_bytes=chunk)
print(json.dumps({"before": before, "hwm": status("VmHWM"),
                  "shapes": {k: list(v.shape) for k, v in params.items()}}))
"""


def _peak_rss_of_load(path, device: str, verify: bool, chunk_bytes: int = gs.CHUNK_BYTES) -> dict:
    """Load ``path`` in a fresh interpreter; its RSS before loading and its high-water mark."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), device, "1" if verify else "0", str(chunk_bytes)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sparse_params(path, d: int, width: int) -> int:
    from npz_sparse import write_sparse_npz

    return write_sparse_npz(path, {k: (v, "<f4") for k, v in gs.expected_shapes(d, width).items()})


@pytest.mark.skipif(not __import__("pathlib").Path("/proc/self/status").is_file(), reason="needs Linux /proc")
@pytest.mark.slow
def test_largest_gemma_scope_sae_streams_with_bounded_host_memory(tmp_path):
    """The 9B 1M-width SAE (d=3584, W=2**20: 30 GB of float32) streamed to a non-host device
    (``meta`` stands in for a GPU: every byte is read and copied through the host buffer) keeps
    the host's peak RSS within a few chunks; the file is sparse, so it takes no disk."""
    d, width = gs.RELEASE_D["gemma-scope-9b-pt-res"], 2**20
    path = tmp_path / "params.npz"
    size = _sparse_params(path, d, width)
    assert size == pytest.approx(gs.sae_nbytes(d, width), abs=gs.NPZ_OVERHEAD)
    assert size > 30e9 and path.stat().st_blocks * 512 < 10e6  # apparent 30 GB, ~nothing on disk
    got = _peak_rss_of_load(path, "meta", verify=False)
    assert got["shapes"]["W_enc"] == [d, width] and got["shapes"]["W_dec"] == [width, d]
    growth = got["hwm"] - got["before"]
    assert growth < 4 * gs.CHUNK_BYTES + 64 * 2**20, f"host RSS grew by {growth / 2**20:.0f} MiB"


def test_streamed_load_host_memory_is_one_copy_on_cpu_and_one_chunk_elsewhere(tmp_path):
    """A 2B 16k-width SAE (302 MB), checked (CRC and finiteness): onto the CPU the peak RSS
    grows by the parameters once (the old numpy-then-copy path needed twice); onto another
    device (``meta``) by at most a few host chunks."""
    d, width = gs.RELEASE_D["gemma-scope-2b-pt-res"], 2**14
    path = tmp_path / "params.npz"
    size = _sparse_params(path, d, width)
    chunk = 8 * 2**20
    cpu = _peak_rss_of_load(path, "cpu", verify=True, chunk_bytes=chunk)
    assert cpu["hwm"] - cpu["before"] < 1.1 * size + 32 * 2**20
    meta = _peak_rss_of_load(path, "meta", verify=True, chunk_bytes=chunk)
    assert meta["hwm"] - meta["before"] < 4 * chunk + 64 * 2**20 < 0.5 * size


def test_streamed_params_equal_numpy_and_catch_bad_crc(tmp_path):
    rng = np.random.default_rng(5)
    p = _fake_params(rng)
    np.savez(tmp_path / "params.npz", **p)
    got = gs.read_params(tmp_path / "params.npz", chunk_bytes=40)  # many tiny chunks
    for k, v in p.items():
        np.testing.assert_array_equal(got[k].numpy(), v)
    np.savez_compressed(tmp_path / "c.npz", **p)  # deflated members stream too
    for k, v in gs.read_params(tmp_path / "c.npz", chunk_bytes=40).items():
        np.testing.assert_array_equal(v.numpy(), p[k])
    np.savez(tmp_path / "f.npz", **{**p, "W_enc": np.asfortranarray(p["W_enc"])})
    np.testing.assert_array_equal(gs.read_params(tmp_path / "f.npz")["W_enc"].numpy(), p["W_enc"])
    bad = {**p, "b_enc": p["b_enc"].copy()}
    bad["b_enc"][3] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(ValueError, match=r"nan\.npz: key 'b_enc' contains NaN"):
        gs.read_params(tmp_path / "nan.npz")
    # one flipped bit in W_enc's data: the CRC catches it
    raw = bytearray((tmp_path / "params.npz").read_bytes())
    m = gs.npz_members(tmp_path / "params.npz")["W_enc"]
    raw[m.info.header_offset + 200] ^= 1
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"key 'W_enc'.*CRC-32 mismatch"):
        gs.read_params(tmp_path / "flip.npz")


def test_sae_from_streamed_params_shares_their_memory(params_dir):
    folder, p = params_dir
    params = gs.read_params(folder / "params.npz")
    sae = gs.sae_from_params(params)
    assert sae.W_enc.data_ptr() == params["W_enc"].data_ptr()  # assigned, not copied
    assert sae.cfg.device == "cpu" and sae.W_dec.device.type == "cpu"


def test_budget_too_small_for_the_largest_sae_refuses_to_start(tmp_path):
    from types import SimpleNamespace

    from geowall.diskcache import BudgetError

    spec = SimpleNamespace(name="gemma-2-9b", sae_release="gemma-scope-9b-pt-res")
    need = gs.check_budget(spec, [20], None)  # layer 20 has the 1M-width SAEs
    assert need == gs.sae_nbytes(3584, 2**20) and need > 30e9
    assert gs.check_budget(spec, [20], need) == need
    with pytest.raises(BudgetError, match=r"sae\.cache_budget_gb: 20 GB cannot hold .*layer_20/width_1m"):
        gs.check_budget(spec, [19, 20], int(20e9))
    assert gs.check_budget(spec, [19], int(20e9)) < 20e9  # layer 19: 16k and 131k only


# ---------------------------------------------------------------------------- a simulated Gemma Scope job

SIM_LAYERS = [0, 1, 5]  # 10 + 10 + 16 = 36 SAEs of gemma-scope-2b-pt-res
SIM_D = 8


def write_fake_acts(run_dir, model: str, layers, d: int, n: int = 96, seed: int = 0) -> None:
    """Activations laid out as step 00 writes them (train/eval .npy and a manifest)."""
    from geowall import activations
    from geowall.io import save_npy, write_json

    rng = np.random.default_rng(seed)
    for layer in layers:
        folder = activations.layer_dir(run_dir, model, layer)
        for split in ("train", "eval"):
            save_npy(folder / f"{split}.npy", rng.normal(size=(n, d)).astype(np.float32) * 2)
        write_json(folder / "manifest.json", {"n_train": n, "n_eval": n, "d": d, "layer": layer, "model": model})


def simulated_gemma_scope(root, monkeypatch, *, scale: int = 256):
    """The real 2B manifest's names and layer structure, each width divided by ``scale``
    (16k -> 64 latents), residual width 8; a mirror of fake params.npz files under those
    names and fake activations. Returns (spec-like dict, manifest rows, mirror, run_dir)."""
    real = gs.manifest
    release = "gemma-scope-2b-pt-res"
    man = real((release,)).assign(width=lambda df: df.width // scale)
    monkeypatch.setattr(
        gs, "manifest", lambda releases=gs.RELEASES: man[man.release.isin(releases)].reset_index(drop=True)
    )
    monkeypatch.setitem(gs.RELEASE_D, release, SIM_D)
    rng = np.random.default_rng(7)
    mirror = root / "mirror"
    rows = man[man.layer.isin(SIM_LAYERS)]
    for r in rows.itertuples():
        folder = mirror / release / r.sae_id
        folder.mkdir(parents=True)
        np.savez(
            folder / "params.npz",
            W_enc=rng.normal(size=(SIM_D, r.width)).astype(np.float32),
            W_dec=rng.normal(size=(r.width, SIM_D)).astype(np.float32) / 4,
            b_enc=np.zeros(r.width, np.float32),
            b_dec=np.zeros(SIM_D, np.float32),
            threshold=rng.uniform(0.2, 1.5, r.width).astype(np.float32),
        )
    run_dir = root / "run"
    write_fake_acts(run_dir, "gemma-2-2b", SIM_LAYERS, SIM_D)
    return rows, mirror, run_dir


@pytest.mark.parametrize("keep", [False, True])
def test_simulated_gemma_scope_job_streams_under_a_budget(tmp_path, monkeypatch, keep):
    """36 SAEs under the real names, fetched from a mirror through a cache whose budget holds
    one and a half of the largest: the budget forces eviction (keep) or deletion (no keep), the
    disk never holds more than the budget, every SAE gets exactly one row, and with no keep
    no SAE file is left behind."""
    from types import SimpleNamespace

    from geowall.diskcache import DiskCache

    rows, mirror, run_dir = simulated_gemma_scope(tmp_path, monkeypatch)
    largest = gs.sae_nbytes(SIM_D, int(rows.width.max()))
    budget = int(1.5 * largest)
    cache = DiskCache(tmp_path / "cache", budget, keep=keep)
    on_disk, fetched = [], []
    real_fetch = gs.mirror_fetch

    def measured(mirror_dir, row):
        inner = real_fetch(mirror_dir, row)

        def fetch(dest):
            inner(dest)
            fetched.append(row.sae_id)
            on_disk.append(sum(p.stat().st_size for p in cache.files()))

        return fetch

    monkeypatch.setattr(gs, "mirror_fetch", measured)
    spec = SimpleNamespace(name="gemma-2-2b", sae_release="gemma-scope-2b-pt-res", sae_mirror=mirror)
    metrics = tmp_path / "metrics.parquet"
    gs.run_manifest(spec, SIM_LAYERS, run_dir=run_dir, metrics_path=metrics, seed=0, progress=False, cache=cache)
    table = S.read_metrics(metrics)
    assert len(table) == len(rows) == 36 and not table.duplicated(["layer", "width", "k"]).any()
    assert sorted(fetched) == sorted(rows.sae_id) and max(on_disk) <= budget
    assert sum(gs.sae_nbytes(SIM_D, int(w)) for w in rows.width) > 1.5 * budget  # the whole job could never fit at once
    stats = cache.stats()
    assert stats["peak_bytes"] <= budget
    if keep:
        assert 0 < sum(p.stat().st_size for p in cache.files()) <= budget  # the most recent ones stay
    else:
        assert cache.files() == [] and stats["n_entries"] == 0
    one = rows.iloc[0]
    want = S.evaluate(
        gs.load_released_sae(mirror / one.release / one.sae_id),
        np.load(run_dir / "gemma-2-2b" / "acts" / "layer_00" / "eval.npy"),
    )
    got = table[(table.layer == one.layer) & (table.width == one.width) & (table.k == one.l0)].iloc[0]
    assert got.fvu == pytest.approx(want["fvu"], rel=1e-6) and got.l0 == pytest.approx(want["l0"])


def test_hub_fetch_downloads_into_the_cache_not_the_hf_cache(tmp_path, monkeypatch):
    """The hub fetch asks huggingface_hub for ``<path>/params.npz`` of the row's repo into a
    private folder beside the cache entry (``local_dir``), then the cache deletes it after use."""
    import huggingface_hub

    from geowall.diskcache import DiskCache

    params = _fake_params(np.random.default_rng(8))
    calls = []

    def fake_download(*, repo_id, filename, local_dir):
        calls.append((repo_id, filename, Path(local_dir)))
        out = Path(local_dir) / filename
        out.parent.mkdir(parents=True)
        np.savez(out, **params)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    row = gs.manifest(("gemma-scope-2b-pt-res",)).iloc[0]
    cache = DiskCache(tmp_path / "cache", budget_bytes=10**6)
    with cache.fetched(f"{row.release}/{row.sae_id}/params.npz", 10**5, gs.hub_fetch(row)) as path:
        got = gs.read_params(path)
    assert calls[0][:2] == (row.repo_id, f"{row.path}/params.npz")
    assert tmp_path / "cache" in calls[0][2].parents
    np.testing.assert_array_equal(got["W_dec"].numpy(), params["W_dec"])
    assert cache.files() == []
