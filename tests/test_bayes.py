"""Shared Bayesian helpers (geowall.bayes): HDIs via ArviZ, tables inside InferenceData."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geowall import bayes


def test_hdi_matches_normal_quantiles_and_is_columnwise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    lo, hi = bayes.hdi(x, 0.94)
    assert lo == pytest.approx(-1.881, abs=0.03) and hi == pytest.approx(1.881, abs=0.03)
    two = bayes.hdi(np.column_stack([x, 2 * x + 5]), 0.94)
    assert two.shape == (2, 2) and two[1, 0] == pytest.approx(5 + 2 * lo, abs=0.05)
    s = bayes.summarise_draws(np.exp(x))  # skewed: the HDI hugs 0
    assert s["hdi_lo"] < 0.2 < s["mean"]


def test_tables_round_trip_through_netcdf(tmp_path):
    import arviz as az

    idata = az.from_dict(
        posterior={"a": np.zeros((2, 10, 3))}, coords={"layer_id": ["m/L0", "m/L1", "m/L2"]}, dims={"a": ["layer_id"]}
    )
    t = pd.DataFrame(
        {
            "layer_id": ["m/L0", "m/L1", "m/L2"],
            "model": ["m", "m", "m"],
            "layer": [0, 1, 2],
            "width_span": [8.0, 8.0, 64.0],
            "floor_term": [False, False, True],
        }
    )
    bayes.put_table(idata, t, dim="layer_id", prefix="layer_")
    idata.to_netcdf(str(tmp_path / "x.nc"))
    back = bayes.get_table(az.from_netcdf(str(tmp_path / "x.nc")), dim="layer_id", prefix="layer_")
    assert back["model"].tolist() == ["m"] * 3 and back["layer"].tolist() == [0, 1, 2]
    assert back["floor_term"].astype(bool).tolist() == [False, False, True]
    with pytest.raises(ValueError, match="no 'ref_'"):
        bayes.get_table(idata, dim="layer_id", prefix="ref_")


def test_forward_sampling_prints_no_pymc_info_lines(caplog):
    """A law fitted dozens of times per step printed PyMC's "Sampling: [y]" each time into
    the notebooks; quiet_pymc keeps those INFO lines out and restores the logger after."""
    import logging

    import pymc as pm

    from geowall.bayes import quiet_pymc

    caplog.set_level(logging.INFO, logger="pymc")  # as in a notebook kernel
    with pm.Model() as model:
        pm.Normal("y", 0.0, 1.0)
    pm.sample_prior_predictive(draws=5, model=model, random_seed=0)
    assert any("Sampling: [y]" in r.getMessage() for r in caplog.records)  # PyMC's default
    caplog.clear()
    with quiet_pymc():
        pm.sample_prior_predictive(draws=5, model=model, random_seed=0)
    assert not [r for r in caplog.records if r.name.startswith("pymc") and r.levelno < logging.WARNING]
    assert logging.getLogger("pymc").level == logging.INFO
