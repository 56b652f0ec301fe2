"""A step's peak memory does not grow with the number of layers: activations are
memory-mapped and each layer is processed and released before the next.

The same tiny synthetic profile runs with 2 and with 12 layers of 40,000 x 128 float32
training activations (19.5 MiB per layer, so holding every layer at once would add about
200 MiB); each step's kernel peak RSS (recorded by the runner) may grow by less than
half of that. Measured 2026-11-25: activations 275 -> 317 MiB, sae_grid 746 -> 769,
geometry 456 -> 469 (the remaining growth: different layers are different manifolds,
with different temporaries)."""

import pytest

from geowall import pipeline

N_TRAIN = 40_000
PER_LAYER_MB = N_TRAIN * 128 * 4 / 2**20


@pytest.mark.slow
def test_step_peak_memory_does_not_scale_with_layers(tmp_path, build_synthetic_profile):
    peaks = {}
    for layers in ([0, 1], list(range(12))):
        profile = build_synthetic_profile(
            f"mem{len(layers)}",
            "b",
            layers,
            activations={"n_train": N_TRAIN, "n_eval": 2000},
            sae={"batch_size": 256},
            geometry={"n_points": 1000, "n_boot": 4},  # replicates large enough for 64-point patches on an 8-sphere
        )
        records = pipeline.run(
            profile,
            only=["activations", "sae_grid", "geometry"],
            runs_dir=tmp_path / "runs",
            progress=False,
            log=lambda *_: None,
        )
        peaks[len(layers)] = {r["step"]: r["peak_rss_mb"] for r in records}
    print(f"\npeak RSS (MiB), 2 vs 12 layers of {PER_LAYER_MB:.1f} MiB each: {peaks}")
    for step, small in peaks[2].items():
        assert peaks[12][step] - small < 0.5 * 10 * PER_LAYER_MB, (step, peaks)
