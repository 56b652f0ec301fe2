"""The numbers the paper quotes, read from a run's artefacts (never typed by hand).

:func:`report_variables` returns a nested mapping written to ``_variables.yml`` and used
by ``index.qmd`` as ``{{< var key.sub >}}``. Every key is always present: a missing
artefact gives the string "n/a (step not run)", so the paper still renders and says so.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from geowall.config import Profile
from geowall.io import read_json, read_parquet

NA = "n/a (step not run)"
SOURCE_NAMES = {"minilm": "all-MiniLM-L6-v2 (pretrained)", "minilm-random": "all-MiniLM-L6-v2 (random init)",
                "mpnet": "all-mpnet-base-v2 (pretrained)", "mpnet-random": "all-mpnet-base-v2 (random init)",
                "synthetic": "synthetic manifold zoo", "hf": "Hugging Face causal LM"}


def _fmt(x, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "n/a"
    if isinstance(x, (int,)) or (isinstance(x, float) and float(x).is_integer() and abs(x) >= 100):
        return f"{int(x):,}"
    return f"{x:.{nd}f}"


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    p = run_dir / name
    return read_parquet(p) if p.is_file() else None


def report_variables(cfg: Profile, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    models = ", ".join(f"{m.name} ({m.hf_model if m.source == 'hf' else SOURCE_NAMES[m.source]}"
                       f"{', zoo ' + m.zoo if m.zoo else ''})" for m in cfg.models)
    v: dict = {
        "profile": {"name": cfg.name, "description": cfg.description, "models": models, "seed": cfg.seed,
                    "n_train": _fmt(cfg.activations.n_train), "n_eval": _fmt(cfg.activations.n_eval),
                    "is_gemma": str(any(m.source == "hf" for m in cfg.models)).lower()},
    }
    stats = run_dir / "corpus_stats.json"
    c = read_json(stats) if stats.is_file() else {}
    v["corpus"] = {"words": _fmt(c.get("words")) if c else NA, "docs": _fmt(c["docs_train"] + c["docs_eval"]) if c else NA,
                   "tokens": _fmt(c["minilm_tokens_train"] + c["minilm_tokens_eval"]) if c else NA}
    m = _read(run_dir, "sae_metrics.parquet")
    v["saes"] = {"n": _fmt(len(m)) if m is not None else NA,
                 "layers": _fmt(m.groupby(["model", "layer"]).ngroups) if m is not None else NA,
                 "fvu_min": _fmt(m.fvu.min(), 3) if m is not None else NA,
                 "fvu_max": _fmt(m.fvu.max(), 3) if m is not None else NA}
    v["geometry"] = _geometry_variables(cfg, run_dir)
    e = _read(run_dir, "exponents.parquet")
    v["stage1"] = {"form": cfg.stage1.primary_form}
    if e is not None:
        p = e[e.primary]
        v["stage1"].update({"n_floor_identified": _fmt(int(p.floor_identified.sum())), "n_layers": _fmt(len(p)),
                            "alpha_min": _fmt(p.alpha_mean.min()), "alpha_max": _fmt(p.alpha_mean.max())})
        for model, gm in p.groupby("model"):
            v["stage1"][model] = {"alpha_mean": _fmt(gm.alpha_mean.mean())}
    else:
        v["stage1"].update({k: NA for k in ("n_floor_identified", "n_layers", "alpha_min", "alpha_max")})
    cmp_ = _read(run_dir, "law_compare.parquet")
    coefs = _read(run_dir, "law.parquet")
    v["stage2"] = {"best_set": str(cmp_.sort_values("rank").predictor_set.iloc[0]) if cmp_ is not None else NA}
    if coefs is not None:
        full = coefs[(coefs.predictor_set == "all4")].set_index("term")
        for term in ("id_twonn", "pr", "curvature", "local_residual"):
            r = full.loc[term]
            v["stage2"][term] = {"b": _fmt(r.b_mean), "lo": _fmt(r.b_hdi_3), "hi": _fmt(r.b_hdi_97), "p_gt0": _fmt(r.p_gt0)}
    t = _read(run_dir, "transfer.parquet")
    v["transfer"] = {}
    if t is not None:
        for r in t.itertuples():
            key = f"{r.train_model}_to_{r.test_model}"
            v["transfer"].setdefault(key, {})[r.predictor_set] = {"r2": _fmt(r.r2), "spearman": _fmt(r.spearman),
                                                                  "coverage90": _fmt(r.coverage90)}
    f = _read(run_dir, "floors.parquet")
    v["floors"] = {"n_layers": NA}
    if f is not None:
        rho = f[f.row_type == "spearman"].set_index("summary")
        v["floors"]["n_layers"] = _fmt(int(rho.n_layers.iloc[0]))
        for s in rho.index:
            v["floors"][s] = {"rho": _fmt(rho.loc[s, "rho_mean"]), "p_gt0": _fmt(rho.loc[s, "p_gt0"])}
    return v


def _geometry_variables(cfg: Profile, run_dir: Path) -> dict:
    """Per model: TwoNN and curvature ranges, layers whose curvature is withheld (tangent cap);
    the summaries whose layer ordering flips under another setting; the zoo's curvature check."""
    from geowall import geometry

    g = _read(run_dir, "geometry.parquet")
    out: dict = {}
    for model in dict.fromkeys([x.name for x in cfg.models] + ["minilm", "minilm-random"]):  # index.qmd names these
        rows = g[g.model == model] if g is not None else None
        if rows is None or not len(rows):
            out[model] = {k: NA for k in ("id_min", "id_max", "curv_min", "curv_max", "n_withheld", "n_layers")}
            continue
        ids, curv = rows[rows.summary == "id_twonn"].estimate, rows[rows.summary == "curvature"]
        withheld = int(curv.estimate.isna().sum())
        out[model] = {"id_min": _fmt(ids.min(), 1), "id_max": _fmt(ids.max(), 1),
                      "curv_min": _fmt(curv.estimate.min(), 2) if withheld < len(curv) else "n/a",
                      "curv_max": _fmt(curv.estimate.max(), 2) if withheld < len(curv) else "n/a",
                      "n_withheld": str(withheld), "n_layers": str(len(curv))}
    sens = _read(run_dir, "geometry_sensitivity.parquet")
    if sens is not None:
        agree = geometry.rank_agreement(sens)
        flagged = sorted(set(agree[agree.flipped].summary))
        out["sensitivity_flags"] = ", ".join(flagged) if flagged else "none"
        ok = agree[agree.summary != "id_mle"].rho.dropna()
        out["sensitivity_min_rho"] = _fmt(ok.min(), 2) if len(ok) else "n/a"
    else:
        out["sensitivity_flags"] = out["sensitivity_min_rho"] = NA
    out["zoo_curv_rho"] = NA
    if g is not None and any(m.source == "synthetic" for m in cfg.models):
        from scipy.stats import spearmanr

        from geowall import layers

        try:
            truth = layers.truth_table(cfg, run_dir)
        except Exception:  # activations of the zoo absent: the paper says "n/a"
            truth = pd.DataFrame()
        if len(truth):
            est = g[g.summary == "curvature"][["model", "layer", "estimate"]]
            both = truth.merge(est, on=["model", "layer"]).dropna(subset=["estimate"])
            if len(both) >= 3:
                out["zoo_curv_rho"] = _fmt(spearmanr(both.curvature_true, both.estimate).statistic, 2)
    return out


def flatten(v: dict, prefix: str = "") -> dict[str, str]:
    """Nested variables -> {"a.b.c": value} (how Quarto resolves dotted ``var`` keys)."""
    out = {}
    for k, x in v.items():
        key = f"{prefix}{k}"
        if isinstance(x, dict):
            out.update(flatten(x, key + "."))
        else:
            out[key] = x
    return out
