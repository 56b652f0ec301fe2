"""The "Results at a glance" paragraph: the paper's opening paragraph, written from a run's artefacts.

:func:`at_a_glance` reads what the pipeline wrote (``sae_metrics``, ``exponents``,
``law_compare``, ``law``, ``transfer``, ``floors``) and states in plain sentences what
this run found; a step that has not run is said to be missing, never guessed. The
report puts the paragraph at the top of ``index.qmd`` as ``{{< var glance >}}``, so it
is plain text (no Markdown).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from geowall.geometry import SUMMARY_NAMES
from geowall.io import read_parquet

__all__ = ["at_a_glance", "SUMMARY_WORDS"]

SUMMARY_WORDS = dict(
    zip(SUMMARY_NAMES, ("intrinsic dimension", "participation ratio", "curvature", "local residual"), strict=True)
)


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
    return (
        f"Per-layer width exponents range from {p.alpha_mean.min():.2f} to {p.alpha_mean.max():.2f}, "
        f"and an error floor is identified at {floors} of {len(p)} layers."
    )


def _stage2(cmp_: pd.DataFrame | None, law: pd.DataFrame | None) -> str:
    parts = []
    if cmp_ is not None and len(cmp_):
        best = str(cmp_.sort_values("rank").predictor_set.iloc[0])
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

    base = t[t.predictor_set.isin(["mean", "depth"])]
    law = law_rows(t).assign(predictor_set="law")  # the four-summary law, else the curvature-free one
    wide = pd.concat([law, base]).pivot_table(
        index=["train_model", "test_model"], columns="predictor_set", values="r2", aggfunc="first"
    )
    if not {"law", "mean", "depth"} <= set(wide.columns):
        return ""
    beats = wide[(wide.law > wide["mean"]) & (wide.law > wide.depth)]
    return (
        f"Fitted on one model and used to predict another, the geometric law beats both baselines "
        f"(the training model's mean exponent and relative depth, by predictive R²) in {len(beats)} of "
        f"{len(wide)} directions."
    )


def _floors(f: pd.DataFrame) -> str:
    """One clause per model whose identified floors could be ranked; otherwise say too few."""
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


def at_a_glance(run_dir: str | Path, profile_name: str) -> str:
    """A few plain sentences on what the run in ``run_dir`` found, from its artefacts only."""
    run_dir = Path(run_dir)
    sentences = [f"This page reports the run of the {profile_name!r} profile."]
    m = _read(run_dir, "sae_metrics.parquet")
    sentences.append(_saes(m) if m is not None else "Its SAE grid has not run yet.")
    e = _read(run_dir, "exponents.parquet")
    sentences.append(_stage1(e) if e is not None else "Stage 1 has not run yet.")
    sentences.append(
        _stage2(_read(run_dir, "law_compare.parquet"), _read(run_dir, "law.parquet")) or "Stage 2 has not run yet."
    )
    t = _read(run_dir, "transfer.parquet")
    if t is not None and len(t):
        sentences.append(_transfer(t))
    f = _read(run_dir, "floors.parquet")
    if f is not None and len(f):
        sentences.append(_floors(f))
    return " ".join(s for s in sentences if s)
