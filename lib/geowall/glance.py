"""The "Results at a glance" paragraph: the paper's opening paragraph, written from a run's artefacts.

:func:`at_a_glance` reads what the pipeline wrote (``sae_metrics``, ``exponents``,
``law_compare``, ``law``, ``law_null``, ``law_power``, ``transfer``, ``floors``) and states in plain sentences what
this run found; a step that has not run is said to be missing, never guessed. The
report puts the paragraph at the top of ``index.qmd`` as ``{{< var glance >}}``, so it
is plain text (no Markdown).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geowall.geometry import SUMMARY_NAMES
from geowall.io import read_parquet
from geowall.law import DEPTH_SETS
from geowall.power import POWER, SUMMARY_WORDS, detectable_slope

__all__ = ["at_a_glance"]


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = Path(run_dir) / name
    return read_parquet(path) if path.is_file() else None


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _saes(m: pd.DataFrame) -> str:
    return (
        f"It evaluated {len(m):,} SAEs over {m.groupby(['model', 'layer']).ngroups} layers of "
        f"{m.model.nunique()} models (held-out fvu {m.fvu.min():.3f} to {m.fvu.max():.3f})."
    )


def _stage1(e: pd.DataFrame) -> str:
    p = e[e.primary] if "primary" in e else e
    floors = int(p.floor_identified.sum()) if "floor_identified" in p else 0
    same = "alpha_plain" in p and bool(p.alpha_plain.all())
    plain = " (the plain width exponent, the same quantity at every layer)" if same else ""
    return (
        f"Per-layer width exponents{plain} range from {p.alpha_mean.min():.2f} to {p.alpha_mean.max():.2f}, "
        f"and an error floor is identified at {floors} of {len(p)} layers."
    )


def _depth(cmp_: pd.DataFrame | None, null: pd.DataFrame | None) -> str:
    """The depth comparison in words: depth alone against the model intercepts, and what the
    best geometric set adds beside depth (the geometry verdict's quantity)."""
    if cmp_ is None or "elpd_diff_vs_depth" not in cmp_:
        return ""
    scope = None
    if "scope" in cmp_ and len(cmp_):
        scope = "real" if (cmp_.scope == "real").any() else str(cmp_.scope.iloc[0])
    c = cmp_[cmp_.scope == scope] if scope else cmp_
    d = c[c.predictor_set == "depth"]
    b = c[c.predictor_set.isin(list(DEPTH_SETS))]
    if not len(d) or not len(b):
        return ""
    b = b.sort_values("elpd_diff_vs_depth", ascending=False).iloc[0]
    gain, se = float(b.elpd_diff_vs_depth), float(b.se_diff_vs_depth)
    p = ""
    if null is not None and len(null):
        n = null[(null.predictor_set == b.predictor_set) & ((null.scope == scope) if scope else True)]
        p = f", permutation p {float(n.p_value.iloc[0]):.3f} with the geometry residualised on depth" if len(n) else ""
    said = "more than" if gain > 2 * se else "not more than"
    where = {None: "", "real": " on the real networks"}.get(
        scope, f" on the {scope} models (no real scope in this run)"
    )
    return (
        f"Relative depth alone improves on the model intercepts{where} by {float(d.elpd_diff_vs_models.iloc[0]):.1f} "
        f"(SE {float(d.se_diff_vs_models.iloc[0]):.1f}) in expected log predictive density; the best geometric set "
        f"beside depth ({b.predictor_set!r}) adds {gain:.1f} (SE {se:.1f}) beyond depth{p}, {said} two standard "
        f"errors."
    )


def _power(curve: pd.DataFrame | None) -> str:
    """The design analysis in words: the slopes detected with 80% probability and the false-positive rate."""
    if curve is None or not len(curve):
        return ""
    d = detectable_slope(curve)
    top = curve.groupby("summary").slope.max()
    said = [
        f"{SUMMARY_WORDS.get(x, x)} {v:.2f}" if v != float("inf") else f"{SUMMARY_WORDS.get(x, x)} above {top[x]:.2f}"
        for x, v in d.items()
    ]
    fp = curve[curve.slope == 0].p_supported
    n = int(curve.n_sim.iloc[0]) if "n_sim" in curve else 0
    scope = str(curve.scope.iloc[0]) if "scope" in curve else "real"
    return (
        ("" if scope == "real" else f"On the {scope} models (no real scope in this run), a")
        + ("A" if scope == "real" else "")
        + f" design analysis of this run (the geometry rule applied to {n} simulated runs per planted slope, with "
        f"this run's layers, depth relation, Stage 1 and geometry uncertainties) detects a within-model slope, in "
        f"log width exponent per SD, of {_join(said)} with {POWER:.0%} probability"
        + (f"; with no slope planted the rule said 'supported' in {fp.max():.0%} of runs" if len(fp) else "")
        + "."
    )


def _stage2(cmp_: pd.DataFrame | None, law: pd.DataFrame | None) -> str:
    parts = []
    if cmp_ is not None and len(cmp_):
        alone = cmp_[~cmp_.predictor_set.isin(list(DEPTH_SETS))]
        best = str(alone.sort_values("rank").predictor_set.iloc[0])
        parts.append(f"Among the predictor sets compared by PSIS-LOO, {best!r} predicts the exponents best")
    if law is not None and len(law):
        full = law[(law.predictor_set == "all4") & law.term.isin(SUMMARY_NAMES)]
        up = [SUMMARY_WORDS[t] for t in full[full.b_hdi_3 > 0].term]
        down = [SUMMARY_WORDS[t] for t in full[full.b_hdi_97 < 0].term]
        if up or down:
            said = (
                [f"a larger {_join(up)} goes with a larger width exponent (error falling faster with width)"]
                if up
                else []
            )
            said += (
                [f"a larger {_join(down)} goes with a smaller width exponent (a slower fall: a wall)"] if down else []
            )
            parts.append("in the four-summary law (94% intervals excluding zero), " + "; ".join(said))
        else:
            parts.append("in the four-summary law no geometric coefficient's 94% interval excludes zero")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def _transfer(t: pd.DataFrame) -> str:
    from geowall.transfer import law_rows

    if {"train_kind", "test_kind"} <= set(t.columns):
        real = (t.train_kind == "pretrained") & (t.test_kind == "pretrained")
        t, which = t[real], " between real pretrained models"
        if not len(t):
            return "No transfer direction runs between two real pretrained models in this profile."
    else:
        which = ""
    law = law_rows(t)
    law = law[law["note"].isna()] if "note" in law else law
    if "depth_r2_shift" in law and "r2_shift" in law:  # depth scored on the law's own test layers
        beats = law[law.r2_shift > law.depth_r2_shift]
        return (
            f"Fitted on one model and used to predict another{which}, the geometric law beats relative depth on "
            f"the same test layers (level-shift R²) in {len(beats)} of {len(law)} directions."
        )
    base = t[t.predictor_set.isin(["mean", "depth"])]
    wide = pd.concat([law.assign(predictor_set="law"), base]).pivot_table(
        index=["train_model", "test_model"], columns="predictor_set", values="r2", aggfunc="first"
    )
    if not {"law", "mean", "depth"} <= set(wide.columns):
        return ""
    beats = wide[(wide.law > wide["mean"]) & (wide.law > wide.depth)]
    return (
        f"Fitted on one model and used to predict another{which}, the geometric law beats both baselines "
        f"(the training model's mean exponent and relative depth, by predictive R²) in {len(beats)} of "
        f"{len(wide)} directions."
    )


def _floors(f: pd.DataFrame, e: pd.DataFrame | None = None, kinds: dict | None = None) -> str:
    """One clause per model whose identified floors could be ranked; otherwise say too few, or
    that the profile cannot test the claim (fewer than 3 floor-capable layers in every real model)."""
    from geowall.floors import MIN_LAYERS

    if e is not None and "floor_term" in e:
        p = e[e.primary] if "primary" in e else e
        real = [m for m in p.model.unique() if (kinds or {}).get(str(m), "pretrained") == "pretrained"]
        cap = {m: int(p[p.model == m].floor_term.sum()) for m in real}
        if cap and max(cap.values()) < MIN_LAYERS:
            return (
                f"The floor claim is not testable with this profile: ranking floors needs {MIN_LAYERS} layers whose "
                f"width grid can identify a floor in one real model, and it has "
                + _join([f"{k} in {m}" for m, k in cap.items()])
                + "."
            )
    sp = f[f.row_type == "spearman"]
    if "model" not in sp:
        sp = sp.assign(model="all models")
    if not len(sp):
        return ""
    ranked = sp[sp.status == "ranked"] if "status" in sp else sp
    if not len(ranked):
        n = {str(m): int(g.n_layers.iloc[0]) for m, g in sp.groupby("model", sort=False)}
        return (
            "Too few floors are identified to rank them against the geometry ("
            + ", ".join(f"{m}: {k}" for m, k in n.items())
            + " identified)."
        )
    said = []
    for m, g in ranked.groupby("model", sort=False):
        g = g.set_index("summary")
        probs = [
            f"{SUMMARY_WORDS.get(s, s)} {g.loc[s, 'p_gt0']:.2f}" for s in ("curvature", "id_twonn") if s in g.index
        ]
        if probs:
            said.append(f"{m} ({int(g.n_layers.iloc[0])} identified floors): {_join(probs)}")
    if not said:
        return ""
    return f"The posterior probability that identified floors rise with the geometry is, per model, {'; '.join(said)}."


def at_a_glance(run_dir: str | Path, profile_name: str, kinds: dict | None = None) -> str:
    """A few plain sentences on what the run in ``run_dir`` found, from its artefacts only;
    ``kinds`` (:func:`geowall.law.model_kinds`) says which models are real pretrained networks."""
    run_dir = Path(run_dir)
    sentences = [f"This page reports the run of the {profile_name!r} profile."]
    m = _read(run_dir, "sae_metrics.parquet")
    sentences.append(_saes(m) if m is not None else "Its SAE grid has not run yet.")
    e = _read(run_dir, "exponents.parquet")
    sentences.append(_stage1(e) if e is not None else "Stage 1 has not run yet.")
    cmp_ = _read(run_dir, "law_compare.parquet")
    sentences.append(_stage2(cmp_, _read(run_dir, "law.parquet")) or "Stage 2 has not run yet.")
    sentences.append(_depth(cmp_, _read(run_dir, "law_null.parquet")))
    sentences.append(_power(_read(run_dir, "law_power.parquet")))
    t = _read(run_dir, "transfer.parquet")
    if t is not None and len(t):
        sentences.append(_transfer(t))
    f = _read(run_dir, "floors.parquet")
    if f is not None and len(f):
        sentences.append(_floors(f, e, kinds))
    return " ".join(s for s in sentences if s)
