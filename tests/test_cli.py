"""`geowall run --profile smoke --only activations` end to end, and CLI error handling."""

import json
import subprocess
import sys

from geowall import activations
from geowall.config import load_profile


def test_smoke_activations_end_to_end(smoke_run):
    run_dir, records = smoke_run
    assert [r["status"] for r in records] == ["ran"]
    cfg = load_profile("smoke")
    for m in cfg.models:
        for layer in cfg.layers_of(m):
            x = activations.load(run_dir, m.name, layer, "eval")
            assert x.shape[0] == cfg.activations.n_eval
    nb = json.loads((run_dir / "notebooks" / "00_activations.ipynb").read_text())
    assert any("fig-act-norms" in "".join(c["source"]) for c in nb["cells"])
    stats = json.loads((run_dir / "corpus_stats.json").read_text())
    assert stats["words"] > 200_000 and stats["minilm_tokens_train"] > stats["words"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "geowall.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_bad_profile_is_one_line_no_traceback(tmp_path):
    r = _cli("run", "--profile", "smoke", "--set", "sae.ks=[999]", "--runs-dir", str(tmp_path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "sae.ks: k=999 must be < the smallest width" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written before validation passed


def test_cli_rerun_skips(smoke_run):
    run_dir, _ = smoke_run
    r = _cli("run", "--profile", "smoke", "--only", "activations", "--runs-dir", str(run_dir.parent), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "[activations] unchanged" in r.stdout


def test_run_checks_only_the_chosen_steps_preconditions(smoke_run):
    run_dir, _ = smoke_run
    base = ["run", "--profile", "smoke", "--runs-dir", str(run_dir.parent), "--no-progress", "--set", "stage2.draws=1"]
    r = _cli(*base, "--only", "activations")  # step 00 does not sample: its preconditions hold
    assert r.returncode == 0, r.stderr
    r = _cli(*base, "--only", "stage2")
    assert r.returncode == 2 and r.stderr.startswith("geowall: error: stage2.draws: "), r.stderr
    assert "needed by steps stage2, transfer" not in r.stderr and "needed by step stage2" in r.stderr
    assert not (run_dir / "steps" / "stage2.json").exists()
