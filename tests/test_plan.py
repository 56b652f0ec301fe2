"""geowall plan: costs of a profile before any work (offline, on the gemma-2 profile)."""

from __future__ import annotations

import json

import pytest

from geowall import plan as P
from geowall.config import load_profile
from geowall.diskcache import BudgetError
from geowall.sources import gemma_scope as gs


@pytest.fixture(scope="module")
def gemma():
    return load_profile("gemma-2")


def test_gemma2_plan_counts_downloads_and_peak_disk(gemma):
    p = P.build(gemma)
    assert p.n_saes == {"gemma-2-2b": {"trained": 0, "released": 312}, "gemma-2-9b": {"trained": 0, "released": 532}}
    man = gs.manifest()
    for model, release in (("gemma-2-2b", "gemma-scope-2b-pt-res"), ("gemma-2-9b", "gemma-scope-9b-pt-res")):
        rows = man[man.release == release]
        want = sum(gs.sae_nbytes(gs.RELEASE_D[release], int(w)) for w in rows.width)
        assert p.download[f"{model}: {len(rows)} Gemma Scope SAEs"] == want
    assert 2.2e12 < p.download_bytes < 2.5e12  # the "about 2.3 TB" of SAEs, plus checkpoints
    largest = gs.sae_nbytes(3584, 2**20)
    assert p.disk["SAE download cache (peak)"] == largest  # one SAE at a time, deleted after use
    assert p.budget_bytes == gemma.sae.cache_budget_gb * 1e9 and p.disk["SAE download cache (peak)"] <= p.budget_bytes
    acts = p.disk["gemma-2-9b: activations"]
    assert acts == 42 * (gemma.activations.n_train + gemma.activations.n_eval) * 3584 * 4
    two = P.build(gemma, concurrency=2)
    assert two.disk["SAE download cache (peak)"] == 2 * largest
    capped = P.build(gemma, concurrency=8)
    assert capped.disk["SAE download cache (peak)"] == p.budget_bytes  # workers wait for the budget
    ev = next(t for t in p.tasks if t.model == "gemma-2-9b" and t.task == "sae-eval")
    assert ev.count == 532 and ev.gpu_bytes > largest and ev.host_bytes < 0.01 * largest


def test_gemma2_plan_times_from_a_measured_throughput_only(gemma, tmp_path):
    text = P.render(P.build(gemma))
    assert "Wall time: not estimated" in text and "cuda" in text
    rec = {
        "device": "cuda:0",
        "device_name": "A GPU",
        "float32_flops": 50e12,
        "bfloat16_flops": 400e12,
        "measured": "2026-01-01",
    }
    (tmp_path / "t.json").write_text(json.dumps(rec))
    th = P.load_throughput(tmp_path / "t.json")
    p = P.build(gemma, throughput=th, bandwidth_mb_s=100)
    n_eval = gemma.activations.n_eval
    man = gs.manifest()
    sae_flops = sum(4.0 * n_eval * gs.RELEASE_D[r.release] * r.width for r in man.itertuples())
    assert p.seconds["sae"] == pytest.approx(sae_flops / 50e12)
    params = sum(P.KNOWN_PARAMS[m.hf_model][0] for m in gemma.models)
    tokens = gemma.activations.n_train + gemma.activations.n_eval
    assert p.seconds["harvest"] == pytest.approx(2.0 * params * tokens / 400e12)  # bf16 models: bf16 rate
    assert p.seconds["download"] == pytest.approx(p.download_bytes / 100e6)
    text = P.render(p)
    assert "ESTIMATE" in text and "A GPU" in text and str(tmp_path / "t.json") in text


def test_budget_below_the_largest_sae_refuses_before_any_work(tmp_path):
    from geowall import pipeline

    cfg = load_profile("gemma-2", ["sae.cache_budget_gb=20", "device=cpu"])  # the device check comes first
    with pytest.raises(BudgetError, match=r"sae\.cache_budget_gb: 20 GB cannot hold .*gemma-2-9b"):
        P.check_budget(cfg)
    with pytest.raises(ValueError, match=r"sae\.cache_budget_gb: 20 GB cannot hold"):  # preflight.PreflightError
        pipeline.run(cfg, only=["sae_grid"], runs_dir=tmp_path, progress=False)
    assert not (tmp_path / "gemma-2" / "steps").exists()
    P.check_budget(load_profile("gemma-2", ["sae.cache_budget_gb=20", "models.1.layers=[0, 1]"]))


def test_plan_command_offline(capsys):
    from geowall.cli import main

    assert main(["plan", "--profile", "gemma-2", "--bandwidth", "100"]) == 0
    out = capsys.readouterr().out
    assert (
        "844 to evaluate" in out
        and "SAE download cache peaks at 30.1 GB of its 100.0 GB budget" in out
        and "Peak disk" in out
    )
    assert "Wall time: not estimated" in out and "download" in out
    assert main(["plan", "--profile", "gemma-2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_saes"]["gemma-2-9b"]["released"] == 532 and data["throughput"] is None


def test_cpu_plan_measures_throughput_here():
    th = P.measure_throughput("cpu", seconds=0.2, n=512)
    assert th["float32_flops"] > 1e8 and th["device"] == "cpu"
    p = P.build(load_profile("smoke"), throughput=th)
    assert sum(n["trained"] for n in p.n_saes.values()) > 0 and p.seconds["sae"] > 0


@pytest.mark.parametrize("name", ["default", "decoders", "full"])
def test_plan_sizes_every_model_of_the_offline_profiles(name):
    """Every model of the profiles that run here has a parameter count and heads (the plan's
    memory and time rows), from package files or release facts, without assembling anything."""
    for spec in load_profile(name).models:
        n, heads, where = P.model_params(spec)
        assert n is not None and heads is not None, f"{spec.name}: {where}"
        if spec.source != "synthetic":
            assert n > 1e6 and heads >= 1, (spec.name, n, heads)
