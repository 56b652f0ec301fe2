"""The synthetic manifold zoo: "layers" that are point clouds of known geometry.

Each layer is one manifold (flat box, sphere, sphere cap, flat torus = product of
circles) of a chosen intrinsic dimension, embedded isometrically in R^128 by a random
rotation, centred and scaled to unit RMS norm (as a normalised residual stream is).
The ground truth stored beside the points: ``id_true`` (the intrinsic dimension) and
``curvature_true``, the principal curvature of the embedded manifold in those
normalised units (unit sphere scaled by 1/rms: kappa = rms of the raw cloud; 0 for a
flat box). This is what ``geometry.curvature`` measures (curvature per tangent direction
times the cloud's RMS radius, which is 1 here): every full sphere reads 1 whatever its
dimension, a flat box 0, a torus of m circles sqrt(m), a cap less than 1.
Equal-radius spheres of dimension 3 to 8 and flat boxes of dimension 4 to 8 sit in the
zoo on purpose: a curvature estimate confounded with dimension (one that grows with the
dimension at fixed radius, or reads an 8-dimensional box as curved) fails on them. Zoo ``a`` has 8 layers,
zoo ``b`` 12: two "models" for the transfer study.
Intrinsic dimension and curvature vary non-monotonically with depth so that depth
alone is a poor predictor of geometry. Every layer spans at least 4 linear directions
(flat: dim; sphere, cap: dim + 1; torus: 2 dim), so a TopK SAE with k <= 3 can never
reconstruct a layer exactly: the profiles train the zoo with k in {1, 2, 3}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ZOO_D = 128


@dataclass(frozen=True)
class Manifold:
    kind: str  # "flat" | "sphere" | "cap" | "torus"
    dim: int
    angle: float = np.pi  # cap: geodesic radius in radians (sphere: pi)

    @property
    def raw_curvature(self) -> float:
        return 0.0 if self.kind == "flat" else 1.0  # unit radius before normalisation


ZOOS: dict[str, list[Manifold]] = {
    "a": [
        Manifold("flat", 4),
        Manifold("cap", 3, 0.5),
        Manifold("sphere", 4),
        Manifold("torus", 3),
        Manifold("cap", 6, 1.0),
        Manifold("sphere", 6),
        Manifold("cap", 8, 0.7),
        Manifold("flat", 8),
    ],
    "b": [
        Manifold("flat", 4),
        Manifold("cap", 3, 0.8),
        Manifold("sphere", 3),
        Manifold("torus", 2),
        Manifold("cap", 5, 0.5),
        Manifold("sphere", 5),
        Manifold("torus", 4),
        Manifold("cap", 7, 1.2),
        Manifold("sphere", 8),
        Manifold("flat", 8),
        Manifold("cap", 4, 0.3),
        Manifold("sphere", 6),
    ],
}


def sample_manifold(m: Manifold, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points on ``m`` in its natural coordinates (dimension dim or dim+1 or 2*dim)."""
    if m.kind == "flat":
        return rng.uniform(-1.0, 1.0, size=(n, m.dim))
    if m.kind == "sphere":
        x = rng.standard_normal((n, m.dim + 1))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if m.kind == "cap":
        return _sample_cap(m.dim, m.angle, n, rng)
    if m.kind == "torus":
        theta = rng.uniform(0, 2 * np.pi, size=(n, m.dim))
        return np.concatenate([np.cos(theta), np.sin(theta)], axis=1)
    raise ValueError(f"unknown manifold kind {m.kind!r}")


def _sample_cap(dim: int, angle: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the cap {x in S^dim : angle(x, e_0) <= angle}, by inverse CDF of the polar angle."""
    grid = np.linspace(0.0, angle, 4097)
    dens = np.sin(grid) ** (dim - 1)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2)])
    psi = np.interp(rng.uniform(0, cdf[-1], size=n), cdf, grid)
    u = rng.standard_normal((n, dim))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.concatenate([np.cos(psi)[:, None], np.sin(psi)[:, None] * u], axis=1)


def random_rotation(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A (k, d) matrix with orthonormal rows: an isometric embedding of R^k into R^d."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return (q * np.sign(np.diag(r))).T


def layer_points(zoo: str, layer: int, n: int, seed: int) -> tuple[np.ndarray, dict]:
    """Points of zoo layer ``layer`` in R^ZOO_D (float32, unit RMS) and its ground truth."""
    m = ZOOS[zoo][layer]
    rng = np.random.default_rng([seed, ord(zoo), layer])
    raw = sample_manifold(m, n, rng)
    x = raw @ random_rotation(ZOO_D, raw.shape[1], rng)
    x -= x.mean(axis=0)
    rms = float(np.sqrt((x**2).sum(axis=1).mean()))
    x /= rms
    truth = {**asdict(m), "id_true": m.dim, "curvature_true": m.raw_curvature * rms}
    return x.astype(np.float32), truth
