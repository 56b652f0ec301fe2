"""Stage 1 (geowall.scaling): parameter recovery, identification honesty, diagnostics.

The sampled fits are small (10 layers, 300 tune / 300 draws, 2 chains) and shared by
the tests through module-scoped fixtures; most of their cost is nutpie's compile step.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from geowall import scaling as S

warnings.filterwarnings("ignore", category=FutureWarning)

SHOWCASE = (3, 7)
TWO_WIDTH_LAYER = 9  # a Gemma-Scope-like layer: two widths, several k


@pytest.fixture(scope="module")
def sim():
    return S.simulate_metrics(
        models=("simA",), n_layers=10, widths=(768, 1536, 3072, 6144), ks=(8, 16, 32),
        showcase_layers=SHOWCASE, layer_widths={TWO_WIDTH_LAYER: (1536, 6144)},
        noise=0.01, seed=1,
    )


@pytest.fixture(scope="module")
def fit_additive(sim):
    return S.fit_stage1(sim.metrics, form="additive", draws=300, tune=300, chains=2, seed=1,
                        prior_draws=400, progressbar=False)


@pytest.fixture(scope="module")
def fit_joint(sim):
    return S.fit_stage1(sim.metrics, form="joint", draws=300, tune=300, chains=2, seed=2,
                        prior_draws=200, progressbar=False)


# ----------------------------------------------------------------- no sampling


def test_simulated_grid_looks_like_ours(sim):
    m = sim.metrics
    per_layer = m.groupby("layer")["width"].nunique()
    assert per_layer[SHOWCASE[0]] == 7 and per_layer[TWO_WIDTH_LAYER] == 2
    assert per_layer.drop([*SHOWCASE, TWO_WIDTH_LAYER]).eq(4).all()
    assert set(m["k"]) == {8, 16, 32}
    assert (m["l0"] <= m["k"]).all()
    assert {"model", "layer", "width", "k", "l0", "fvu", "mse", "dead_frac", "n_tokens", "source",
            "sae_id", "train_tokens", "seed"} <= set(m.columns)


@pytest.mark.parametrize("col,val", [("fvu", -0.1), ("width", 0), ("l0", np.nan)])
def test_bad_metrics_named_before_sampling(sim, col, val):
    bad = sim.metrics.copy()
    bad.loc[3, col] = val
    with pytest.raises(ValueError, match=col):
        S.fit_stage1(bad, draws=10, tune=10, chains=2)


def test_missing_column_and_bad_form(sim):
    with pytest.raises(ValueError, match="l0"):
        S.fit_stage1(sim.metrics.drop(columns="l0"))
    with pytest.raises(ValueError, match="form"):
        S.fit_stage1(sim.metrics, form="chinchilla")


def test_layer_table_and_references(sim):
    layers, refs = S.layer_table(sim.metrics)
    assert list(layers["layer_id"])[:2] == ["simA/L0", "simA/L1"]
    assert layers.set_index("layer").loc[SHOWCASE[0], "width_span"] == pytest.approx(64)
    w = np.unique(sim.metrics["width"])
    assert refs["simA"]["w_ref"] == pytest.approx(np.exp(np.log(w).mean()))
    # the floor bound is the smallest error of SAEs at least as sparse as l0_ref (+5%)
    sub = sim.metrics[sim.metrics.layer == 0]
    ub = 1.05 * sub.loc[sub.l0 <= refs["simA"]["l0_ref"], "fvu"].min()
    assert layers.iloc[0]["floor_bound"] == pytest.approx(ub)


def test_prior_predictive_covers_data(sim):
    pp = S.prior_predictive(sim.metrics, draws=300, seed=0)
    summ = S.prior_predictive_summary(pp)
    assert len(summ) == 10
    assert (summ["frac_obs_inside"] >= 0.8).all(), summ
    # weakly informative, not vague: the 90% band spans less than ~3 orders of magnitude
    assert (np.log10(summ["fvu_pp_hi90"] / summ["fvu_pp_lo90"]) < 3).all(), summ


def _fake_idata(values: dict[str, np.ndarray], diverging=None, energy=None):
    import arviz as az

    n_chain, n_draw = next(iter(values.values())).shape[:2]
    rng = np.random.default_rng(0)
    ss = {
        "diverging": np.zeros((n_chain, n_draw), bool) if diverging is None else diverging,
        "energy": rng.normal(size=(n_chain, n_draw)) if energy is None else energy,
    }
    return az.from_dict(posterior=values, sample_stats=ss)


def test_check_fit_passes_on_iid_draws():
    rng = np.random.default_rng(1)
    idata = _fake_idata({"alpha": rng.normal(size=(2, 2000, 3)), "sigma": rng.gamma(2, size=(2, 2000))})
    out = S.check_fit(idata)
    assert out["max_rhat"] < 1.01 and out["min_ess_bulk"] > 400 and out["divergences"] == 0


def test_check_fit_names_rhat_and_variable():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 1000, 3))
    a[1, :, 2] += 3.0  # chain 2 stuck elsewhere for one element
    idata = _fake_idata({"alpha": a})
    with pytest.raises(S.FitDiagnosticsError, match=r"r_hat = .* at alpha\[2\]") as ei:
        S.check_fit(idata)
    assert {f["diagnostic"] for f in ei.value.failures} >= {"r_hat"}


def test_check_fit_names_divergences_and_bfmi():
    rng = np.random.default_rng(3)
    div = np.zeros((2, 1000), bool)
    div[0, :7] = True
    energy = rng.normal(size=(2, 1000)).cumsum(axis=1)  # random-walk energy: BFMI ~ 0
    idata = _fake_idata({"alpha": rng.normal(size=(2, 1000))}, diverging=div, energy=energy)
    with pytest.raises(S.FitDiagnosticsError) as ei:
        S.check_fit(idata)
    msg = str(ei.value)
    assert "divergences = 7" in msg and "bfmi" in msg
    # tolerated when asked
    with pytest.raises(S.FitDiagnosticsError, match="bfmi"):
        S.check_fit(idata, allow_divergences=10)


def test_check_fit_one_chain_fails_rhat():
    rng = np.random.default_rng(4)
    with pytest.raises(S.FitDiagnosticsError, match="r_hat = not computable"):
        S.check_fit(_fake_idata({"alpha": rng.normal(size=(1, 3000))}))


# ----------------------------------------------------------------- sampled


@pytest.mark.slow
def test_stage1_recovers_width_exponents(sim, fit_additive):
    ex = S.exponents(fit_additive, sim.metrics)
    truth = sim.truth.set_index("layer").loc[ex["layer"]]
    inside = (truth["alpha"].to_numpy() >= ex["alpha_hdi_3"]) & (truth["alpha"].to_numpy() <= ex["alpha_hdi_97"])
    assert inside.mean() >= 0.9, ex[["layer", "alpha_mean", "alpha_hdi_3", "alpha_hdi_97"]].assign(true=truth["alpha"].values)
    assert np.corrcoef(truth["alpha"], ex["alpha_mean"])[0, 1] > 0.9
    # floors (width asymptote at l0_ref) recovered too
    f_in = (truth["floor"].to_numpy() >= ex["floor_hdi_3"]) & (truth["floor"].to_numpy() <= ex["floor_hdi_97"])
    assert f_in.mean() >= 0.8


@pytest.mark.slow
def test_exponents_table_and_honest_identification(sim, fit_additive):
    ex = S.exponents(fit_additive, sim.metrics)
    cols = {"model", "layer", "form", "alpha_mean", "alpha_sd", "alpha_hdi_3", "alpha_hdi_97", "alpha_prior_sd",
            "alpha_sd_ratio", "floor_mean", "floor_sd", "floor_hdi_3", "floor_hdi_97", "floor_prior_sd",
            "floor_sd_ratio", "E_inf_mean", "n_widths", "floor_identified", "showcase", "l0_ref"}
    assert cols <= set(ex.columns)
    assert len(ex) == 10 and (ex["alpha_hdi_3"] < ex["alpha_mean"]).all() and (ex["alpha_mean"] < ex["alpha_hdi_97"]).all()
    assert (ex["alpha_sd_ratio"] < 1).all()  # the data moved every exponent
    two = ex.set_index("layer").loc[TWO_WIDTH_LAYER]
    assert not two["floor_identified"]
    assert ex.set_index("layer").loc[list(SHOWCASE), "showcase"].all()
    assert ex["showcase"].sum() == 2
    assert ex["floor_identified"].sum() >= 1


@pytest.mark.slow
def test_stage1_idata_contents_and_roundtrip(sim, fit_additive, tmp_path):
    import arviz as az

    idata = fit_additive
    assert {"posterior", "log_likelihood", "prior", "sample_stats", "observed_data"} <= set(idata.groups())
    assert idata.posterior["alpha"].dims == ("chain", "draw", "layer_id")
    assert idata.attrs["geowall_form"] == "additive"
    assert not any(str(v).endswith("__") for v in idata.posterior.data_vars)
    path = tmp_path / "stage1.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    pd.testing.assert_frame_equal(S.exponents(back), S.exponents(idata))
    grid = sim.metrics[["model", "layer", "width", "l0"]].head(5)
    pred = S.surface_predictions(idata, grid)
    assert (pred["fvu_lo"] <= pred["fvu_mean"]).all() and (pred["fvu_mean"] <= pred["fvu_hi"]).all()
    rel = np.abs(np.log(pred["fvu_mean"].to_numpy() / sim.metrics["fvu"].head(5).to_numpy()))
    assert rel.max() < 0.1


@pytest.mark.slow
def test_check_fit_raises_on_a_truncated_real_fit(fit_additive):
    short = fit_additive.sel(draw=slice(0, 15))
    with pytest.raises(S.FitDiagnosticsError, match="ess_bulk"):
        S.check_fit(short)


@pytest.mark.slow
def test_joint_form_and_loo_comparison(sim, fit_additive, fit_joint):
    ex = S.exponents(fit_joint, sim.metrics)
    assert ex["form"].eq("joint").all() and ex["E_inf_mean"].isna().all()
    assert np.corrcoef(sim.truth["alpha"], ex["alpha_mean"])[0, 1] > 0.9
    cmp = S.compare_forms({"additive": fit_additive, "joint": fit_joint})
    assert set(cmp.index) == {"additive", "joint"}
    assert {"rank", "elpd_loo", "weight", "warning"} <= set(cmp.columns)
