"""Shared fixtures: seeded RNGs, a tiny corpus, and one smoke-profile activation run per session."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_everything():
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_corpus():
    from geowall.corpus import Corpus

    train = [
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "Return a new list containing all items from the iterable in ascending order.",
        "Open the file and return a corresponding file object; raise OSError on failure.",
        "A short sentence.",
        "Sparse autoencoders decompose activations into many interpretable latent features.",
    ]
    evl = [
        "Evaluation documents are held out from training documents entirely.",
        "Intrinsic dimension measures how many coordinates a manifold needs locally.",
    ]
    return Corpus(train, evl, "test", "tiny")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke profile's activations step, run once through the real runner."""
    from geowall import pipeline

    runs = tmp_path_factory.mktemp("runs")
    records = pipeline.run("smoke", only=["activations"], runs_dir=runs, progress=False)
    return runs / "smoke", records


@pytest.fixture(scope="session")
def build_synthetic_profile(tmp_path_factory):
    """``build(name, zoo, layers, **sections)`` -> path of a profile YAML with one synthetic
    model, sized so that each step takes seconds; ``sections`` update the profile's
    sections key by key (e.g. ``activations={"n_train": 40000}``)."""
    import yaml

    folder = tmp_path_factory.mktemp("profiles")

    def build(name: str, zoo: str, layers: list[int], **sections) -> Path:
        prof = {
            "name": name,
            "seed": 0,
            "device": "cpu",
            "models": [{"name": f"synth-{zoo}", "source": "synthetic", "zoo": zoo, "layers": layers, "ks": [2]}],
            "activations": {"n_train": 400, "n_eval": 200},
            "sae": {
                "width_multiples": [0.5],
                "ks": [4],
                "showcase_layers": {},
                "steps": 3,
                "batch_size": 64,
                "monotone_slack": None,
            },
            "geometry": {"n_points": 200, "n_boot": 3, "n_base": 20},
            "stage1": {
                "draws": 50,
                "tune": 50,
                "chains": 1,
                "checks": {"rhat_max": 10, "ess_min": 1, "allow_divergences": 1000, "bfmi_min": 0.0},
            },
            "stage2": {"draws": 50, "tune": 50, "chains": 1},
            "transfer": [],
        }
        for key, value in sections.items():
            prof[key] = {**prof[key], **value} if isinstance(value, dict) else value
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(prof))
        return path

    return build
