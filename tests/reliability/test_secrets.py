"""The tiny-Gemma path of the gemma-2 code, offline, with a recognisable fake HF_TOKEN:
the token appears in no executed notebook, artefact, log or parameter dump."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from geowall.sources import minilm_dir
from geowall.sources.gemma_scope import manifest

FAKE_TOKEN = "hf_" + "GeowallFakeToken" * 2  # built at run time so no token-like literal sits in the source
RELEASE = "gemma-scope-2b-pt-res"


def _tiny_gemma(path):
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
    )
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(path)


def _mirror(root, d=32):
    """Good JumpReLU SAEs for layer 0 of the real manifest: +-e_i latents reconstruct x exactly,
    slightly perturbed so that fvu is small and positive; other latents never fire."""
    rng = np.random.default_rng(0)
    rows = manifest((RELEASE,))
    rows = rows[rows.layer == 0]
    for r in rows.itertuples():
        basis = np.vstack([np.eye(d), -np.eye(d)]).astype(np.float32)
        W_dec = np.zeros((r.width, d), np.float32)
        W_dec[: 2 * d] = basis + 0.01 * rng.standard_normal((2 * d, d)).astype(np.float32)
        W_enc = np.zeros((d, r.width), np.float32)
        W_enc[:, : 2 * d] = basis.T
        threshold = np.full(r.width, 1e9, np.float32)
        threshold[: 2 * d] = 0.0
        folder = root / RELEASE / r.sae_id
        folder.mkdir(parents=True)
        np.savez(
            folder / "params.npz",
            W_enc=W_enc,
            W_dec=W_dec,
            b_enc=np.zeros(r.width, np.float32),
            b_dec=np.zeros(d, np.float32),
            threshold=threshold,
        )
    return len(rows)


@pytest.mark.slow
def test_hf_token_never_written(tmp_path):
    _tiny_gemma(tmp_path / "tiny-gemma")
    n_saes = _mirror(tmp_path / "mirror")
    profile = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "params", "gemma-2.yaml")))
    profile.update(
        name="tiny-gemma",
        device="cpu",
        transfer=[],
        activations={"n_train": 60, "n_eval": 40, "max_seq_len": 32, "batch_size": 4},
        models=[
            {
                "name": "gemma-2-2b",
                "source": "hf",
                "hf_model": str(tmp_path / "tiny-gemma"),
                "layers": [0],
                "sae_source": "gemma-scope",
                "sae_release": RELEASE,
                "sae_local_dir": str(tmp_path / "mirror"),
            }
        ],
    )
    profile["sae"]["showcase_layers"] = {}
    (tmp_path / "tiny-gemma.yaml").write_text(yaml.safe_dump(profile))
    env = {**os.environ, "HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "geowall.cli",
            "run",
            "--profile",
            str(tmp_path / "tiny-gemma.yaml"),
            "--only",
            "activations",
            "sae_grid",
            "--runs-dir",
            str(runs),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import pandas as pd

    metrics = pd.read_parquet(runs / "tiny-gemma" / "sae_metrics.parquet")
    assert len(metrics) == n_saes and (metrics.source == "gemma-scope").all()
    assert (metrics.fvu < 0.05).all() and (metrics.fvu > 0).all()
    leaks = [str(p) for p in runs.rglob("*") if p.is_file() and FAKE_TOKEN.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert FAKE_TOKEN not in r.stdout + r.stderr
