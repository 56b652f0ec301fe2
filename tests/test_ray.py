"""The Ray executor on a local two-CPU Ray instance (no network): same tables as the local
executor, a worker killed mid-task retried with every row exactly once, and a simulated
Gemma Scope job streamed under a disk budget with nothing left behind.

Skipped when Ray is not installed (``pip install 'geowall[ray]'``)."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from geowall import activations, executors, layers  # noqa: E402 (after the ray importorskip)
from geowall import sae as S  # noqa: E402
from geowall.config import load_profile, validate  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_local():
    import geowall

    lib = str(Path(geowall.__file__).resolve().parents[1])
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([lib, str(HERE)] + ([old] if old else []))  # workers import both
    for attempt in range(3):  # Ray gives its raylet a fixed 30 s to start: a busy machine can miss it
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception as err:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                pytest.skip(f"a local Ray instance could not start on this machine: {err}")
    try:
        yield executors.RayExecutor()
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def synth(build_synthetic_profile, tmp_path_factory):
    """A synthetic profile (4 layers, 2 widths x 2 k each) harvested once."""
    path = build_synthetic_profile(
        "raysynth", "a", [0, 1, 2, 3], sae={"width_multiples": [0.5, 1], "ks": [2, 4], "steps": 4}
    )
    cfg = load_profile(path)
    run = tmp_path_factory.mktemp("run")
    layers.harvest_models(cfg, run, None, executor=executors.LocalExecutor())
    return cfg, run


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def test_ray_tables_equal_the_local_executor(synth, ray_local, tmp_path):
    import torch

    cfg, run = synth
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray's workers run one thread each: same arithmetic
    try:
        local_run, ray_run = _copy_run(run, tmp_path / "local"), _copy_run(run, tmp_path / "ray")
        local = layers.sae_grid(cfg, local_run, progress=False, executor=executors.LocalExecutor())
        remote = layers.sae_grid(cfg, ray_run, progress=False, executor=ray_local)
        pd.testing.assert_frame_equal(local, remote)
        assert len(local) == 4 * 2  # 4 layers x 2 widths x the model's one k
        geo_local = layers.geometry_table(cfg, local_run, progress=False, executor=executors.LocalExecutor())
        geo_ray = layers.geometry_table(cfg, ray_run, progress=False, executor=ray_local)
        for a, b in zip(geo_local, geo_ray, strict=True):  # summaries, multiscale ID, sensitivity
            pd.testing.assert_frame_equal(a, b)
        harvested = tmp_path / "harvest"
        layers.harvest_models(cfg, harvested, None, executor=ray_local)
        for layer in range(4):
            np.testing.assert_array_equal(
                activations.load(harvested, "synth-a", layer), activations.load(run, "synth-a", layer)
            )
    finally:
        torch.set_num_threads(threads)


def dies_once_mid_layer(cfg_json, run_dir, work, model, layer, metrics_path):
    """First attempt at layer 2: train its first width into the task's own table, then the
    worker process dies. The retry resumes from that table."""
    marker = Path(work) / f"killed-{layer}"
    if layer == 2 and not marker.exists():
        from geowall.sources import model_info

        cfg = validate(cfg_json)
        spec = cfg.model(model)
        d = model_info(spec).d
        w = layers.widths_for(cfg, model, layer, d)[0]
        train_cfg = S.TrainConfig(
            steps=cfg.steps_of(spec, w, d), batch_size=cfg.sae.batch_size, lr=cfg.lr_scale_of(spec) * S.default_lr(w)
        )
        S.run_grid(
            activations.load(Path(run_dir), model, layer, "train"),
            activations.load(Path(run_dir), model, layer, "eval"),
            train_cfg,
            model=model,
            layer=layer,
            widths=[w],
            ks=cfg.ks_of(spec),
            seed=cfg.seed,
            sae_dir=Path(work),
            metrics_path=Path(metrics_path),
            progress=False,
        )
        marker.touch()
        os._exit(9)  # the worker dies: a system failure, which Ray retries
    return layers._trained_unit(cfg_json, run_dir, work, model, layer, metrics_path)


def test_worker_killed_mid_task_is_retried_and_every_row_lands_once(synth, ray_local, tmp_path):
    cfg, run = synth
    ray_run = _copy_run(run, tmp_path / "ray")
    table = layers.sae_grid(cfg, ray_run, progress=False, executor=ray_local, units={"trained": dies_once_mid_layer})
    assert list(ray_run.glob("saes/*/killed-2"))  # the kill happened
    assert len(table) == 8 and not table.duplicated(["model", "layer", "width", "k", "seed"]).any()
    part = S.read_metrics(next(ray_run.glob("saes/*/parts/synth-a__layer_002.parquet")))
    assert len(part) == 2  # 1 row before the kill, 1 after
    # a rerun (with either executor) finds everything done and changes nothing
    again = layers.sae_grid(cfg, ray_run, progress=False, executor=executors.LocalExecutor())
    pd.testing.assert_frame_equal(table, again)


def test_simulated_gemma_scope_job_on_ray_under_a_disk_budget(ray_local, tmp_path, monkeypatch):
    from test_gemma_scope import SIM_D, SIM_LAYERS, simulated_gemma_scope

    from geowall.diskcache import DiskCache
    from geowall.sources import gemma_scope as gs

    rows, mirror, run_dir = simulated_gemma_scope(tmp_path, monkeypatch)
    largest = gs.sae_nbytes(SIM_D, int(rows.width.max()))
    budget = int(1.5 * largest)
    cache_dir = tmp_path / "cache"
    cfg = load_profile(
        "gemma-2",
        {
            "device": "cpu",
            "models": [
                {
                    "name": "gemma-2-2b",
                    "source": "hf",
                    "hf_model": "google/gemma-2-2b",
                    "layers": SIM_LAYERS,
                    "sae_source": "gemma-scope",
                    "sae_release": "gemma-scope-2b-pt-res",
                    "sae_mirror": str(mirror),
                }
            ],
            "sae.cache_budget_gb": budget / 1e9,
            "sae.cache_dir": str(cache_dir),
            "sae.showcase_layers": {},
            "transfer": [],
        },
    )
    peak, stop = [0], threading.Event()

    def watch():  # what is on the disk, sampled while the workers run
        while not stop.is_set():
            size = 0
            for folder, _, files in os.walk(cache_dir):  # tolerates folders deleted meanwhile
                for name in files:
                    if name.endswith(".npz"):
                        try:
                            size += os.stat(os.path.join(folder, name)).st_size
                        except FileNotFoundError:
                            pass
            peak[0] = max(peak[0], size)
            stop.wait(0.005)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        table = layers.sae_grid(cfg, run_dir, progress=False, executor=ray_local)
    finally:
        stop.set()
        t.join()
    assert len(table) == len(rows) == 36 and not table.duplicated(["layer", "width", "k"]).any()
    assert sum(int(x) for x in rows.width) * SIM_D * 8 > 1.5 * budget  # the job never fit at once
    cache = DiskCache(cache_dir)
    assert cache.files() == [] and cache.stats()["n_entries"] == 0  # nothing left behind
    assert 0 < cache.stats()["peak_bytes"] <= budget and peak[0] <= budget
    print(
        f"simulated job: peak on disk {peak[0]} B (ledger {cache.stats()['peak_bytes']} B), budget {budget} B, "
        f"largest SAE {largest} B",
        file=sys.stderr,
    )
