"""Floor ordering (geowall.floors): identified floors only, within a model, too few said."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geowall import floors as F


def _stage1_like(floors: np.ndarray, layers, noise: float = 0.0, seed: int = 0):
    import arviz as az

    rng = np.random.default_rng(seed)
    draws = floors[None, None, :] + noise * rng.standard_normal((2, 500, len(floors)))
    ids = [f"{m}/L{l}" for m, l in layers]
    return az.from_dict(posterior={"floor": draws}, coords={"floor_layer": ids}, dims={"floor": ["floor_layer"]})


def _exps(layers, identified):
    return pd.DataFrame(
        {
            "model": [m for m, _ in layers],
            "layer": [l for _, l in layers],
            "floor_identified": identified,
            "l0_ref": 10.0,
        }
    )


def _geo(layers, curv, ids):
    rows = []
    for (m, l), c, i in zip(layers, curv, ids):
        rows += [
            {"model": m, "layer": l, "summary": "curvature", "estimate": c, "se": 0.0},
            {"model": m, "layer": l, "summary": "id_twonn", "estimate": i, "se": 0.0},
        ]
    return pd.DataFrame(rows)


LAYERS = [("m9b", 5), ("m9b", 12), ("m9b", 20), ("m9b", 30), ("m2b", 5), ("m2b", 12)]
FLOORS = np.array([0.02, 0.05, 0.08, 0.11, 0.03, 0.01])
CURV = [0.1, 0.2, 0.3, 0.4, 0.9, 0.1]  # m9b: same order as floors
IDS = [9.0, 7.0, 5.0, 3.0, 1.0, 2.0]  # m9b: reversed


def test_floor_ordering_within_model_known_answer():
    out = F.floor_ordering(_stage1_like(FLOORS, LAYERS), _exps(LAYERS, True), _geo(LAYERS, CURV, IDS))
    rho = out[out.row_type == "spearman"].set_index(["model", "summary"])
    assert rho.loc[("m9b", "curvature"), "rho_mean"] == pytest.approx(1.0)
    assert rho.loc[("m9b", "curvature"), "p_gt0"] == 1.0
    assert rho.loc[("m9b", "id_twonn"), "rho_mean"] == pytest.approx(-1.0)
    # two identified layers in m2b: too few to rank, said in words, no correlation reported
    assert rho.loc[("m2b", "curvature"), "status"].startswith("too few identified floors (2")
    assert np.isnan(rho.loc[("m2b", "curvature"), "rho_mean"])
    fl = out[out.row_type == "floor"].set_index(["model", "layer"])
    assert fl.loc[("m9b", 20), "floor_mean"] == pytest.approx(0.08)

    # overlapping floor posteriors: p strictly inside (0, 1)
    fuzzy = F.floor_ordering(_stage1_like(FLOORS, LAYERS, noise=0.05), _exps(LAYERS, True), _geo(LAYERS, CURV, IDS))
    p = fuzzy.query("row_type == 'spearman' and model == 'm9b' and summary == 'curvature'")["p_gt0"].item()
    assert 0.5 < p < 1.0


def test_unidentified_floors_are_not_ranked():
    ident = [True, True, False, False, True, True]  # m9b keeps two: too few
    out = F.floor_ordering(_stage1_like(FLOORS, LAYERS), _exps(LAYERS, ident), _geo(LAYERS, CURV, IDS))
    assert set(out.query("row_type == 'floor'")["layer"].astype(int)) == {5, 12}
    sp = out[out.row_type == "spearman"]
    assert sp["status"].str.startswith("too few").all() and sp["rho_mean"].isna().all()
    # no identified floor at all: the table still has every column the chart reads
    none = F.floor_ordering(_stage1_like(FLOORS, LAYERS), _exps(LAYERS, False), _geo(LAYERS, CURV, IDS))
    assert {"curvature", "id_twonn", "floor_mean"} <= set(none.columns) and (none.row_type == "spearman").all()
