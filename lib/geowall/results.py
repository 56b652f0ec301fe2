"""The numbers the paper quotes, read from a run's artefacts (never typed by hand).

:func:`report_variables` returns a nested mapping written to ``_variables.yml`` and used
by ``index.qmd`` as ``{{< var key.sub >}}``. Every key is always present: a missing
artefact gives the string "n/a (step not run)", so the paper still renders and says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geowall import geometry, layers, sae
from geowall.activations import ActivationError
from geowall.config import Profile
from geowall.glance import at_a_glance
from geowall.io import read_json, read_parquet
from geowall.law import DEPTH_SETS, model_kinds
from geowall.power import power_words
from geowall.transfer import FEW_LAYERS
from geowall.transfer import law_rows as _law_rows
from geowall.verdicts import verdict_table

NA = "n/a (step not run)"
SOURCE_NAMES = {
    "minilm": "all-MiniLM-L6-v2 (pretrained)",
    "minilm-random": "all-MiniLM-L6-v2 (random init)",
    "mpnet": "all-mpnet-base-v2 (pretrained)",
    "mpnet-random": "all-mpnet-base-v2 (random init)",
    "gemma3": "Gemma 3 270M (pretrained; dequantised from a 4/5-bit Q4_K_M GGUF, not the bf16 weights)",
    "gemma3-random": "Gemma 3 270M (random init)",
    "smollm2": "SmolLM2-135M-Instruct (pretrained; dequantised from a 4-bit Q4_1 GGUF, not the bf16 weights)",
    "smollm2-random": "SmolLM2-135M-Instruct (random init)",
    "synthetic": "synthetic manifold zoo",
    "hf": "Hugging Face causal LM",
}


def _fmt(x, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and pd.isna(x)):
        return "n/a"
    if isinstance(x, (int,)) or (isinstance(x, float) and float(x).is_integer() and abs(x) >= 100):
        return f"{int(x):,}"
    return f"{x:.{nd}f}"


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    p = run_dir / name
    return read_parquet(p) if p.is_file() else None


def _join(items: list[str]) -> str:
    items = [x for x in items if x]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def corpus_text(cfg: Profile) -> str:
    """What the activations were harvested from, from the profile's ``corpus`` section."""
    c = cfg.corpus
    if c.kind == "stdlib":
        return "an offline English corpus: the docstrings of the Python standard library and its help topics"
    if c.kind == "files":
        return f"{len(c.files)} user text file{'s' if len(c.files) != 1 else ''} (one document per paragraph)"
    if c.kind == "folder":
        return f"the text files under {c.folder} (one document per paragraph)"
    return (
        f"the Hugging Face dataset {c.dataset}{' (' + c.dataset_config + ')' if c.dataset_config else ''}, "
        f"split {c.split}, field {c.text_field}"
    )


def plateau_text(cfg: Profile, metrics: pd.DataFrame | None) -> str:
    """The paper's sentence on training to a plateau: how many trained SAEs met the criterion
    (``plateaued`` in ``sae_metrics.parquet``), when the run has learning curves."""
    if not any(m.sae_source == "trained" for m in cfg.models):
        return "The released SAEs are evaluated as published; their training was their authors'."
    text = "A layer's trained SAEs learn together, and each one's held-out learning curve is checked for a plateau"
    if metrics is None or "plateaued" not in metrics or metrics.plateaued.isna().all():
        return text + "."
    judged = metrics.plateaued.dropna().astype(bool)
    s = cfg.sae
    return (
        f"{text}: {int(judged.sum())} of {len(judged)} ({judged.mean():.0%}) met the criterion (held-out fvu "
        f"fell by at most {s.plateau_tol:.0%} over the last {s.plateau_window:.0%} of training"
        f"{', before the learning-rate decay' if s.lr_decay else ''}); the others were still improving "
        f"(notebook 01 lists them)."
    )


def budget_text(cfg: Profile, run_dir: Path) -> str:
    """The paper's sentence on the budget check (step 01's ``budget_check.parquet``): how far a
    longer step budget moves the pretrained layers' width exponents, against the criterion."""
    bc = cfg.sae.budget_check
    t = _read(run_dir, "budget_check.parquet")
    if not layers.budget_models(cfg):
        return ""  # released SAEs only, or no pretrained model: nothing to retrain
    if bc is not None and t is None:
        return NA
    if bc is None or t.empty:
        return (
            "This profile runs no budget check, so how much its width exponents owe to the training "
            "budget is not measured."
        )
    v = sae.budget_summary(t, max_change=bc.max_change, min_spearman=bc.min_spearman)
    layers_by_model = t.groupby("model").layer.unique()
    which = _join([f"{m} {', '.join(str(int(x)) for x in sorted(ls))}" for m, ls in layers_by_model.items()])
    steps = _join([f"{m} {int(g.steps_base.iloc[0])} to {int(g.steps_long.iloc[0])}" for m, g in t.groupby("model")])
    rho = "undefined (fewer than 3 layers)" if np.isnan(v["spearman"]) else _fmt(v["spearman"], 2)
    verdict = (
        "so the exponents are properties of the layers at this budget"
        if v["passes"]
        else "so the exponents still owe part of their value to the budget: compare them between layers and "
        "models trained alike, not with fully trained SAEs"
    )
    return (
        f"Retraining layers {which} with {bc.factor:g} times the steps ({steps}) changed their width "
        f"exponents by a median of {v['median_change']:+.1%} (largest {v['max_abs_change']:.1%}; the layers' ordering "
        f"kept a Spearman ρ of {rho}); the criterion asks for at most {bc.max_change:.0%} and ρ of "
        f"{bc.min_spearman:g}, and is {'met' if v['passes'] else 'not met'}, {verdict}."
    )


def source_texts(cfg: Profile) -> dict[str, str]:
    """Sentences of the paper that depend on the profile's sources (never on a model's name)."""
    released = [m for m in cfg.models if m.sae_source == "gemma-scope"]
    trained = [m for m in cfg.models if m.sae_source == "trained"]
    real_hf = [m for m in cfg.models if m.source == "hf"]
    desc = [
        f"{m.name} ({m.hf_model if m.source == 'hf' else SOURCE_NAMES[m.source]}{', zoo ' + m.zoo if m.zoo else ''})"
        for m in cfg.models
    ]
    if released and not trained:
        sources = (
            f"This is the study's own kind of setting: {_join(desc)}, each layer evaluated with released "
            f"Gemma Scope SAEs rather than SAEs trained here."
        )
    elif released:
        sources = (
            f"The models are {_join(desc)}; {_join([m.name for m in released])} use released Gemma Scope "
            f"SAEs, the others SAEs trained here."
        )
    else:
        sources = (
            f"The figures below are not Gemma 2 with Gemma Scope SAEs: they come from {_join(desc)}, "
            f"with SAEs trained here{'' if real_hf else ', all run offline on a CPU'}."
        )
    saes = []
    if trained:
        saes.append(
            f"for every layer of {_join([m.name for m in trained])} we train a grid of TopK SAEs over width "
            f"and k (showcase layers get a width grid spanning "
            f"{max(cfg.sae.showcase_width_multiples or [1]) / min(cfg.sae.showcase_width_multiples or [1]):g}x)"
        )
    if released:
        saes.append(
            f"for {_join([m.name for m in released])} we evaluate every released residual-stream Gemma Scope "
            f"JumpReLU SAE of the chosen layers ({_join(sorted({m.sae_release for m in released}))}: widths "
            f"16k to 1M at the showcase layers, several L0 targets per width), streamed one at a time"
        )
    limits = []
    if trained:
        limits.append(
            "Trained, not released, SAEs. The TopK SAEs here are trained briefly; part of their error is "
            "optimisation error, not geometry."
        )
    if released:
        limits.append(
            f"Released SAEs on our tokens. The Gemma Scope SAEs were trained by their authors on their own "
            f"data; here they are evaluated on {corpus_text(cfg)}, a distribution shift that adds to their "
            f"error."
        )
    quant = {"gemma3": "Q4_K_M", "smollm2": "Q4_1"}  # geowall.sources.decoders.RELEASES
    quantised = [m.name for m in cfg.models if m.source in quant]
    formats = ", ".join(f"{m.name} {quant[m.source]}" for m in cfg.models if m.source in quant)
    return {
        "sources": sources,
        "quantised": (
            f"{_join(quantised)} "
            + (
                "are dequantised 4/5-bit GGUF checkpoints"
                if len(quantised) > 1
                else "is a dequantised 4/5-bit GGUF checkpoint"
            )
            + f" ({formats}), not the original bf16 weights: every weight "
            "carries the quantisation's rounding noise, which may add small isotropic structure that the "
            "nearest-neighbour dimension and the local residual read as the model's own. Decoder residual "
            "streams are used raw, as Gemma Scope's SAEs were trained (each sequence's first position, an "
            "attention sink, is excluded); their massive dimensions stay in and dominate the participation ratio."
            if quantised
            else ""
        ),
        "saes": _join(saes)[:1].upper() + _join(saes)[1:],
        "corpus": corpus_text(cfg),
        "sae_limitations": " ".join(limits),
    }


# Below this participation ratio one coordinate carries most of a layer's variance (a massive dimension).
MASSIVE_PR = 4.0


def massive_text(cfg: Profile, run_dir: Path) -> str:
    """How far the decoder LMs' local summaries follow their massive dimensions, measured.

    Decoder streams are used raw (their massive dimensions stay in). Per pretrained decoder model
    with at least 5 layers past the embedding: the Spearman correlation over depth of curvature and
    of the local residual with the participation ratio, and their medians where PR < ``MASSIVE_PR``
    against elsewhere. Empty when the profile has no decoder LM or the run has no geometry table.
    """
    decoders = [m.name for m in cfg.models if m.source in ("gemma3", "smollm2")]
    g = _read(run_dir, "geometry.parquet")
    if not decoders or g is None:
        return ""
    parts = []
    for model in decoders:
        w = g[(g.model == model) & (g.layer > 0)].pivot(index="layer", columns="summary", values="estimate").dropna()
        if len(w) < 5 or not {"pr", "curvature", "local_residual"} <= set(w.columns):
            continue
        rho_c = w.curvature.corr(w.pr, method="spearman")
        rho_r = w.local_residual.corr(w.pr, method="spearman")
        low = w.pr < MASSIVE_PR
        where = (
            f"; at its {int(low.sum())} layers with PR < {MASSIVE_PR:g} curvature reads a median "
            f"{_fmt(w.curvature[low].median())} against {_fmt(w.curvature[~low].median())}, the local residual "
            f"{_fmt(w.local_residual[low].median(), 3)} against {_fmt(w.local_residual[~low].median(), 3)}"
            if 0 < low.sum() < len(w)
            else ""
        )
        parts.append(
            f"in {model} over depth, Spearman with the participation ratio {_fmt(rho_c)} (curvature) and "
            f"{_fmt(rho_r)} (local residual){where}"
        )
    if not parts:
        return ""
    return (
        "Part of what curvature and the local residual read in the decoder LMs may be their massive "
        "dimensions rather than the manifold: "
        + "; ".join(parts)
        + ". This is not yet separated from the geometry law's evidence."
    )


def report_variables(cfg: Profile, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    models = ", ".join(
        f"{m.name} ({m.hf_model if m.source == 'hf' else SOURCE_NAMES[m.source]}{', zoo ' + m.zoo if m.zoo else ''})"
        for m in cfg.models
    )
    v: dict = {
        "profile": {
            "name": cfg.name,
            "description": cfg.description,
            "models": models,
            "seed": cfg.seed,
            "n_train": _fmt(cfg.activations.n_train),
            "n_eval": _fmt(cfg.activations.n_eval),
            "is_gemma": str(any(m.source == "hf" for m in cfg.models)).lower(),
        },
        "glance": at_a_glance(run_dir, cfg.name, model_kinds(cfg.models)),  # the paper's opening paragraph
    }
    stats = run_dir / "corpus_stats.json"
    c = read_json(stats) if stats.is_file() else {}
    v["corpus"] = {
        "words": _fmt(c.get("words")) if c else NA,
        "docs": _fmt(c["docs_train"] + c["docs_eval"]) if c else NA,
        "tokens": _fmt(c["minilm_tokens_train"] + c["minilm_tokens_eval"]) if c else NA,
    }
    m = _read(run_dir, "sae_metrics.parquet")
    v["saes"] = {
        "n": _fmt(len(m)) if m is not None else NA,
        "layers": _fmt(m.groupby(["model", "layer"]).ngroups) if m is not None else NA,
        "fvu_min": _fmt(m.fvu.min(), 3) if m is not None else NA,
        "fvu_max": _fmt(m.fvu.max(), 3) if m is not None else NA,
        "plateau": plateau_text(cfg, m),
        "budget": budget_text(cfg, run_dir),
    }
    v["geometry"] = _geometry_variables(cfg, run_dir)
    real = [x.name for x in cfg.models if x.source != "synthetic"]
    ranges, per_model = [], []
    for model in [x.name for x in cfg.models]:
        gm = v["geometry"][model]
        ranges.append(f"{model} {gm['id_min']} to {gm['id_max']}")
        if model in real:
            per_model.append(
                f"{model}: TwoNN dimension {gm['id_min']} to {gm['id_max']}, curvature {gm['curv_min']} "
                f"to {gm['curv_max']}"
                + (
                    f", curvature missing at {gm['n_withheld']} of {gm['n_layers']} layers"
                    if gm["n_withheld"] not in ("0", NA)
                    else ""
                )
            )
    n_layers = sum(len(cfg.layers_of(m)) for m in cfg.models)
    have = (run_dir / "geometry.parquet").is_file()
    v["text"] = {
        **source_texts(cfg),
        "massive": massive_text(cfg, run_dir),
        "id_ranges": "; ".join(ranges) if have else NA,
        "geometry_models": ("; ".join(per_model) if per_model else "no real network in this profile") if have else NA,
        "layers": f"{n_layers} layers over {len(cfg.models)} model{'s' if len(cfg.models) != 1 else ''}",
        "zoo_check": (
            f"On the synthetic zoo, which holds equal-radius spheres of dimension 3 to 8 and flat "
            f"boxes, the estimated curvature orders the layers like the true one (Spearman "
            f"{v['geometry']['zoo_curv_rho']})."
        )
        if any(m.source == "synthetic" for m in cfg.models)
        else "This profile has no synthetic zoo, so no ground-truth check of the estimators runs here.",
    }
    e = _read(run_dir, "exponents.parquet")
    v["stage1"] = {"form": cfg.stage1.primary_form}
    if e is not None:
        p = e[e.primary]
        v["stage1"].update(
            {
                "n_floor_identified": _fmt(int(p.floor_identified.sum())),
                "n_layers": _fmt(len(p)),
                "n_floor_term": _fmt(int(p.floor_term.sum())) if "floor_term" in p else NA,
                "alpha_min": _fmt(p.alpha_mean.min()),
                "alpha_max": _fmt(p.alpha_mean.max()),
                "alpha_floor": (
                    "; ".join(
                        f"{r.model} layer {int(r.layer)}: {_fmt(r.alpha_floor_mean)} above the floor against "
                        f"{_fmt(r.alpha_mean)} plain"
                        for r in p[p.alpha_floor_mean.notna()].itertuples()
                    )
                    or "no layer has a floor term"
                )
                if "alpha_floor_mean" in p
                else "not in this run's exponents table",
            }
        )
        for model, gm in p.groupby("model"):
            v["stage1"][model] = {"alpha_mean": _fmt(gm.alpha_mean.mean())}
    else:
        v["stage1"].update(
            {k: NA for k in ("n_floor_identified", "n_layers", "n_floor_term", "alpha_min", "alpha_max", "alpha_floor")}
        )
    cmp_ = _read(run_dir, "law_compare.parquet")
    coefs = _read(run_dir, "law.parquet")
    null = _read(run_dir, "law_null.parquet")
    power_curve = _read(run_dir, "law_power.parquet")
    v["stage2"] = {
        "scope": NA,
        "best_set": NA,
        "elpd_gain": NA,
        "elpd_gain_se": NA,
        "p_perm": NA,
        "depth_gain": NA,
        "depth_gain_se": NA,
        "beyond_depth_set": NA,
        "beyond_depth_gain": NA,
        "beyond_depth_gain_se": NA,
        "beyond_depth_p_perm": NA,
        "power": NA,
    }
    if power_curve is not None and len(power_curve):
        v["stage2"]["power"] = power_words(power_curve)
    if cmp_ is not None and "scope" in cmp_:
        scope = "real" if (cmp_.scope == "real").any() else str(cmp_.scope.iloc[0])
        # Stage 2 ran: what it lacks was not fitted or computed (a table from an older run), not "not run"
        for k in ("depth_gain", "depth_gain_se", "beyond_depth_gain", "beyond_depth_gain_se", "beyond_depth_p_perm"):
            v["stage2"][k] = "n/a"
        v["stage2"]["beyond_depth_set"] = "none fitted"
        if power_curve is None:
            v["stage2"]["power"] = "not computed in this run"
        depth = cmp_[(cmp_.scope == scope) & (cmp_.predictor_set == "depth")]
        if len(depth):
            v["stage2"]["depth_gain"] = _fmt(float(depth.elpd_diff_vs_models.iloc[0]), 1)
            v["stage2"]["depth_gain_se"] = _fmt(float(depth.se_diff_vs_models.iloc[0]), 1)
        beyond = cmp_[(cmp_.scope == scope) & cmp_.predictor_set.isin(list(DEPTH_SETS))]
        if len(beyond) and "elpd_diff_vs_depth" in beyond:
            b = beyond.sort_values("elpd_diff_vs_depth", ascending=False).iloc[0]
            v["stage2"].update(
                {
                    "beyond_depth_set": str(b.predictor_set),
                    "beyond_depth_gain": _fmt(b.elpd_diff_vs_depth, 1),
                    "beyond_depth_gain_se": _fmt(b.se_diff_vs_depth, 1),
                }
            )
            if null is not None:
                n = null[(null.scope == scope) & (null.predictor_set == b.predictor_set)]
                v["stage2"]["beyond_depth_p_perm"] = _fmt(float(n.p_value.iloc[0]), 3) if len(n) else NA
        c = cmp_[(cmp_.scope == scope) & ~cmp_.predictor_set.isin(["models", "depth", *DEPTH_SETS])]
        best = c.sort_values("elpd_diff_vs_models", ascending=False).iloc[0]
        v["stage2"].update(
            {
                "scope": scope,
                "best_set": str(best.predictor_set),
                "elpd_gain": _fmt(best.elpd_diff_vs_models, 1),
                "elpd_gain_se": _fmt(best.se_diff_vs_models, 1),
            }
        )
        if null is not None:
            n = null[(null.scope == scope) & (null.predictor_set == best.predictor_set)]
            v["stage2"]["p_perm"] = _fmt(float(n.p_value.iloc[0]), 3) if len(n) else NA
        if coefs is not None:
            full = coefs[(coefs.scope == scope) & (coefs.predictor_set == "all4")].set_index("term")
            for term in ("id_twonn", "pr", "curvature", "local_residual"):
                if term in full.index:
                    r = full.loc[term]
                    v["stage2"][term] = {
                        "b": _fmt(r.coef_mean),
                        "lo": _fmt(r.coef_hdi_3),
                        "hi": _fmt(r.coef_hdi_97),
                        "p_gt0": _fmt(r.p_gt0),
                    }
    for term in ("id_twonn", "pr", "curvature", "local_residual"):
        v["stage2"].setdefault(term, {"b": NA, "lo": NA, "hi": NA, "p_gt0": NA})
    t = _read(run_dir, "transfer.parquet")
    v["transfer"] = {}
    if t is not None:
        for r in t.itertuples():
            if isinstance(getattr(r, "note", None), str):
                continue  # not scored: a summary withheld at every layer (transfer.run_transfer's note)
            key = f"{r.train_model}_to_{r.test_model}"
            v["transfer"].setdefault(key, {})[r.predictor_set] = {
                "r2": _fmt(r.r2),
                "r2_shift": _fmt(getattr(r, "r2_shift", None)),
                "spearman": _fmt(r.spearman),
                "spearman_lo": _fmt(getattr(r, "spearman_hdi_3", None)),
                "spearman_hi": _fmt(getattr(r, "spearman_hdi_97", None)),
                "p_perm": _fmt(getattr(r, "p_perm_spearman", None), 3),
                "coverage90": _fmt(r.coverage90),
                "n_layers": _fmt(int(r.n_layers)),
            }

    v["transfer"]["summary"] = NA
    if t is not None and "p_perm_spearman" in t:
        law_rows = _law_rows(t)
        law_rows = law_rows[law_rows["note"].isna()] if "note" in law_rows else law_rows
        v["transfer"]["summary"] = (
            "; ".join(
                f"{r.train_model} → {r.test_model} "
                f"({'curvature-free law, ' if r.predictor_set == 'law3' else ''}"
                f"{int(r.n_layers)} layers{', few' if r.n_layers < FEW_LAYERS else ''}): "
                f"Spearman {_fmt(r.spearman)} [{_fmt(r.spearman_hdi_3)}, {_fmt(r.spearman_hdi_97)}], permutation p "
                f"{_fmt(r.p_perm_spearman, 3)}, R² {_fmt(r.r2)}, level-shift R² {_fmt(r.r2_shift)} (in-sample ceiling "
                f"{_fmt(r.ceiling_r2)}), 90% coverage {_fmt(r.coverage90)}"
                for r in law_rows.itertuples()
            )
            or NA
        )
    f = _read(run_dir, "floors.parquet")
    v["floors"] = {"n_identified": NA, "summary": NA}
    if f is not None:
        sp = f[f.row_type == "spearman"]
        per_model = sp.groupby("model").n_layers.first()
        v["floors"]["n_identified"] = _fmt(int(per_model.sum()))
        v["floors"]["summary"] = "; ".join(
            f"{r.model} {r.summary}: "
            + (
                f"rho {_fmt(r.rho_mean)} [{_fmt(r.rho_hdi_3)}, {_fmt(r.rho_hdi_97)}], "
                f"P(rho > 0) = {_fmt(r.p_gt0)} over {int(r.n_layers)} floors"
                if r.status == "ranked"
                else str(r.status)
            )
            for r in sp.itertuples()
        )

    vt = verdict_table(
        compare=cmp_,
        coefs=coefs,
        null=null,
        power=power_curve,
        transfer=t,
        floors=f,
        exponents=e,
        kinds=model_kinds(cfg.models),
    )
    v["verdict"] = {
        r.key: {
            "claim": r.claim,
            "verdict": r.verdict,
            "numbers": r.numbers,
            "power": r.power,
            "evidence": r.evidence,
            "rule": r.rule,
        }
        for r in vt.itertuples()
    }
    return v


def _setting(x) -> str:
    """A knob setting for the text: 0.25, 2, 40 (numbers without trailing zeros), else as given."""
    return f"{x:g}" if isinstance(x, (int, float)) else str(x)


def _jump_words(g: pd.DataFrame, sens: pd.DataFrame | None, kinds: dict[str, str]) -> str:
    """The pretrained models' adjacent-layer steps by kind (``geometry.layer_jumps``), in words."""
    if not {"model", "layer", "summary", "estimate", "se"} <= set(g.columns):
        return "n/a"
    real = [m for m, kind in kinds.items() if kind == "pretrained"]
    jumps = geometry.layer_jumps(g[g.model.isin(real)], None if sens is None else sens[sens.model.isin(real)])
    if not len(jumps):
        return "n/a"
    n = jumps.kind.value_counts().reindex(["data", "noise", "estimator"], fill_value=0)
    words = (
        f"of the pretrained models' {len(jumps)} steps between adjacent layers (four summaries), "
        f"{n['data']} are resolved by their document-block intervals and keep their sign at every knob "
        f"setting, {n['noise']} lie within their intervals and {n['estimator']} are reversed by a knob setting"
    )
    bad = jumps[jumps.kind == "estimator"]
    if len(bad):
        words += " (" + ", ".join(f"{r.summary} {r.model} L{r.layer_from}-{r.layer_to}" for r in bad.itertuples()) + ")"
    return words


def _geometry_variables(cfg: Profile, run_dir: Path) -> dict:
    """Per model: TwoNN and curvature ranges, layers without a curvature (none since the patch fit has no cap);
    the summaries whose layer ordering flips under another setting; the zoo's curvature check."""

    g = _read(run_dir, "geometry.parquet")
    out: dict = {}
    for model in [x.name for x in cfg.models]:
        rows = g[g.model == model] if g is not None else None
        if rows is None or not len(rows):
            out[model] = {k: NA for k in ("id_min", "id_max", "curv_min", "curv_max", "n_withheld", "n_layers")}
            continue
        ids, curv = rows[rows.summary == "id_twonn"].estimate, rows[rows.summary == "curvature"]
        withheld = int(curv.estimate.isna().sum())
        out[model] = {
            "id_min": _fmt(ids.min(), 1),
            "id_max": _fmt(ids.max(), 1),
            "curv_min": _fmt(curv.estimate.min(), 2) if withheld < len(curv) else "n/a",
            "curv_max": _fmt(curv.estimate.max(), 2) if withheld < len(curv) else "n/a",
            "n_withheld": str(withheld),
            "n_layers": str(len(curv)),
        }
    sens = _read(run_dir, "geometry_sensitivity.parquet")
    if sens is not None:
        agree = geometry.rank_agreement(sens)
        knobs = agree[agree.knob != geometry.ESTIMATOR_CHECK]
        flips = knobs[knobs.flipped].sort_values(["summary", "model", "rho"])
        kinds = model_kinds(cfg.models)
        real = flips.model.map(kinds).eq("pretrained")
        where = {
            summary: ", ".join(f"{r.model}: {r.knob} {_setting(r.setting)}, ρ {_fmt(r.rho, 2)}" for r in x.itertuples())
            for summary, x in flips[real].groupby("summary", sort=True)
        }
        out["sensitivity_flags"] = (
            "; ".join(f"{summary} ({w})" for summary, w in where.items()) or "no summary"
            if any(k == "pretrained" for k in kinds.values())
            else "no summary (this profile has no pretrained model)"
        )
        other = flips[~real]
        out["sensitivity_other"] = (
            f"On the random twins and the zoo, {len(other)} (model, summary, setting) orderings change as well "
            f"({', '.join(sorted(set(other.model + ' ' + other.summary)))}; notebook 02 lists them)."
            if len(other)
            else "The random twins' and the zoo's orderings hold at every setting."
        )
        est = agree[agree.knob == geometry.ESTIMATOR_CHECK]
        out["mle_vs_twonn"] = ", ".join(f"{r.model} {_fmt(r.rho, 2)}" for r in est.itertuples()) or "n/a"
    else:
        out["sensitivity_flags"] = out["mle_vs_twonn"] = out["sensitivity_other"] = NA
    out["jumps"] = _jump_words(g, sens, model_kinds(cfg.models)) if g is not None else NA
    out["zoo_curv_rho"] = NA
    if g is not None and any(m.source == "synthetic" for m in cfg.models):
        from scipy.stats import spearmanr

        try:
            truth = layers.truth_table(cfg, run_dir)
        except ActivationError:  # activations of the zoo absent: the paper says "n/a"
            truth = pd.DataFrame()
        if len(truth):
            est = g[g.summary == "curvature"][["model", "layer", "estimate"]]
            both = truth.merge(est, on=["model", "layer"]).dropna(subset=["estimate"])
            if len(both) >= 3:
                out["zoo_curv_rho"] = _fmt(spearmanr(both.curvature_true, both.estimate).statistic, 2)
    return out
