"""Bad inputs give one readable error, a non-zero exit, and leave no artefact of the step.

Part 1 is a table of bad profiles / overrides / corpus files fed to ``geowall run``: each
is rejected by validation (the schema, then ``geowall.preflight``) before any work
(exit 2, one ``geowall: error:`` message naming
the key or file, no traceback, nothing written under the runs folder). Part 2 corrupts a
real run's inputs between steps (NaN activations, a metrics table missing a column) and
checks that the step fails (exit 1) naming the model, layer and rows or the column, and
writes none of its artefacts. The loaders with no command of their own are tested
beside them: a truncated or mis-shaped Gemma Scope ``params.npz`` in
``tests/test_gemma_scope.py``, a safetensors file of the wrong width in
``tests/test_sae.py``.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geowall import io

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def geowall(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "geowall.cli", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-files")
    (d / "empty.txt").write_bytes(b"")
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e. ".encode("latin-1") * 20)
    return d


# (case, arguments after `run`, text the one-line message must contain)
CONFIG_CASES = [
    ("unknown profile", ["--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
    ("unknown key", ["--set", "sae.widths=[64]"], "sae.widths: unknown key"),
    ("wrong type", ["--set", "sae.steps=many"], "sae.steps: Input should be a valid integer"),
    (
        "negative width",
        ["--set", "sae.width_multiples=[-1, 2]"],
        "sae.width_multiples.0: Input should be greater than 0",
    ),
    ("k out of range", ["--set", "sae.ks=[0, 8]"], "sae.ks.0: Input should be greater than 0"),
    ("k >= width", ["--set", "sae.ks=[4, 200]"], "sae.ks: k=200 must be < the smallest width"),
    (
        "layer outside the model",
        ["--set", "models.0.layers=[3, 7]"],
        "models.0.layers: [7] outside model 'minilm' (expected 0..6",
    ),
    ("negative layer", ["--set", "models.0.layers=[-1]"], "models.0.layers: [-1] outside model 'minilm'"),
    ("unknown source", ["--set", "models.0.source=gpt5"], "models.0.source: Input should be 'minilm'"),
    (
        "showcase layer of an unknown model",
        ["--set", "sae.showcase_layers={nope: [1]}"],
        "sae.showcase_layers: unknown model 'nope'",
    ),
    (
        "missing corpus file",
        ["--set", "corpus.kind=files", "--set", "corpus.files=[/no/such/corpus.txt]"],
        "corpus file not found: /no/such/corpus.txt",
    ),
    (
        "empty corpus file",
        ["--set", "corpus.kind=files", "--set", "corpus.files=[{bad}/empty.txt]"],
        "corpus file {bad}/empty.txt: empty",
    ),
    (
        "non-UTF-8 corpus file",
        ["--set", "corpus.kind=files", "--set", "corpus.files=[{bad}/latin1.txt]"],
        "corpus file {bad}/latin1.txt: not UTF-8 text",
    ),
    ("malformed override", ["--set", "sae.steps"], "expected key=value"),
    # issue 15: preconditions the steps asserted only after earlier steps' work (default profile, as reported)
    ("empty k grid", ["--profile", "default", "--set", "sae.ks=[]"], "sae.ks: List should have at least 1 item"),
    (
        "two geometry points",
        ["--profile", "default", "--set", "geometry.n_points=2"],
        "geometry.n_points: Input should be greater than or equal to 4",
    ),
    (
        "three geometry points",
        ["--profile", "default", "--set", "geometry.n_points=3"],
        "geometry.n_points: Input should be greater than or equal to 4",
    ),
    (
        "too few points for the curvature patches",
        ["--profile", "default", "--set", "geometry.n_points=50"],
        "geometry.n_points: 50 points per layer",
    ),
    (
        "one bootstrap replicate",
        ["--profile", "default", "--set", "geometry.n_boot=1"],
        "geometry.n_boot: Input should be greater than or equal to 2",
    ),
    (
        "too few draws for the ESS threshold",
        ["--profile", "default", "--set", "stage2.draws=1"],
        "stage2.draws: 2 chains x 1 draws = 2 samples cannot reach the bulk and tail ESS threshold "
        "stage2.checks.ess_min=400; expected stage2.draws >= 200",
    ),
    ("one chain", ["--set", "stage1.chains=1"], "stage1.chains: 1 chain cannot pass the R-hat check"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case, args, needle", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_profile_input_is_rejected_before_any_work(tmp_path, bad_files, case, args, needle):
    args = [a.replace("{bad}", str(bad_files)) for a in args]
    if "--profile" not in args:
        args = ["--profile", "smoke", *args]
    runs = tmp_path / "runs"
    r = geowall("run", *args, "--runs-dir", str(runs), "--no-progress")
    assert r.returncode == 2, (case, r.returncode, r.stderr)
    assert r.stderr.startswith("geowall: error:"), r.stderr
    assert needle.replace("{bad}", str(bad_files)) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert _files(runs) == [], f"{case}: wrote {_files(runs)}"


def test_debug_shows_the_traceback(tmp_path):
    r = geowall("--debug", "run", "--profile", "smoke", "--set", "sae.steps=many", "--runs-dir", str(tmp_path))
    assert r.returncode != 0 and "Traceback" in r.stderr and "ProfileError" in r.stderr


# ---------------------------------------------------------------- corrupted inputs between steps


@pytest.fixture(scope="module")
def tiny_profile(build_synthetic_profile):
    return build_synthetic_profile(
        "tiny",
        "a",
        [0, 2, 4, 6],
        models=[{"name": "synth-a", "source": "synthetic", "zoo": "a", "layers": [0, 2, 4, 6], "ks": [1, 2]}],
        sae={"width_multiples": [0.5, 1], "steps": 5},
        stage1={"chains": 2},
    )  # R-hat needs 2 chains (preflight)


@pytest.mark.slow
def test_nan_activations_and_a_broken_metrics_table_stop_their_steps(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    run = runs / "tiny"
    base = ["run", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--no-progress"]
    r = geowall(*base, "--only", "activations")
    assert r.returncode == 0, r.stderr

    # NaN / Inf rows in one layer's training activations: sae_grid names model, layer, rows
    path = run / "synth-a" / "acts" / "layer_02" / "train.npy"
    x = np.load(path)
    x[[5, 9], 3] = np.nan
    x[11, 0] = np.inf
    np.save(path, x)
    r = geowall(*base, "--only", "sae_grid")
    assert r.returncode == 1, r.stderr
    assert "geowall: error: step 'sae_grid' failed" in r.stderr
    assert "ActivationError: model 'synth-a' layer 2 train: 3 of 400 rows contain NaN or Inf" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (run / "sae_metrics.parquet").exists() and not (run / "steps" / "sae_grid.json").exists()

    # repair the layer (harvesting resumes: only the broken layer is redone), train the grid
    (run / "synth-a" / "acts" / "layer_02" / "manifest.json").unlink()
    r = geowall(*base, "--only", "activations", "sae_grid", "--force")
    assert r.returncode == 0, r.stderr
    metrics = io.read_parquet(run / "sae_metrics.parquet")
    assert len(metrics) == 4 * 2 * 2  # layers x widths x ks

    # Stage 1 handed a metrics table without its fvu column
    io.write_parquet(run / "sae_metrics.parquet", metrics.drop(columns=["fvu"]))
    r = geowall(*base, "--only", "stage1")
    assert r.returncode == 1, r.stderr
    assert "geowall: error: step 'stage1' failed" in r.stderr and "fvu" in r.stderr
    assert "Traceback" not in r.stderr
    for name in ("exponents.parquet", "stage1.nc", "steps/stage1.json"):
        assert not (run / name).exists(), name

    # a fit that fails its convergence checks anyway: the error says which key to change, and to what
    io.write_parquet(run / "sae_metrics.parquet", metrics)
    r = geowall(*base, "--only", "stage1", "--set", "stage1.checks.rhat_max=1.0001")
    assert r.returncode == 1, r.stderr
    assert "FitDiagnosticsError: stage 1" in r.stderr and "r_hat = " in r.stderr
    assert "; to pass: raise stage1.draws to >= 100 (R-hat" in r.stderr and "raise stage1.tune to >= 100" in r.stderr
    assert "Traceback" not in r.stderr and not (run / "steps" / "stage1.json").exists()
