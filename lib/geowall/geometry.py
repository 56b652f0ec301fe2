"""Geometry of an activation point cloud: the four layerwise summaries of step 02.

For a layer's activations X (n points in R^d) we measure

``id_twonn``
    TwoNN intrinsic dimension (Facco et al. 2017), the linear-fit variant that is
    ``skdim.id.TwoNN``'s default (see ``twonn``).
``pr``
    participation ratio (sum lambda)^2 / sum lambda^2 of the covariance eigenvalues:
    a linear ("how many directions carry the variance") dimension. ``summaries``
    reports the U-statistic estimate of the population value (the plug-in one is
    biased low by about PR / n; see ``participation_ratio``).
``curvature``
    scale-free mean second-fundamental-form magnitude |II| * r from local quadratic
    fits on kNN patches, with the least-squares noise floor subtracted (see
    ``curvature``).
``local_residual``
    fraction of local-patch variance outside the best local flat of dimension
    round(id_twonn): the second-order residual that no sparse linear dictionary
    removes at that scale (see ``local_residual``).

``summaries`` returns all four with bootstrap standard errors and 95% percentile
intervals; ``multiscale_id`` shows whether the ID is stable across scales.

Duplicates. Real activations hold exact duplicates (the embedding layer is a
discrete set of token + position vectors). A duplicate pair has r1 = 0 and would
collapse TwoNN towards 0 (or, if only r1 = 0 points are dropped, bias it up through
neighbours with r1 = r2). All kNN-based summaries therefore run on the distinct rows
(exact duplicate rows removed first); points with r1 = 0 are then dropped as well
(cannot occur after deduplication, kept as a guard). ``pr`` uses every row:
duplicates are genuine probability mass for a covariance.

Heavy work (kNN, patch algebra, bootstrap matrix products) runs in torch on
``device`` (CPU or CUDA, same code).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pandas as pd
import torch

from geowall.kernels import as_tensor, knn

__all__ = [
    "twonn",
    "participation_ratio",
    "curvature",
    "local_residual",
    "multiscale_id",
    "summaries",
    "unique_rows",
    "patch_k",
    "SUMMARY_NAMES",
]

SUMMARY_NAMES = ("id_twonn", "pr", "curvature", "local_residual")
_CI = (0.025, 0.975)


# ----------------------------------------------------------------------------- helpers
def unique_rows(X: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the first occurrence of each distinct row of ``X``.

    Rows are "the same" exactly when all coordinates are equal (-0.0 == 0.0). A
    random projection key screens the rows first (distinct keys => distinct rows);
    only rows sharing a key are compared in full, so the cost is one matrix-vector
    product and a 1-d sort instead of a lexicographic sort of whole rows.
    """
    a = np.ascontiguousarray((X + 0.0).cpu().numpy())  # + 0.0 turns -0.0 into 0.0
    key = a @ np.random.default_rng(0).standard_normal(a.shape[1])
    order = np.argsort(key, kind="stable")
    tied = np.zeros(len(a), dtype=bool)
    same = key[order][1:] == key[order][:-1]
    tied[order[1:][same]] = tied[order[:-1][same]] = True
    keep = ~tied
    if tied.any():
        sub = np.flatnonzero(tied)
        view = a[sub].view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(-1)
        _, first = np.unique(view, return_index=True)
        keep[sub[first]] = True
    return torch.from_numpy(np.flatnonzero(keep)).to(X.device)


def _points(X, device, name: str = "X", min_points: int = 3) -> torch.Tensor:
    """Validated float64 tensor of shape (n, d) with n >= min_points."""
    t = as_tensor(X, device=device, name=name)
    if t.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points; got {t.shape[0]}")
    return t


def _distinct(X, device, min_points: int = 3) -> torch.Tensor:
    """Validated tensor of the distinct rows of X (see module docstring on duplicates)."""
    t = _points(X, device)
    u = t[unique_rows(t)]
    if u.shape[0] < min_points:
        raise ValueError(f"X has only {u.shape[0]} distinct rows; need at least {min_points}")
    return u


def _percentile_row(name, estimate, boot, n, k, n_boot) -> dict:
    """One row of the summaries table from a point estimate and bootstrap replicates."""
    boot = np.asarray(boot, dtype=float)
    boot = boot[np.isfinite(boot)]
    se = float(boot.std(ddof=1)) if len(boot) > 1 else float("nan")
    lo, hi = (np.quantile(boot, _CI) if len(boot) else (float("nan"),) * 2)
    return dict(summary=name, estimate=float(estimate), se=se, lo=float(lo), hi=float(hi),
                n=int(n), k=float(k), n_boot=int(n_boot))


# ----------------------------------------------------------------------------- TwoNN
def _twonn_ratios(Xu: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """mu = r2 / r1 for every distinct point (r1 > 0), and r1 itself."""
    dist, _ = knn(Xu, 2)
    r1, r2 = dist[:, 0], dist[:, 1]
    keep = r1 > 0
    return r2[keep] / r1[keep], r1[keep]


def _twonn_fit(mu: np.ndarray, discard_fraction: float) -> np.ndarray:
    """Linear-fit TwoNN on the last axis of ``mu`` (any leading batch shape).

    With N ratios sorted ascending and the n_keep = int(N (1 - discard_fraction))
    smallest kept, fit -log(1 - i/N) = d log mu_(i), i = 1..n_keep, through the
    origin: d = sum(x y) / sum(x x). (Facco et al. 2017, eq. 5 and their discarding
    heuristic; identical to skdim.id.TwoNN(method="linear"), its default.)
    """
    N = mu.shape[-1]
    n_keep = min(int(N * (1 - discard_fraction)), N - 1)  # i = N would give log(0)
    if n_keep < 2:
        raise ValueError(f"TwoNN needs at least 3 usable points; got {N}")
    x = np.log(np.sort(mu, axis=-1)[..., :n_keep])
    y = -np.log1p(-np.arange(1, n_keep + 1) / N)
    return (x @ y) / np.einsum("...i,...i->...", x, x)


def _check_fraction(discard_fraction: float) -> None:
    if not 0.0 <= discard_fraction < 1.0:
        raise ValueError(f"discard_fraction must be in [0, 1); got {discard_fraction!r}")


def twonn(X, *, discard_fraction: float = 0.1, device=None) -> float:
    """TwoNN intrinsic dimension of the point cloud ``X`` (n, d).

    Facco, d'Errico, Rodriguez & Laio (2017): for each point the ratio
    mu = r2 / r1 of its second- to first-neighbour distance is Pareto(1, d)
    distributed on a locally uniform d-manifold. We use the paper's *linear fit*
    variant, skdim.id.TwoNN's default: the largest ``discard_fraction`` of the ratios
    is discarded and the slope of -log(1 - F_emp(mu)) against log(mu) through the
    origin is the dimension (see ``_twonn_fit``); estimates equal skdim's on the
    same (duplicate-free) data up to rounding of the distances.

    Duplicates: exact duplicate rows are removed first (``unique_rows``); points
    whose nearest neighbour is at distance 0 are dropped. Neighbours come from the
    exact ``geowall.kernels.knn``.
    """
    _check_fraction(discard_fraction)
    mu, _ = _twonn_ratios(_distinct(X, device))
    return float(_twonn_fit(mu, discard_fraction))


# ----------------------------------------------------------------------------- PR
def participation_ratio(X, *, unbiased: bool = False, device=None) -> float:
    """Participation ratio (sum lambda)^2 / sum lambda^2 of the covariance of ``X``.

    Plug-in (default): sum lambda = tr C and sum lambda^2 = ||C||_F^2 of the sample
    covariance C, without an eigendecomposition (the n x n Gram matrix of the
    centred rows is used when n < d: same non-zero spectrum). Ranges from 1 (one
    direction) to d (isotropic). The plug-in value is biased low: E||C||_F^2 is
    about ||Sigma||_F^2 + (tr Sigma)^2 / n, a relative bias of about -PR / n.

    ``unbiased=True``: U-statistic estimate of the population value, both traces
    estimated from distinct pairs of rows (K the Gram matrix of the centred rows):
        PR_U = sum_{i != j} K_ii K_jj / sum_{i != j} K_ij^2,
    unbiased numerator and denominator for a known mean (centring at the sample
    mean leaves a relative bias of order PR / n^2). ``summaries`` reports this one.
    All rows count, duplicates included (they are probability mass).
    """
    Xc = _points(X, device, min_points=2)
    if unbiased:
        return float(_pr_weighted(Xc, np.ones((1, Xc.shape[0])))[0])
    Xc = Xc - Xc.mean(0)
    C = Xc.T @ Xc if Xc.shape[0] >= Xc.shape[1] else Xc @ Xc.T
    tr, fro2 = torch.trace(C), (C * C).sum()
    if float(fro2) == 0.0:
        raise ValueError("X has zero variance: the participation ratio is undefined")
    return float(tr * tr / fro2)


def _pr_weighted(X: torch.Tensor, counts: np.ndarray, block: int = 2048) -> np.ndarray:
    """U-statistic participation ratio of each bootstrap resample given row counts (B, n).

    With K the Gram matrix of the rows centred at the full-sample mean and w the
    multiplicities of the original rows in a resample, sums over distinct pairs of
    *original* rows (copies of one row are not independent draws, so pairing them
    would reintroduce the plug-in bias):
        num = (w.diag K)^2 - (w^2).(diag K)^2
        den = w^T (K o K) w - (w^2).(diag K)^2,      PR = num / den.
    counts = ones gives ``participation_ratio(X, unbiased=True)``. Cost n^2 (d + 2B)
    instead of B n d^2 for recomputing covariances; K is built block by block and
    never stored whole. Products in float32 (bootstrap replicates need ~1e-5
    relative accuracy), sums in float64. Resamples are not re-centred (effect of
    relative order PR / n^2).
    """
    n = X.shape[0]
    Xt = (X - X.mean(0)).float()
    W = torch.as_tensor(np.asarray(counts), dtype=torch.float32, device=X.device)  # (B, n)
    QW = torch.empty_like(W)
    for a in range(0, n, block):
        Kb = Xt @ Xt[a : a + block].T  # (n, r): columns a.. of K
        QW[:, a : a + block] = W @ (Kb * Kb)
    W64 = W.double()
    diag = (Xt.double() ** 2).sum(1)
    self_pairs = (W64**2) @ diag**2
    num = (W64 @ diag) ** 2 - self_pairs
    den = (W64 * QW.double()).sum(1) - self_pairs
    if bool((den <= 0).any()):
        raise ValueError("X has (nearly) zero variance: the participation ratio is undefined")
    return (num / den).cpu().numpy()


# ----------------------------------------------------------------------------- patches
def patch_k(dim: int) -> int:
    """Default kNN patch size for a quadratic fit in ``dim`` tangent coordinates.

    The fit has p = 1 + dim + dim (dim + 1) / 2 coefficients per normal direction
    (intercept, linear, quadratic); we use k = max(20, 2 p) neighbours, so the
    regression has as many residual degrees of freedom as parameters.
    """
    return max(20, 2 * _n_params(dim))


def _n_params(dim: int) -> int:
    return 1 + dim + dim * (dim + 1) // 2


def _quadratic_design(U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Design [1, u_a, u_a u_b (a <= b)] for tangent coordinates U (B, m, dim).

    Returns the design (B, m, p) and, for each quadratic column, the weight that
    turns its squared coefficient into a squared entry of the second fundamental
    form: II_aa = 2 c_aa (weight 4), II_ab = II_ba = c_ab (weight 2, two entries).
    """
    dim = U.shape[-1]
    a, b = torch.triu_indices(dim, dim, device=U.device)
    quad = U[..., a] * U[..., b]
    ones = torch.ones(U.shape[:-1] + (1,), dtype=U.dtype, device=U.device)
    weights = torch.where(a == b, 4.0, 2.0).to(U.dtype)
    return torch.cat([ones, U, quad], dim=-1), weights


def _principal_coords(Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of centred patches Y (B, m, D) in their principal axes.

    Returns (scores (B, m, r), eigenvalues (B, r)), descending, r = min(m, D): the
    m x m Gram matrix when m <= D, else the D x D scatter matrix.
    """
    if Y.shape[1] <= Y.shape[2]:
        lam, vec = torch.linalg.eigh(Y @ Y.transpose(1, 2))
        lam, vec = lam.flip(-1).clamp_min(0), vec.flip(-1)
        return vec * lam.sqrt().unsqueeze(1), lam
    lam, vec = torch.linalg.eigh(Y.transpose(1, 2) @ Y)
    lam, vec = lam.flip(-1).clamp_min(0), vec.flip(-1)
    return Y @ vec, lam


@contextlib.contextmanager
def _lapack_single_thread(device: torch.device):
    """Run batched small-matrix LAPACK calls single-threaded on CPU.

    Threaded MKL on many tiny matrices gains nothing and, on a shared machine,
    spin-waiting threads made batched eigh ~40x slower in our measurements.
    """
    if device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _patch_stats(X: torch.Tensor, base: torch.Tensor, nbr: torch.Tensor, radius: torch.Tensor,
                 dim: int, debias: bool = True, batch: int = 64) -> dict[str, np.ndarray]:
    """Per-base-point local quadratic fit and flat residual.

    For base point x0 with neighbours x1..xk (distance to xk = r):
    1. local PCA of the patch {x0..xk} (centred at its mean); the top ``dim`` axes
       span the tangent space, the rest its normal space;
    2. coordinates relative to x0, divided by r: tangent u, normal v;
    3. least-squares fit v ~ a + B u + sum_{a<=b} c_ab u_a u_b (c_ab in the normal
       space), so II_aa = 2 c_aa, II_ab = c_ab in units of 1/r;
    4. kappa_r = ||II||_F * r (scale-free: sqrt(m) r / R on an m-sphere of radius R),
       kappa = kappa_r / r. With ``debias`` the noise floor is removed: for least
       squares E||c_hat||^2 = ||c||^2 + sigma^2 tr((Phi^T Phi)^-1), so we subtract
       sigma_hat^2 (RSS / (k + 1 - p), per normal coordinate) times the weighted
       diagonal of (Phi^T Phi)^-1 and clip at 0 before the square root;
    5. residual = variance of the patch outside its top ``dim`` principal axes,
       as a fraction of its total variance.
    """
    out = {"kappa_r": [], "residual": []}
    with _lapack_single_thread(X.device):
        for s in range(0, len(base), batch):
            b, nb, r = base[s : s + batch], nbr[s : s + batch], radius[s : s + batch]
            patch = (X[nb] - X[b].unsqueeze(1)) / r.view(-1, 1, 1)  # neighbours, x0 at 0
            patch = torch.cat([torch.zeros_like(patch[:, :1]), patch], dim=1)
            S, lam = _principal_coords(patch - patch.mean(1, keepdim=True))
            S = S - S[:, :1, :]  # back to the base point as origin, principal axes kept
            out["residual"].append((lam[:, dim:].sum(-1) / lam.sum(-1)).cpu())
            out["kappa_r"].append(_second_fundamental_norm(S[..., :dim], S[..., dim:], debias).cpu())
    res = {key: torch.cat(v).numpy() for key, v in out.items()}
    res["radius"] = radius.cpu().numpy()
    res["kappa"] = res["kappa_r"] / res["radius"]
    return res


def _second_fundamental_norm(U: torch.Tensor, V: torch.Tensor, debias: bool) -> torch.Tensor:
    """||II||_F from regressing normal coords V (B, m, q) on quadratics of U (B, m, dim)."""
    Phi, w = _quadratic_design(U)
    pinv = torch.linalg.pinv(Phi)  # (B, p, m); rank-safe least squares on CPU and CUDA
    coef = pinv @ V  # (B, p, q)
    nq = 1 + U.shape[-1]
    ii2 = (coef[:, nq:, :] ** 2).sum(-1) @ w  # sum over normal coords and (a <= b)
    if debias:
        dof = Phi.shape[1] - Phi.shape[2]
        rss = ((V - Phi @ coef) ** 2).sum((1, 2))  # summed over normal coordinates
        h = ((pinv[:, nq:, :] ** 2).sum(-1) @ w)  # weighted diag of (Phi^T Phi)^-1
        ii2 = (ii2 - rss / max(dof, 1) * h).clamp_min(0)
    return ii2.sqrt()


def _check_patch_args(n: int, k: int, dim: int, n_base: int) -> None:
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    if not isinstance(n_base, (int, np.integer)) or n_base < 1:
        raise ValueError(f"n_base must be a positive integer; got {n_base!r}")
    if k < _n_params(dim):
        raise ValueError(
            f"k={k} is too small for a quadratic fit in dim={dim} tangent coordinates: "
            f"need k >= {_n_params(dim)} (default patch_k(dim) = {patch_k(dim)})")
    if k > n - 1:
        raise ValueError(f"k={k} neighbours requested but only {n} distinct points")


def _local_fits(Xu: torch.Tensor, *, k: int, n_base: int, dim: int, seed: int,
                debias: bool = True) -> dict:
    """Sample base points (seeded, without replacement), find their kNN, fit patches."""
    _check_patch_args(Xu.shape[0], k, dim, n_base)
    rng = np.random.default_rng(seed)
    base = np.sort(rng.choice(Xu.shape[0], size=min(n_base, Xu.shape[0]), replace=False))
    dist, idx = knn(Xu, k, rows=base)
    dev = Xu.device
    return _patch_stats(Xu, torch.from_numpy(base).to(dev), torch.from_numpy(idx).to(dev),
                        torch.from_numpy(dist[:, -1]).to(dev), dim, debias=debias)


def curvature(X, *, k: int, n_base: int, dim: int, seed: int, scale_free: bool = True,
              debias: bool = True, device=None) -> float:
    """Mean second-fundamental-form magnitude from local quadratic fits.

    At ``n_base`` base points (sampled with ``seed``) the kNN patch of ``k``
    neighbours is split by local PCA into a ``dim``-dimensional tangent space and
    its normal complement; normal coordinates are regressed on the quadratic
    monomials of the tangent coordinates (with intercept and linear terms), which
    estimates the second fundamental form II. We report the mean over base points of
    ||II||_F * r, r the patch radius (distance to the k-th neighbour): scale-free, so
    comparable across layers with different activation norms. On an m-sphere of
    radius R, ||II||_F = sqrt(m) / R. ``scale_free=False`` returns mean ||II||_F in
    the units of X instead. Noise (and structure beyond second order) would add a
    floor of about sigma / r * sqrt(p q / (k + 1)) (p fit parameters, q normal
    directions); ``debias=True`` (default) subtracts its least-squares expectation
    per base point (see ``_patch_stats``), so flat noisy data give ~0.
    Runs on the distinct rows of X.
    """
    fits = _local_fits(_distinct(X, device), k=k, n_base=n_base, dim=dim, seed=seed,
                       debias=debias)
    return float(np.mean(fits["kappa_r"] if scale_free else fits["kappa"]))


def local_residual(X, *, k: int, n_base: int, dim: int, seed: int, device=None) -> float:
    """Mean fraction of kNN-patch variance outside the best ``dim``-dimensional flat.

    For each of ``n_base`` base points (sampled with ``seed``), the patch is the point
    and its ``k`` nearest neighbours; the best flat in least squares is its top
    ``dim`` principal axes through the patch mean, and the residual fraction is
    sum_{i > dim} lambda_i / sum_i lambda_i of the patch covariance. ~0 on flat
    data; grows like (r / R)^2 with curvature 1/R at patch radius r. Uses the same
    patches (and the same ``k`` lower bound) as ``curvature``; distinct rows only.
    """
    fits = _local_fits(_distinct(X, device), k=k, n_base=n_base, dim=dim, seed=seed)
    return float(np.mean(fits["residual"]))


# ----------------------------------------------------------------------------- multiscale
def multiscale_id(X, *, scales=(1, 2, 4, 8, 16), seed: int = 0, discard_fraction: float = 0.1,
                  max_subsets: int = 8, device=None) -> pd.DataFrame:
    """TwoNN on decimated subsets: is the ID estimate stable across length scales?

    At scale s the distinct points are shuffled (``seed``) and split into s
    disjoint subsets of n // s points (at most ``max_subsets`` are used); TwoNN is
    computed on each. Decimating by s multiplies nearest-neighbour distances by
    about s^(1/id), so larger s probes coarser scales. Columns: scale, n_points
    (per subset), id (mean over subsets), id_sd (their standard deviation, NaN for
    one subset), n_subsets, r1_median (median first-neighbour distance, the length
    scale probed). Scales leaving fewer than 10 points per subset are skipped.
    """
    _check_fraction(discard_fraction)
    Xu = _distinct(X, device)
    n = Xu.shape[0]
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(Xu.device)
    rows = []
    for s in scales:
        s = int(s)
        if s < 1:
            raise ValueError(f"scales must be positive integers; got {s}")
        m = n // s
        if m < 10:
            continue
        ids, r1s = [], []
        for j in range(min(s, max_subsets)):
            mu, r1 = _twonn_ratios(Xu[perm[j * m : (j + 1) * m]])
            ids.append(float(_twonn_fit(mu, discard_fraction)))
            r1s.append(r1)
        rows.append(dict(scale=s, n_points=m, id=float(np.mean(ids)),
                         id_sd=float(np.std(ids, ddof=1)) if len(ids) > 1 else float("nan"),
                         n_subsets=len(ids), r1_median=float(np.median(np.concatenate(r1s)))))
    return pd.DataFrame(rows, columns=["scale", "n_points", "id", "id_sd", "n_subsets", "r1_median"])


# ----------------------------------------------------------------------------- summaries
def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of per-point ``values``."""
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(1)


def summaries(X, *, n_boot: int = 200, seed: int = 0, k: int | None = None, n_base: int = 300,
              max_points: int | None = None, discard_fraction: float = 0.1, max_dim: int | None = None,
              device=None) -> pd.DataFrame:
    """The four geometric summaries of ``X`` (n, d) with bootstrap uncertainty.

    One row per summary, in the order id_twonn, pr, curvature, local_residual;
    columns summary, estimate, se (bootstrap standard deviation), lo, hi (95%
    percentile interval), n (points used: distinct points with r1 > 0 for TwoNN,
    all rows for PR, base points for curvature / local_residual), k (kNN scale:
    2 for TwoNN, NaN for PR, the patch size otherwise), n_boot.

    Procedure: optionally subsample ``max_points`` rows (``seed``); PR on all rows,
    the U-statistic estimate ``participation_ratio(X, unbiased=True)`` (the plug-in
    one is biased low by ~PR / n, which would also shift the bootstrap interval off
    the estimate), bootstrap over rows via the Gram-matrix identities of
    ``_pr_weighted``. Distinct rows -> exact kNN once -> TwoNN ratios; its
    bootstrap resamples the per-point ratios (the kNN graph is held fixed, so
    resampling never creates duplicate points). dim = round(id_twonn) (at least 1,
    at most ``max_dim`` if given; reported in the ``dim`` column) sets the tangent dimension for curvature and local_residual, with ``k`` neighbours
    (default ``patch_k(dim)``) at ``n_base`` base points; their bootstrap resamples
    the per-base-point values. The bootstrap does not propagate the uncertainty of
    dim into curvature / local_residual. If the patch size exceeds the data
    (k > n_distinct - 1) those two rows are NaN with a warning.
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    _check_fraction(discard_fraction)
    ss = np.random.SeedSequence(seed)
    rng_sub, rng_pr, rng_id, rng_loc, seq_base = (np.random.default_rng(s) for s in ss.spawn(5))
    X = _points(X, device, name="X", min_points=4)
    if max_points is not None and X.shape[0] > max_points:
        sub = np.sort(rng_sub.choice(X.shape[0], size=int(max_points), replace=False))
        X = X[torch.from_numpy(sub).to(X.device)]
    n = X.shape[0]

    counts = np.vstack([np.ones((1, n)), rng_pr.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])
    pr_all = _pr_weighted(X, counts)  # row 0: the estimate, then the replicates
    rows = [None, _percentile_row("pr", pr_all[0], pr_all[1:], n, math.nan, n_boot)]

    Xu = X[unique_rows(X)]
    mu, _ = _twonn_ratios(Xu)
    id_hat = float(_twonn_fit(mu, discard_fraction))
    id_boot = _twonn_fit(mu[rng_id.integers(0, len(mu), size=(n_boot, len(mu)))], discard_fraction)
    rows[0] = _percentile_row("id_twonn", id_hat, id_boot, len(mu), 2, n_boot)

    dim = max(1, int(round(id_hat)))
    if max_dim is not None:  # quadratic patch fits need O(dim^2) neighbours: cap the tangent dimension
        dim = min(dim, int(max_dim))
    k_used = patch_k(dim) if k is None else int(k)
    if k_used > Xu.shape[0] - 1:
        warnings.warn(f"patch size k={k_used} (dim={dim}) exceeds the {Xu.shape[0]} distinct "
                      "points: curvature and local_residual are NaN", stacklevel=2)
        for name in ("curvature", "local_residual"):
            rows.append(dict(summary=name, estimate=math.nan, se=math.nan, lo=math.nan,
                             hi=math.nan, n=0, k=float(k_used), n_boot=int(n_boot)))
    else:
        fits = _local_fits(Xu, k=k_used, n_base=n_base, dim=dim,
                           seed=int(seq_base.integers(2**32)))
        for name, key in (("curvature", "kappa_r"), ("local_residual", "residual")):
            vals = fits[key]
            rows.append(_percentile_row(name, vals.mean(), _bootstrap_means(vals, n_boot, rng_loc),
                                        len(vals), k_used, n_boot))
    out = pd.DataFrame(rows, columns=["summary", "estimate", "se", "lo", "hi", "n", "k", "n_boot"])
    out["dim"] = [math.nan, math.nan, float(dim), float(dim)]  # tangent dimension of the patch fits
    return out
