"""Exact k-nearest-neighbour search for point clouds of activations.

``knn`` is the kernel behind every geometric summary (TwoNN needs each point's two
nearest neighbours, curvature and local residual need kNN patches). It runs on CPU
or CUDA from the same torch code and is exact:

1. *Fast pass* (float32, chunked). Squared distances from the expansion
   ||x||^2 - 2 x.y + ||y||^2 of mean-centred data, computed block by block
   (tiles of at most about ``chunk``^2 scores; the n x n matrix never exists; each
   block of the symmetric matrix is computed once and used for its rows and its
   columns). Each row keeps its ``k + margin`` smallest values as candidates: by
   top-k in the first block it meets, then only the entries below its running
   (k + margin)-th value (a filter over group minima, far cheaper than a top-k per
   block; the selection cost as much as the products before).
2. *Exact re-rank* (float64). Candidates are re-scored with explicit differences
   sum((x_i - x_j)^2) in float64, so float32 cancellation (activations have nearest
   distances far below their norms) cannot misorder close neighbours, and sorted by
   (distance, index): ties are broken by the smaller index, deterministically.
3. *Certificate.* The float32 expansion has a rigorous rounding-error bound
   E_i = c (|x_i| + max_j |x_j|)^2, c ~ (d + 8) u. A row is exact when its k-th
   exact distance is below (smallest fast value outside its candidates) - E_i:
   no point left out can then be closer. The few points with norms far above the
   rest (decoder LMs' massive activations; ``_outliers``) are every row's candidates,
   re-ranked exactly, so the max runs over the other points only: with them in it
   the certificate failed for 93% of a SmolLM2 layer's rows. Rows that fail (e.g. a point with more
   duplicates than ``k + margin``) are redone with every point whose fast value is
   within the bound, then exact re-ranking: the result is exact in all cases.

Self is excluded by index, not by distance, so exact duplicates are each other's
neighbours at distance 0.

Why our own kernel rather than sklearn / faiss: sklearn's brute force uses the same
cancellation-prone expansion without exact re-ranking and its trees are slow at
d = 384; faiss is not a dependency and does not re-rank in float64. ``knn_reference``
(full float64 direct-difference distances, small inputs only) is the plain
reference the tests compare against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy.spatial.distance import cdist

__all__ = ["knn", "knn_reference", "as_tensor"]

# Unit roundoff of the float32 matmul under each torch matmul-precision setting.
_MATMUL_U = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}
# Elements of the float64 work buffer per re-rank step (2 MiB: stays in cache).
_RERANK_ELEMS = 1 << 18
# Elements of float64 work arrays per step of the (rare) fallback re-rank (~64 MB).
_FALLBACK_ELEMS = 1 << 23
# Points with a norm above this multiple of the median are every row's candidates (_outliers).
_OUTLIER_FACTOR = 2.0


def as_tensor(X, *, device=None, dtype=torch.float64, name: str = "X") -> torch.Tensor:
    """``X`` (numpy array or torch tensor, shape (n, d)) as a finite 2-D tensor.

    Raises ``ValueError`` naming ``name`` for wrong shapes or non-finite values, so
    bad input fails before any expensive work.
    """
    t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.asarray(X))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_points, n_features); got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must hold real numbers; got dtype {t.dtype}")
    dev = torch.device(device) if device is not None else t.device
    t = t.detach().to(device=dev, dtype=dtype)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_k(n: int, k: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if k > n - 1:
        raise ValueError(f"k={k} neighbours requested but X has only {n} points (need k <= n - 1)")


def _rows_index(rows, n: int, device) -> torch.Tensor:
    """Query rows as an int64 tensor (all rows when ``rows`` is None)."""
    if rows is None:
        return torch.arange(n, device=device)
    r = torch.as_tensor(np.asarray(rows), dtype=torch.int64).reshape(-1).to(device)
    if r.numel() and (int(r.min()) < 0 or int(r.max()) >= n):
        raise ValueError(f"rows must be indices in [0, {n}); got range [{int(r.min())}, {int(r.max())}]")
    return r


@contextlib.contextmanager
def _full_fp32_matmul() -> Iterator[None]:
    """Run float32 matmuls in full float32 (no TF32/bf16), then restore the setting."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _tiles(n: int, chunk: int) -> tuple[int, int]:
    """(rows, cols) of a fast-pass tile holding about chunk^2 scores.

    Whole rows when that still leaves >= 256 rows per tile (one top-k per row
    block, no merging; matmuls stay efficient), otherwise chunk x chunk tiles
    merged column block by column block.
    """
    rows = chunk * chunk // n
    if rows >= min(256, chunk) or n <= chunk:
        return max(1, min(n, rows)), n
    return chunk, chunk


def _fast_topm(Xf: torch.Tensor, sq: torch.Tensor, q: torch.Tensor, m: int, cols: int):
    """Fast pass for query rows ``q``: the m smallest scores sq_j - 2 x_q.x_j, j != q.

    Score = squared distance minus the row constant |x_q|^2 (float32), computed
    ``cols`` columns at a time. Returns (values, indices) sorted ascending, shape
    (len(q), m).
    """
    n = Xf.shape[0]
    xq = Xf.index_select(0, q)
    best_v = best_i = None
    rows_ar = torch.arange(len(q), device=Xf.device)
    for j0 in range(0, n, cols):
        j1 = min(n, j0 + cols)
        s = torch.addmm(sq[j0:j1].unsqueeze(0), xq, Xf[j0:j1].T, beta=1.0, alpha=-2.0)
        own = (q >= j0) & (q < j1)  # self excluded by index
        s[rows_ar[own], q[own] - j0] = float("inf")
        v, i = torch.topk(s, min(m, j1 - j0), dim=1, largest=False, sorted=False)
        i += j0
        if best_v is not None:
            v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
        if v.shape[1] > m:
            v, sel = torch.topk(v, m, dim=1, largest=False, sorted=False)
            i = torch.gather(i, 1, sel)
        best_v, best_i = v, i
    best_v, order = torch.sort(best_v, dim=1)
    return best_v, torch.gather(best_i, 1, order)


def _merge_topm(best_v, best_i, r0, v_new, i_new, m):
    """Merge new candidate (values, indices) into rows r0.. of the running top-m."""
    r1 = r0 + v_new.shape[0]
    v = torch.cat([best_v[r0:r1], v_new], dim=1)
    i = torch.cat([best_i[r0:r1], i_new], dim=1)
    v, sel = torch.topk(v, m, dim=1, largest=False, sorted=False)
    best_v[r0:r1], best_i[r0:r1] = v, torch.gather(i, 1, sel)


def _column_topm(s: torch.Tensor, m: int, g: int = 16):
    """m smallest entries of each column of s (r, c): values and row indices, (c, m).

    Avoids transposing the block: rows are grouped by g, group minima are taken
    along the contiguous direction, and only the m groups with the smallest minima
    (which contain the m smallest entries: each of them lies in a group whose
    minimum is at most the m-th smallest value) are searched. Falls back to a
    transposed copy when r is not a multiple of g or the block is small.
    """
    r, c = s.shape
    if r % g or r // g < 2 * m:
        return torch.topk(s.T.contiguous(), min(m, r), dim=1, largest=False, sorted=False)
    mins = s.view(r // g, g, c).amin(1)
    _, grp = torch.topk(mins.T.contiguous(), m, dim=1, largest=False, sorted=False)  # (c, m)
    rows = (grp.unsqueeze(2) * g + torch.arange(g, device=s.device)).reshape(c, m * g)
    vals = torch.take(s, rows * c + torch.arange(c, device=s.device).unsqueeze(1))
    v, sel = torch.topk(vals, m, dim=1, largest=False, sorted=False)
    return v, torch.gather(rows, 1, sel)


def _merge_pairs(best_v, best_i, thr, r0, q, cand, val, m):
    """Merge candidate pairs (query row q, relative to r0; candidate index; fast value) into
    the running top-m of those rows, and lower their thresholds (m-th best value, inf while a
    row has fewer than m candidates). Pairs may come in any order."""
    if q.numel() == 0:
        return
    uq, inv, counts = torch.unique(q, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    inv = inv[order]
    pos = torch.arange(len(inv), device=q.device) - (torch.cumsum(counts, 0) - counts)[inv]
    width = int(counts.max())
    pv = torch.full((len(uq), width), float("inf"), dtype=best_v.dtype, device=best_v.device)
    pi = torch.full((len(uq), width), -1, dtype=best_i.dtype, device=best_i.device)
    pv[inv, pos], pi[inv, pos] = val[order], cand[order]
    rows = uq + r0
    v, sel = torch.topk(torch.cat([best_v[rows], pv], 1), m, dim=1, largest=False, sorted=False)
    best_v[rows], best_i[rows] = v, torch.gather(torch.cat([best_i[rows], pi], 1), 1, sel)
    thr[rows] = v.amax(1)


def _below(s: torch.Tensor, lim: torch.Tensor, along_rows: bool, g: int = 16):
    """Entries of s (r, c) below a per-row limit (``lim`` of shape (r,), along_rows) or a
    per-column limit (shape (c,)): (query, candidate, value), query = row (or column) index.

    The selection is the kernel's hot loop after the matmul, so it avoids a full mask: it
    takes minima over groups of g entries (one read of the block), keeps the
    groups whose minimum is below the limit (few, once the limits are tight) and compares
    only their entries. Blocks whose sides are not multiples of g use a plain mask.
    """
    r, c = s.shape
    ar = torch.arange(g, device=s.device)
    if along_rows:
        if c % g:
            qi, ci = torch.nonzero(s < lim[:, None], as_tuple=True)
            return qi, ci, torch.take(s, qi * c + ci)
        # group j of a row: columns j, j + c/g, j + 2c/g, ... (a minimum over the middle axis
        # vectorises along the contiguous one: 6x faster than over runs of g adjacent columns)
        qi, grp = torch.nonzero(s.view(r, g, c // g).amin(1) < lim[:, None], as_tuple=True)
        cols = grp[:, None] + ar * (c // g)
        vals = torch.take(s, qi[:, None] * c + cols)
        keep = vals < lim[qi][:, None]
        return qi[:, None].expand_as(cols)[keep], cols[keep], vals[keep]
    if r % g:
        ri, qi = torch.nonzero(s < lim[None, :], as_tuple=True)
        return qi, ri, torch.take(s, ri * c + qi)
    grp, qi = torch.nonzero(s.view(r // g, g, c).amin(1) < lim[None, :], as_tuple=True)
    rws = grp[:, None] * g + ar
    vals = torch.take(s, rws * c + qi[:, None])
    keep = vals < lim[qi][:, None]
    return qi[:, None].expand_as(rws)[keep], rws[keep], vals[keep]


def _fast_topm_symmetric(Xf: torch.Tensor, sq: torch.Tensor, m: int, block: int):
    """Fast pass for all rows at once, using the symmetry of the distance matrix.

    Each off-diagonal block G = X_I X_J^T (block x block) is computed once and
    serves both the rows of I (scores sq_J - 2G) and, transposed, the rows of J
    (scores sq_I - 2G^T): half the matrix products of the row-by-row pass (the
    products dominate the cost).

    Selection: the first block a row meets gives it m candidates by top-k; after that
    each row has a threshold (its m-th best value so far) and a block only contributes
    the entries below it (:func:`_below`), which after a few blocks are a handful per
    row. A full top-k on every block cost as much as the matmul itself. An entry left
    out is at least the threshold of its time, hence at least the final m-th value: the
    certificate in :func:`knn` holds unchanged.

    Returns (values, indices), (n, m), unsorted: ``values.amax(1)`` is each row's m-th best.
    """
    n = Xf.shape[0]
    best_v = torch.full((n, m), float("inf"), dtype=Xf.dtype, device=Xf.device)
    best_i = torch.full((n, m), -1, dtype=torch.int64, device=Xf.device)
    thr = torch.full((n,), float("inf"), dtype=Xf.dtype, device=Xf.device)
    # one score buffer for every block: a fresh 16 MB block per product is fresh pages from
    # the OS each time, and faulting them in costs about as much as the product
    buf = torch.empty(min(n, block) ** 2, dtype=Xf.dtype, device=Xf.device)
    starts = list(range(0, n, block))
    for i0 in starts:
        i1 = min(n, i0 + block)
        for j0 in (j for j in starts if j >= i0):
            j1 = min(n, j0 + block)
            s = buf[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            torch.addmm(sq[j0:j1].unsqueeze(0), Xf[i0:i1], Xf[j0:j1].T, beta=1.0, alpha=-2.0, out=s)
            if i0 == j0:
                s.fill_diagonal_(float("inf"))  # self excluded by index
            lim = thr[i0:i1]
            if bool(torch.isinf(lim).any()):  # first contact: top-k
                v, i = torch.topk(s, min(m, j1 - j0), dim=1, largest=False, sorted=False)
                _merge_topm(best_v, best_i, i0, v, i + j0, m)
                thr[i0:i1] = best_v[i0:i1].amax(1)
            else:
                q, c, v = _below(s, lim, along_rows=True)
                _merge_pairs(best_v, best_i, thr, i0, q, c + j0, v, m)
            if j0 == i0:
                continue
            # rows of J: scores sq_I - 2 G^T = s + sq_I - sq_J (sq_J per column)
            s.add_(sq[i0:i1].unsqueeze(1))
            lim = thr[j0:j1]
            if bool(torch.isinf(lim).any()):
                v, i = _column_topm(s, m)
                _merge_topm(best_v, best_i, j0, v - sq[j0:j1].unsqueeze(1), i + i0, m)
                thr[j0:j1] = best_v[j0:j1].amax(1)
            else:
                # t - sq_J < thr  as  t < thr + sq_J, widened by 2^-20 relative so the float32
                # rounding of that sum can only add candidates, never drop one
                lim = lim + sq[j0:j1]
                q, c, v = _below(s, lim + lim.abs() * 2.0**-20, along_rows=False)
                _merge_pairs(best_v, best_i, thr, j0, q, c + i0, v - sq[j0 + q], m)
    return best_v, best_i


def _candidates(Xf, sq, q_all, m, chunk, symmetric):
    """Yield (query rows, fast values, fast indices) chunk by chunk."""
    n = Xf.shape[0]
    if symmetric:
        block = max(1, chunk // 2)
        fv_all, fi_all = _fast_topm_symmetric(Xf, sq, m, block)
        for a in range(0, n, chunk):
            yield q_all[a : a + chunk], fv_all[a : a + chunk], fi_all[a : a + chunk]
        return
    tile_rows, tile_cols = _tiles(n, chunk)
    for a in range(0, len(q_all), tile_rows):
        q = q_all[a : a + tile_rows]
        yield (q, *_fast_topm(Xf, sq, q, m, tile_cols))


def _exact_sqdist(X64: torch.Tensor, q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """sum((x_q - x_c)^2) in float64 by explicit differences, for cand of shape (len(q), m).

    Works through small row steps in one reused buffer (``_RERANK_ELEMS`` elements): fresh
    large work arrays are fresh pages from the OS, and faulting them in cost 30x the
    arithmetic (measured: 1.5 s against 0.04 s for 8000 x 14 candidates, d = 384)."""
    m, d = cand.shape[1], X64.shape[1]
    step = max(16, _RERANK_ELEMS // max(1, m * d))  # >= 16 rows: wide candidate lists (patches)
    out = torch.empty(cand.shape, dtype=torch.float64, device=X64.device)
    buf = torch.empty(min(len(q), step) * m, d, dtype=torch.float64, device=X64.device)
    for a in range(0, len(q), step):
        c = cand[a : a + step]
        diff = torch.index_select(X64, 0, c.reshape(-1), out=buf[: c.numel()]).view(c.shape[0], m, d)
        diff.sub_(X64.index_select(0, q[a : a + step]).unsqueeze(1))
        out[a : a + step] = torch.einsum("rmd,rmd->rm", diff, diff)
    return out


def _sort_by_dist_then_index(d2: torch.Tensor, idx: torch.Tensor):
    """Sort each row by (d2, idx). One sort on d2; the rows where it leaves equal distances
    side by side (rare: duplicates, lattices) are redone by a stable sort on idx first."""
    o = torch.sort(d2, dim=1, stable=True).indices
    d2, idx = torch.gather(d2, 1, o), torch.gather(idx, 1, o)
    tied = torch.nonzero((d2[:, 1:] == d2[:, :-1]).any(1), as_tuple=True)[0]
    if len(tied):
        td, ti = d2[tied], idx[tied]
        o = torch.sort(ti, dim=1, stable=True).indices
        td, ti = torch.gather(td, 1, o), torch.gather(ti, 1, o)
        o = torch.sort(td, dim=1, stable=True).indices
        d2[tied], idx[tied] = torch.gather(td, 1, o), torch.gather(ti, 1, o)
    return d2, idx


def _error_bound(norms: torch.Tensor, d: int, other_max: torch.Tensor | None = None) -> torch.Tensor:
    """Rigorous bound on |fast - exact| squared distance per query row (float64).

    Dot products of length d in floating point err by at most gamma_d |x||y| with
    gamma_d = d u / (1 - d u); norms, the float32 cast of the inputs and the final
    additions add a few u (|x| + |y|)^2 more. We use 2 (d + 8) u (|x_i| + max|x_j|)^2,
    a factor 2 of slack over the textbook bound, with the max over the points j the bound
    must cover (``other_max``; default all points).
    """
    u = _MATMUL_U["highest"]
    c = 2.0 * (d + 8) * u / max(1e-12, 1.0 - (d + 8) * u)
    return c * (norms + (norms.max() if other_max is None else other_max)) ** 2


def _outliers(norms: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the points whose norm would dominate everyone's certificate.

    Decoder residual streams carry a few tokens with norms tens of times the rest
    (massive activations): with them in ``max |x|`` the bound fails for every row and the
    whole set falls back to the O(n^2 d) float64 path (measured on a SmolLM2 layer, 3500
    points: 3268 of 3500 rows). The points above ``_OUTLIER_FACTOR`` x the median norm (at
    most max(4 m, 64) of the largest and an eighth of all points: bounded extra work per
    row) become every row's candidates, re-ranked exactly, and leave the bound.
    """
    n = len(norms)
    cap = min(max(4 * m, 64), n // 8)
    if cap < 1:
        return norms.new_empty(0, dtype=torch.long)
    top = torch.topk(norms, cap).indices
    return top[norms[top] > _OUTLIER_FACTOR * norms.median()]


def _rerank(X64, q, fi, out, out_mask):
    """Exact squared distances of each row's candidates ``fi`` plus the outliers ``out``.

    Outliers among the fast candidates (and the row itself among the outliers) get
    infinite distance, so each point appears once. Returns (d2, idx) sorted by
    (distance, index)."""
    if len(out) == 0:
        return _sort_by_dist_then_index(_exact_sqdist(X64, q, fi), fi)
    cand = torch.cat([fi, out.unsqueeze(0).expand(len(q), -1)], dim=1)
    d2 = _exact_sqdist(X64, q, cand)
    dup = torch.cat([out_mask[fi], out.unsqueeze(0) == q.unsqueeze(1)], dim=1)
    d2[dup] = float("inf")
    return _sort_by_dist_then_index(d2, cand)


def _fallback_rows(X64, Xf, sq, q, thr_score, k, chunk):
    """Exact kNN for rows whose certificate failed.

    Every j with fast score <= thr_score[row] (the row's current exact k-th squared
    distance plus the error bound, minus |x_q|^2) is a candidate; this set provably
    contains all true k nearest neighbours. Candidates are re-ranked exactly.
    """
    n = Xf.shape[0]
    pr, pc = [], []
    rows_ar = torch.arange(len(q), device=Xf.device)
    for j0 in range(0, n, chunk):
        j1 = min(n, j0 + chunk)
        s = torch.addmm(sq[j0:j1].unsqueeze(0), Xf[q], Xf[j0:j1].T, beta=1.0, alpha=-2.0)
        own = (q >= j0) & (q < j1)
        s[rows_ar[own], q[own] - j0] = float("inf")
        r, c = torch.nonzero(s.double() <= thr_score.unsqueeze(1), as_tuple=True)
        pr.append(r)
        pc.append(c + j0)
    pr, pc = torch.cat(pr), torch.cat(pc)
    d2 = torch.empty(len(pr), dtype=torch.float64, device=X64.device)
    step = max(1, _FALLBACK_ELEMS // X64.shape[1])
    for a in range(0, len(pr), step):
        diff = X64[pc[a : a + step]] - X64[q[pr[a : a + step]]]
        d2[a : a + step] = (diff * diff).sum(-1)
    pr_np, pc_np, d2_np = pr.cpu().numpy(), pc.cpu().numpy(), d2.cpu().numpy()
    order = np.lexsort((pc_np, d2_np, pr_np))  # by row, then distance, then index
    pr_np, pc_np, d2_np = pr_np[order], pc_np[order], d2_np[order]
    starts = np.searchsorted(pr_np, np.arange(len(q)))
    take = (starts[:, None] + np.arange(k)[None, :]).reshape(-1)
    return d2_np[take].reshape(len(q), k), pc_np[take].reshape(len(q), k)


def knn(X, k: int, *, chunk: int = 4096, device=None, margin: int | None = None, rows=None):
    """Exact k nearest neighbours of each point of ``X`` (self excluded).

    Parameters
    ----------
    X : (n, d) numpy array or torch tensor.
    k : number of neighbours, 1 <= k <= n - 1.
    chunk : tile size of the chunked fast pass: tiles hold at most about chunk^2
        float32 scores, so memory is O(chunk^2 + n k), never n^2. For all rows the
        pass uses (chunk/2)-blocks of the symmetric distance matrix, each computed
        once for both its row and column points; for a ``rows`` subset it uses
        row blocks (whole rows when n <= chunk^2 / 256).
    device : torch device for the computation (default: X's device; CPU for numpy).
    margin : extra fast-pass candidates per row (default max(4, k // 4)); only speed
        depends on it, never the result.
    rows : optional indices of the query points (default: all points). Neighbours
        are still searched among all n points.

    Returns
    -------
    dist : (n_rows, k) float64 numpy array of Euclidean distances, ascending.
    idx : (n_rows, k) int64 numpy array of neighbour indices; ties by smaller index.
    """
    X64 = as_tensor(X, device=device)
    n, d = X64.shape
    _check_k(n, k)
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer; got {chunk!r}")
    margin = max(4, k // 4) if margin is None else int(margin)
    m = min(n - 1, k + max(0, margin))
    q_all = _rows_index(rows, n, X64.device)

    Xc = X64 - X64.mean(0)  # distances are translation invariant; centring shrinks the bound
    Xf = Xc.float()
    sq = (Xf.double() ** 2).sum(1).float()
    norms = Xc.norm(dim=1)
    out = _outliers(norms, m)
    out_mask = torch.zeros(n, dtype=torch.bool, device=X64.device)
    out_mask[out] = True
    bound_all = _error_bound(norms, d)  # any pair: the fallback's candidate threshold
    bound = _error_bound(norms, d, norms[~out_mask].max())  # pairs outside the outliers
    dist = np.empty((len(q_all), k))
    idx = np.empty((len(q_all), k), dtype=np.int64)
    symmetric = rows is None and n > chunk // 2
    a = 0
    with _full_fp32_matmul():
        for q, fv, fi in _candidates(Xf, sq, q_all, m, chunk, symmetric):
            d2, cand = _rerank(X64, q, fi, out, out_mask)
            d2, cand = d2[:, :k], cand[:, :k]
            if m < n - 1:  # certificate: no non-candidate can beat the k-th exact distance
                excluded_lb = fv.amax(1).double() + sq[q].double() - bound[q]
                bad = torch.nonzero(d2[:, -1] >= excluded_lb, as_tuple=True)[0]
                thr = d2[bad, -1] + bound_all[q[bad]] - sq[q[bad]].double()
                step = max(1, (1 << 22) // n)  # fallback rows per pass: bounded pair lists
                for b in range(0, len(bad), step):
                    rb = bad[b : b + step]
                    bd2, bidx = _fallback_rows(X64, Xf, sq, q[rb], thr[b : b + step], k, chunk)
                    d2[rb] = torch.from_numpy(bd2).to(d2.device)
                    cand[rb] = torch.from_numpy(bidx).to(cand.device)
            dist[a : a + len(q)] = d2.clamp_min(0).sqrt().cpu().numpy()
            idx[a : a + len(q)] = cand.cpu().numpy()
            a += len(q)
    return dist, idx


def knn_reference(X, k: int, *, rows=None):
    """Plain reference for ``knn``: full float64 direct-difference distance matrix.

    O(n^2) memory, for tests on small inputs only. Same conventions as ``knn``: self
    excluded by index, ascending by (distance, index).
    """
    X64 = as_tensor(X).cpu().numpy()
    n = X64.shape[0]
    _check_k(n, k)
    q = _rows_index(rows, n, "cpu").numpy()
    d2 = cdist(X64[q], X64, metric="sqeuclidean")  # explicit differences, no expansion
    d2[np.arange(len(q)), q] = np.inf
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]  # stable: ties by smaller index
    return np.sqrt(np.take_along_axis(d2, idx, axis=1)), idx.astype(np.int64)
