"""The synthetic zoo's ground truth holds for the sampled points."""

import numpy as np
import pytest

from geowall.sources.synthetic import ZOO_D, ZOOS, layer_points


def _rank(x, tol=1e-6):
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return int((s > tol * s[0]).sum())


@pytest.mark.parametrize("zoo, layer", [(z, i) for z in ZOOS for i in range(len(ZOOS[z]))])
def test_layer_geometry_matches_truth(zoo, layer):
    x, truth = layer_points(zoo, layer, 800, seed=1)
    assert x.shape == (800, ZOO_D) and x.dtype == np.float32
    assert np.sqrt((x.astype(np.float64) ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    m = truth["dim"]
    expected_span = {"flat": m, "sphere": m + 1, "cap": m + 1, "torus": 2 * m}[truth["kind"]]
    assert _rank(x.astype(np.float64)) == expected_span
    assert truth["id_true"] == m
    if truth["kind"] == "flat":
        assert truth["curvature_true"] == 0
    if truth["kind"] in ("sphere", "cap"):  # points lie on a sphere of radius 1/kappa
        assert _sphere_radius(x.astype(np.float64)) == pytest.approx(1 / truth["curvature_true"], rel=1e-4)
    if truth["kind"] == "cap":  # at unit RMS scale a cap is flatter than the full sphere (kappa = 1)
        assert truth["curvature_true"] < 0.9


def _sphere_radius(x):
    """Algebraic sphere fit: |x|^2 = 2 c.x + b, radius^2 = b + |c|^2."""
    a = np.hstack([2 * x, np.ones((len(x), 1))])
    sol, *_ = np.linalg.lstsq(a, (x**2).sum(1), rcond=1e-6)  # float32 points: cut rounding directions
    c, b = sol[:-1], sol[-1]
    return float(np.sqrt(b + c @ c))


def test_deterministic_per_seed():
    a, _ = layer_points("a", 2, 100, seed=3)
    b, _ = layer_points("a", 2, 100, seed=3)
    c, _ = layer_points("a", 2, 100, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
