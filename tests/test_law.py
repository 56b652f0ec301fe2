"""Stage 2 (geowall.law): geometric-law recovery, transfer scores, floor ordering."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from geowall import law as L

warnings.filterwarnings("ignore", category=FutureWarning)

TRUE_COEFS = {"id_twonn": 0.06, "curvature": 0.04}


@pytest.fixture(scope="module")
def sim2():
    """Model A (24 layers, training) and model B (12 layers, transfer) from one known law."""
    layers = pd.DataFrame({"model": ["A"] * 24 + ["B"] * 12, "layer": list(range(24)) + list(range(12))})
    return L.simulate_geometry(layers, coefs=TRUE_COEFS, intercept=0.35, resid_sd=0.015,
                               se_frac=0.05, alpha_sd=0.015, seed=3)


@pytest.fixture(scope="module")
def law_fit(sim2):
    geo, ex = sim2
    return L.fit_law(ex, geo, models=["A"], draws=300, tune=300, chains=2, seed=1, progressbar=False)


# ----------------------------------------------------------------- tables


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


# ----------------------------------------------------------------- sampled recovery


@pytest.mark.slow
def test_stage2_recovers_known_coefficients(sim2, law_fit):
    geo, ex = sim2
    co = L.law_coefficients(law_fit).set_index("term")
    sc = json.loads(law_fit.attrs["geowall_scaling"])
    true_sd = pd.DataFrame(ex.attrs["truth"]["true_summaries"]).std(ddof=1)  # over A and B
    for p in L.SUMMARIES:
        # simulated coefficient is per SD of the *true* summary; the fit's per SD of the observed one
        truth = TRUE_COEFS.get(p, 0.0) * sc["x"][p]["sd"] / true_sd[p]
        lo, hi = co.loc[p, "coef_hdi_3"], co.loc[p, "coef_hdi_97"]
        assert lo <= truth <= hi, (p, truth, lo, hi)
    assert co.loc["id_twonn", "p_gt0"] > 0.95 and co.loc["curvature", "p_gt0"] > 0.95
    true_mean = pd.DataFrame(ex.attrs["truth"]["true_summaries"]).mean()
    icpt = 0.35 + sum(c * (sc["x"][p]["mean"] - true_mean[p]) / true_sd[p] for p, c in TRUE_COEFS.items())
    assert co.loc["intercept", "coef_hdi_3"] <= icpt <= co.loc["intercept", "coef_hdi_97"]
    assert {"log_likelihood", "posterior_predictive"} <= set(law_fit.groups())
    ppc = L.posterior_predictive_table(law_fit)
    assert ppc["covered"].mean() >= 0.8
    assert "partial_resid_curvature" in ppc.columns
    # the errors-in-variables latents exist and are near the observations
    assert law_fit.posterior["x_true"].dims[-2:] == ("layer_id", "predictor")


@pytest.mark.slow
def test_stage2_law_transfers_to_a_new_model_from_geometry_alone(sim2, law_fit):
    # model B: layers from the same law, unseen in training; predicted from B's geometry only
    geo, ex = sim2
    pred = L.transfer(law_fit, geo, ex, models=["B"])
    sc = L.transfer_scores(pred)
    assert sc["train_model"] == "A" and sc["test_model"] == "B" and sc["n_layers"] == 12
    assert sc["r2"] > 0.5 and sc["spearman"] > 0.7 and sc["coverage90"] >= 0.75


# ----------------------------------------------------------------- known answers, no sampling


def _geometry(model, ids, se=0.0):
    return pd.DataFrame({"model": model, "layer": range(len(ids)), "summary": "id_twonn",
                         "estimate": ids, "se": se, "lo": np.nan, "hi": np.nan, "n": 100, "k": 10})


def test_transfer_scores_known_answer():
    scaling = {"y_mean": 0.3, "y_sd": 0.1, "x": {"id_twonn": {"mean": 10.0, "sd": 5.0}}}
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[1.0], sigma=1e-3, scaling=scaling)
    ids = np.array([2.0, 6.0, 9.0, 15.0, 20.0])
    truth = 0.3 + 0.1 * (ids - 10) / 5
    geo_b = _geometry("B", ids)
    ex_b = pd.DataFrame({"model": "B", "layer": range(5), "alpha_mean": truth, "alpha_sd": 1e-4})
    pred = L.transfer(law, geo_b, ex_b)
    np.testing.assert_allclose(pred["pred_mean"], truth, atol=2e-4)
    sc = L.transfer_scores(pred)
    assert sc["r2"] == pytest.approx(1.0, abs=1e-4)
    assert sc["spearman"] == pytest.approx(1.0)
    assert sc["coverage90"] == 1.0 and sc["n_layers"] == 5

    # the reversed law ranks the layers backwards and misses them all
    anti = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[-1.0], sigma=1e-3, scaling=scaling)
    sa = L.transfer_scores(L.transfer(anti, geo_b, ex_b))
    assert sa["spearman"] == pytest.approx(-1.0) and sa["r2"] < 0 and sa["coverage90"] < 0.5

    # the "A's mean exponent" baseline: constant prediction, R^2 = -(offset^2)/var, no rank
    mean = L.fixed_law(predictors=(), b0=0.0, b=[], sigma=1e-3, scaling=scaling)
    sm = L.transfer_scores(L.transfer(mean, geo_b, ex_b))
    expect = 1 - np.sum((truth - 0.3) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert sm["r2"] == pytest.approx(expect, abs=1e-3) and np.isnan(sm["spearman"])

    # measurement error of B's geometry widens the predictive interval
    wide = L.transfer(law, _geometry("B", ids, se=2.0), ex_b)
    assert (wide["pred_sd"] > 5 * pred["pred_sd"]).all()


def test_transfer_uses_training_scaling_not_test_scaling():
    scaling = {"y_mean": 0.0, "y_sd": 1.0, "x": {"id_twonn": {"mean": 0.0, "sd": 1.0}}}
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[2.0], sigma=1e-6, scaling=scaling)
    pred = L.transfer(law, _geometry("B", np.array([100.0, 101.0, 102.0])))
    np.testing.assert_allclose(pred["pred_mean"], [200, 202, 204], atol=1e-3)
    assert pred["observed"].isna().all()


def test_run_transfer_rows(monkeypatch):
    """Glue of run_transfer with a least-squares stand-in for the sampler."""
    def fake_fit_law(ex, geo, *, predictors, target, models, name, **kw):
        tab = L.stage2_table(ex, geo, predictors=predictors, target=target, models=models)
        sc = L._scaling_from(tab, predictors)
        X, _ = L._design(tab, predictors, sc)
        y = (tab["y"].to_numpy() - sc["y_mean"]) / sc["y_sd"]
        A = np.column_stack([np.ones(len(y)), X])
        beta, *_ = np.linalg.lstsq(A, y, rcond=None)
        resid = float(np.std(y - A @ beta)) + 1e-3
        law = L.fixed_law(predictors=predictors, b0=beta[0], b=beta[1:], sigma=resid, scaling=sc, name=name)
        law.attrs["geowall_train_models"] = json.dumps(list(models))
        return law

    monkeypatch.setattr(L, "fit_law", fake_fit_law)
    layers = pd.DataFrame({"model": ["A"] * 10 + ["B"] * 10, "layer": list(range(10)) * 2})
    geo, ex = L.simulate_geometry(layers, seed=5)
    scores, preds, fits = L.run_transfer(ex, geo, [("A", "B"), ("B", "A")], check=False)
    assert list(scores.columns) == ["train_model", "test_model", "predictor_set", "r2", "spearman",
                                    "coverage90", "n_layers"]
    assert len(scores) == 6 and set(scores["predictor_set"]) == {"law", "depth", "mean"}
    assert set(zip(scores["train_model"], scores["test_model"])) == {("A", "B"), ("B", "A")}
    assert scores["n_layers"].eq(10).all() and len(fits) == 6
    law_r2 = scores.query("predictor_set == 'law'")["r2"]
    mean_r2 = scores.query("predictor_set == 'mean'")["r2"]
    assert (law_r2.to_numpy() > mean_r2.to_numpy()).all()
    assert scores.query("predictor_set == 'mean'")["spearman"].isna().all()


def _stage1_like(floors: np.ndarray, layers: list[tuple[str, int]], noise: float = 0.0, seed: int = 0):
    """InferenceData shaped like fit_stage1's output with given per-layer floor draws."""
    import arviz as az

    rng = np.random.default_rng(seed)
    draws = floors[None, None, :] + noise * rng.standard_normal((2, 500, len(floors)))
    ids = [f"{m}/L{l}" for m, l in layers]
    idata = az.from_dict(posterior={"floor": draws}, coords={"layer_id": ids}, dims={"floor": ["layer_id"]})
    idata.attrs["geowall_layers"] = pd.DataFrame(
        {"layer_id": ids, "model": [m for m, _ in layers], "layer": [l for _, l in layers]}).to_json(orient="records")
    return idata


def _geo_two(layers, curv, ids):
    rows = []
    for (m, l), c, i in zip(layers, curv, ids):
        rows += [{"model": m, "layer": l, "summary": "curvature", "estimate": c, "se": 0.0},
                 {"model": m, "layer": l, "summary": "id_twonn", "estimate": i, "se": 0.0}]
    return pd.DataFrame(rows)


def test_floor_ordering_known_answer():
    layers = [("m2b", 12), ("m9b", 20), ("m9b", 30), ("m2b", 5)]
    floors = np.array([0.02, 0.05, 0.08, 0.11])
    curv = [0.1, 0.2, 0.3, 0.4]      # same order as floors
    ids = [9.0, 7.0, 5.0, 3.0]       # reversed
    out = L.floor_ordering(_stage1_like(floors, layers), _geo_two(layers, curv, ids), layers)
    fl = out[out.row_type == "floor"].set_index(["model", "layer"])
    assert fl.loc[("m9b", 20), "floor_mean"] == pytest.approx(0.05)
    rho = out[out.row_type == "spearman"].set_index("summary")
    assert rho.loc["curvature", "rho_mean"] == pytest.approx(1.0) and rho.loc["curvature", "p_gt0"] == 1.0
    assert rho.loc["id_twonn", "rho_mean"] == pytest.approx(-1.0) and rho.loc["id_twonn", "p_gt0"] == 0.0
    assert rho["n_layers"].eq(4).all()

    # overlapping floor posteriors: the ordering becomes uncertain, p strictly inside (0, 1)
    fuzzy = L.floor_ordering(_stage1_like(floors, layers, noise=0.05), _geo_two(layers, curv, ids), layers)
    p = fuzzy.query("row_type == 'spearman' and summary == 'curvature'")["p_gt0"].item()
    assert 0.5 < p < 1.0

    with pytest.raises(ValueError, match="not in the Stage 1 fit"):
        L.floor_ordering(_stage1_like(floors, layers), _geo_two(layers, curv, ids), [("m2b", 99), ("m2b", 12)])
