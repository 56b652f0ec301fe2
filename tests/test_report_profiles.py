"""The paper works for any profile: every variable index.qmd quotes exists for every profile,
and the gemma-2 profile's paper renders from a simulated artefact set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geowall import report
from geowall.config import load_profile
from geowall.io import flatten, write_json, write_parquet
from geowall.results import NA, report_variables

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = ("id_twonn", "pr", "curvature", "local_residual")


def simulate_artefacts(cfg, run_dir: Path, seed: int = 0) -> None:
    """One of each table the paper quotes, for the profile's models and layers."""
    rng = np.random.default_rng(seed)
    pairs = [(m.name, layer) for m in cfg.models for layer in cfg.layers_of(m)]
    write_json(
        run_dir / "corpus_stats.json",
        {
            "words": 3_000_000,
            "docs_train": 40_000,
            "docs_eval": 10_000,
            "minilm_tokens_train": 3_100_000,
            "minilm_tokens_eval": 800_000,
        },
    )
    write_parquet(
        run_dir / "sae_metrics.parquet",
        pd.DataFrame(
            [
                {"model": m, "layer": la, "width": w, "fvu": rng.uniform(0.05, 0.5)}
                for m, la in pairs
                for w in (16384, 65536)
            ]
        ),
    )
    write_parquet(
        run_dir / "geometry.parquet",
        pd.DataFrame(
            [
                {"model": m, "layer": la, "summary": s, "estimate": rng.uniform(5, 40)}
                for m, la in pairs
                for s in SUMMARIES
            ]
        ),
    )
    write_parquet(
        run_dir / "geometry_sensitivity.parquet",
        pd.DataFrame(
            [
                {
                    "model": m,
                    "layer": la,
                    "summary": s,
                    "knob": "k",
                    "setting": setting,
                    "default": setting == "default",
                    "estimate": rng.uniform(5, 40),
                }
                for m, la in pairs
                for s in SUMMARIES
                for setting in ("default", "half")
            ]
        ),
    )
    write_parquet(
        run_dir / "exponents.parquet",
        pd.DataFrame(
            [
                {
                    "model": m,
                    "layer": la,
                    "primary": True,
                    "floor_identified": la % 7 == 0,
                    "floor_term": la % 5 == 0,
                    "alpha_mean": rng.uniform(0.1, 0.6),
                }
                for m, la in pairs
            ]
        ),
    )
    sets = ["all4", "id_twonn", "models", "depth"]
    write_parquet(
        run_dir / "law_compare.parquet",
        pd.DataFrame(
            {
                "scope": "real",
                "predictor_set": sets,
                "elpd_diff_vs_models": [3.0, 1.0, 0.0, -1.0],
                "se_diff_vs_models": [1.0, 1.0, 0.0, 1.0],
                "max_pareto_k": [0.4, 0.4, 0.3, 0.3],
                "rank": [0, 1, 2, 3],
            }
        ),
    )
    write_parquet(
        run_dir / "law.parquet",
        pd.DataFrame(
            [
                {
                    "scope": "real",
                    "predictor_set": "all4",
                    "term": t,
                    "coef_mean": 0.1 * i,
                    "coef_hdi_3": 0.1 * i - 0.2,
                    "coef_hdi_97": 0.1 * i + 0.2,
                    "b_mean": 0.1 * i,
                    "b_sd": 0.1,
                    "b_hdi_3": 0.1 * i - 0.2,
                    "b_hdi_97": 0.1 * i + 0.2,
                    "p_gt0": 0.5 + 0.1 * i,
                }
                for i, t in enumerate(SUMMARIES)
            ]
        ),
    )
    write_parquet(
        run_dir / "law_null.parquet",
        pd.DataFrame({"scope": "real", "predictor_set": sets, "p_value": [0.02, 0.2, 1.0, 1.0]}),
    )
    write_parquet(
        run_dir / "transfer.parquet",
        pd.DataFrame(
            [
                {
                    "train_model": a,
                    "test_model": b,
                    "predictor_set": ps,
                    "r2": 0.4,
                    "r2_shift": 0.5,
                    "spearman": 0.6,
                    "spearman_hdi_3": 0.3,
                    "spearman_hdi_97": 0.8,
                    "p_perm_spearman": 0.01,
                    "coverage90": 0.9,
                    "n_layers": 26,
                    "ceiling_r2": 0.7,
                }
                for a, b in cfg.transfer
                for ps in ("law", "depth")
            ]
        ),
    )
    write_parquet(
        run_dir / "floors.parquet",
        pd.DataFrame(
            [
                {
                    "row_type": "spearman",
                    "model": m.name,
                    "summary": s,
                    "n_layers": 1,
                    "rho_mean": 0.3,
                    "rho_hdi_3": -0.5,
                    "rho_hdi_97": 0.9,
                    "p_gt0": 0.7,
                    "status": "ranked",
                }
                for m in cfg.models[:1]
                for s in SUMMARIES
            ]
        ),
    )
    # one model's floor rows: glance._floors indexes the table by summary alone (see /work/notes/i13.md)


def paper_keys() -> set[str]:
    return set(report.VAR.findall((ROOT / "index.qmd").read_text()))


@pytest.mark.parametrize("profile", ["smoke", "default", "gemma-2"])
def test_every_paper_variable_exists_for_every_profile(profile, tmp_path):
    cfg = load_profile(profile)
    variables = flatten(report_variables(cfg, tmp_path))  # no artefacts at all
    missing = paper_keys() - set(variables)
    assert not missing, f"index.qmd quotes {sorted(missing)}, which profile {profile} does not define"
    names = {m.name for p in ("smoke", "default", "gemma-2") for m in load_profile(p).models}
    assert not [k for k in paper_keys() if set(k.split(".")) & names], "index.qmd hard-codes a model name"


def test_gemma2_paper_renders_from_simulated_artefacts(tmp_path):
    cfg = load_profile("gemma-2")
    simulate_artefacts(cfg, tmp_path)
    variables = flatten(report_variables(cfg, tmp_path))
    _, body = report._front_matter((ROOT / "index.qmd").read_text())
    body = report.EMBED.sub("", body)
    body = report.FIGREF.sub(lambda m: f"Figure ({m.group(1)})", body)
    text = report.VAR.sub(lambda m: str(variables[m.group(1)]), body)
    assert NA not in text and "{{<" not in text
    assert "gemma-2-2b" in text and "gemma-2-9b" in text and "released Gemma Scope" in text
    assert "68 layers over 2 models" in text and "with SAEs trained here" not in text
    assert "TopK SAEs are trained briefly" not in text and "Released SAEs on our tokens" in text
    assert re.search(r"gemma-2-9b: TwoNN dimension \d+\.\d to \d+\.\d, curvature", text)
    assert "no synthetic zoo" in text
    html = report._pandoc(text, {})
    assert "Gemma Scope JumpReLU SAE" in html and "gemma-scope-9b-pt-res" in html


def test_default_profile_text_says_trained_and_offline(tmp_path):
    v = report_variables(load_profile("smoke"), tmp_path)["text"]
    assert "not Gemma 2" in v["sources"] and "trained here" in v["sources"] and "offline on a CPU" in v["sources"]
    assert v["saes"].startswith("For every layer of") and "Python standard library" in v["corpus"]
    assert "Released" not in v["sae_limitations"]


def test_paper_says_how_many_trained_saes_met_the_plateau(tmp_path):
    from geowall.io import write_parquet

    cfg = load_profile("smoke")
    assert report_variables(cfg, tmp_path)["saes"]["plateau"].endswith("checked for a plateau.")  # no run yet
    rows = pd.DataFrame(
        {"model": "m", "layer": 0, "width": [8, 16, 32, 64], "k": 2, "fvu": 0.5, "plateaued": [True, True, False, None]}
    )
    write_parquet(tmp_path / "sae_metrics.parquet", rows)
    text = report_variables(cfg, tmp_path)["saes"]["plateau"]
    assert "2 of 3 (67%) met the criterion" in text and f"at most {cfg.sae.plateau_tol:.0%}" in text
    released = report_variables(load_profile("gemma-2"), tmp_path)["saes"]["plateau"]
    assert "released SAEs are evaluated as published" in released


def test_paper_quotes_the_budget_check_and_pretrained_knob_flips(tmp_path):
    from geowall.io import write_parquet

    cfg = load_profile("default")
    assert report_variables(cfg, tmp_path)["saes"]["budget"] == NA  # a check, not run yet
    no_check = load_profile("default", ["sae.budget_check=null"])
    assert "runs no budget check" in report_variables(no_check, tmp_path)["saes"]["budget"]
    rows = [
        {"model": m, "layer": la, "k": k, "steps_base": 150, "steps_long": 300, "n_widths": 2,
         "alpha_base": a, "alpha_long": a * 1.12, "rel_change": 0.12, "fvu_ratio": 0.95,
         "plateau_base": 0.5, "plateau_long": 1.0}
        for m, la, a in [("minilm", 2, 0.2), ("minilm", 3, 0.3), ("mpnet", 6, 0.25)]
        for k in (8, 16)
    ]  # fmt: skip
    write_parquet(tmp_path / "budget_check.parquet", pd.DataFrame(rows))
    text = report_variables(cfg, tmp_path)["saes"]["budget"]
    assert "minilm 2, 3 and mpnet 6" in text and "2 times the steps" in text and "+12.0%" in text
    assert "is not met" in text and "ρ of 1.00" in text
    assert report_variables(load_profile("gemma-2"), tmp_path)["saes"]["budget"] == ""  # released SAEs
    sens = pd.DataFrame(
        [
            {"model": m, "layer": la, "summary": "curvature", "knob": "patch", "setting": st, "default": st == 1.0,
             "estimate": float(la if (m == "minilm" or st == 1.0) else -la)}
            for m in ("minilm", "minilm-random")
            for la in range(6)
            for st in (1.0, 2.0)
        ]
    )  # fmt: skip
    write_parquet(tmp_path / "geometry_sensitivity.parquet", sens)
    g = report_variables(cfg, tmp_path)["geometry"]
    assert g["sensitivity_flags"] == "no summary"  # the pretrained ordering holds
    assert (
        "1 (model, summary, setting)" in g["sensitivity_other"] and "minilm-random curvature" in g["sensitivity_other"]
    )


def test_paper_says_decoder_checkpoints_are_dequantised(tmp_path):
    assert report_variables(load_profile("smoke"), tmp_path)["text"]["quantised"] == ""
    default = report_variables(load_profile("default"), tmp_path)["text"]["quantised"]
    assert default.startswith("gemma3 is a dequantised 4/5-bit GGUF checkpoint (gemma3 Q4_K_M)")
    text = report_variables(load_profile("decoders"), tmp_path)["text"]["quantised"]
    assert text.startswith("gemma3 and smollm2 are dequantised 4/5-bit GGUF checkpoints") and "raw" in text


def _decoder_geometry(run_dir: Path, curvature_of_pr: dict) -> None:
    """A geometry table for the decoders profile's pretrained models, layers 0..12: PR alternates
    between massive-dimension layers (PR 1.5 to 3.5) and spread ones (20 to 80)."""
    rng = np.random.default_rng(1)
    rows = []
    for model, curv in curvature_of_pr.items():
        for layer in range(13):
            pr = float(rng.uniform(1.5, 3.5) if layer % 3 == 0 else rng.uniform(20, 80))
            values = {"pr": pr, "id_twonn": 8.0, "curvature": curv(pr, rng), "local_residual": pr / 500}
            rows += [{"model": model, "layer": layer, "summary": s, "estimate": v} for s, v in values.items()]
    write_parquet(run_dir / "geometry.parquet", pd.DataFrame(rows))


def test_paper_measures_how_far_decoder_summaries_follow_massive_dimensions(tmp_path):
    """Planted: gemma3's curvature falls with PR (rank -1), smollm2's is independent of it; the
    local residual rises with PR in both (rank +1). The sentence quotes the measured values."""
    cfg = load_profile("decoders")
    assert report_variables(cfg, tmp_path)["text"]["massive"] == ""  # no geometry table yet
    _decoder_geometry(tmp_path, {"gemma3": lambda pr, rng: 10 / pr, "smollm2": lambda pr, rng: rng.uniform(0.5, 3)})
    text = report_variables(cfg, tmp_path)["text"]["massive"]
    g = pd.read_parquet(tmp_path / "geometry.parquet")
    w = g[(g.model == "smollm2") & (g.layer > 0)].pivot(index="layer", columns="summary", values="estimate")
    rho = w.curvature.corr(w.pr, method="spearman")
    assert abs(rho) < 0.6  # the null really is one
    assert "in gemma3 over depth, Spearman with the participation ratio -1.00 (curvature) and 1.00 (local" in text
    assert f"in smollm2 over depth, Spearman with the participation ratio {rho:.2f} (curvature) and 1.00" in text
    low = w.pr < 4
    median = w.curvature[low].median()
    assert f"at its {int(low.sum())} layers with PR < 4 curvature reads a median {median:.2f}" in text
    assert report_variables(load_profile("smoke"), tmp_path)["text"]["massive"] == ""  # no decoder LM
