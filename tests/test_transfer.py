"""Transfer (geowall.transfer): known answers without sampling, scores with nulls and ceilings."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from geowall import law as L
from geowall import simulate
from geowall import transfer as T

warnings.filterwarnings("ignore", category=FutureWarning)

SCALING = {"y_mean": 0.3, "y_sd": 0.1, "x": {"id_twonn": {"mean": 10.0, "sd": 5.0}}}


def _geometry(model, ids, se=0.0):
    return pd.DataFrame(
        {
            "model": model,
            "layer": range(len(ids)),
            "summary": "id_twonn",
            "depth": np.nan,
            "estimate": ids,
            "se": se,
            "lo": np.nan,
            "hi": np.nan,
            "n": 100,
            "k": 10,
        }
    )


def _exps(model, y, sd=1e-4):
    return pd.DataFrame({"model": model, "layer": range(len(y)), "log_alpha_mean": y, "log_alpha_sd": sd})


def test_transfer_known_answer():
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[1.0], sigma=1e-3, scaling=SCALING)
    ids = np.linspace(2, 20, 10)
    truth = 0.3 + 0.1 * (ids - 10) / 5
    geo_b, ex_b = _geometry("B", ids), _exps("B", truth)
    pred = T.transfer(law, geo_b, ex_b)
    np.testing.assert_allclose(pred["pred_mean"], truth, atol=2e-4)
    sc = T.transfer_scores(law, geo_b, ex_b, n_perm=200)
    assert sc["r2"] == pytest.approx(1.0, abs=1e-3) and sc["spearman"] == pytest.approx(1.0)
    assert sc["r2_hdi_3"] > 0.99 and sc["spearman_hdi_3"] == pytest.approx(1.0)
    assert sc["coverage90"] == 1.0 and sc["n_layers"] == 10 and not sc["few_layers"]
    assert sc["p_perm_spearman"] < 0.01 and sc["p_perm_r2_shift"] < 0.01
    assert sc["ceiling_r2"] > 0.99

    # the level is off by a constant: the ordering transferred (r2_shift, Spearman), the level did not (r2)
    shifted = _exps("B", truth + 0.5)
    ss = T.transfer_scores(law, geo_b, shifted, n_perm=200)
    assert ss["r2"] < 0 and ss["r2_shift"] == pytest.approx(1.0, abs=1e-3) and ss["spearman"] == pytest.approx(1.0)

    # the reversed law: ordering backwards, null not rejected
    anti = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[-1.0], sigma=1e-3, scaling=SCALING)
    sa = T.transfer_scores(anti, geo_b, ex_b, n_perm=200)
    assert sa["spearman"] == pytest.approx(-1.0) and sa["r2"] < 0 and sa["p_perm_spearman"] > 0.5

    # the mean baseline: constant prediction, no rank, R^2 <= 0
    mean = L.fixed_law(predictors=(), b0=0.0, b=[], sigma=1e-3, scaling=SCALING)
    sm = T.transfer_scores(mean, geo_b, ex_b)
    assert np.isnan(sm["spearman"]) and sm["r2"] <= 0 and sm["r2_shift"] == pytest.approx(0.0, abs=1e-9)

    # measurement error of B's geometry widens the predictive interval
    wide = T.transfer(law, _geometry("B", ids, se=2.0), ex_b)
    assert (wide["pred_sd"] > 5 * pred["pred_sd"]).all()


def test_transfer_null_when_geometry_is_unrelated():
    """B's exponents unrelated to its geometry: the permutation null is not rejected."""
    rng = np.random.default_rng(3)
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[1.0], sigma=0.5, scaling=SCALING)
    ids = rng.uniform(2, 20, 12)
    sc = T.transfer_scores(law, _geometry("B", ids), _exps("B", rng.normal(0.3, 0.1, 12), sd=0.01), n_perm=300)
    assert sc["p_perm_spearman"] > 0.05 and sc["spearman_hdi_3"] < 0


def test_few_layers_are_said_in_words():
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[1.0], sigma=1e-2, scaling=SCALING)
    ids = np.array([3.0, 9.0, 12.0, 18.0])
    sc = T.transfer_scores(law, _geometry("B", ids), _exps("B", 0.3 + 0.02 * (ids - 10)), n_perm=50)
    assert sc["few_layers"] and "Only 4 layers" in T.words(sc)


def test_transfer_uses_training_scaling_not_test_scaling():
    scaling = {"y_mean": 0.0, "y_sd": 1.0, "x": {"id_twonn": {"mean": 0.0, "sd": 1.0}}}
    law = L.fixed_law(predictors=("id_twonn",), b0=0.0, b=[2.0], sigma=1e-6, scaling=scaling)
    pred = T.transfer(law, _geometry("B", np.array([100.0, 101.0, 102.0])))
    np.testing.assert_allclose(pred["pred_mean"], [200, 202, 204], atol=1e-3)
    assert pred["observed"].isna().all()


def _lstsq_fit_law(ex, geo, *, predictors, target, models, name, **kw):
    """A least-squares stand-in for ``law.fit_law`` (no sampling): the same table and scaling."""
    tab = L.stage2_table(ex, geo, predictors=predictors, target=target, models=models)
    sc = L.standardisation(tab, predictors)
    X, _ = L.design_matrix(tab, predictors, sc)
    y = (tab["y"].to_numpy() - sc["y_mean"]) / sc["y_sd"]
    A = np.column_stack([np.ones(len(y)), X])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = float(np.std(y - A @ beta)) + 1e-3
    law = L.fixed_law(predictors=predictors, b0=beta[0], b=beta[1:], sigma=resid, scaling=sc, name=name)
    law.attrs["geowall_train_models"] = json.dumps(list(models))
    return law


@pytest.mark.parametrize(
    "coefs, transfers",
    [
        ({"id_twonn": 0.3, "local_residual": -0.2}, True),  # planted in law3's own summaries
        ({"id_twonn": 0.0}, False),  # the null: exponents unrelated to the geometry
        ({"curvature": 0.3}, False),  # only the summary law3 leaves out carries the effect
    ],
)
def test_curvature_free_law_recovers_a_planted_effect_and_not_a_null(monkeypatch, coefs, transfers):
    """law3 (TwoNN, PR, local residual) transfers an effect planted in its summaries, in both
    directions; with no effect, or an effect carried by curvature alone (independent of the
    other summaries in the simulation), its permutation null is not rejected."""
    monkeypatch.setattr(T, "fit_law", _lstsq_fit_law)
    layers = pd.DataFrame({"model": ["A"] * 12 + ["B"] * 12, "layer": list(range(12)) * 2})
    geo, ex = simulate.simulate_geometry(layers, seed=11, intercept=-1.0, coefs=coefs, resid_sd=0.02)
    scores, _, _ = T.run_transfer(ex, geo, [("A", "B"), ("B", "A")], check=False, n_perm=300)
    law3 = scores.query("predictor_set == 'law3'")
    assert len(law3) == 2 and law3["n_layers"].eq(12).all()
    if transfers:
        assert (law3["p_perm_spearman"] < 0.01).all() and (law3["spearman"] > 0.8).all()
        assert (law3["r2"] > 0.5).all()
    else:
        assert (law3["p_perm_spearman"] > 0.05).all()
        assert (law3["r2"] < 0.5).all()


def test_run_transfer_rows(monkeypatch):
    """Glue of run_transfer with a least-squares stand-in for the sampler."""

    monkeypatch.setattr(T, "fit_law", _lstsq_fit_law)
    layers = pd.DataFrame({"model": ["A"] * 10 + ["B"] * 10, "layer": list(range(10)) * 2})
    geo, ex = simulate.simulate_geometry(layers, seed=5, intercept=-1.0, coefs={"id_twonn": 0.2, "curvature": 0.1})
    scores, preds, fits = T.run_transfer(ex, geo, [("A", "B"), ("B", "A")], check=False, n_perm=100)
    assert {
        "train_model",
        "test_model",
        "predictor_set",
        "r2",
        "r2_shift",
        "spearman",
        "coverage90",
        "p_perm_spearman",
        "ceiling_r2",
        "n_layers",
        "r2_hdi_3",
        "spearman_hdi_97",
    } <= set(scores.columns)
    assert len(scores) == 8 and set(scores["predictor_set"]) == {"law", "law3", "depth", "mean"}
    assert scores["n_layers"].eq(10).all() and len(fits) == 8
    law_r2 = scores.query("predictor_set == 'law'")["r2"]
    mean_r2 = scores.query("predictor_set == 'mean'")["r2"]
    assert (law_r2.to_numpy() > mean_r2.to_numpy()).all()
    assert (scores.query("predictor_set == 'law'")["p_perm_spearman"] < 0.05).all()


def test_run_transfer_says_when_a_summary_is_withheld_at_every_layer_of_b():
    """Curvature above the tangent cap is NaN at every layer of a model (the random twin on
    the default run): the pair is recorded with a note, not a crash, and nothing is fitted."""
    ids = np.linspace(2, 20, 10)
    geo = pd.concat([_geometry("A", ids), _geometry("B", ids).assign(estimate=np.nan)], ignore_index=True)
    ex = pd.concat([_exps("A", 0.1 * ids), _exps("B", 0.1 * ids)], ignore_index=True)
    scores, preds, fits = T.run_transfer(ex, geo, [("A", "B")], predictor_sets={"law": ("id_twonn",)})
    assert fits == {} and len(preds) == 0
    (row,) = scores.to_dict("records")
    assert row["n_layers"] == 0 and "B has no layer" in row["note"]
    assert "not scored" in T.words(row)
    # too few training layers on A: also a note (fit_law's own minimum)
    geo_a = pd.concat([_geometry("A", ids[:2]), _geometry("B", ids)], ignore_index=True)
    scores, _, fits = T.run_transfer(ex, geo_a, [("A", "B")], predictor_sets={"law": ("id_twonn",)})
    assert fits == {} and "A has 2 layers" in scores.note.iloc[0]


def test_law_rows_carry_depth_on_the_same_test_layers_and_the_model_kinds(monkeypatch):
    """Issue 21 item 4: where curvature is withheld at some layers of B, the four-summary law
    sees fewer of B's layers than depth does; its row carries depth scored on the law's own
    layers (a like-for-like 'beats depth'), and the kinds the verdict filters on."""
    monkeypatch.setattr(T, "fit_law", _lstsq_fit_law)
    layers = pd.DataFrame({"model": ["A"] * 10 + ["B"] * 10, "layer": list(range(10)) * 2})
    geo, ex = simulate.simulate_geometry(layers, seed=5, intercept=-1.0, coefs={"id_twonn": 0.2, "curvature": 0.1})
    hole = (geo.model == "B") & (geo.layer < 3) & (geo.summary == "curvature")
    geo.loc[hole, "estimate"] = np.nan
    kinds = {"A": "pretrained", "B": "random"}
    scores, _, _ = T.run_transfer(ex, geo, [("A", "B")], check=False, n_perm=50, kinds=kinds)
    s = scores.set_index("predictor_set")
    assert s.loc["law", "n_layers"] == 7 and s.loc["depth", "n_layers"] == 10 and s.loc["law3", "n_layers"] == 10
    assert np.isfinite(s.loc["law", "depth_r2_shift"]) and s.loc["law", "depth_r2_shift"] != s.loc["depth", "r2_shift"]
    assert s.loc["law3", "depth_r2_shift"] == pytest.approx(s.loc["depth", "r2_shift"])  # same 10 layers
    assert (scores.train_kind == "pretrained").all() and (scores.test_kind == "random").all()
