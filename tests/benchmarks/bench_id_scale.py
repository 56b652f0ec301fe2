"""Which intrinsic dimension does a width-W quantiser see: TwoNN at full density, or its multiscale plateau?

Not a test (pytest collects test_*.py only). Run from the repository root:

    python tests/benchmarks/bench_id_scale.py     # about 2 minutes on 2 cores

Equal-radius unit spheres of dimension 2, 4 and 6 in R^64, 8,000 training and 4,000 held-out
points, in three cases: clean; with isotropic noise making up 30% of a 64-neighbour patch's
variance (fine-scale spread, where TwoNN rises); and "filaments", each point replaced by six
points on a short random segment through it (fine-scale 1-d structure, where TwoNN falls).
For each: TwoNN on 3,000 points, its multiscale plateau (median over decimation scales 2 to
16, ``geometry.multiscale_id``), and the dimension a plain k-means quantiser reads off its
held-out error over widths 16 to 256 (Zador: error ~ W^(-2/d), so d = 2 / exponent). The
estimator closer to that dimension is the one that speaks for the scale an SAE of these widths
works at.
"""

from __future__ import annotations

import numpy as np
import torch

from geowall.geometry import multiscale_id, twonn
from geowall.geometry.known import noise_for_share, reference_cloud


def kmeans_fvu(X, Xe, W, iters=30, seed=0):
    rng = np.random.default_rng(seed)
    Xt = torch.from_numpy(X)
    Et = torch.from_numpy(Xe)
    C = Xt[rng.choice(len(X), W, replace=False)].clone()
    for _ in range(iters):
        j = torch.cdist(Xt, C).argmin(1)
        S = torch.zeros_like(C).index_add_(0, j, Xt)
        cnt = torch.bincount(j, minlength=W).unsqueeze(1)
        C = torch.where(cnt > 0, S / cnt.clamp(min=1), C)
    j = torch.cdist(Et, C).argmin(1)
    return float(((Et - C[j]) ** 2).sum() / ((Et - Et.mean(0)) ** 2).sum())


def filaments(X, rng, per=6, length=0.02):
    # each point becomes `per` points along a short random segment through it: a fine-scale 1-d structure
    m = len(X) // per
    base = X[:m]
    dirs = rng.standard_normal(base.shape)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t = rng.uniform(-1, 1, (m, per, 1)) * length
    return (base[:, None, :] + t * dirs[:, None, :]).reshape(-1, X.shape[1])


def main() -> None:
    rows = []
    for d in (2, 4, 6):
        for case in ("clean", "noise", "filaments"):
            rng = np.random.default_rng(d)
            Xall = reference_cloud("sphere", d, n=12000, D=64, seed=1)
            if case == "noise":
                s = noise_for_share(Xall[:3000], 0.3)
                Xall = Xall + s / 8 * rng.standard_normal(Xall.shape)
            if case == "filaments":
                Xall = filaments(reference_cloud("sphere", d, n=12000 * 6, D=64, seed=1)[:12000], rng)
                Xall = np.concatenate([Xall, filaments(reference_cloud("sphere", d, n=12000, D=64, seed=2), rng)])
            X, Xe = Xall[:8000].astype(np.float32), Xall[8000:12000].astype(np.float32)
            tw = twonn(torch.from_numpy(X[:3000]))
            ms = multiscale_id(torch.from_numpy(X[:3000]))
            plateau = float(ms[ms.scale > 1].id.median())
            Ws = [16, 32, 64, 128, 256]
            f = [kmeans_fvu(X, Xe, W) for W in Ws]
            slope = -np.polyfit(np.log(Ws), np.log(f), 1)[0]
            rows.append((d, case, round(tw, 2), round(plateau, 2), round(2 / slope, 2)))
            print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
