"""Known answers for k = 1 SAEs: points on spheres and tori rotated into R^D, and the error of a
gain-shape Lloyd quantiser (the best a k = 1 TopK code can do up to its biases). Shared by
tests/test_sae.py and tests/benchmarks/bench_training.py."""

from __future__ import annotations

import numpy as np


def manifold(kind: str, dim: int, n: int, seed: int, D: int = 32) -> np.ndarray:
    """``n`` uniform points on the unit ``dim``-sphere (or a flat ``dim``-torus of unit RMS
    norm), isometrically rotated into R^D (the same rotation for every seed)."""
    rng = np.random.default_rng(seed)
    if kind == "sphere":
        z = rng.standard_normal((n, dim + 1))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
    else:
        th = rng.uniform(0, 2 * np.pi, (n, dim))
        z = np.concatenate([np.cos(th), np.sin(th)], 1) / np.sqrt(dim)
    Q, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((D, D)))
    return (z @ Q[: z.shape[1]]).astype(np.float32)


def lloyd_fvu(X: np.ndarray, Xe: np.ndarray, width: int, iters: int = 40) -> float:
    """Held-out fvu of a gain-shape Lloyd quantiser (spherical k-means with non-negative gains,
    the best a k = 1 TopK code can do up to its biases), centred at the training mean."""
    rng = np.random.default_rng(0)
    mu = X.mean(0)
    Xc = X - mu
    C = Xc[rng.choice(len(X), width, replace=False)]
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    for _ in range(iters):
        j = (Xc @ C.T).argmax(1)
        sums = np.zeros_like(C)
        np.add.at(sums, j, Xc)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        C = np.where(norms > 0, sums / np.maximum(norms, 1e-12), C)
    E = Xe - mu
    a = E @ C.T
    j = a.argmax(1)
    g = np.maximum(a[np.arange(len(E)), j], 0)
    return float(((E - g[:, None] * C[j]) ** 2).sum() / ((Xe - Xe.mean(0)) ** 2).sum())
