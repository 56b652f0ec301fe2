"""Decision rules for the verdict table (geowall.verdicts) on constructed artefacts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geowall import nulls, simulate
from geowall import transfer as T
from geowall import verdicts as V
from geowall.bayes import SamplerSettings


def _stage2(gain, se, p, lo, hi, depth_gain=9.5):
    """Tables of notebook 04 with one depth + geometry set, 'depth+id', whose gain over the
    depth baseline is ``gain`` +- ``se`` and whose ID slope interval is [lo, hi]."""
    compare = pd.DataFrame(
        {
            "scope": "real",
            "predictor_set": ["models", "depth", "id", "depth+id"],
            "elpd_diff_vs_models": [0.0, depth_gain, depth_gain - 3.0, depth_gain + gain],
            "se_diff_vs_models": [0.0, 2.6, 2.0, 3.0],
            "elpd_diff_vs_depth": [-depth_gain, 0.0, -3.0, gain],
            "se_diff_vs_depth": [2.6, 0.0, 1.0, se],
            "max_pareto_k": 0.3,
        }
    )
    coefs = pd.DataFrame(
        {
            "scope": "real",
            "predictor_set": "depth+id",
            "term": ["depth", "id_twonn", "intercept[a]"],
            "coef_mean": [0.3, (lo + hi) / 2, 0.1],
            "coef_hdi_3": [0.2, lo, 0.0],
            "coef_hdi_97": [0.4, hi, 0.2],
            "b_mean": [0.9, 0.5, np.nan],
        }
    )
    null = pd.DataFrame({"scope": "real", "predictor_set": ["depth+id"], "p_value": [p]})
    return compare, coefs, null


def _power(x80):
    """A power curve reaching 80% at slope ``x80`` for ID and curvature."""
    slopes = np.array([0.0, 0.5, 1.0, 2.0]) * x80
    return pd.DataFrame(
        [
            {"scope": "real", "summary": s, "slope": b, "p_supported": p}
            for s in ("id_twonn", "curvature")
            for b, p in zip(slopes, (0.03, 0.3, 0.8, 1.0))
        ]
    )


def test_geometry_rule_is_beyond_depth():
    assert V.geometry_verdict(*_stage2(10.0, 2.0, 0.005, 0.1, 0.3))["verdict"] == "supported"
    assert V.geometry_verdict(*_stage2(0.5, 2.0, 0.4, -0.1, 0.2))["verdict"] == "not supported"
    assert V.geometry_verdict(*_stage2(10.0, 2.0, 0.4, -0.1, 0.2))["verdict"] == "inconclusive"
    assert V.geometry_verdict(None, None, None)["verdict"] == "inconclusive"
    # geometry alone beating the intercepts (the old rule) is not enough: the gain over depth decides
    c, k, n = _stage2(-1.0, 1.5, 0.6, -0.1, 0.1, depth_gain=20.0)
    assert c.set_index("predictor_set").loc["id", "elpd_diff_vs_models"] > 10
    v = V.geometry_verdict(c, k, n)
    assert v["verdict"] == "not supported" and "over depth" in v["numbers"] and "depth alone" in v["numbers"]
    # without a depth + geometry law the claim cannot be judged beyond depth
    old = c[~c.predictor_set.str.startswith("depth+")]
    assert V.geometry_verdict(old, k, n)["verdict"] == "inconclusive"


def test_geometry_verdict_states_power():
    """None of the three tests passes: 'not supported' only if the design would have
    detected a slope as large as the intervals allow; otherwise 'inconclusive'."""
    tables = _stage2(0.5, 2.0, 0.4, -0.1, 0.2)
    powered = V.geometry_verdict(*tables, power=_power(0.25))
    assert powered["verdict"] == "not supported" and "powered, no effect above 0.25" in powered["power"]
    assert V.geometry_verdict(*tables, power=_power(0.6))["verdict"] == "not supported"  # [-0.1, 0.2] excludes 0.6
    wide = _stage2(0.5, 2.0, 0.4, -0.5, 0.7)  # intervals that allow slopes the design cannot detect
    weak = V.geometry_verdict(*wide, power=_power(0.6))
    assert weak["verdict"] == "inconclusive" and "underpowered below 0.60" in weak["power"]
    assert "80% power" in weak["power"] and weak["detectable"]["id_twonn"] == pytest.approx(0.6)
    mixed = V.geometry_verdict(*_stage2(10.0, 2.0, 0.4, -0.5, 0.7), power=_power(0.6))
    assert mixed["verdict"] == "inconclusive" and "underpowered below 0.60" in mixed["power"]


def test_depth_confound_is_not_geometry_and_a_planted_law_beside_depth_is():
    """Issue 21's simulated real-shaped runs (7 and 13 layers) through the geometry rule
    in closed form (geowall.power.decide, the rule the design analysis simulates): an
    exponent caused by depth, with intrinsic dimension (or every summary) tracking depth,
    is almost never 'supported'; a planted ID law on an ID correlated with depth is."""
    from geowall import law, power

    shape = {"minilm": 7, "mpnet": 13}
    cases = {
        "depth, ID tracks it": dict(depth_coef=0.6),
        "depth, all track it": dict(depth_coef=0.6, track_depth=law.SUMMARIES),
        "planted ID law": dict(coefs={"id_twonn": 0.12}, depth_r=0.7),
    }
    rate = {}
    for name, kw in cases.items():
        got = []
        for seed in range(10):
            geo, ex = simulate.simulate_depth_confound(n_layers=shape, seed=seed, **kw)
            tab = law.stage2_table(ex, geo, predictors=("depth", *law.SUMMARIES))
            if seed == 0 and name != "planted ID law":  # geometry does track depth here
                assert np.corrcoef(tab["id_twonn"], tab["depth"])[0, 1] > 0.8
            got.append(power.decide(tab, n_perm=99, seed=seed)["supported"])
        rate[name] = np.mean(got)
    assert rate["depth, ID tracks it"] <= 0.1 and rate["depth, all track it"] <= 0.1
    assert rate["planted ID law"] >= 0.8


@pytest.mark.slow
def test_geometry_verdict_on_sampled_laws_depth_confound_and_planted():
    """The notebook-04 path (PyMC laws, PSIS-LOO, residualised permutation null) on the two
    simulated runs: the depth-caused one is not 'supported', the planted one is."""
    from geowall import law

    sets = {k: law.DEFAULT_LAW_SETS[k] for k in ("models", "depth", "id", "depth+id", "depth+all4")}
    out = {}
    for name, kw in {"depth": dict(depth_coef=0.6), "planted": dict(coefs={"id_twonn": 0.12}, depth_r=0.7)}.items():
        geo, ex = simulate.simulate_depth_confound(n_layers={"minilm": 7, "mpnet": 13}, seed=1, **kw)
        cmp_, fits = law.compare_laws(
            ex, geo, sets=sets, seed=0, check=False, settings=SamplerSettings(draws=500, tune=500, chains=2)
        )
        coefs = pd.concat([law.law_coefficients(f) for f in fits.values()]).assign(scope="real")
        null = [
            {
                "scope": "real",
                "predictor_set": s,
                "p_value": nulls.permutation_null(law.stage2_table(ex, geo, predictors=p), p, n_perm=200)["p_value"],
            }
            for s, p in sets.items()
            if p
        ]
        out[name] = V.geometry_verdict(cmp_.assign(scope="real"), coefs, pd.DataFrame(null))
    assert out["depth"]["verdict"] != "supported", out["depth"]
    assert out["planted"]["verdict"] == "supported", out["planted"]


def _transfer(rows, depth_r2_shift=0.0):
    """Law rows (a, b, n_layers, spearman, its HDI low end, permutation p); the law's
    level-shift R^2 is 0.2 and depth's on the same layers ``depth_r2_shift``."""
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
                "depth_r2_shift": depth_r2_shift,
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


def test_transfer_counts_real_directions_that_beat_depth_only():
    """Issue 21 item 4: the zoo's directions are a known-answer check and the random twin a
    contrast, never deciding the verdict; a real direction that does not beat depth on the
    same layers does not transfer."""
    kinds = {"a": "pretrained", "b": "pretrained", "z1": "zoo", "z2": "zoo", "a-rnd": "random"}
    rows = [
        ("a", "b", 12, 0.1, -0.4, 0.4),  # the real direction fails
        ("z1", "z2", 12, 0.9, 0.6, 0.001),  # the zoo transfers
        ("a", "a-rnd", 12, 0.8, 0.4, 0.001),  # the random twin "transfers"
    ]
    v = V.transfer_verdict(_transfer(rows), kinds=kinds)
    assert v["verdict"] == "not supported"
    assert "known-answer check (zoo): z1->z2" in v["evidence"] and "contrast (random twin): a->a-rnd" in v["evidence"]
    assert "z1" not in v["numbers"] and "a→b" in v["numbers"]
    # the kinds may come from the table itself (notebook 05 writes them)
    t = _transfer(rows).assign(
        train_kind=lambda d: d.train_model.map(kinds), test_kind=lambda d: d.test_model.map(kinds)
    )
    assert V.transfer_verdict(t)["verdict"] == "not supported"
    # a significant ordering that depth matches on the same layers is not a transfer of geometry
    good = [("a", "b", 12, 0.8, 0.4, 0.001)]
    assert V.transfer_verdict(_transfer(good), kinds=kinds)["verdict"] == "supported"
    assert V.transfer_verdict(_transfer(good, depth_r2_shift=0.5), kinds=kinds)["verdict"] == "not supported"
    # depth read from the direction's depth row when the law row lacks it (scored on as many layers)
    law = _transfer(good).drop(columns="depth_r2_shift")
    depth = law.assign(predictor_set="depth", r2_shift=0.5)
    assert V.transfer_verdict(pd.concat([law, depth]), kinds=kinds)["verdict"] == "not supported"
    # only a zoo and a contrast: nothing real to judge
    only = V.transfer_verdict(_transfer(rows[1:]), kinds=kinds)
    assert only["verdict"] == "inconclusive" and "no direction between real models" in only["numbers"]
    assert "Spearman" in V.transfer_verdict(_transfer(good), kinds=kinds)["power"]


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


def _exps(capable):
    return pd.DataFrame(
        [{"model": m, "layer": i, "primary": True, "floor_term": i < n} for m, n in capable.items() for i in range(7)]
    )


def test_floor_rule():
    out = V.floor_verdict(_floors({"gemma-2-2b": 1, "gemma-2-9b": 1}))
    assert out["verdict"] == "inconclusive" and "too few" in out["evidence"]
    assert V.floor_verdict(_floors({"m": 5}))["verdict"] == "supported"
    assert V.floor_verdict(_floors({"m": 5}, rho_lo=-0.8, rho_mean=-0.1))["verdict"] == "not supported"


def test_floor_claim_not_testable_when_the_profile_has_too_few_showcase_layers():
    """Issue 21 item 3: one floor-capable layer per real model cannot rank floors whatever they
    read: 'not testable with this profile'; the zoo's ranked floors never decide it."""
    kinds = {"minilm": "pretrained", "mpnet": "pretrained", "synth-a": "zoo"}
    f = _floors({"minilm": 1, "mpnet": 1, "synth-a": 3})
    v = V.floor_verdict(f, _exps({"minilm": 1, "mpnet": 1, "synth-a": 3}), kinds)
    assert v["verdict"] == V.NOT_TESTABLE and "minilm: 1" in v["numbers"]
    assert "known-answer check (zoo) synth-a" in v["evidence"]
    # without the showcase count, too few identified floors is inconclusive (the zoo does not decide)
    assert V.floor_verdict(f, kinds=kinds)["verdict"] == "inconclusive"
    # three floor-capable layers: testable, judged on the real model's floors
    v3 = V.floor_verdict(_floors({"minilm": 3, "synth-a": 3}), _exps({"minilm": 3}), kinds)
    assert v3["verdict"] == "supported" and "ranking needs 3" in v3["power"]


def test_verdict_table_has_every_claim_numbers_power_and_rule():
    t = V.verdict_table()
    assert list(t["key"]) == ["geometry", "transfer", "floors"]
    assert {"claim", "verdict", "numbers", "power", "evidence", "rule"} <= set(t.columns)
    assert t["verdict"].eq("inconclusive").all() and t["rule"].str.len().gt(50).all()
    assert "Gelman" in V.RULES["geometry"] and "depth" in V.RULES["transfer"]


def test_verdict_table_reads_a_table_without_its_columns_as_absent():
    """Readers of a run folder (the report, `geowall diff`) pass whatever artefacts they find:
    an artefact written before a verdict existed must read like a step that did not run."""
    old = pd.DataFrame({"x": [1.0]})
    none = V.verdict_table()
    stale = V.verdict_table(compare=old, transfer=old, floors=old)
    assert stale[["key", "verdict", "numbers"]].equals(none[["key", "verdict", "numbers"]])
