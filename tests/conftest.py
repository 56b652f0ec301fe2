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
    evl = ["Evaluation documents are held out from training documents entirely.",
           "Intrinsic dimension measures how many coordinates a manifold needs locally."]
    return Corpus(train, evl, "test", "tiny")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke profile's activations step, run once through the real runner."""
    from geowall import pipeline

    runs = tmp_path_factory.mktemp("runs")
    records = pipeline.run("smoke", only=["activations"], runs_dir=runs, progress=False)
    return runs / "smoke", records
