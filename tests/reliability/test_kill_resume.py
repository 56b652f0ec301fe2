"""SIGKILL an SAE grid mid-run, resume it: finished SAEs are not retrained and the final
table equals an uninterrupted run's, row for row."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from geowall.io import read_parquet

SCRIPT = """
import sys, numpy as np
from geowall import sae
rng = np.random.default_rng(0)
x = rng.standard_normal((700, 16)).astype(np.float32)
out = sys.argv[1]
sae.run_grid(x[:600], x[600:], model="m", layer=0, widths=[32, 48, 64, 80, 96, 112], ks=[2, 4], steps=300,
             seed=0, sae_dir=out, metrics_path=out + "/metrics.parquet", batch_size=64, progress=False)
"""


def _run(folder, env):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(folder)], env=env)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    assert _run(ref, env).wait(timeout=600) == 0
    expected = read_parquet(ref / "metrics.parquet")
    assert len(expected) == 12

    run = tmp_path / "killed"
    p = _run(run, env)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = run / "metrics.parquet"
        if m.exists() and len(read_parquet(m)) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = read_parquet(run / "metrics.parquet")  # never a half-written file
    assert 3 <= len(partial) < 12
    stamps = {r.sae_id: (run / r.sae_id).stat().st_mtime_ns for r in partial.itertuples()}

    assert _run(run, env).wait(timeout=600) == 0
    resumed = read_parquet(run / "metrics.parquet")
    pd.testing.assert_frame_equal(resumed, expected)
    for sae_id, t in stamps.items():  # finished SAEs were skipped, not retrained
        assert (run / sae_id).stat().st_mtime_ns == t
