"""The resumable SAE grid and its metrics table.

A metrics table holds one row per evaluated SAE, keyed by (model, layer, width, k,
seed). :class:`MetricsTable` is the one resumable-rows helper: it reads the table at a
path, says which keys are still to do, and appends each new row by rewriting the whole
table atomically, so a killed and resumed run ends with the same table as an
uninterrupted one. :func:`run_grid` (SAEs trained here) and
``geowall.sources.gemma_scope.run_manifest`` (released SAEs) both use it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from geowall.io import read_parquet, write_parquet
from geowall.sae.data import as_acts, check_acts_shape
from geowall.sae.disk import save_sae
from geowall.sae.evaluate import METRICS, evaluate
from geowall.sae.group import train_group
from geowall.sae.model import use_dense_reference
from geowall.sae.train import TrainConfig, derive_seed, grid_pairs, train_sae

__all__ = [
    "METRIC_COLUMNS",
    "KEY",
    "MetricsTable",
    "read_metrics",
    "append_metrics",
    "sae_folder",
    "run_grid",
    "width_trend",
    "check_width_trend",
    "read_curves",
    "curves_path",
    "CURVE_COLUMNS",
]

log = logging.getLogger(__name__)

KEY = ("model", "layer", "width", "k", "seed")
METRIC_COLUMNS = ["model", "layer", "width", "k", *METRICS, "source", "sae_id", "train_tokens", "seed"]


def sae_folder(sae_dir: str | os.PathLike, model: str, layer: int, width: int, k: int) -> Path:
    """``sae_dir/<model>/layer_XX/w{width}_k{k}``."""
    return Path(sae_dir) / model / f"layer_{int(layer):02d}" / f"w{int(width)}_k{int(k)}"


def _empty_metrics() -> pd.DataFrame:
    return _coerce_metrics(pd.DataFrame({c: [] for c in METRIC_COLUMNS}))


def _coerce_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and dtypes, rows sorted by (model, layer, width, k, seed)."""
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    df = df.copy()
    for c in ("model", "source", "sae_id"):
        df[c] = df[c].astype(str)
    for c in ("layer", "width", "k", "n_tokens", "train_tokens", "seed"):
        df[c] = df[c].astype("int64")
    for c in ("l0", "fvu", "mse", "dead_frac"):
        df[c] = df[c].astype("float64")
    extra = [c for c in df.columns if c not in METRIC_COLUMNS]
    df = df[METRIC_COLUMNS + extra]
    return df.sort_values(list(KEY), kind="mergesort").reset_index(drop=True)


def read_metrics(metrics_path: str | os.PathLike) -> pd.DataFrame:
    """The metrics table at ``metrics_path`` (empty, with the right columns, if absent)."""
    p = Path(metrics_path)
    if not p.exists():
        return _empty_metrics()
    try:
        return _coerce_metrics(read_parquet(p))
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err


def append_metrics(metrics_path: str | os.PathLike, table: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame:
    """Add one row to ``table``, keep it sorted, rewrite ``metrics_path`` atomically; return it."""
    table = _coerce_metrics(pd.concat([table, pd.DataFrame([row])], ignore_index=True))
    write_parquet(metrics_path, table)
    return table


class MetricsTable:
    """The metrics table at ``path``, resumed: which keys remain, and one atomic append per row."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.table = read_metrics(self.path)
        self._done = set(map(tuple, self.table[list(KEY)].itertuples(index=False, name=None)))

    def __contains__(self, key: tuple) -> bool:
        """``(model, layer, width, k, seed)`` already has a row."""
        model, layer, width, k, seed = key
        return (str(model), int(layer), int(width), int(k), int(seed)) in self._done

    def todo(self, items: Sequence[Any], key: Any, *, what: str) -> list[Any]:
        """The ``items`` whose ``key(item)`` has no row yet, in order; logs how many were skipped."""
        left = [item for item in items if key(item) not in self]
        log.info(
            "%s: %d of %d SAEs already in %s, skipped; %d to do",
            what,
            len(items) - len(left),
            len(items),
            self.path,
            len(left),
        )
        return left

    def add(
        self,
        *,
        model: str,
        layer: int,
        width: int,
        k: int,
        seed: int,
        metrics: dict[str, Any],
        source: str,
        sae_id: str,
        train_tokens: int,
        **extra: Any,
    ) -> None:
        """Append one SAE's row (the :data:`~geowall.sae.evaluate.METRICS` of ``metrics``, its
        facts, and ``extra`` columns such as the plateau statistic)."""
        row = {
            "model": str(model),
            "layer": int(layer),
            "width": int(width),
            "k": int(k),
            **{m: metrics[m] for m in METRICS},
            "source": source,
            "sae_id": sae_id,
            "train_tokens": int(train_tokens),
            "seed": int(seed),
            **extra,
        }
        self.table = append_metrics(self.path, self.table, row)
        self._done.add((row["model"], row["layer"], row["width"], row["k"], row["seed"]))


def width_trend(metrics: pd.DataFrame) -> pd.DataFrame:
    """How fvu moves with width at fixed (model, layer, k): one row per group with
    ``n_widths``, ``max_step_increase`` (the largest relative fvu increase from one width
    to the next wider one; negative when fvu always falls), ``end_change`` (widest vs
    narrowest, relative) and ``slope`` (least-squares slope of log fvu on log width).
    Groups with a single width are left out."""
    rows = []
    for (model, layer, k), g in metrics.groupby(["model", "layer", "k"], sort=True):
        g = g.sort_values("width")
        if len(g) < 2:
            continue
        f, w = g.fvu.to_numpy(dtype=float), g.width.to_numpy(dtype=float)
        rows.append(
            {
                "model": model,
                "layer": int(layer),
                "k": int(k),
                "n_widths": len(g),
                "max_step_increase": float((f[1:] / f[:-1] - 1).max()),
                "end_change": float(f[-1] / f[0] - 1),
                "slope": float(np.polyfit(np.log(w), np.log(f), 1)[0]),
            }
        )
    return pd.DataFrame(rows, columns=["model", "layer", "k", "n_widths", "max_step_increase", "end_change", "slope"])


BUDGET_COLUMNS = (
    "model", "layer", "k", "n_widths", "alpha_base", "alpha_long", "rel_change", "fvu_ratio",
    "plateau_base", "plateau_long",
)  # fmt: skip


def budget_change(base: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """Width exponents of the same SAE grids trained at two step budgets, one row per
    (model, layer, k) present in both metrics tables with at least two widths.

    ``alpha_*`` is minus the least-squares slope of log fvu on log width (:func:`width_trend`),
    ``rel_change`` = (alpha_long - alpha_base) / |alpha_base|, ``fvu_ratio`` the geometric mean
    of fvu_long / fvu_base over the group's widths, ``plateau_*`` the share of the group's SAEs
    that meet the plateau criterion (NaN without learning curves)."""
    keys = ["model", "layer", "width", "k"]
    both = base.merge(long, on=keys, suffixes=("_base", "_long"))
    if both.empty:
        return pd.DataFrame(columns=list(BUDGET_COLUMNS))
    a = width_trend(both.rename(columns={"fvu_base": "fvu"}))[["model", "layer", "k", "n_widths", "slope"]]
    b = width_trend(both.rename(columns={"fvu_long": "fvu"}))[["model", "layer", "k", "slope"]]
    t = a.merge(b, on=["model", "layer", "k"], suffixes=("_base", "_long"))
    t["alpha_base"], t["alpha_long"] = -t.pop("slope_base"), -t.pop("slope_long")
    t["rel_change"] = (t.alpha_long - t.alpha_base) / t.alpha_base.abs()
    both["log_ratio"] = np.log(both.fvu_long / both.fvu_base)
    for col in ("plateaued_base", "plateaued_long"):
        both[col] = both[col].astype("float") if col in both else np.nan
    g = both.groupby(["model", "layer", "k"], sort=True).agg(
        fvu_ratio=("log_ratio", lambda x: float(np.exp(x.mean()))),
        plateau_base=("plateaued_base", "mean"),
        plateau_long=("plateaued_long", "mean"),
    )
    return t.merge(g.reset_index(), on=["model", "layer", "k"])[list(BUDGET_COLUMNS)]


def budget_summary(change: pd.DataFrame, *, max_change: float = 0.05, min_spearman: float = 0.9) -> dict[str, Any]:
    """The budget check's verdict from a :func:`budget_change` table. A layer's exponent is
    the mean of its per-k exponents (the slope of a fit with one intercept per k when every
    k has the same widths); over layers: ``median_change`` (median relative change),
    ``median_abs_change``, ``spearman`` (rank agreement of the layer exponents, pooled over
    models, NaN below 3 layers), and ``passes``: |median change| <= ``max_change`` and
    Spearman >= ``min_spearman``."""
    from scipy.stats import spearmanr

    layer = change.groupby(["model", "layer"], sort=True)[["alpha_base", "alpha_long"]].mean()
    rel = (layer.alpha_long - layer.alpha_base) / layer.alpha_base.abs()
    rho = float(spearmanr(layer.alpha_base, layer.alpha_long).statistic) if len(layer) >= 3 else float("nan")
    med = float(rel.median()) if len(rel) else float("nan")
    return {
        "n_layers": len(layer),
        "n_groups": len(change),
        "median_change": med,
        "median_abs_change": float(rel.abs().median()) if len(rel) else float("nan"),
        "max_abs_change": float(rel.abs().max()) if len(rel) else float("nan"),
        "spearman": rho,
        "passes": bool(abs(med) <= max_change and rho >= min_spearman),
    }


def check_width_trend(trend: pd.DataFrame, *, slack: float, synthetic: Iterable[str] = ()) -> pd.DataFrame:
    """Step 01's sanity check on a :func:`width_trend` table; raises ``ValueError``.

    Real networks: no step to the next wider SAE may raise fvu by more than ``slack``
    (relative). Models in ``synthetic`` (low-dimensional manifolds trained with k near
    the number of directions they span, where which optimum an SAE reaches varies by
    width): only the median log-log slope of fvu on width must be negative. Returns the
    synthetic groups whose steps exceed ``slack`` (reported, not fatal)."""
    is_synth = trend.model.isin(set(synthetic))
    real, synth = trend[~is_synth], trend[is_synth]
    bad = real[real.max_step_increase > slack]
    if len(bad):
        worst = float(bad.max_step_increase.max())
        raise ValueError(
            f"fvu increases with width at fixed k beyond the {slack:.0%} slack; to pass: train longer "
            f"(raise sae.steps, or sae.steps_width_exponent so wider SAEs get more steps), or raise "
            f"sae.monotone_slack to >= {math.ceil(worst * 100) / 100:g} (null switches the check off):\n{bad}"
        )
    median_slope = synth.groupby("model").slope.median()
    if (median_slope >= 0).any():
        raise ValueError(
            f"wider SAEs are not better on the typical synthetic layer: {median_slope.to_dict()}; "
            f"to pass: train longer (raise sae.steps or sae.lr_scale)"
        )
    return synth[synth.max_step_increase > slack]


def curves_path(metrics_path: str | os.PathLike) -> Path:
    """The learning-curve side table beside a metrics table (``<stem>_curves.parquet``: one per
    table, so parallel tasks with their own tables never share one)."""
    p = Path(metrics_path)
    return p.with_name(f"{p.stem}_curves.parquet")


CURVE_COLUMNS = ["model", "layer", "width", "k", "seed", "step", "tokens", "fvu_heldout"]


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """A learning-curve table (empty, with its columns, if absent)."""
    p = Path(path)
    return read_parquet(p) if p.exists() else pd.DataFrame({c: [] for c in CURVE_COLUMNS})


def _append_curves(path: Path, rows: list[dict]) -> None:
    """Add curve rows (replacing earlier ones of the same SAEs), rewrite atomically."""
    old = read_curves(path)
    new = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    keys = set(map(tuple, new[list(KEY)].drop_duplicates().itertuples(index=False, name=None)))
    if len(old):
        old = old[[tuple(r) not in keys for r in old[list(KEY)].itertuples(index=False, name=None)]]
    table = pd.concat([old, new], ignore_index=True) if len(old) else new
    write_parquet(path, table.sort_values([*KEY, "step"], kind="mergesort").reset_index(drop=True))


def _chunks(todo: list[tuple[int, int]], d: int, max_floats: int) -> list[list[tuple[int, int]]]:
    """Split a layer's SAEs into groups whose stacked (sum W, d) tensors stay under ``max_floats``."""
    out, cur, size = [], [], 0
    for w, k in todo:
        if cur and size + w * d > max_floats:
            out.append(cur)
            cur, size = [], 0
        cur.append((w, k))
        size += w * d
    return out + ([cur] if cur else [])


def run_grid(
    train_acts: Any,
    eval_acts: Any,
    config: TrainConfig | None = None,
    *,
    model: str,
    layer: int,
    widths: Sequence[int],
    ks: Sequence[int],
    seed: int,
    device: str | torch.device = "cpu",
    sae_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    source: str = "trained",
    progress: bool = True,
    plateau_tol: float = 0.02,
    max_group_floats: int = 2**23,
    **overrides: Any,
) -> pd.DataFrame:
    """Train, save and evaluate every (width, k) SAE of one model layer; resume-safe.

    ``config`` and keyword ``overrides`` of its fields set the training (see
    :class:`~geowall.sae.train.TrainConfig`); its batch size is also the evaluation's.
    The SAEs still to do are trained together (:func:`geowall.sae.group.train_group`, in
    groups of at most ``max_group_floats`` stacked weights), or one at a time through the
    autograd trainer when the dense reference is switched on (``GEOWALL_DENSE_DECODE=1``).
    A (model, layer, width, k, seed) already in ``metrics_path`` is skipped (logged).
    Each SAE's folder ``sae_dir/<model>/layer_XX/w{W}_k{k}`` is written, its learning curve
    added to ``<stem>_curves.parquet`` beside the metrics, then one row is added to
    ``metrics_path`` (see :class:`MetricsTable`) with ``plateau_change`` (relative fall of
    held-out fvu over the curve's last window) and ``plateaued`` (that fall <=
    ``plateau_tol``). Returns the whole metrics table.
    """
    config = TrainConfig.make(config, **overrides)
    metrics = MetricsTable(metrics_path)
    todo = metrics.todo(
        grid_pairs(widths, ks), lambda wk: (model, layer, *wk, seed), what=f"run_grid {model} layer {layer}"
    )
    if not todo:
        return metrics.table
    x_train = as_acts(train_acts, device, "train_acts")
    d = x_train.shape[1]
    check_acts_shape(eval_acts, d)
    if use_dense_reference():
        groups = [[wk] for wk in todo]

        def trainer(group):
            wk = group[0]
            return [train_sae(x_train, *wk, config, seed=derive_seed(seed, *wk), device=device, progress=progress)]

    else:
        groups = _chunks(todo, d, max_group_floats)

        def trainer(group):
            return train_group(x_train, group, config, seed=seed, device=device, eval_acts=eval_acts, progress=progress)

    from tqdm.auto import tqdm

    for group in tqdm(groups, desc=f"{model} layer {layer}", disable=not progress or len(groups) == 1):
        trained_group = trainer(group)
        for trained in trained_group:
            width, k = trained.width, trained.k
            sae_id = f"{model}/layer_{int(layer):02d}/w{width}_k{k}"
            save_sae(
                trained,
                sae_folder(sae_dir, model, layer, width, k),
                metadata={"model_name": str(model), "layer": int(layer), "sae_id": sae_id, "grid_seed": int(seed)},
            )
        rows = [
            {
                "model": str(model),
                "layer": int(layer),
                "width": t.width,
                "k": t.k,
                "seed": int(seed),
                "step": st,
                "tokens": st * min(int(config.batch_size), x_train.shape[0]),
                "fvu_heldout": f,
            }
            for t in trained_group
            for st, f in zip(t.curve_steps, t.curve_fvu)
        ]
        if rows:
            _append_curves(curves_path(metrics_path), rows)
        for trained in trained_group:
            scores = evaluate(trained, eval_acts, batch_size=config.batch_size, device=device)
            change = float(trained.plateau_change)
            metrics.add(
                model=model,
                layer=layer,
                width=trained.width,
                k=trained.k,
                seed=seed,
                metrics=scores,
                source=source,
                sae_id=f"{model}/layer_{int(layer):02d}/w{trained.width}_k{trained.k}",
                train_tokens=trained.train_tokens,
                plateau_change=change,
                plateaued=None if np.isnan(change) else bool(change <= plateau_tol),
            )
    return metrics.table
