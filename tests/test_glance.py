"""The "Results at a glance" paragraph says what constructed artefacts hold, and nothing they do not."""

import pandas as pd

from geowall.glance import at_a_glance
from geowall.io import write_parquet


def _artefacts(run_dir, *, curvature_lo, law_r2):
    write_parquet(
        run_dir / "sae_metrics.parquet",
        pd.DataFrame(
            {"model": ["a"] * 4 + ["b"] * 2, "layer": [0, 0, 1, 1, 0, 0], "fvu": [0.5, 0.25, 0.4, 0.125, 0.3, 0.2]}
        ),
    )
    write_parquet(
        run_dir / "exponents.parquet",
        pd.DataFrame(
            {
                "model": ["a", "a", "b"],
                "layer": [0, 1, 0],
                "primary": True,
                "alpha_mean": [0.3, 0.7, 0.5],
                "floor_identified": [True, False, False],
            }
        ),
    )
    write_parquet(run_dir / "law_compare.parquet", pd.DataFrame({"predictor_set": ["all4", "depth"], "rank": [0, 1]}))
    terms = ["id_twonn", "pr", "curvature", "local_residual", "intercept"]
    write_parquet(
        run_dir / "law.parquet",
        pd.DataFrame(
            {
                "predictor_set": "all4",
                "term": terms,
                "b_mean": [0.0, 0.1, -0.5, 0.0, 1.0],
                "b_hdi_3": [-0.2, -0.1, curvature_lo, -0.3, 0.9],
                "b_hdi_97": [0.2, 0.3, -0.2, 0.3, 1.1],
            }
        ),
    )
    write_parquet(
        run_dir / "transfer.parquet",
        pd.DataFrame(
            {
                "train_model": ["a"] * 3 + ["b"] * 3,
                "test_model": ["b"] * 3 + ["a"] * 3,
                "predictor_set": ["law", "mean", "depth"] * 2,
                "r2": [law_r2, 0.1, 0.2, -0.5, 0.1, 0.2],
            }
        ),
    )
    write_parquet(
        run_dir / "floors.parquet",
        pd.DataFrame(
            {  # floors.floor_ordering's schema: model a ranks its 3 identified floors, model b has too few
                "row_type": ["floor", "spearman", "spearman", "spearman", "spearman"],
                "model": ["a", "a", "a", "b", "b"],
                "summary": [None, "curvature", "id_twonn", "curvature", "id_twonn"],
                "n_layers": [3, 3, 3, 1, 1],
                "status": [None, "ranked", "ranked", "too few", "too few"],
                "p_gt0": [None, 0.81, 0.4, None, None],
            }
        ),
    )


def test_glance_states_the_planted_findings(tmp_path):
    _artefacts(tmp_path, curvature_lo=-0.8, law_r2=0.6)
    text = at_a_glance(tmp_path, "toy")
    assert "'toy' profile" in text
    assert "6 SAEs over 3 layers of 2 models (held-out fvu 0.125 to 0.500)" in text
    assert "from 0.30 to 0.70" in text and "identified at 1 of 3 layers" in text
    assert "'all4' predicts the exponents best" in text
    # curvature's interval is all below zero; no other summary's interval excludes zero
    assert "a larger curvature goes with a smaller width exponent" in text
    assert "intrinsic dimension goes" not in text and "larger width exponent" not in text
    assert "beats both baselines" in text and "in 1 of 2 directions" in text
    assert "a (3 identified floors): curvature 0.81 and intrinsic dimension 0.40" in text and "b (" not in text
    assert "{" not in text and "`" not in text  # plain text for a Quarto var


def test_glance_reports_null_results_and_missing_steps_as_such(tmp_path):
    _artefacts(tmp_path, curvature_lo=-0.9, law_r2=0.0)
    law = pd.read_parquet(tmp_path / "law.parquet").assign(b_hdi_97=1.0)  # every interval straddles zero
    write_parquet(tmp_path / "law.parquet", law)
    text = at_a_glance(tmp_path, "toy")
    assert "no geometric coefficient's 94% interval excludes zero" in text
    assert "in 0 of 2 directions" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    text = at_a_glance(empty, "toy")
    assert (
        "SAE grid has not run yet" in text and "Stage 1 has not run yet" in text and "Stage 2 has not run yet" in text
    )
    assert "beats" not in text and "floors rise" not in text


def test_glance_says_when_no_model_has_enough_identified_floors(tmp_path):
    _artefacts(tmp_path, curvature_lo=-0.8, law_r2=0.6)
    f = pd.read_parquet(tmp_path / "floors.parquet")
    write_parquet(tmp_path / "floors.parquet", f[f.model == "b"])
    text = at_a_glance(tmp_path, "toy")
    assert "Too few floors are identified to rank them against the geometry (b: 1 identified)" in text
    assert "floors rise" not in text


def test_glance_states_the_depth_comparison_and_the_power_in_words(tmp_path):
    """Issue 21 item 6: what depth alone gains, what geometry adds beyond it, the design's
    power; transfer counted between real models against depth on the same layers; a profile
    with too few showcase layers says the floor claim is not testable."""
    _artefacts(tmp_path, curvature_lo=-0.8, law_r2=0.6)
    write_parquet(
        tmp_path / "law_compare.parquet",
        pd.DataFrame(
            {
                "scope": "real",
                "predictor_set": ["depth", "all4", "depth+id", "models"],
                "rank": [0, 2, 1, 3],
                "elpd_diff_vs_models": [9.5, 2.2, 10.0, 0.0],
                "se_diff_vs_models": [2.6, 1.5, 2.7, 0.0],
                "elpd_diff_vs_depth": [0.0, -7.3, 0.5, -9.5],
                "se_diff_vs_depth": [0.0, 2.0, 1.1, 2.6],
            }
        ),
    )
    write_parquet(
        tmp_path / "law_null.parquet", pd.DataFrame({"scope": "real", "predictor_set": ["depth+id"], "p_value": [0.41]})
    )
    write_parquet(
        tmp_path / "law_power.parquet",
        pd.DataFrame(
            {
                "summary": ["id_twonn"] * 3 + ["curvature"] * 3,
                "slope": [0.0, 0.1, 0.2] * 2,
                "p_supported": [0.02, 0.4, 0.9, 0.03, 0.2, 0.6],
                "n_sim": 100,
            }
        ),
    )
    t = pd.read_parquet(tmp_path / "transfer.parquet")
    t = pd.concat([t, t.head(1).assign(test_model="z", train_model="y")], ignore_index=True)
    t["r2_shift"], t["depth_r2_shift"] = 0.3, [0.1, None, None, 0.5, None, None, 0.0]
    t["train_kind"] = t.train_model.map({"a": "pretrained", "b": "pretrained", "y": "zoo"})
    t["test_kind"] = t.test_model.map({"a": "pretrained", "b": "pretrained", "z": "zoo"})
    write_parquet(tmp_path / "transfer.parquet", t)
    e = pd.read_parquet(tmp_path / "exponents.parquet").assign(floor_term=[True, False, True], alpha_plain=True)
    write_parquet(tmp_path / "exponents.parquet", e)
    text = at_a_glance(tmp_path, "toy")
    assert "'depth' predicts the exponents best" in text  # the depth + geometry sets are judged apart
    assert "Relative depth alone improves on the model intercepts on the real networks by 9.5 (SE 2.6)" in text
    assert "('depth+id') adds 0.5 (SE 1.1) beyond depth, permutation p 0.410" in text
    assert "not more than two standard errors" in text
    assert "intrinsic dimension 0.18 and curvature above 0.20 with 80% probability" in text
    assert "'supported' in 3% of runs" in text
    assert "between real pretrained models" in text and "in 1 of 2 directions" in text
    assert "same quantity at every layer" in text
    assert "not testable with this profile" in text and "it has 1 in a and 1 in b" in text
    assert "{" not in text and "`" not in text
