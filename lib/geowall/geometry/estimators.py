"""The estimators behind the four summaries, one point cloud at a time.

* ``distinct_points``: exact duplicates and near-duplicates removed (see "Duplicates").
* ``twonn``, ``mle_id``, ``multiscale_id``: intrinsic dimension.
* ``participation_ratio``: linear dimension.
* ``local_geometry`` (per base point), ``curvature``, ``local_residual``: local PCA
  patches with a per-patch tangent dimension and quadratic fits.

Duplicates. Real activations hold exact duplicates (the embedding layer is a discrete
set of token + position vectors) and near-duplicates (bf16 rounding; in the randomly
initialised twin, the same token in different documents lands within a few percent of
the cloud's neighbour spacing, because random attention barely mixes context in). A
duplicate pair has r1 = 0 and a near-duplicate pair r1 ~ 0 with an ordinary r2: the
ratio r2 / r1 is huge and TwoNN collapses towards 1 (the random twin read 0.8 to 1.2).
Rule (``distinct_points``): exact duplicate rows are removed, then a point whose
nearest neighbour lies closer than ``near_dup_tol`` (default 0.1) times the local
spacing is merged with it (the lower index is kept), repeated until no such pair is
left. The spacing is the larger of the median first-neighbour distance (catches
clusters of near-copies while they are a minority) and the point's own second-neighbour
distance (catches isolated pairs however many there are: with more than half the points
in pairs the median itself is a within-pair distance). On a clean, locally uniform
d-manifold the fraction of points so close by chance is about 0.1^d (1 + ln 2): 1.7%
at d = 2, 0.02% at d = 4, so clean data lose almost nothing (the TwoNN of unit 2-spheres
and 2-boxes moves by 1 to 2%).
``pr`` uses every row: duplicates are probability mass for a covariance.

Heavy work (kNN, patch algebra) runs in torch on ``device`` (CPU or CUDA, same code).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pandas as pd
import torch

from geowall.kernels import as_tensor, knn

NEAR_DUP_TOL = 0.1  # near-duplicate: r1 below this fraction of the median r1
TANGENT_TOL = 0.1  # a local principal axis is tangent if its variance >= this x the leading one's
MAX_DIM = 12  # cap on the tangent dimension of the quadratic fits


# ----------------------------------------------------------------------------- points
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


def _check_tol(near_dup_tol: float) -> None:
    if not 0.0 <= near_dup_tol < 1.0:
        raise ValueError(f"near_dup_tol must be in [0, 1); got {near_dup_tol!r}")


def distinct_points(X, *, near_dup_tol: float = NEAR_DUP_TOL, device=None) -> np.ndarray:
    """Indices (ascending) of the rows of ``X`` kept after removing duplicates and near-duplicates.

    Exact duplicates first (``unique_rows``), then rounds of: exact kNN (8 neighbours),
    point i's threshold t_i = ``near_dup_tol`` x max(median first-neighbour distance, its
    own second-neighbour distance); scanning points in index order, a point is dropped
    when one of its neighbours within t_i was kept. Recomputed each round, so a cloud of
    tight clusters collapses to one representative per cluster.
    ``near_dup_tol=0`` removes exact duplicates only.
    """
    return _dedup(_points(X, device, min_points=1), near_dup_tol)[0]


def _dedup(t: torch.Tensor, near_dup_tol: float, max_rounds: int = 20) -> tuple[np.ndarray, np.ndarray | None]:
    """(kept indices, kNN distances (n_kept, <= 8) among the kept points, or None if not computed)."""
    _check_tol(near_dup_tol)
    keep = unique_rows(t).cpu().numpy()
    dist = None
    for _ in range(max_rounds if near_dup_tol > 0 else 0):
        if len(keep) < 3:
            break
        dist, idx = knn(t[torch.from_numpy(keep).to(t.device)], min(8, len(keep) - 1))
        scale = np.maximum(float(np.median(dist[:, 0])), dist[:, 1])  # spacing: median r1, or the point's own r2
        close = dist < near_dup_tol * scale[:, None]
        kept = np.ones(len(keep), dtype=bool)
        for i in np.flatnonzero(close.any(1)):  # ascending: neighbours j < i are already decided
            nb = idx[i][close[i]]
            if np.any(kept[nb[nb < i]]):
                kept[i] = False
        if kept.all():
            break
        keep, dist = keep[kept], None
    return keep, dist


def _points(X, device, name: str = "X", min_points: int = 3) -> torch.Tensor:
    """Validated float64 tensor of shape (n, d) with n >= min_points."""
    t = as_tensor(X, device=device, name=name)
    if t.shape[0] < min_points:
        raise ValueError(f"{name} needs at least {min_points} points; got {t.shape[0]}")
    return t


def _distinct(X, device, near_dup_tol: float = NEAR_DUP_TOL, min_points: int = 3) -> torch.Tensor:
    """Validated tensor of the distinct rows of X (see the module docstring on duplicates)."""
    t = _points(X, device)
    u = t[torch.from_numpy(_dedup(t, near_dup_tol)[0]).to(t.device)]
    if u.shape[0] < min_points:
        raise ValueError(f"X has only {u.shape[0]} distinct rows; need at least {min_points}")
    return u


def rms_radius(X) -> float:
    """Root-mean-square distance of the rows of X to their mean: the cloud's scale."""
    t = as_tensor(X)
    return float(((t - t.mean(0)) ** 2).sum(1).mean().sqrt())


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


def twonn(X, *, discard_fraction: float = 0.1, near_dup_tol: float = NEAR_DUP_TOL, device=None) -> float:
    """TwoNN intrinsic dimension of the point cloud ``X`` (n, d).

    Facco, d'Errico, Rodriguez & Laio (2017): for each point the ratio
    mu = r2 / r1 of its second- to first-neighbour distance is Pareto(1, d)
    distributed on a locally uniform d-manifold. We use the paper's *linear fit*
    variant, skdim.id.TwoNN's default: the largest ``discard_fraction`` of the ratios
    is discarded and the slope of -log(1 - F_emp(mu)) against log(mu) through the
    origin is the dimension (see ``_twonn_fit``). With ``near_dup_tol=0`` estimates
    equal skdim's on duplicate-free data up to rounding of the distances.

    Duplicates and near-duplicates are removed first (``distinct_points``).
    Neighbours come from the exact ``geowall.kernels.knn``.
    """
    _check_fraction(discard_fraction)
    mu, _ = _twonn_ratios(_distinct(X, device, near_dup_tol))
    return float(_twonn_fit(mu, discard_fraction))


# ----------------------------------------------------------------------------- MLE
def mle_id(X, *, k: int = 20, near_dup_tol: float = NEAR_DUP_TOL, device=None) -> float:
    """Levina-Bickel maximum-likelihood intrinsic dimension, MacKay-Ghahramani pooling.

    Per point, m_i = (k - 1) / sum_{j<k} log(r_k / r_j) from its k nearest neighbours;
    the cloud's estimate is 1 / mean(1 / m_i). Computed by ``skdim.id.MLE`` (the
    maintained implementation) on neighbour lists from our exact kNN, after the same
    duplicate rule as TwoNN (skdim's own sklearn kNN would see the duplicates as
    zero distances). The second ID estimator of the sensitivity analysis: it uses k
    neighbours instead of two, so it looks at a coarser scale than TwoNN.
    """
    import skdim

    Xu = _distinct(X, device, near_dup_tol, min_points=k + 1)
    dist, idx = knn(Xu, k)
    est = skdim.id.MLE().fit(Xu.cpu().numpy(), precomputed_knn_arrays=(dist, idx), comb="mle")
    return float(est.dimension_)


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
        return float(pr_weighted(Xc, np.ones((1, Xc.shape[0])))[0])
    Xc = Xc - Xc.mean(0)
    C = Xc.T @ Xc if Xc.shape[0] >= Xc.shape[1] else Xc @ Xc.T
    tr, fro2 = torch.trace(C), (C * C).sum()
    if float(fro2) == 0.0:
        raise ValueError("X has zero variance: the participation ratio is undefined")
    return float(tr * tr / fro2)


def pr_weighted(X: torch.Tensor, counts: np.ndarray, block: int = 2048) -> np.ndarray:
    """U-statistic participation ratio of each weighted resample given row counts (B, n).

    With K the Gram matrix of the rows centred at the full-sample mean and w the
    multiplicities of the original rows in a resample (0/1 for a subsample), sums over
    distinct pairs of *original* rows:
        num = (w.diag K)^2 - (w^2).(diag K)^2
        den = w^T (K o K) w - (w^2).(diag K)^2,      PR = num / den.
    counts = ones gives ``participation_ratio(X, unbiased=True)``. Cost n^2 (d + 2B)
    instead of B n d^2 for recomputing covariances; K is built block by block and
    never stored whole. Products in float32 (replicates need ~1e-5 relative accuracy),
    sums in float64. Resamples are not re-centred (effect of relative order PR / n^2).
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


def dim_patch_k(max_dim: int) -> int:
    """Patch size of the local PCA that sets each patch's tangent dimension: 3 (max_dim + 1).

    Enough points to resolve max_dim + 1 directions (a patch of k points spans at most
    k - 1), small enough that curvature adds little variance off the tangent space.
    """
    return max(20, 3 * (max_dim + 1))


def _fit_k(m: int, k: int | None, k_scale: float) -> int:
    """Fit-patch size at tangent dimension m: ``k`` if given, else k_scale x patch_k(m) (at least p + 2)."""
    return int(k) if k is not None else max(_n_params(m) + 2, round(k_scale * patch_k(m)))


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


def _centred_patches(X: torch.Tensor, base: torch.Tensor, nbr: torch.Tensor):
    """Patches {x0, neighbours} relative to x0 and scaled by their radius r (distance to the last
    neighbour): returns (principal scores with x0 at the origin, eigenvalues, r)."""
    rel = X[nbr] - X[base].unsqueeze(1)
    r = rel[:, -1].norm(dim=-1).clamp_min(torch.finfo(X.dtype).tiny)
    patch = torch.cat([torch.zeros_like(rel[:, :1]), rel / r.view(-1, 1, 1)], dim=1)
    S, lam = _principal_coords(patch - patch.mean(1, keepdim=True))
    return S - S[:, :1, :], lam, r


def _tangent_dims(lam: torch.Tensor, tangent_tol: float) -> torch.Tensor:
    """Per-patch tangent dimension: principal axes with variance >= tangent_tol x the leading one.

    Why this rule: a tangent direction of a patch of radius r carries variance of order
    r^2 / (m + 2); curvature 1 / R adds variance of order (r / R)^2 smaller off the tangent
    space (on unit spheres of dimension 2 to 8 with our patch sizes, 0.002 to 0.05 of the
    leading axis), and exact flats add none. So the rule reads a flat box at its full
    dimension whatever TwoNN says, and does not mistake moderate curvature for a dimension.
    """
    return (lam >= tangent_tol * lam[:, :1]).sum(-1)


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
        h = (pinv[:, nq:, :] ** 2).sum(-1) @ w  # weighted diag of (Phi^T Phi)^-1
        ii2 = (ii2 - rss / max(dof, 1) * h).clamp_min(0)
    return ii2.sqrt()


def _check_patch_args(n: int, n_base: int, max_dim: int, tangent_tol: float, k, k_dim: int) -> None:
    if not isinstance(n_base, (int, np.integer)) or n_base < 1:
        raise ValueError(f"n_base must be a positive integer; got {n_base!r}")
    if not isinstance(max_dim, (int, np.integer)) or max_dim < 1:
        raise ValueError(f"max_dim must be a positive integer; got {max_dim!r}")
    if not 0.0 < tangent_tol < 1.0:
        raise ValueError(f"tangent_tol must be in (0, 1); got {tangent_tol!r}")
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 3):
        raise ValueError(f"k must be an integer >= 3 or None; got {k!r}")
    if not isinstance(k_dim, (int, np.integer)) or k_dim < max_dim + 1:
        raise ValueError(
            f"k_dim={k_dim!r}: the tangent-dimension patch needs at least max_dim + 1 = "
            f"{max_dim + 1} neighbours to tell whether a patch exceeds the cap"
        )
    if k_dim > n - 1:
        raise ValueError(f"the tangent-dimension patch needs k_dim={k_dim} neighbours but only {n} distinct points")


def local_geometry(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    max_dim: int = MAX_DIM,
    tangent_tol: float = TANGENT_TOL,
    k: int | None = None,
    k_scale: float = 1.0,
    k_dim: int | None = None,
    fit: bool = True,
    near_dup_tol: float = NEAR_DUP_TOL,
    debias: bool = True,
    device=None,
    batch: int = 64,
    _distinct_done: bool = False,
) -> pd.DataFrame:
    """Per-base-point local geometry: tangent dimension, flat residual, curvature.

    At ``n_base`` base points (sampled without replacement with ``seed``) of the distinct
    points (``distinct_points``):

    1. *Tangent dimension* ``dim``: local PCA of the base point and its
       ``k_dim`` (default ``dim_patch_k(max_dim)``) nearest neighbours; the axes carrying at least
       ``tangent_tol`` of the leading axis's variance are tangent (``_tangent_dims``).
    2. ``residual``: the fraction of that patch's variance outside its ``dim`` tangent
       axes (0 on a flat, ~(r / R)^2 at curvature 1 / R and patch radius r).
    3. ``above_cap``: dim > ``max_dim``. Such patches get no curvature (NaN): a quadratic
       fit in only max_dim of their directions would read the excess dimension as
       curvature.
    4. *Curvature* (dim <= max_dim): the patch of ``k`` (default ``k_scale`` x ``patch_k(dim)``)
       neighbours, coordinates relative to x0 scaled by its radius r, is split by its
       own PCA into the top ``dim`` (tangent, u) and the other (normal, v) axes; the
       least-squares fit v ~ a + B u + sum_{a<=b} c_ab u_a u_b estimates the second
       fundamental form (II_aa = 2 c_aa, II_ab = c_ab, in units of 1 / r). With
       ``debias`` the least-squares noise floor sigma^2 tr((Phi^T Phi)^-1) is
       subtracted from ||II||^2 (clipped at 0), so flat noisy patches read ~0.
       ``kappa`` = ||II||_F / sqrt(dim) / r: the root-mean-square normal curvature per
       tangent direction, in units of 1 / length of X. On an m-sphere of radius R it is
       1 / R for every m (||II||_F = sqrt(m) / R); on a product of circles of radius
       rho, 1 / rho.

    Columns: base (index among the distinct points), dim, above_cap, residual, kappa,
    radius (the fit patch's r), k (its size). ``fit=False`` skips step 4 (kappa NaN).
    """
    Xu = X if _distinct_done else _distinct(X, device, near_dup_tol)
    n = Xu.shape[0]
    kd = dim_patch_k(max_dim) if k_dim is None else int(k_dim)
    _check_patch_args(n, n_base, max_dim, tangent_tol, k, kd)
    rng = np.random.default_rng(seed)
    base = np.sort(rng.choice(n, size=min(n_base, n), replace=False))
    k_fit_max = max(_fit_k(m, k, k_scale) for m in range(1, max_dim + 1)) if fit else 0
    k_all = min(n - 1, max(kd, k_fit_max))
    _, idx = knn(Xu, k_all, rows=base)
    dev = Xu.device
    base_t, idx_t = torch.from_numpy(base).to(dev), torch.from_numpy(idx).to(dev)
    dims, res = [], []
    with _lapack_single_thread(dev):
        for s in range(0, len(base), batch):
            _, lam, _ = _centred_patches(Xu, base_t[s : s + batch], idx_t[s : s + batch, :kd])
            m = _tangent_dims(lam, tangent_tol)
            tot = lam.sum(-1)
            inside = torch.where(torch.arange(lam.shape[1], device=dev) < m.unsqueeze(1), lam, 0).sum(-1)
            dims.append(m.cpu())
            res.append(((tot - inside) / tot).cpu())
        dim = torch.cat(dims).numpy().astype(int)
        out = pd.DataFrame(
            {
                "base": base,
                "dim": dim,
                "above_cap": dim > max_dim,
                "residual": torch.cat(res).numpy(),
                "kappa": np.nan,
                "radius": np.nan,
                "k": 0,
            }
        )
        for m in sorted(set(dim[dim <= max_dim].tolist())) if fit else []:
            k_m = _fit_k(m, k, k_scale)
            if k_m < _n_params(m) + 1 or k_m > n - 1:
                continue  # too few neighbours for this fit (only with a user-set k): left NaN
            rows = np.flatnonzero(dim == m)
            if k_m > k_all:  # a user-set k larger than the shared neighbour lists
                _, nb = knn(Xu, k_m, rows=base[rows])
                nb_t = torch.from_numpy(nb).to(dev)
            else:
                nb_t = idx_t[torch.from_numpy(rows).to(dev), :k_m]
            kap, rad = [], []
            for s in range(0, len(rows), batch):
                S, _, r = _centred_patches(
                    Xu, base_t[torch.from_numpy(rows[s : s + batch]).to(dev)], nb_t[s : s + batch]
                )
                kap.append((_second_fundamental_norm(S[..., :m], S[..., m:], debias) / math.sqrt(m) / r).cpu())
                rad.append(r.cpu())
            out.loc[rows, "kappa"] = torch.cat(kap).numpy()
            out.loc[rows, "radius"] = torch.cat(rad).numpy()
            out.loc[rows, "k"] = k_m
    return out


def curvature(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    max_dim: int = MAX_DIM,
    tangent_tol: float = TANGENT_TOL,
    k: int | None = None,
    scale_free: bool = True,
    debias: bool = True,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
) -> float:
    """Mean curvature per tangent direction, in units of the cloud's RMS radius.

    The mean over base points of ``kappa`` (``local_geometry``: RMS normal curvature per
    tangent direction, each patch at its own tangent dimension) times the RMS distance
    of the points to their centroid (``rms_radius``). What the number means: **1 is the
    curvature of a sphere whose radius equals the cloud's RMS radius** (a cloud that *is*
    a sphere, of any dimension, reads 1; a sphere twice that radius reads 0.5; a flat
    reads 0). ``scale_free=False`` returns the mean kappa in units of 1 / length of X.
    Patches above ``max_dim`` are excluded; NaN if every patch is above the cap.
    """
    Xu = _distinct(X, device, near_dup_tol)
    loc = local_geometry(
        Xu, n_base=n_base, seed=seed, max_dim=max_dim, tangent_tol=tangent_tol, k=k, debias=debias, _distinct_done=True
    )
    kap = loc.kappa.dropna()
    if kap.empty:
        return math.nan
    return float(kap.mean() * (rms_radius(Xu) if scale_free else 1.0))


def local_residual(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    max_dim: int = MAX_DIM,
    tangent_tol: float = TANGENT_TOL,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
) -> float:
    """Mean fraction of local-patch variance outside the patch's own tangent space.

    The mean over base points of ``residual`` (``local_geometry``): each patch of
    ``dim_patch_k(max_dim)`` neighbours, its tangent dimension set by the ``tangent_tol``
    rule. 0 on a flat of any dimension (whatever its TwoNN), ~(r / R)^2 / 20 on a
    curved patch of radius r and curvature 1 / R; in real activations it is the share of
    local variance in directions weaker than a tenth of the leading one: what no locally
    low-dimensional linear model holds at this scale. Defined above the cap too (it needs
    no quadratic fit).
    """
    loc = local_geometry(
        X, n_base=n_base, seed=seed, max_dim=max_dim, tangent_tol=tangent_tol, near_dup_tol=near_dup_tol, device=device
    )
    return float(loc.residual.mean())


# ----------------------------------------------------------------------------- multiscale
def multiscale_id(
    X,
    *,
    scales=(1, 2, 4, 8, 16),
    seed: int = 0,
    discard_fraction: float = 0.1,
    max_subsets: int = 8,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
) -> pd.DataFrame:
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
    Xu = _distinct(X, device, near_dup_tol)
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
        rows.append(
            {
                "scale": s,
                "n_points": m,
                "id": float(np.mean(ids)),
                "id_sd": float(np.std(ids, ddof=1)) if len(ids) > 1 else float("nan"),
                "n_subsets": len(ids),
                "r1_median": float(np.median(np.concatenate(r1s))),
            }
        )
    return pd.DataFrame(rows, columns=["scale", "n_points", "id", "id_sd", "n_subsets", "r1_median"])
