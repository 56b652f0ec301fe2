"""Stage 1 (geowall.scaling): what each grid identifies, planted answers recovered, nulls
not reported, diagnostics, calibration.

Known-answer cases (the simulated cases of issue 11): pure power laws (true floor 0) on
the default profile's grid (4 widths over 8x) and on the Gemma Scope grid shape (two
widths 4x apart, read from the manifest) must give covered exponents and no identified
floor; planted floors on 7-width grids spanning 64x must be identified and covered. The
sampled fits are small and shared through module-scoped fixtures.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from geowall import bayes, simulate
from geowall import scaling as S
from geowall.bayes import SamplerSettings

warnings.filterwarnings("ignore", category=FutureWarning)

DEFAULT_WIDTHS = (192, 384, 768, 1536)  # the default profile's 4 widths over 8x
RICH_WIDTHS = (96, 192, 384, 768, 1536, 3072, 6144)  # 7 widths over 64x


def _default_grid(n_layers: int) -> pd.DataFrame:
    return pd.DataFrame(
        [(l, w, k * 0.97) for l in range(n_layers) for w in DEFAULT_WIDTHS for k in (8, 16, 32)],
        columns=["layer", "width", "l0"],
    )


@pytest.fixture(scope="module")
def mixed():
    """Model "pw": pure power law, 6 layers on the default grid + 1 on Gemma Scope's two
    widths; model "fl": 4 layers with planted floors on 7 widths over 64x."""
    g = _default_grid(6)
    gem = simulate.grid_from_gemma_scope(1, per_width=3)
    gem = gem.assign(layer=6, width=gem["width"] * 1536 // gem["width"].max())
    alphas = np.array([0.3, 0.36, 0.42, 0.48, 0.54, 0.6, 0.45])
    pw = simulate.simulate_power_law(pd.concat([g, gem]), alpha=alphas, seed=1, model="pw")
    fl = simulate.simulate_metrics(
        models=("fl",), n_layers=4, widths=RICH_WIDTHS, ks=(8, 16, 32), noise=0.02, seed=3, floor_range=(0.02, 0.06)
    )
    metrics = pd.concat([pw.metrics, fl.metrics[["model", "layer", "width", "k", "l0", "fvu"]]], ignore_index=True)
    truth = pd.concat([pw.truth, fl.truth[["model", "layer", "alpha", "beta", "floor"]]], ignore_index=True)
    return metrics, truth


@pytest.fixture(scope="module")
def fit_mixed(mixed):
    return S.fit_stage1(
        mixed[0],
        form="additive",
        seed=1,
        prior_draws=300,
        progressbar=False,
        settings=SamplerSettings(draws=300, tune=300, chains=2, target_accept=0.95),
    )


# ----------------------------------------------------------------- no sampling


def test_gemma_scope_grid_shape_from_the_manifest():
    g = simulate.grid_from_gemma_scope(6)
    assert g["layer"].nunique() == 6
    one = g[g.layer == 0]
    assert one["width"].nunique() == 2 and one["width"].max() / one["width"].min() == pytest.approx(4, rel=0.01)
    assert len(one) == 8  # four sparsities per width


def test_simulated_power_law_truth(mixed):
    metrics, truth = mixed
    assert (truth.loc[truth.model == "pw", "floor"] == 0).all()
    assert set(metrics.loc[metrics.model == "pw", "width"].unique()) >= set(DEFAULT_WIDTHS)


@pytest.mark.parametrize("col,val", [("fvu", -0.1), ("width", 0), ("l0", np.nan)])
def test_bad_metrics_named_before_sampling(mixed, col, val):
    bad = mixed[0].copy()
    bad.loc[3, col] = val
    with pytest.raises(ValueError, match=col):
        S.fit_stage1(bad, settings=SamplerSettings(draws=10, tune=10, chains=2))


def test_missing_column_and_bad_form(mixed):
    with pytest.raises(ValueError, match="l0"):
        S.fit_stage1(mixed[0].drop(columns="l0"))
    with pytest.raises(ValueError, match="form"):
        S.fit_stage1(mixed[0], form="chinchilla")
    with pytest.raises(ValueError, match="floors"):
        S.layer_table(mixed[0], floors="some")


def test_layer_table_grid_rule_and_references(mixed):
    layers, refs = S.layer_table(mixed[0])
    by = layers.set_index("layer_id")
    # the grid rule: floors only where the grid can identify them
    assert not by.loc[[f"pw/L{i}" for i in range(7)], "floor_term"].any()
    assert by.loc[[f"fl/L{i}" for i in range(4)], "floor_term"].all()
    assert by.loc["fl/L0", "width_span"] == pytest.approx(64) and by.loc["pw/L6", "n_widths"] == 2
    assert list(S.floor_supported([2, 4, 5, 6, 7], [4, 8, 16, 32, 64])) == [False, False, True, True, True]
    sub = mixed[0][mixed[0].model == "pw"]
    assert refs["pw"]["w_ref"] == pytest.approx(np.exp(np.log(np.unique(sub.width)).mean()))
    ub = 1.05 * sub.loc[(sub.layer == 0) & (sub.l0 <= refs["pw"]["l0_ref"]), "fvu"].min()
    assert by.loc["pw/L0", "floor_bound"] == pytest.approx(ub)
    assert S.layer_table(mixed[0], floors="none")[0]["floor_term"].sum() == 0


def test_prior_predictive_covers_data(mixed):
    pp = S.prior_predictive(mixed[0], draws=300, seed=0)
    summ = S.prior_predictive_summary(pp)
    assert len(summ) == 11
    assert (summ["frac_obs_inside"] >= 0.8).all(), summ
    assert (np.log10(summ["fvu_pp_hi90"] / summ["fvu_pp_lo90"]) < 3).all(), summ


def test_sbc_uniformity_known_answer():
    rng = np.random.default_rng(0)
    fair = pd.DataFrame({"param": "alpha", "rank": rng.integers(0, 100, 2000), "n_ranks": 100})
    assert simulate.sbc_uniformity(fair)["p_value"].item() > 0.01
    # an overconfident posterior: true values pile up in the tails of the rank distribution
    u = rng.beta(0.6, 0.6, 2000)
    tails = pd.DataFrame({"param": "alpha", "rank": (u * 100).astype(int), "n_ranks": 100})
    assert simulate.sbc_uniformity(tails)["p_value"].item() < 1e-4


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
    out = bayes.check_fit(idata)
    assert out["max_rhat"] < 1.01 and out["min_ess_bulk"] > 400 and out["divergences"] == 0


def test_check_fit_names_rhat_and_variable():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 1000, 3))
    a[1, :, 2] += 3.0  # chain 2 stuck elsewhere for one element
    with pytest.raises(bayes.FitDiagnosticsError, match=r"r_hat = .* at alpha\[2\]") as ei:
        bayes.check_fit(_fake_idata({"alpha": a}))
    assert {f["diagnostic"] for f in ei.value.failures} >= {"r_hat"}


def test_check_fit_names_divergences_and_bfmi():
    rng = np.random.default_rng(3)
    div = np.zeros((2, 1000), bool)
    div[0, :7] = True
    energy = rng.normal(size=(2, 1000)).cumsum(axis=1)  # random-walk energy: BFMI ~ 0
    idata = _fake_idata({"alpha": rng.normal(size=(2, 1000))}, diverging=div, energy=energy)
    with pytest.raises(bayes.FitDiagnosticsError) as ei:
        bayes.check_fit(idata)
    msg = str(ei.value)
    assert "divergences = 7" in msg and "bfmi" in msg
    with pytest.raises(bayes.FitDiagnosticsError, match="bfmi"):
        bayes.check_fit(idata, SamplerSettings(checks={"allow_divergences": 10}))


def test_check_fit_one_chain_fails_rhat():
    rng = np.random.default_rng(4)
    with pytest.raises(bayes.FitDiagnosticsError, match="r_hat = not computable"):
        bayes.check_fit(_fake_idata({"alpha": rng.normal(size=(1, 3000))}))


# ----------------------------------------------------------------- sampled


@pytest.mark.slow
def test_power_law_exponents_recovered_and_no_floor_reported(mixed, fit_mixed):
    ex = S.exponents(fit_mixed, mixed[0]).merge(mixed[1][["model", "layer", "alpha", "floor"]], on=["model", "layer"])
    pw = ex[ex.model == "pw"]
    inside = (pw.alpha >= pw.alpha_hdi_3) & (pw.alpha <= pw.alpha_hdi_97)
    assert inside.sum() >= 6, pw[["layer", "alpha", "alpha_hdi_3", "alpha_hdi_97"]]
    assert (pw.alpha_hdi_97 - pw.alpha_hdi_3).mean() < 0.15
    assert not pw.floor_identified.any() and pw.floor_mean.isna().all()
    # the layer's own data determine these exponents: pooled and unpooled agree on the ordering
    agree = S.pooling_agreement(ex).set_index("model")
    assert agree.loc["pw", "n_own_evidence"] >= 6 and agree.loc["pw", "spearman_pooled_unpooled"] > 0.9


@pytest.mark.slow
def test_planted_floors_on_rich_grids_identified_and_covered(mixed, fit_mixed):
    truth = mixed[1][["model", "layer", "floor"]].rename(columns={"floor": "floor_true"})
    ex = S.exponents(fit_mixed, mixed[0]).merge(truth, on=["model", "layer"])
    fl = ex[ex.model == "fl"]
    assert fl.floor_term.all() and fl.floor_identified.sum() >= 3, fl[
        ["layer", "f_hdi_3", "f_hdi_97", "floor_elpd_diff", "floor_elpd_se"]
    ]
    covered = (fl.floor_true >= fl.floor_hdi_3) & (fl.floor_true <= fl.floor_hdi_97)
    assert covered.sum() >= 3
    assert (fl.floor_elpd_diff > 0).all()


@pytest.mark.slow
def test_stage1_idata_contents_and_roundtrip(mixed, fit_mixed, tmp_path):
    import arviz as az

    idata = fit_mixed
    assert {"posterior", "log_likelihood", "prior", "sample_stats", "observed_data", "constant_data"} <= set(
        idata.groups()
    )
    assert idata.posterior["alpha"].dims == ("chain", "draw", "layer_id")
    assert idata.posterior["floor"].dims == ("chain", "draw", "floor_layer")
    assert "geowall_layers" not in idata.attrs and "layer_floor_term" in idata.constant_data
    path = tmp_path / "stage1.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    pd.testing.assert_frame_equal(S.exponents(back), S.exponents(idata))
    grid = mixed[0][["model", "layer", "width", "l0"]]
    pred = S.surface_predictions(idata, grid)
    assert (pred["fvu_lo"] <= pred["fvu_mean"]).all() and (pred["fvu_mean"] <= pred["fvu_hi"]).all()
    rel = np.abs(np.log(pred["fvu_mean"].to_numpy() / mixed[0]["fvu"].to_numpy()))
    assert np.median(rel) < 0.05


@pytest.mark.slow
def test_check_fit_raises_on_a_truncated_real_fit(fit_mixed):
    with pytest.raises(bayes.FitDiagnosticsError, match="ess_bulk"):
        bayes.check_fit(fit_mixed.sel(draw=slice(0, 15)))


@pytest.mark.slow
def test_joint_form_and_loo_comparison(mixed, fit_mixed):
    fit_joint = S.fit_stage1(
        mixed[0],
        form="joint",
        seed=2,
        prior_draws=100,
        progressbar=False,
        compare_floor=False,
        settings=SamplerSettings(draws=300, tune=300, chains=2, target_accept=0.95),
    )
    ex = S.exponents(fit_joint, mixed[0])
    assert ex["form"].eq("joint").all() and ex["E_inf_mean"].isna().all() and not ex.floor_identified.any()
    pw = ex[ex.model == "pw"].merge(mixed[1], on=["model", "layer"])
    assert np.corrcoef(pw["alpha"], pw["alpha_mean"])[0, 1] > 0.9
    cmp = S.compare_forms({"additive": fit_mixed, "joint": fit_joint})
    assert set(cmp.index) == {"additive", "joint"} and {"rank", "elpd_loo", "weight", "warning"} <= set(cmp.columns)


@pytest.mark.slow
def test_simulation_based_calibration_small():
    """A small SBC (Talts et al. 2018) of the floor-free surface on a 2-layer grid: ranks
    of alpha uniform. The full run on the default and Gemma Scope grids is `make sbc`."""
    grid = _default_grid(2)
    table = simulate.simulate_power_law(grid, alpha=[0.3, 0.5], seed=0).metrics
    ranks = simulate.simulation_based_calibration(
        table, n_sims=40, settings=SamplerSettings(draws=100, tune=200), thin=2, seed=0
    )
    assert set(ranks["param"]) == {"alpha"} and len(ranks) == 80 and ranks["n_ranks"].eq(101).all()
    u = simulate.sbc_uniformity(ranks, n_bins=5)
    assert u["p_value"].item() > 0.001, u


# ----------------------------------------------------------------- one exponent, one meaning


def test_common_grid_keeps_the_widths_every_layer_has():
    sim = simulate.simulate_metrics(n_layers=3, widths=(384, 1536), showcase_layers=(1,), showcase_widths=RICH_WIDTHS)
    c = S.common_grid(sim.metrics)
    assert set(c["width"]) == {384, 1536} and c.groupby("layer").size().nunique() == 1
    assert len(c) == 3 * 2 * 3  # every layer keeps 2 widths x 3 ks
    with pytest.raises(ValueError, match="shared by all its layers"):
        S.common_grid(sim.metrics[~((sim.metrics.layer == 1) & (sim.metrics.width == 1536))])


@pytest.fixture(scope="module")
def planted_floor():
    """One model, 7 layers, the same generating law at every layer (the default profile's
    shape: two widths 4x apart, three ks); layer 3 is a showcase layer (7 widths over 64x)
    with a planted floor term, so its floor surface reports an exponent of the error *above*
    the floor, which the ordinary layers' exponents are not."""
    sim = simulate.simulate_metrics(
        n_layers=7,
        widths=(384, 1536),
        showcase_layers=(3,),
        showcase_widths=RICH_WIDTHS,
        alpha=np.full(7, 0.5),
        beta_range=(0.3, 0.3),
        floor_range=(0.06, 0.06),
        noise=0.01,
        seed=5,
    )
    m = sim.metrics
    st = SamplerSettings(draws=300, tune=300, chains=2, target_accept=0.95)
    idata = S.fit_stage1(m, compare_floor=False, settings=st, seed=1, prior_draws=300, progressbar=False)
    plain = S.fit_plain(m, idata, st, seed=1, progressbar=False)
    return m, idata, plain


@pytest.mark.slow
def test_planted_floor_does_not_inflate_the_stage2_target(planted_floor):
    """Issue 21 item 5: with a floor at one layer, the exponent Stage 2 models there is the
    same plain width exponent as at its neighbours; the floor-adjusted one is reported beside."""
    from geowall import law

    m, idata, plain = planted_floor
    old = S.exponents(idata, m)  # before: alpha at the floor layer is the floor surface's
    new = S.exponents(idata, m, plain=plain)
    assert new["alpha_plain"].all() and not old["alpha_plain"].any()
    sc, nb = new[new.layer == 3].iloc[0], new[new.layer != 3]
    # the old target: the floor layer stands out of its model (same law everywhere)
    old_sc = float(old.loc[old.layer == 3, "alpha_mean"].iloc[0])
    assert old_sc > nb["alpha_mean"].max() + 0.1
    # the new target: the floor layer sits among its neighbours and agrees with its own
    # unpooled plain exponent on the common grid; the floor-adjusted one is beside it
    assert abs(sc["alpha_mean"] - nb["alpha_mean"].median()) < 0.05
    assert abs(sc["alpha_mean"] - sc["alpha_ols"]) < 3 * sc["alpha_ols_se"] + 0.02
    assert sc["alpha_floor_mean"] == pytest.approx(old_sc) and nb["alpha_floor_mean"].isna().all()
    geo = pd.DataFrame(
        [{"model": "simA", "layer": l, "summary": "id_twonn", "estimate": float(l), "se": 0.1} for l in range(7)]
    )
    tab = law.stage2_table(new, geo, predictors=("id_twonn",))
    y3 = float(tab.loc[tab.layer == 3, "y"].iloc[0])
    assert y3 == pytest.approx(sc["log_alpha_mean"]) and y3 < np.log(old_sc) - 0.1


@pytest.mark.slow
def test_the_plain_fit_hands_on_only_what_its_check_covers(planted_floor):
    """Notebook 03 checks the plain fit on ``PLAIN_VARS`` only: the exponents must read nothing
    else from it (a plain fit reduced to those variables gives the same table)."""
    m, idata, plain = planted_floor
    thin = plain.copy()
    thin.posterior = thin.posterior[list(S.PLAIN_VARS)]
    pd.testing.assert_frame_equal(S.exponents(idata, m, plain=plain), S.exponents(idata, m, plain=thin))
