"""What changed between two runs: ``geowall diff RUN_A RUN_B``.

A run is a folder under ``data/runs/`` (named) or any run folder (a path): a profile's own
run or a variant (``geowall run --as NAME``, see :mod:`geowall.pipeline`). The diff reads
only artefacts, never reruns anything, and prints plain-text tables:

* the steps: reused (the same files, linked) or rerun, from the step records;
* the verdicts (:func:`geowall.verdicts.verdict_table` on each run's artefacts);
* the per-layer width exponents (``exponents.parquet``, ``alpha_mean``);
* the law's slopes (``law.parquet``: predictor coefficients, intercepts and sigma left out);
* the transfer scores (``transfer.parquet``).

Rows whose values are identical in both runs are counted, not listed; an artefact missing
from one run is reported as missing, not an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from geowall.io import read_json, read_parquet

__all__ = [
    "resolve_run",
    "step_table",
    "verdicts",
    "exponents",
    "law_slopes",
    "transfer_scores",
    "compare",
    "diff_runs",
    "TABLES",
]

MISSING = "missing"
CELL_WIDTH = 70  # longer text cells (a verdict's numbers) are cut to this many characters


def resolve_run(run: str | os.PathLike, runs_dir: Path | None = None) -> Path:
    """The folder of run ``run``: a run name under ``runs_dir`` (default ``data/runs``), or a
    path to a run folder. ``FileNotFoundError`` naming both places when neither exists."""
    from geowall.pipeline import RUNS

    named = Path(runs_dir or RUNS) / str(run)
    if named.is_dir():
        return named
    if Path(run).is_dir():
        return Path(run)
    raise FileNotFoundError(f"run {str(run)!r}: neither {named} nor {Path(run).resolve()} is a run folder")


def _records(run_dir: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted((run_dir / "steps").glob("*.json"))}


def _step_relation(a: Path | None, b: Path | None) -> str:
    """How one step's records in two runs relate: the same file (linked), the same inputs,
    or different inputs (rerun)."""
    if a is None or b is None:
        return "only in A" if b is None else "only in B"
    if os.path.samefile(a, b):
        return "reused (linked)"
    if read_json(a).get("fingerprint") == read_json(b).get("fingerprint"):
        return "same inputs, ran separately"
    return "rerun (inputs changed)"


RELATIONS = ("reused (linked)", "same inputs, ran separately", "rerun (inputs changed)", "only in A", "only in B")


def _step_order(ra: dict[str, Path], rb: dict[str, Path]) -> list[str]:
    """Steps recorded in either run: the pipeline's in DAG order, then others in the order
    they finished."""
    from geowall.pipeline import STEPS

    dag = [s.name for s in STEPS]

    def key(name: str):
        rec = ra.get(name) or rb[name]
        return (dag.index(name) if name in dag else len(dag), str(read_json(rec).get("finished", "")), name)

    return sorted(set(ra) | set(rb), key=key)


def step_table(run_a: Path, run_b: Path) -> pd.DataFrame:
    """One row per step recorded in either run: ``step, relation, seconds_a, seconds_b``."""
    ra, rb = _records(run_a), _records(run_b)
    order = _step_order(ra, rb)
    rows = []
    for s in order:
        a, b = ra.get(s), rb.get(s)
        rows.append(
            {
                "step": s,
                "relation": _step_relation(a, b),
                "seconds_a": read_json(a).get("seconds") if a else None,
                "seconds_b": read_json(b).get("seconds") if b else None,
            }
        )
    return pd.DataFrame(rows, columns=["step", "relation", "seconds_a", "seconds_b"])


def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    p = run_dir / name
    return read_parquet(p) if p.is_file() else None


def verdicts(run_dir: Path) -> pd.DataFrame | None:
    """The run's verdicts (``key, verdict, numbers``), decided from its Stage 2, transfer and
    floor artefacts as the report decides them; None when it has none of them."""
    from geowall.law import model_kind
    from geowall.verdicts import verdict_table

    names = ("law_compare", "law", "law_null", "law_power", "transfer", "floors", "exponents")
    t = {n: _read(run_dir, f"{n}.parquet") for n in names}
    if all(t[n] is None for n in ("law_compare", "transfer", "floors")):
        return None
    prof = run_dir / "profile.json"
    models = read_json(prof).get("models", []) if prof.is_file() else []
    kinds = {m["name"]: model_kind(m["source"]) for m in models}
    vt = verdict_table(
        compare=t["law_compare"],
        coefs=t["law"],
        null=t["law_null"],
        power=t["law_power"],
        transfer=t["transfer"],
        floors=t["floors"],
        exponents=t["exponents"],
        kinds=kinds,
    )
    return vt[["key", "verdict", "numbers"]]


def exponents(run_dir: Path) -> pd.DataFrame | None:
    """Per-layer width exponents from ``exponents.parquet``: ``model, layer, form, alpha``
    (the posterior mean ``alpha_mean``, or ``alpha`` in a table that has only that)."""
    e = _read(run_dir, "exponents.parquet")
    if e is None:
        return None
    col = "alpha_mean" if "alpha_mean" in e else "alpha"
    keys = [k for k in ("model", "layer", "form") if k in e]
    return e[[*keys, col]].rename(columns={col: "alpha"})


LAW_VALUES = ("coef_mean", "coef_hdi_3", "coef_hdi_97", "p_gt0")


def law_slopes(run_dir: Path) -> pd.DataFrame | None:
    """The law's slopes from ``law.parquet``: one row per ``scope, predictor_set, term`` with
    the coefficient's mean, 94% HDI and P(> 0); intercepts and the residual sd left out."""
    law = _read(run_dir, "law.parquet")
    if law is None:
        return None
    slopes = law[~law["term"].astype(str).str.startswith("intercept") & (law["term"] != "sigma")]
    keys = [k for k in ("scope", "predictor_set", "term") if k in slopes]
    return slopes[[*keys, *[c for c in LAW_VALUES if c in slopes]]]


TRANSFER_VALUES = ("r2", "r2_shift", "spearman", "p_perm_spearman", "coverage90", "n_layers")


def transfer_scores(run_dir: Path) -> pd.DataFrame | None:
    """Transfer scores from ``transfer.parquet``: one row per ``train_model, test_model,
    predictor_set``."""
    t = _read(run_dir, "transfer.parquet")
    if t is None:
        return None
    keys = [k for k in ("train_model", "test_model", "predictor_set") if k in t]
    return t[[*keys, *[c for c in TRANSFER_VALUES if c in t]]]


@dataclass(frozen=True)
class Table:
    """One compared artefact: a title, the file(s) it comes from, a loader, its key columns."""

    title: str
    source: str
    load: Callable[[Path], pd.DataFrame | None]
    keys: tuple[str, ...]


TABLES: tuple[Table, ...] = (
    Table("Verdicts", "law*.parquet, transfer.parquet, floors.parquet", verdicts, ("key",)),
    Table("Width exponents (alpha, per layer)", "exponents.parquet", exponents, ("model", "layer", "form")),
    Table("The law's slopes", "law.parquet", law_slopes, ("scope", "predictor_set", "term")),
    Table("Transfer scores", "transfer.parquet", transfer_scores, ("train_model", "test_model", "predictor_set")),
)


def _same(x, y) -> bool:
    """Equal values, NaN equal to NaN."""
    if isinstance(x, (float, np.floating)) and isinstance(y, (float, np.floating)):
        return (np.isnan(x) and np.isnan(y)) or x == y
    try:
        return bool(pd.isna(x) and pd.isna(y)) or bool(x == y)
    except (TypeError, ValueError):
        return False


@dataclass
class Comparison:
    """Rows changed between two tables (A and B values side by side), rows only in one, and
    how many rows are identical."""

    changed: pd.DataFrame
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    unchanged: int


def compare(a: pd.DataFrame, b: pd.DataFrame, keys: tuple[str, ...] | list[str]) -> Comparison:
    """Match rows of ``a`` and ``b`` on ``keys`` (the keys both have) and compare the other
    columns both have. A changed row lists, per column, ``<col> A``, ``<col> B`` and for
    numbers ``<col> Δ`` (B − A), for the columns that changed in some row."""
    keys = [k for k in keys if k in a and k in b]
    values = [c for c in a.columns if c in b.columns and c not in keys]
    m = a.merge(b, on=keys, how="outer", suffixes=(" A", " B"), indicator=True)
    both = m[m["_merge"] == "both"]
    differs = [any(not _same(r[f"{c} A"], r[f"{c} B"]) for c in values) for _, r in both.iterrows()]
    changed = both[np.array(differs, dtype=bool)] if len(both) else both
    moved = [c for c in values if any(not _same(r[f"{c} A"], r[f"{c} B"]) for _, r in changed.iterrows())]
    cols = list(keys)
    for c in moved:  # only the columns that changed in some changed row
        cols += [f"{c} A", f"{c} B"]
        if pd.api.types.is_numeric_dtype(a[c]) and pd.api.types.is_numeric_dtype(b[c]):
            changed = changed.assign(**{f"{c} Δ": changed[f"{c} B"] - changed[f"{c} A"]})
            cols.append(f"{c} Δ")
    side = [*keys, *[f"{c} A" for c in values]]
    only_a = m.loc[m["_merge"] == "left_only", side]
    only_b = m.loc[m["_merge"] == "right_only", [*keys, *[f"{c} B" for c in values]]]
    return Comparison(changed[cols].reset_index(drop=True), only_a, only_b, int(len(both) - len(changed)))


def _show(df: pd.DataFrame) -> str:
    """A table as aligned text, long text cells cut, numbers to four significant digits."""

    def cut(x):
        s = str(x)
        return s if len(s) <= CELL_WIDTH else s[: CELL_WIDTH - 1] + "…"

    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(cut)
    return out.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _indent(text: str, pad: str = "  ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def render_table(table: Table, run_a: Path, run_b: Path) -> str:
    """One section of the diff: the changed rows, rows in one run only, and the count of
    unchanged rows; a line saying which run lacks the artefact when one does."""
    head = f"== {table.title} ({table.source})"
    try:
        a, b = table.load(run_a), table.load(run_b)
    except Exception as e:  # noqa: BLE001 - an unreadable artefact is reported, the diff goes on
        return f"{head}\n  could not read: {type(e).__name__}: {e}"
    if a is None or b is None:
        which = "both runs" if a is None and b is None else "run A" if a is None else "run B"
        return f"{head}\n  {MISSING} in {which}"
    c = compare(a, b, table.keys)
    lines = [head]
    if len(c.changed):
        lines += [f"  {len(c.changed)} changed:", _indent(_show(c.changed), "    ")]
    if len(c.only_a):
        lines += [f"  {len(c.only_a)} only in A:", _indent(_show(c.only_a), "    ")]
    if len(c.only_b):
        lines += [f"  {len(c.only_b)} only in B:", _indent(_show(c.only_b), "    ")]
    lines.append(
        f"  {c.unchanged} unchanged" + (" (no changes)" if not (len(c.changed) + len(c.only_a) + len(c.only_b)) else "")
    )
    return "\n".join(lines)


def _variant_line(label: str, run_dir: Path) -> str | None:
    """What ``variant.json`` says about a variant run: its base and changed parameters."""
    p = run_dir / "variant.json"
    if not p.is_file():
        return None
    v = read_json(p)
    changed = ", ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in v.get("changed", {}).items()) or "none"
    return f"{label} is a variant of {v.get('base')!r} (overrides {v.get('overrides')}; changed {changed})"


def diff_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, runs_dir: Path | None = None) -> str:
    """The whole diff of two runs (names under ``runs_dir`` or paths) as text."""
    a, b = resolve_run(run_a, runs_dir), resolve_run(run_b, runs_dir)
    lines = [f"A: {a}", f"B: {b}"]
    lines += [x for x in (_variant_line("A", a), _variant_line("B", b)) if x]
    steps = step_table(a, b)
    lines.append("== Steps (from steps/*.json)")
    if len(steps):
        counts = steps["relation"].value_counts()
        lines.append(_indent(_show(steps), "    "))
        lines.append("  " + ", ".join(f"{counts[rel]} {rel}" for rel in RELATIONS if rel in counts))
    else:
        lines.append(f"  {MISSING}: no step records in either run")
    lines += [render_table(t, a, b) for t in TABLES]
    return "\n".join(lines)
