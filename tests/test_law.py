"""Stage 2 (geowall.law): within-model law recovery, baselines, nulls, the between-model trap."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from geowall import bayes, nulls, simulate
from geowall import law as L
from geowall.bayes import SamplerSettings

warnings.filterwarnings("ignore", category=FutureWarning)

TRUE_COEFS = {"id_twonn": 0.12, "curvature": 0.08}


@pytest.fixture(scope="module")
def sim2():
    """Models A (24 layers) and B (12 layers) from one known within-model law on log
    alpha, with different model levels."""
    layers = pd.DataFrame({"model": ["A"] * 24 + ["B"] * 12, "layer": list(range(24)) + list(range(12))})
    return simulate.simulate_geometry(
        layers,
        coefs=TRUE_COEFS,
        intercept=-1.0,
        resid_sd=0.03,
        se_frac=0.05,
        alpha_sd=0.03,
        seed=3,
        model_offsets={"B": 0.4},
    )


@pytest.fixture(scope="module")
def trap():
    """The issue's between-model trap: no within-model relation at all."""
    return simulate.simulate_between_models(seed=0)


# ----------------------------------------------------------------- tables, no sampling


def test_stage2_table_joins_and_depth(sim2):
    geo, ex = sim2
    tab = L.stage2_table(ex, geo, models=["A"])
    assert len(tab) == 24 and len(L.stage2_table(ex, geo)) == 36
    assert tab["depth"].min() == 0 and tab["depth"].max() == 1
    assert {"id_twonn", "id_twonn_se", "curvature_se", "y", "y_sd"} <= set(tab.columns)
    with pytest.raises(ValueError, match="predictors"):
        L.stage2_table(ex, geo, predictors=("betti",))
    with pytest.raises(ValueError, match="floor_mean"):
        L.stage2_table(ex, geo, target="floor")
    with pytest.raises(ValueError, match="duplicated"):
        L.stage2_table(ex, pd.concat([geo, geo.head(1)]))
    with pytest.raises(ValueError, match="depth"):
        L.stage2_table(ex, geo.drop(columns="depth"), predictors=("depth",))


def test_depth_is_read_from_the_geometry_table_not_recomputed():
    # a profile that selects layers 0, 3, 6 of a 7-layer model: depth is layer / 6, not layer / max selected
    from geowall.layers import relative_depth

    geo = pd.DataFrame(
        {
            "model": "m",
            "layer": [0, 3],
            "summary": "id_twonn",
            "estimate": [1.0, 2.0],
            "se": 0.1,
            "depth": [relative_depth(0, 7), relative_depth(3, 7)],
        }
    )
    ex = pd.DataFrame({"model": "m", "layer": [0, 3], "log_alpha_mean": [-1.0, -1.2], "log_alpha_sd": 0.1})
    tab = L.stage2_table(ex, geo, predictors=("depth",))
    assert tab["depth"].tolist() == [0.0, 0.5]
    with pytest.raises(ValueError):
        relative_depth(7, 7)


# ----------------------------------------------------------------- closed form vs PyMC


def test_closed_form_gaussian_recovers_planted_slopes_and_finds_none_when_none():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2))
    y = 0.3 + 0.8 * X[:, 0] + rng.normal(0, 0.2, 60)
    Z = np.column_stack([np.ones(60), X])
    fit = bayes.gaussian_linear(Z, y, np.full(60, 0.05))
    sd = np.sqrt(np.diag(fit.cov))
    assert abs(fit.mean[1] - 0.8) < 3 * sd[1] and abs(fit.mean[2]) < 3 * sd[2] and sd[1] < 0.05
    assert 0.1 < fit.sigmas @ fit.weights < 0.35
    b, sig = fit.draws(2000, rng)
    assert b.shape == (2000, 3) and abs(b[:, 1].mean() - fit.mean[1]) < 0.01


@pytest.mark.slow
def test_closed_form_law_agrees_with_pymc(sim2):
    """The permutation null's fast fit against the sampled model (no geometry SE here,
    so the two are the same model)."""
    geo, ex = sim2
    geo0 = geo.assign(se=0.0)
    fit = L.fit_law(
        ex,
        geo0,
        predictors=("id_twonn", "curvature"),
        seed=4,
        progressbar=False,
        posterior_predictive=False,
        settings=SamplerSettings(draws=1000, tune=500, chains=2),
    )
    co = L.law_coefficients(fit).set_index("term")
    cf = nulls.closed_form_law(
        L.stage2_table(ex, geo0, predictors=("id_twonn", "curvature")), ("id_twonn", "curvature")
    )
    for i, p in enumerate(("id_twonn", "curvature")):
        assert cf["coef_mean"][i] == pytest.approx(co.loc[p, "coef_mean"], abs=0.15 * co.loc[p, "coef_sd"] + 1e-3)
        assert cf["coef_sd"][i] == pytest.approx(co.loc[p, "coef_sd"], rel=0.15)


# ----------------------------------------------------------------- known answers


def test_between_model_trap_closed_form(trap):
    """No within-model relation: per-model intercepts keep the ID slope at 0 and the
    permutation null does not reject; pooled without model effects it would."""
    geo, ex = trap
    tab = L.stage2_table(ex, geo, predictors=("id_twonn",))
    with_m = nulls.closed_form_law(tab, ("id_twonn",))
    sd = float(with_m["coef_sd"][0])
    assert abs(with_m["coef_mean"][0]) < 2.5 * sd
    without = nulls.closed_form_law(tab, ("id_twonn",), model_effects=False)
    assert without["coef_mean"][0] < -5 * without["coef_sd"][0]  # the trap, when models are pooled
    null = nulls.permutation_null(tab, ("id_twonn",), n_perm=200, seed=1)
    assert null["p_value"] > 0.05 and len(null["null"]) == 200


def test_planted_within_model_relation_found_by_the_null_and_lomo():
    geo, ex = simulate.simulate_between_models(seed=2, within_coef=0.08)
    tab = L.stage2_table(ex, geo, predictors=("id_twonn",))
    null = nulls.permutation_null(tab, ("id_twonn",), n_perm=200, seed=1)
    assert null["p_value"] < 0.01 and null["b_mean"][0] > 0
    lomo = nulls.leave_one_model_out(tab, ("id_twonn",)).set_index("held_out")
    assert (lomo["spearman"] > 0.5).all() and (lomo["r2_shift"] > 0.2).all()
    geo0, ex0 = simulate.simulate_between_models(seed=2)
    lomo0 = nulls.leave_one_model_out(L.stage2_table(ex0, geo0, predictors=("id_twonn",)), ("id_twonn",))
    assert (lomo0["r2_shift"] < 0.3).all()


@pytest.mark.slow
def test_between_model_trap_sampled(trap):
    """The issue's case through the sampled law and LOO: interval covers 0, and no LOO
    preference for geometry over model intercepts."""
    geo, ex = trap
    cmp, fits = L.compare_laws(
        ex,
        geo,
        sets={"models": (), "id": ("id_twonn",)},
        check=False,
        settings=SamplerSettings(draws=400, tune=400, chains=2),
    )
    co = L.law_coefficients(fits["id"]).set_index("term")
    assert co.loc["id_twonn", "coef_hdi_3"] < 0 < co.loc["id_twonn", "coef_hdi_97"]
    assert {"intercept[A]", "intercept[B]"} <= set(co.index)
    row = cmp.set_index("predictor_set").loc["id"]
    assert row["elpd_diff_vs_models"] < 2 * row["se_diff_vs_models"]
    assert {"max_pareto_k", "n_pareto_k_bad", "se_diff_vs_models"} <= set(cmp.columns)


@pytest.mark.slow
def test_stage2_recovers_known_within_model_coefficients(sim2):
    geo, ex = sim2
    fit = L.fit_law(ex, geo, seed=1, progressbar=False, settings=SamplerSettings(draws=300, tune=300, chains=2))
    assert json.loads(fit.attrs["geowall_train_models"]) == ["A", "B"] and fit.attrs["geowall_model_effects"] == 1
    co = L.law_coefficients(fit, hdi_prob=0.99).set_index("term")  # four intervals at once: 99% each
    sc = json.loads(fit.attrs["geowall_scaling"])
    true_sd = pd.DataFrame(ex.attrs["truth"]["true_summaries"]).std(ddof=1)
    for p in L.SUMMARIES:
        truth = TRUE_COEFS.get(p, 0.0) * sc["x"][p]["sd"] / true_sd[p]
        assert co.loc[p, "coef_hdi_3"] <= truth <= co.loc[p, "coef_hdi_97"], (p, truth)
    assert co.loc["id_twonn", "p_gt0"] > 0.95 and co.loc["curvature", "p_gt0"] > 0.95
    # the model levels differ by the planted offset
    diff = co.loc["intercept[B]", "coef_mean"] - co.loc["intercept[A]", "coef_mean"]
    assert diff == pytest.approx(0.4, abs=0.1)
    ppc = L.posterior_predictive_table(fit)
    assert ppc["covered"].mean() >= 0.8 and "partial_resid_curvature" in ppc.columns
    tab = L.train_table(fit)
    assert len(tab) == 36 and {"model", "layer", "y", "y_sd"} <= set(tab.columns)


# ----------------------------------------------------------------- the notebook's rules, in the library


def test_scopes_keep_the_kinds_with_enough_layers():
    kinds = {"minilm": "pretrained", "mpnet": "pretrained", "twin": "random", "s1": "zoo", "s2": "zoo"}
    got = L.scopes(kinds, {"minilm": 4, "mpnet": 4, "twin": 7, "s1": 3, "s2": 4})
    assert got == {"real": ["minilm", "mpnet"]}  # 8 real layers; the zoo's 7 are too few; twins never a scope
    got = L.scopes(kinds, {"minilm": 8, "mpnet": 0, "s1": 4, "s2": 4})
    assert got == {"real": ["minilm", "mpnet"], "synthetic": ["s1", "s2"]}
    assert L.scopes({"twin": "random"}, {"twin": 50}) == {}
    assert L.min_training_layers(4) == 6 and L.min_training_layers(4, 2) == 7 and L.min_training_layers(0) == 3


def test_nulls_and_lomo_find_the_planted_law_and_not_the_between_model_trap(sim2, trap):
    geo, ex = sim2
    null, lomo = nulls.nulls_and_lomo(ex, geo, {"real": ["A", "B"]}, n_perm=99, seed=0)
    sets_ = [k for k, v in L.DEFAULT_LAW_SETS.items() if v]
    assert list(null.predictor_set) == sets_ and (null.scope == "real").all()
    p = null.set_index("predictor_set").p_value
    assert p["id+curvature"] <= 0.02 and p["id"] <= 0.02  # the planted within-model law
    ids = lomo[lomo.predictor_set == "id+curvature"].set_index("held_out")
    assert set(ids.index) == {"A", "B"} and (ids.spearman > 0.5).all()  # each model's ordering from the other
    geo_t, ex_t = trap
    nulls_t, _ = nulls.nulls_and_lomo(ex_t, geo_t, {"real": sorted(ex_t.model.unique())}, n_perm=99, seed=0)
    assert nulls_t.set_index("predictor_set").p_value["id"] > 0.05  # model differences are not geometry


def test_planted_check_finds_the_plant_and_not_its_shuffle(sim2):
    geo, ex = sim2
    out = nulls.planted_check(ex, geo, ["A", "B"], slope=0.3, n_perm=199, seed=1).set_index("case")
    planted, none = out.loc["planted 0.3 per SD"], out.loc["none"]
    assert abs(planted.coef_mean - 0.3) < 3 * planted.coef_sd + 0.05 and planted.p_perm < 0.02
    assert none.p_perm > 0.01 and abs(none.coef_mean) < abs(planted.coef_mean)
