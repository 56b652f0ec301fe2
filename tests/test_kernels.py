"""Exact kNN kernel: fast path vs plain reference vs scikit-learn, duplicates included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

import geowall.kernels as kernels
from geowall.kernels import knn, knn_reference


def _hard_cloud(seed: int = 0, n: int = 300, d: int = 50, norm: float = 100.0) -> np.ndarray:
    """Points of norm ~100 plus exact duplicates (some tripled) and near duplicates
    offset by vectors of norm 1e-4: nearest distances 1e6 times below the norms."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X *= norm / np.linalg.norm(X, axis=1, keepdims=True)
    off = rng.standard_normal((40, d))
    off *= 1e-4 / np.linalg.norm(off, axis=1, keepdims=True)
    return np.concatenate([X, X[:40], X[:15], X[40:80] + off])


def _assert_same_as_sklearn(dist, idx, X, k):
    """Distances equal to sklearn's exact (tree) search; indices equal up to ties.

    sklearn's tree search orders tied neighbours arbitrarily, so where a returned
    distance is shared by several points (exact duplicates) both answers must lie in
    that tie group; everywhere else the indices must be identical.
    """
    nn = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(X)
    sk_dist, sk_idx = nn.kneighbors()  # X=None: each point's own index is excluded
    np.testing.assert_allclose(dist, sk_dist, rtol=1e-9, atol=1e-12)
    full = cdist(X, X)
    np.fill_diagonal(full, np.inf)
    n_tied = 0
    for row in range(len(X)):
        for pos in range(k):
            group = np.flatnonzero(np.abs(full[row] - dist[row, pos]) <= 1e-12 * max(1.0, dist[row, pos]))
            if len(group) == 1:
                assert idx[row, pos] == sk_idx[row, pos] == group[0]
            else:
                n_tied += 1
                assert idx[row, pos] in group and sk_idx[row, pos] in group
        assert len(set(idx[row])) == k
    return n_tied


@pytest.mark.parametrize("chunk", [4096, 64, 7])
@pytest.mark.parametrize("k", [1, 2, 10])
def test_knn_matches_sklearn_with_duplicates(chunk, k):
    X = _hard_cloud()
    dist, idx = knn(X, k, chunk=chunk)
    assert dist.dtype == np.float64 and idx.dtype == np.int64 and dist.shape == (len(X), k)
    assert _assert_same_as_sklearn(dist, idx, X, k) > 0  # the data do contain tied duplicates


def test_duplicates_are_neighbours_at_distance_zero_and_near_duplicates_resolved():
    X = _hard_cloud()
    dist, idx = knn(X, 2)
    n = 300
    # X[0] has two copies (rows n and n + 40): both at distance 0, smaller index first
    assert list(idx[0]) == [n, n + 40] and list(dist[0]) == [0.0, 0.0]
    assert list(idx[n]) == [0, n + 40]
    # X[50] has one near duplicate (row n + 55 + 10) at distance 1e-4
    np.testing.assert_allclose(dist[50, 0], 1e-4, rtol=1e-9)
    assert idx[50, 0] == n + 65 and idx[n + 65, 0] == 50


@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("margin", [None, 0])
def test_fast_path_equals_reference(as_torch, dtype, margin):
    X = _hard_cloud(seed=1).astype(dtype)
    Xin = torch.from_numpy(X) if as_torch else X
    dist, idx = knn(Xin, 6, chunk=100, margin=margin)
    rdist, ridx = knn_reference(X, 6)
    torch.testing.assert_close(torch.from_numpy(idx), torch.from_numpy(ridx), rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(dist), torch.from_numpy(rdist), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("k", [2, 4])
def test_symmetric_blocks_with_grouped_column_selection(k):
    """chunk 512: 256-blocks, so the grouped column top-m path (not the fallback) runs."""
    X = _hard_cloud(seed=8)
    dist, idx = knn(X, k, chunk=512)
    rdist, ridx = knn_reference(X, k)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(dist, rdist, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("order", ["spread", "random"])
def test_threshold_filtered_blocks_keep_every_true_neighbour(order, monkeypatch):
    """After a row's first block only entries below its running m-th best are kept. Here each
    point's true neighbours (its tight cluster of 16) are spread one per block over every
    block (or at random), so thresholds must keep falling block after block, in the row and
    the column direction; the filtered path must run and equal the reference exactly."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 16)) * 10
    X = np.repeat(centres, 16, 0) + 0.05 * rng.standard_normal((640, 16))  # 40 tight clusters of 16
    if order == "spread":
        i = np.arange(640)
        X = X[np.argsort((i % 16) * 40 + i // 16)]  # the members of a cluster 40 rows apart
    else:
        X = X[rng.permutation(640)]
    calls = []
    original = kernels._below
    monkeypatch.setattr(kernels, "_below", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    dist, idx = knn(X, 5, chunk=128)  # 64-blocks: 10 x 10 block pairs
    rdist, ridx = knn_reference(X, 5)
    assert len(calls) > 50
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(dist, rdist, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape, m", [((256, 40), 6), ((512, 7), 3), ((48, 30), 5)])
def test_column_topm_equals_topk_with_ties(shape, m):
    s = torch.from_numpy(np.random.default_rng(9).integers(0, 20, shape).astype(np.float32))
    v, i = kernels._column_topm(s.clone(), m)
    ref = torch.topk(s.T, m, dim=1, largest=False).values
    torch.testing.assert_close(v.sort(1).values, ref.sort(1).values, rtol=0, atol=0)
    torch.testing.assert_close(torch.gather(s.T, 1, i), v, rtol=0, atol=0)
    assert all(len(set(row.tolist())) == m for row in i)


@pytest.mark.parametrize("chunk", [4096, 16])  # row-block and symmetric-block passes
def test_certificate_failure_falls_back_to_exact(monkeypatch, chunk):
    """One point with 25 copies: no margin can certify k = 3 from 3 candidates among
    tied zeros, so the exact fallback must run and still agree with the reference."""
    rng = np.random.default_rng(2)
    X = np.concatenate([rng.standard_normal((200, 20)), np.repeat(rng.standard_normal((1, 20)), 25, 0)])
    calls = []
    original = kernels._fallback_rows
    monkeypatch.setattr(kernels, "_fallback_rows", lambda *a: calls.append(len(a[3])) or original(*a))
    dist, idx = knn(X, 3, margin=0, chunk=chunk)
    rdist, ridx = knn_reference(X, 3)
    assert sum(calls) > 0
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(dist, rdist, rtol=1e-12, atol=1e-13)
    assert list(idx[200]) == [201, 202, 203]  # ties broken by index


def _massive_cloud(seed: int = 6) -> np.ndarray:
    """1000 points of norm ~10 and the decoder LMs' massive activations: three pairs of
    points of norm 1000 (each other's nearest) and eight points of norm 25 with a
    near-copy each (above twice the median norm: they join every row's candidates)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((1000, 64)) * (10 / 8)
    big = rng.standard_normal((3, 64))
    big *= 1000 / np.linalg.norm(big, axis=1, keepdims=True)
    mid = rng.standard_normal((8, 64))
    mid *= 25 / np.linalg.norm(mid, axis=1, keepdims=True)
    return np.concatenate([X, big, big + rng.standard_normal((3, 64)), mid, mid + 0.01 * rng.standard_normal((8, 64))])


@pytest.mark.parametrize("chunk", [4096, 200])  # row-block and symmetric-block passes
@pytest.mark.parametrize("rows", [None, np.array([0, 1000, 1003, 1006, 1014, 7])])
def test_massive_activations_stay_exact_without_fallback(monkeypatch, chunk, rows):
    """A few points with norms 2.5x to 100x the rest must not push every row into the
    O(n^2 d) fallback (with them in the certificate's max norm, 1,015 of 1,022 rows fell
    back), and the answer stays the reference's, outliers and their duplicates included."""
    X = _massive_cloud()
    calls = []
    original = kernels._fallback_rows
    monkeypatch.setattr(kernels, "_fallback_rows", lambda *a: calls.append(len(a[3])) or original(*a))
    dist, idx = knn(X, 10, chunk=chunk, rows=rows)
    rdist, ridx = knn_reference(X, 10, rows=rows)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(dist, rdist, rtol=1e-12)
    assert sum(calls) <= 10  # at most the few rows of outliers themselves
    if rows is None:
        assert idx[1000, 0] == 1003 and idx[1006, 0] == 1014  # outliers find each other


def test_massive_activations_fall_back_when_not_set_apart(monkeypatch):
    """The counterpart: with no point set apart the same cloud falls back on most rows
    (the measurement that motivated ``_outliers``) and is still exact."""
    monkeypatch.setattr(kernels, "_OUTLIER_FACTOR", float("inf"))
    X = _massive_cloud()
    calls = []
    original = kernels._fallback_rows
    monkeypatch.setattr(kernels, "_fallback_rows", lambda *a: calls.append(len(a[3])) or original(*a))
    dist, idx = knn(X, 10)
    np.testing.assert_array_equal(idx, knn_reference(X, 10)[1])
    assert sum(calls) > len(X) // 2


def test_float32_cancellation_cannot_misorder():
    """Near neighbours 1e-3..2e-3 away from points of norm 1e3: the float32 expansion
    misorders them (checked), the kernel does not (float32 input, exact re-rank)."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal((60, 32))
    base *= 1e3 / np.linalg.norm(base, axis=1, keepdims=True)
    u = rng.standard_normal((120, 32))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = np.repeat([[1.0e-3, 1.5e-3]], 60, 0).reshape(-1, 1) * (1 + 0.2 * rng.random((120, 1)))
    X = np.concatenate([base, np.repeat(base, 2, 0) + u * r]).astype(np.float32)
    t = torch.from_numpy(X)
    sq = (t * t).sum(1)
    naive = sq[:, None] - 2 * t @ t.T + sq[None, :]
    naive.fill_diagonal_(float("inf"))
    naive_first = naive[:60].argmin(1).numpy()
    rdist, ridx = knn_reference(X, 2)
    assert (naive_first != ridx[:60, 0]).sum() > 5  # the example really is hard
    dist, idx = knn(X, 2)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_allclose(dist, rdist, rtol=1e-12)


def test_rows_subset_and_determinism():
    X = _hard_cloud(seed=4)
    rows = np.array([5, 0, 333, 379, 5])
    d_all, i_all = knn(X, 4, chunk=50)
    d_sub, i_sub = knn(X, 4, rows=rows, chunk=50)
    np.testing.assert_array_equal(i_sub, i_all[rows])
    np.testing.assert_array_equal(d_sub, d_all[rows])
    d_again, i_again = knn(X, 4, chunk=50)
    np.testing.assert_array_equal(i_again, i_all)
    np.testing.assert_array_equal(d_again, d_all)


def test_k_equal_n_minus_one_returns_everyone():
    X = np.random.default_rng(5).standard_normal((9, 3))
    dist, idx = knn(X, 8)
    for row in range(9):
        assert sorted(idx[row]) == [j for j in range(9) if j != row]
    assert np.all(np.diff(dist, axis=1) >= 0)


@pytest.mark.parametrize(
    "X, k, match",
    [
        (np.zeros(5), 1, "2-D"),
        (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]), 1, "NaN"),
        (np.zeros((4, 2)), 4, "k=4"),
        (np.zeros((4, 2)), 0, "k must be"),
    ],
)
def test_bad_input_is_named(X, k, match):
    with pytest.raises(ValueError, match=match):
        knn(X, k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    X = _hard_cloud(seed=6).astype(np.float32)
    d_cpu, i_cpu = knn(X, 5)
    d_gpu, i_gpu = knn(torch.from_numpy(X).cuda(), 5)
    np.testing.assert_array_equal(i_gpu, i_cpu)
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-12, atol=1e-13)
