"""The estimators behind the four summaries, one point cloud at a time.

* ``distinct_points``: exact duplicates and near-duplicates removed (see "Duplicates").
* ``twonn``, ``mle_id``, ``multiscale_id``: intrinsic dimension.
* ``participation_ratio``: linear dimension.
* ``local_geometry`` (per base point), ``curvature``, ``local_residual``: kNN patches with
  a per-patch tangent dimension (local PCA) and a mean-curvature fit (no dimension cap).

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
PATCH_K = 64  # neighbours per local patch (curvature and local residual)
NULL_TOL = 1e-9  # relative to the leading eigenvalue (or to ||q||^2): numerically zero
MIN_DOF = 8  # residual degrees of freedom a patch fit needs (a 33-point patch of a 28-dim layer has 3)
MIN_PATCH_K = 16  # fewer leave the fit too few points beyond the tangent scores of real layers


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
def _check_patch_args(n: int, n_base: int, k, tangent_tol: float) -> None:
    if not isinstance(n_base, (int, np.integer)) or n_base < 1:
        raise ValueError(f"n_base must be a positive integer; got {n_base!r}")
    if not isinstance(k, (int, np.integer)) or k < MIN_PATCH_K:
        raise ValueError(f"k must be an integer >= {MIN_PATCH_K} (the patch size); got {k!r}")
    if not 0.0 < tangent_tol < 1.0:
        raise ValueError(f"tangent_tol must be in (0, 1); got {tangent_tol!r}")
    if k > n - 1:
        raise ValueError(f"a patch of k={k} neighbours needs at least {k + 1} distinct points; got only {n}")


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


def _tangent_dims(lam: torch.Tensor, tangent_tol: float) -> torch.Tensor:
    """Per-patch tangent dimension: principal axes with variance >= tangent_tol x the leading one.

    Why this rule: a tangent direction of a patch of radius r carries variance of order
    r^2 / (d + 2); curvature 1 / R puts variance of order (r^2 / R)^2 / d^2 along the normal
    (the bend concentrates in high dimension), and exact flats put none there. So the rule
    reads a flat box at its full dimension whatever TwoNN says, and does not mistake the
    bend for a dimension (on unit spheres of dimension 2 to 16 the normal axis carries 0.01
    to 0.05 of the leading axis's variance at k = 64).
    """
    return (lam >= tangent_tol * lam[:, :1]).sum(-1)


def _centred_gram(G: torch.Tensor) -> torch.Tensor:
    """J G J with J = I - 11^T / m: the Gram matrix of the patch's rows centred on their mean."""
    return G - G.mean(1, keepdim=True) - G.mean(2, keepdim=True) + G.mean((1, 2), keepdim=True)


def _bend_fit(G: torch.Tensor, tangent_tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean-curvature fit of patches Y (B, m, D), rows relative to the base point (row 0 = 0),
    from their Gram matrices G = Y Y^T (B, m, m) alone: q is G's diagonal and the centred Gram
    is J G J (``_centred_gram``), so the (B, m, D) patches are never centred or squared as wholes.

    Model (least squares, one fit shared by all D coordinates):
        y_j = a + sum_{t <= dim} b_t s_jt + g q_j + e_j,     q_j = ||y_j||^2,
    with s_t the patch's top ``dim`` principal scores (the tangent coordinates, ``_tangent_dims``)
    and q the squared ambient distance to the base point. On a manifold, the normal
    displacement is II(u, u) / 2 to second order; its projection on ||u||^2 is H / (2 dim)
    for a patch isotropic in its tangent coordinates (H = trace II, the mean-curvature
    vector), so kappa = 2 ||g|| = ||H|| / dim is the mean normal curvature per tangent
    direction. On a sphere of radius R the relation y . n = ||y||^2 / (2 R) is *exact* at
    every patch radius (n the inward unit normal at the base point), so a sphere reads 1 / R
    at every dimension and patch size. g is orthogonal to the tangent scores by construction.

    Computed from the patch's m x m Gram matrix: with e_i its unit eigenvectors (eigenvalues
    lam_i, descending) and z = q centred and made orthogonal to e_1..e_dim (Frisch-Waugh),
    ||g||^2 = sum_{i > dim} lam_i (e_i . z)^2 / (z . z)^2 and the residual sum of squares
    RSS = sum_{i > dim} lam_i - sum_{i > dim} lam_i (e_i . z)^2 / (z . z). The least-squares
    noise floor of ||g||^2, RSS / dof / (z . z) with dof = m - dim - 2, is subtracted, so
    flat noisy patches read ~0 on average (kappa^2 may come out negative for one patch).

    Returns (kappa^2 debiased, (B,); per-point variance off the fitted model RSS / dof, (B,);
    tangent dimension, (B,)).
    """
    m = G.shape[1]
    q = torch.diagonal(G, dim1=1, dim2=2)
    lam, vec = torch.linalg.eigh(_centred_gram(G))
    lam, vec = lam.flip(-1).clamp_min(0), vec.flip(-1)
    lam = torch.where(lam > NULL_TOL * lam[:, :1], lam, 0.0)  # rounding noise of a rank-deficient patch: exactly 0
    dim = _tangent_dims(lam, tangent_tol)
    normal = torch.arange(m, device=G.device) >= dim.unsqueeze(1)  # (B, m)
    qc = q - q.mean(1, keepdim=True)
    proj = (vec * qc.unsqueeze(-1)).sum(1)  # (B, m): e_i . qc (qc is orthogonal to the constant null vector)
    z2 = ((proj * proj) * normal).sum(1)
    sz2 = (lam * proj * proj * normal).sum(1)
    dof = (m - dim - 2).clamp_min(1)
    # the squared distance (nearly) inside the tangent scores' span: the tangent rule took the bend for a
    # dimension and the patch says nothing about curvature (NaN, left out of the means)
    ok = (z2 > NULL_TOL * (qc * qc).sum(1)) & (m - dim - 2 >= MIN_DOF)  # and enough points beyond the tangent scores
    z2 = torch.where(ok, z2, 1.0)
    rss = ((lam * normal).sum(1) - sz2 / z2).clamp_min(0)
    kappa2 = torch.where(ok, 4 * (sz2 / z2**2 - rss / dof / z2), torch.nan)
    return kappa2, rss / dof, dim


def local_geometry(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    k: int = PATCH_K,
    tangent_tol: float = TANGENT_TOL,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
    batch: int = 128,
    _distinct_done: bool = False,
) -> pd.DataFrame:
    """Per-base-point local geometry: tangent dimension, mean curvature, off-model residual.

    At ``n_base`` base points (sampled without replacement with ``seed``) of the distinct
    points (``distinct_points``), the patch of the base point and its ``k`` nearest
    neighbours (``_bend_fit``):

    * ``dim``: tangent dimension, the principal axes of the patch carrying at least
      ``tangent_tol`` of the leading axis's variance. No cap: the cost and the bias of the
      fit do not grow with it (two regressors beyond the tangent scores, whatever ``dim``).
    * ``kappa2``: the squared mean normal curvature per tangent direction, ||H||^2 / dim^2,
      noise floor subtracted (an unbiased per-patch term: may be negative); ``kappa`` its
      square root clipped at 0, in units of 1 / length of X. NaN where the squared distance
      lies inside the span of the tangent scores (the tangent rule counted the bend as a
      dimension: 1 patch in 150 on a unit 16-sphere) or where fewer than ``MIN_DOF`` points
      are left beyond the tangent scores (k + 1 - dim - 2 < 8: a 32-neighbour patch on a
      28-dimensional MPNet layer, where one such patch read 227). A sphere of radius R: 1 / R at
      every dimension; a flat: 0; a product of m circles of radius rho: 1 / rho.
    * ``residual``: the per-point variance off the fitted model (tangent flat bent by the mean
      curvature), in units of length^2: off-manifold spread plus the curvature the mean does
      not carry (the anisotropic part of II, a saddle's); 0 on a flat or a sphere.
    * ``variance``: the patch's per-point variance (its total scatter / (k + 1)): the unit in
      which ``residual / variance`` is the share of a patch off the model.
    * ``radius``: distance to the k-th neighbour; ``k``.
    """
    Xu = X if _distinct_done else _distinct(X, device, near_dup_tol)
    n = Xu.shape[0]
    _check_patch_args(n, n_base, k, tangent_tol)
    rng = np.random.default_rng(seed)
    base = np.sort(rng.choice(n, size=min(n_base, n), replace=False))
    dist, idx = knn(Xu, int(k), rows=base)
    dev = Xu.device
    base_t, idx_t = torch.from_numpy(base).to(dev), torch.from_numpy(idx).to(dev)
    k2, res, dims, var = [], [], [], []
    # One reused (batch, k, D) buffer for the neighbours relative to their base point: fresh
    # arrays of that size are fresh pages, and faulting them in cost more than the Gram
    # products (measured at D = 576: 65 ms against 21 ms per batch of 128 patches).
    buf = torch.empty(min(batch, len(base)) * idx_t.shape[1], Xu.shape[1], dtype=Xu.dtype, device=dev)
    for s in range(0, len(base), batch):
        ii = idx_t[s : s + batch]
        Y = torch.index_select(Xu, 0, ii.reshape(-1), out=buf[: ii.numel()]).view(*ii.shape, -1)
        Y.sub_(Xu.index_select(0, base_t[s : s + batch]).unsqueeze(1))
        G = torch.nn.functional.pad(Y @ Y.transpose(1, 2), (1, 0, 1, 0))  # the base point is row 0 (= 0)
        with _lapack_single_thread(dev):
            a, b, c = _bend_fit(G, tangent_tol)
        k2.append(a.cpu())
        res.append(b.cpu())
        dims.append(c.cpu())
        m = G.shape[1]  # per-point variance: trace(J G J) / m = (trace G - 1^T G 1 / m) / m
        var.append(((torch.diagonal(G, dim1=1, dim2=2).sum(1) - G.sum((1, 2)) / m) / m).cpu())
    kappa2 = torch.cat(k2).numpy()
    return pd.DataFrame(
        {
            "base": base,
            "dim": torch.cat(dims).numpy().astype(int),
            "kappa2": kappa2,
            "kappa": np.sqrt(np.clip(kappa2, 0, None)),
            "residual": torch.cat(res).numpy(),
            "variance": torch.cat(var).numpy(),
            "radius": dist[:, -1],
            "k": int(k),
        }
    )


def _rms_kappa(loc: pd.DataFrame) -> float:
    """Root mean square of the patches' mean curvature (the mean of the unbiased kappa^2, then clipped;
    patches without a curvature, ``kappa2`` NaN, are left out; NaN if no patch has one)."""
    k2 = loc.kappa2.dropna()
    return math.sqrt(max(0.0, float(k2.mean()))) if len(k2) else math.nan


def curvature(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    k: int = PATCH_K,
    tangent_tol: float = TANGENT_TOL,
    scale_free: bool = True,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
) -> float:
    """Mean curvature per tangent direction, in units of the cloud's RMS radius.

    The root mean square over base points of the patches' ``kappa`` (``local_geometry``:
    ||H|| / dim from a fit of the patch on its tangent scores and the squared distance to
    the base point; the mean of the debiased kappa^2 is taken before the square root) times
    the RMS distance of the points to their centroid (``rms_radius``). What the number means:
    **1 is the curvature of a sphere whose radius equals the cloud's RMS radius** (a cloud
    that *is* a sphere, of any dimension, reads 1; a sphere twice that radius 0.5; a flat 0).
    Defined at every tangent dimension. ``scale_free=False`` returns it in units of
    1 / length of X.
    """
    Xu = _distinct(X, device, near_dup_tol)
    loc = local_geometry(Xu, n_base=n_base, seed=seed, k=k, tangent_tol=tangent_tol, _distinct_done=True)
    return _rms_kappa(loc) * (rms_radius(Xu) if scale_free else 1.0)


def local_residual(
    X,
    *,
    n_base: int = 300,
    seed: int = 0,
    k: int = PATCH_K,
    tangent_tol: float = TANGENT_TOL,
    near_dup_tol: float = NEAR_DUP_TOL,
    device=None,
) -> float:
    """Share of the cloud's variance that lies off the local second-order model.

    The mean over base points of ``residual`` (``local_geometry``: per-point variance of a
    k-neighbour patch off its tangent flat bent by the patch's mean curvature) divided by the
    cloud's mean squared radius (``rms_radius`` squared). 0 on a flat or a sphere of any
    dimension; isotropic noise of total variance s^2 per point reads about s^2 (D - dim) / D
    over the cloud's variance, whatever the manifold's dimension; a saddle or a torus reads
    its anisotropic curvature. What no locally flat or spherical piece reconstructs.
    """
    Xu = _distinct(X, device, near_dup_tol)
    loc = local_geometry(Xu, n_base=n_base, seed=seed, k=k, tangent_tol=tangent_tol, _distinct_done=True)
    return float(loc.residual.mean()) / rms_radius(Xu) ** 2


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
