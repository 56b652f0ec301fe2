"""Decision rules for the verdict table (geowall.verdicts) on constructed artefacts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geowall import transfer as T
from geowall import verdicts as V


def _stage2(gain, se, p, lo, hi):
    compare = pd.DataFrame(
        {
            "scope": "real",
            "predictor_set": ["models", "depth", "id"],
            "elpd_diff_vs_models": [0.0, 0.5, gain],
            "se_diff_vs_models": [0.0, 1.0, se],
            "max_pareto_k": 0.3,
        }
    )
    coefs = pd.DataFrame(
        {
            "scope": "real",
            "predictor_set": "id",
            "term": ["id_twonn", "intercept[a]"],
            "coef_mean": [(lo + hi) / 2, 0.1],
            "coef_hdi_3": [lo, 0.0],
            "coef_hdi_97": [hi, 0.2],
            "b_mean": [0.5, np.nan],
        }
    )
    null = pd.DataFrame({"scope": "real", "predictor_set": ["id"], "p_value": [p]})
    return compare, coefs, null


def test_geometry_rule():
    assert V.geometry_verdict(*_stage2(10.0, 2.0, 0.005, 0.1, 0.3))["verdict"] == "supported"
    assert V.geometry_verdict(*_stage2(0.5, 2.0, 0.4, -0.1, 0.2))["verdict"] == "not supported"
    assert V.geometry_verdict(*_stage2(10.0, 2.0, 0.4, -0.1, 0.2))["verdict"] == "inconclusive"
    assert V.geometry_verdict(None, None, None)["verdict"] == "inconclusive"


def _transfer(rows):
    return pd.DataFrame(
        [
            {
                "predictor_set": "law",
                "train_model": a,
                "test_model": b,
                "n_layers": n,
                "spearman": r,
                "spearman_hdi_3": lo,
                "spearman_hdi_97": 1.0,
                "p_perm_spearman": p,
                "r2": 0.1,
                "r2_shift": 0.2,
                "ceiling_r2": 0.5,
            }
            for a, b, n, r, lo, p in rows
        ]
    )


def test_transfer_rule():
    assert (
        V.transfer_verdict(_transfer([("a", "b", 12, 0.8, 0.4, 0.001), ("b", "a", 12, 0.7, 0.3, 0.01)]))["verdict"]
        == "supported"
    )
    assert (
        V.transfer_verdict(_transfer([("a", "b", 12, 0.1, -0.4, 0.4), ("b", "a", 12, -0.2, -0.6, 0.7)]))["verdict"]
        == "not supported"
    )
    few = V.transfer_verdict(_transfer([("a", "b", 5, 0.9, 0.5, 0.02)]))
    assert few["verdict"] == "inconclusive" and "few" in few["evidence"]


def test_transfer_judges_the_curvature_free_law_where_the_four_summary_law_is_withheld():
    """A direction whose four-summary law could not be fitted (a note) is judged on its
    curvature-free law; one with both keeps the four-summary law; the evidence names the set."""
    law = _transfer([("a", "b", 12, 0.1, -0.4, 0.4), ("b", "a", 12, 0.1, -0.4, 0.4)])
    law.loc[0, "note"] = "a has 5 layers with every summary of the set and an exponent, the law needs 6"
    law3 = _transfer([("a", "b", 12, 0.8, 0.4, 0.001), ("b", "a", 12, 0.8, 0.4, 0.001)]).assign(predictor_set="law3")
    both = pd.concat([law, law3], ignore_index=True)
    picked = T.law_rows(both)
    assert list(zip(picked.train_model, picked.predictor_set)) == [("b", "law"), ("a", "law3")]
    v = V.transfer_verdict(both)
    assert v["verdict"] == "inconclusive" and "a->b (law3" in v["evidence"] and "b->a (law," in v["evidence"]
    law.loc[1, "note"] = "b has 5 layers"
    assert V.transfer_verdict(pd.concat([law, law3], ignore_index=True))["verdict"] == "supported"
    assert V.transfer_verdict(both, law_set="law")["verdict"] == "not supported"  # one set only, on request


def _floors(n_by_model, rho_lo=0.2, rho_mean=0.6):
    rows = []
    for m, n in n_by_model.items():
        for s in ("curvature", "id_twonn"):
            ranked = n >= 3
            rows.append(
                {
                    "row_type": "spearman",
                    "model": m,
                    "summary": s,
                    "n_layers": n,
                    "status": "ranked" if ranked else "too few",
                    "rho_mean": rho_mean if ranked else np.nan,
                    "rho_hdi_3": rho_lo if ranked else np.nan,
                    "rho_hdi_97": 1.0 if ranked else np.nan,
                }
            )
    return pd.DataFrame(rows)


def test_floor_rule():
    out = V.floor_verdict(_floors({"gemma-2-2b": 1, "gemma-2-9b": 1}))
    assert out["verdict"] == "inconclusive" and "too few" in out["evidence"]
    assert V.floor_verdict(_floors({"m": 5}))["verdict"] == "supported"
    assert V.floor_verdict(_floors({"m": 5}, rho_lo=-0.8, rho_mean=-0.1))["verdict"] == "not supported"


def test_verdict_table_has_every_claim_and_its_rule():
    t = V.verdict_table()
    assert list(t["key"]) == ["geometry", "transfer", "floors"]
    assert t["verdict"].eq("inconclusive").all() and t["rule"].str.len().gt(50).all()
