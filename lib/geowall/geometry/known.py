"""Known answers for the local summaries: clouds whose curvature is known, at every dimension.

``reference_cloud`` draws an equal-radius sphere, a flat box or a flat torus of a given
dimension, isometrically embedded in R^D by a random rotation, centred and scaled to unit
RMS radius (so a full sphere has curvature 1 in the units of ``geometry.curvature``, a box
0, a torus of m circles, each of radius 1 / sqrt(m), mean curvature 1), optionally with
isotropic off-manifold noise. ``noise_for_share`` sizes that noise as a share of a
k-neighbour patch's variance, the unit in which real layers' off-model variance is
measured (``local_geometry``'s ``residual`` over ``variance``). ``known_answers`` is the
table of notebook 02 and of the tests: equal-radius spheres and boxes of dimension 2 to
16, clean and noisy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from geowall.geometry.estimators import PATCH_K, TANGENT_TOL, _rms_kappa, local_geometry, rms_radius
from geowall.geometry.estimators import twonn as _twonn

KINDS = ("sphere", "box", "torus")


def reference_cloud(kind: str, dim: int, *, n: int = 3000, D: int = 64, noise: float = 0.0, seed: int = 0):
    """``n`` points of a unit-RMS ``kind`` ("sphere", "box", "torus") of dimension ``dim`` in R^D.

    ``noise``: standard deviation of the isotropic Gaussian noise's *norm* per point (each
    coordinate gets noise / sqrt(D)), added after the scaling.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    width = {"sphere": dim + 1, "box": dim, "torus": 2 * dim}[kind]
    if width > D:
        raise ValueError(f"a {kind} of dimension {dim} needs D >= {width}; got D={D}")
    rng = np.random.default_rng([seed, dim, KINDS.index(kind)])
    if kind == "sphere":
        Z = rng.standard_normal((n, dim + 1))
        Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    elif kind == "box":
        Z = rng.uniform(-1, 1, (n, dim))
    else:
        t = rng.uniform(0, 2 * np.pi, (n, dim))
        Z = np.concatenate([np.cos(t), np.sin(t)], axis=1)
    q, r = np.linalg.qr(rng.standard_normal((D, width)))
    X = Z @ (q * np.sign(np.diag(r))).T
    X -= X.mean(0)
    X /= np.sqrt((X**2).sum(1).mean())
    if noise:
        X += noise / np.sqrt(D) * rng.standard_normal(X.shape)
    return X


def noise_for_share(X, share: float, *, k: int = PATCH_K, n_base: int = 100, seed: int = 0) -> float:
    """Noise norm per point that makes up ``share`` of the variance of a k-neighbour patch of X.

    With v the mean per-point variance of the clean cloud's patches, noise of total variance
    s^2 = v share / (1 - share) per point is ``share`` of the noisy patch's variance.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1); got {share!r}")
    v = float(local_geometry(X, n_base=n_base, seed=seed, k=k).variance.mean())
    return float(np.sqrt(v * share / (1 - share)))


def known_answers(
    *,
    dims=(2, 4, 8, 12, 16),
    kinds=("sphere", "box"),
    shares=(0.0, 0.2),
    n: int = 3000,
    D: int = 384,
    n_base: int = 150,
    k: int = PATCH_K,
    tangent_tol: float = TANGENT_TOL,
    seed: int = 0,
    twonn: bool = True,
) -> pd.DataFrame:
    """Curvature and local residual of reference clouds, one row per (kind, dim, noise share).

    Columns: kind, dim, share (noise as a share of the patch variance), noise (its norm per
    point), curvature (units of the cloud's RMS radius: a sphere 1), local_residual,
    id_twonn (NaN with ``twonn=False``: a full kNN graph per cloud), dim_patch (median
    per-patch tangent dimension), noise_share_read (the residual over the patch variance,
    what the notebook reads off real layers). ``D`` = 384
    is MiniLM's width: isotropic noise of a given total variance spreads over all D
    directions, as it would in the real layers.
    """
    rows = []
    for kind in kinds:
        for dim in dims:
            clean = reference_cloud(kind, dim, n=n, D=D, seed=seed)
            for share in shares:
                noise = noise_for_share(clean, share, k=k, seed=seed) if share else 0.0
                X = reference_cloud(kind, dim, n=n, D=D, seed=seed, noise=noise) if share else clean
                loc = local_geometry(X, n_base=n_base, seed=seed, k=k, tangent_tol=tangent_tol)
                R = rms_radius(X)
                rows.append(
                    {
                        "kind": kind,
                        "dim": dim,
                        "share": share,
                        "noise": noise,
                        "curvature": _rms_kappa(loc) * R,
                        "local_residual": loc.residual.mean() / R**2,
                        "id_twonn": _twonn(X) if twonn else np.nan,
                        "dim_patch": float(loc.dim.median()),
                        "noise_share_read": float(loc.residual.mean() / loc.variance.mean()),
                    }
                )
    return pd.DataFrame(rows)
