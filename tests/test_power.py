"""Design analysis of the geometry verdict (geowall.power): the closed-form decision, its LOO,
the power curve's known answers, and the closed form against the sampled PyMC laws."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from geowall import bayes, nulls, simulate
from geowall import law as L
from geowall import power as P
from geowall.bayes import SamplerSettings

warnings.filterwarnings("ignore", category=FutureWarning)

SHAPE = {"minilm": 7, "mpnet": 13}  # the default profile's real models


def test_closed_form_loo_is_exact_leave_one_out():
    """Against brute force: refit the closed-form law without layer i (same sigma grid) and
    evaluate the mixture predictive density of y_i."""
    rng = np.random.default_rng(0)
    n = 14
    Z = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
    y = Z @ np.array([0.2, 0.7, 0.0]) + rng.normal(0, 0.4, n)
    s = np.full(n, 0.1)
    fast = nulls.closed_form_loo(Z, y, s, n_grid=20)
    slow = []
    for i in range(n):
        keep = np.arange(n) != i
        f = bayes.gaussian_linear(Z[keep], y[keep], s[keep], n_grid=20)
        z = Z[i]
        dens = [
            w * norm.pdf(y[i], z @ m, np.sqrt(sg**2 + s[i] ** 2 + z @ C @ z))
            for w, m, C, sg in zip(f.weights, f.means, f.covs, f.sigmas)
        ]
        slow.append(np.log(np.sum(dens)))
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-8)


def test_residualised_permutation_keeps_depth_and_reproduces_a_plain_shuffle_without_it():
    rng = np.random.default_rng(1)
    groups = [np.arange(0, 7), np.arange(7, 20)]
    G = rng.standard_normal((20, 1))
    X = 2 * G + rng.standard_normal((20, 1))
    fitted, resid = nulls.residualise(X, G, groups)
    for g in groups:  # residuals are orthogonal to [1, depth] within each model
        A = np.column_stack([np.ones(len(g)), G[g]])
        np.testing.assert_allclose(A.T @ resid[g], 0, atol=1e-9)
    fitted0, _ = nulls.residualise(X, np.zeros((20, 0)), groups)
    assert np.allclose(fitted0[:7], X[:7].mean()) and np.allclose(fitted0[7:], X[7:].mean())


def test_detectable_slope_interpolates_and_says_when_never_reached():
    curve = pd.DataFrame(
        {
            "summary": ["id_twonn"] * 4 + ["curvature"] * 3,
            "slope": [0, 0.1, 0.2, 0.4, 0, 0.1, 0.2],
            "p_supported": [0.02, 0.5, 0.9, 1.0, 0.01, 0.2, 0.5],
        }
    )
    d = P.detectable_slope(curve)
    assert d["id_twonn"] == pytest.approx(0.1 + 0.3 / 0.4 * 0.1) and d["curvature"] == np.inf
    words = P.power_words(curve)
    assert "intrinsic dimension 0.18" in words and "curvature > 0.20" in words


def test_design_analysis_power_rises_from_the_false_positive_rate():
    """On a default-shaped design where ID tracks depth: at slope 0 the rule is rarely
    'supported'; a large planted slope is found almost always; a summary unrelated to depth
    is easier to detect than one that tracks it (collinearity with depth costs power)."""
    geo, ex = simulate.simulate_depth_confound(n_layers=SHAPE, seed=1, depth_coef=0.6)
    c = P.design_analysis(ex, geo, slopes=[0.0, 0.1, 0.4], n_sim=30, n_perm=49, seed=0)
    assert set(c.columns) >= {"summary", "slope", "p_supported", "mcse", "n_layers", "resid_sd", "median_y_sd"}
    assert (c.n_layers == 20).all() and (c.n_models == 2).all()
    pt = c.pivot_table(index="slope", columns="summary", values="p_supported")
    assert pt.loc[0.0].max() <= 0.15
    assert pt.loc[0.4].min() >= 0.9
    assert pt.loc[0.1, "curvature"] > pt.loc[0.1, "id_twonn"]
    with pytest.raises(ValueError, match="summaries"):
        P.design_analysis(ex, geo, summaries=("betti",), n_sim=2)


@pytest.mark.slow
def test_closed_form_decision_agrees_with_the_sampled_laws():
    """The design analysis' closed form against notebook 04's PyMC laws on one planted case:
    the ELPD gain of depth + ID over depth and the ID slope agree."""
    geo, ex = simulate.simulate_depth_confound(n_layers=SHAPE, seed=2, coefs={"id_twonn": 0.1}, depth_r=0.7)
    sets = {"depth+id": ("depth", "id_twonn")}
    tab = L.stage2_table(ex, geo, predictors=("depth", "id_twonn"))
    d = P.decide(tab, sets, n_perm=99)
    cmp_, fits = L.compare_laws(
        ex,
        geo,
        sets={"depth": ("depth",), **sets},
        seed=3,
        check=False,
        settings=SamplerSettings(draws=1000, tune=600, chains=2),
    )
    row = cmp_.set_index("predictor_set").loc["depth+id"]
    assert d["gain"] == pytest.approx(row["elpd_diff_vs_depth"], abs=max(1.5, 0.3 * row["se_diff_vs_depth"]))
    assert d["gain_se"] == pytest.approx(row["se_diff_vs_depth"], rel=0.35)
    co = L.law_coefficients(fits["depth+id"]).set_index("term").loc["id_twonn"]
    mean, lo, hi = d["slopes"]["id_twonn"]
    assert mean == pytest.approx(co["coef_mean"], abs=0.25 * co["coef_sd"] + 0.005)
    assert hi - lo == pytest.approx(co["coef_hdi_97"] - co["coef_hdi_3"], rel=0.3)
    assert d["supported"]
