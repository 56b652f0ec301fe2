"""SIGKILL an activation harvest mid-layer, resume it: nothing partial is read back and
the arrays equal an uninterrupted harvest's.

The SAE grid's kill-and-resume test runs the real smoke step through `geowall run`
(tests/test_smoke.py), where the uninterrupted smoke run is its reference."""

import os
import signal
import subprocess
import sys
import time

import pytest

HARVEST = """
import sys
from pathlib import Path
from pydoc_data.topics import topics
from geowall import activations
from geowall.config import ActivationsSpec, ModelSpec
from geowall.corpus import Corpus
docs = [topics[k] for k in sorted(topics)]
corpus = Corpus(docs[::2], docs[1::2], "pydoc topics", "topics-test")
print(activations.harvest(ModelSpec(name="minilm", source="minilm"), [0, 3, 6],
                          ActivationsSpec(n_train=4000, n_eval=1000, max_seq_len=128, batch_size=8),
                          run_dir=Path(sys.argv[1]), seed=0, corpus=corpus, progress=False))
"""


def _harvest(folder, env, **kw):
    return subprocess.Popen([sys.executable, "-c", HARVEST, str(folder)], env=env, **kw)


def _rows_filled(partial):
    import numpy as np

    try:
        x = np.load(partial, mmap_mode="r")
    except (OSError, ValueError):
        return 0
    return int((np.abs(x).sum(1) > 0).sum())


@pytest.mark.slow
def test_sigkill_mid_layer_harvest_then_resume_equals_uninterrupted(tmp_path):
    import numpy as np

    from geowall import activations

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    assert _harvest(ref, env).wait(timeout=600) == 0

    run = tmp_path / "killed"
    p = _harvest(run, env)
    partial = activations.layer_dir(run, "minilm", 3) / ".train.npy.partial"
    deadline, filled = time.time() + 300, 0
    while time.time() < deadline and p.poll() is None:
        filled = _rows_filled(partial) if partial.exists() else 0
        if filled >= 500:  # a few batches into the training tokens of every layer
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 500 <= filled < 4000, f"not killed mid-layer ({filled} rows filled)"
    # nothing looks complete and nothing partial is read back
    assert not list(run.rglob("manifest.json"))
    for layer in (0, 3, 6):
        with pytest.raises(activations.ActivationError):
            activations.load(run, "minilm", layer)

    out = subprocess.run(
        [sys.executable, "-c", HARVEST, str(run)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "{'harvested': 3, 'skipped': 0}" in out.stdout
    assert not list(run.rglob("*.partial"))
    for layer in (0, 3, 6):
        for split in ("train", "eval"):
            np.testing.assert_array_equal(
                activations.load(run, "minilm", layer, split), activations.load(ref, "minilm", layer, split)
            )
        assert activations.layer_manifest(run, "minilm", layer) == activations.layer_manifest(ref, "minilm", layer)
