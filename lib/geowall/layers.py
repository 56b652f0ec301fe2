"""Per-layer tables over a whole profile: the loops the step notebooks share.

Each function walks every (model, layer) of a profile, reads that layer's artefacts
and returns one tidy table; the notebooks plot and assert on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from geowall import activations, geometry
from geowall.config import Profile
from geowall.plan import (
    check_budget,
    widths_for,
)


def relative_depth(layer: int, n_layers: int) -> float:
    """The one definition of relative depth: ``layer / (n_layers - 1)``, with ``n_layers``
    the model's number of residual points (not the number a profile selects), so a layer
    has the same depth whichever subset of layers a profile runs; 0 for a one-layer model.
    The geometry table carries it (``depth``) and Stage 2 reads it from there."""
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} outside 0..{n_layers - 1}")
    return layer / (n_layers - 1) if n_layers > 1 else 0.0


def layer_depths(cfg: Profile) -> list[tuple[str, int, float]]:
    """(model, layer, relative depth) for every layer of every model (:func:`relative_depth`)."""
    from geowall.sources import model_info

    out = []
    for m in cfg.models:
        n = model_info(m).n_layers
        out.extend((m.name, layer, relative_depth(layer, n)) for layer in cfg.layers_of(m))
    return out


def subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows, chosen without replacement by a seeded RNG, in their original order."""
    return np.asarray(x[subsample_index(len(x), n, seed)], dtype=np.float32)


def _harvest_unit(cfg_json: dict, run_dir: str, model: str, corpus, progress: bool = False) -> dict:
    """Harvest one model's layers into the run folder (each layer renamed into place when
    complete); returns its timing record. A unit of work for :mod:`geowall.executors`."""
    import time

    from geowall.config import validate

    cfg = validate(cfg_json)
    spec = cfg.model(model)
    layers = cfg.layers_of(spec)
    t0 = time.perf_counter()
    res = activations.harvest(
        spec,
        layers,
        cfg.activations,
        run_dir=Path(run_dir),
        seed=cfg.seed,
        device=cfg.device,
        corpus=corpus,
        progress=progress,
    )
    dt = time.perf_counter() - t0
    n_tok = cfg.activations.n_train + cfg.activations.n_eval
    return {
        "model": spec.name,
        "source": spec.source,
        "layers": len(layers),
        **res,
        "seconds": round(dt, 2),
        "tokens_per_s": round(n_tok / dt, 1) if res["harvested"] and spec.source != "synthetic" else None,
    }


def harvest_models(cfg: Profile, run_dir: Path, corpus, *, executor=None) -> pd.DataFrame:
    """Step 00's harvest, one unit of work per model (see :mod:`geowall.executors`); one
    timing row per model, in profile order."""
    from geowall import executors

    ex = executor or executors.current()
    cfg_json = cfg.model_dump(mode="json")
    units = [
        (cfg_json, str(run_dir), m.name, corpus if m.source != "synthetic" else None, ex.name == "local")
        for m in cfg.models
    ]
    got = {
        args[2]: rec
        for args, rec in ex.map(_harvest_unit, units, resources=executors.resources_for(cfg.device, "harvest"))
    }
    return pd.DataFrame([got[m.name] for m in cfg.models])


def subsample_index(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The row indices ``subsample`` keeps (all rows when n_rows <= n)."""
    if n_rows <= n:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def _geometry_unit(cfg_json: dict, run_dir: str, i: int, model: str, layer: int, depth: float):
    """Geometry of one (model, layer): (summaries, multiscale ID, sensitivity) rows. A unit of
    work for :mod:`geowall.executors`; the seed depends only on the layer's position ``i``."""
    from geowall.config import validate

    cfg = validate(cfg_json)
    g = cfg.geometry
    run_dir = Path(run_dir)
    seed = cfg.seed * 1_000_003 + i
    acts = activations.load(run_dir, model, layer, "train")
    idx = subsample_index(len(acts), g.n_points, seed)
    x = np.asarray(acts[idx], dtype=np.float32)
    docs = activations.doc_ids(run_dir, model, "train")
    groups = None if docs is None else np.asarray(docs)[idx]
    kw = dict(k=g.k_neighbors, tangent_tol=g.tangent_tol, near_dup_tol=g.near_dup_tol, device=_device(cfg))
    s = geometry.summaries(x, n_boot=g.n_boot, seed=seed, n_base=g.n_base, groups=groups, **kw)
    rows = s.assign(model=model, layer=layer, depth=depth, n_distinct=len(np.unique(x, axis=0)))
    ms = geometry.multiscale_id(x, seed=seed, near_dup_tol=g.near_dup_tol, device=_device(cfg))
    defaults = s.set_index("summary").estimate.to_dict()
    sv = geometry.sensitivity(x, seed=seed, n_base=g.n_base, defaults=defaults, multiscale=ms, **kw)
    return rows, ms.assign(model=model, layer=layer, depth=depth), sv.assign(model=model, layer=layer, depth=depth)


def geometry_table(
    cfg: Profile, run_dir: Path, *, progress: bool = True, executor=None
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summaries, multiscale ID, sensitivity) for every layer, from ``geometry.n_points`` train tokens.

    Standard errors resample whole documents (step 00's ``docs_train.npy``; the synthetic
    zoo, which has none, resamples points). The sensitivity table holds each summary at
    three settings of its main knob and the Levina-Bickel MLE (``geometry.sensitivity``).
    Each (model, layer) is a unit of work for ``executor`` (default
    :func:`geowall.executors.current`); results are put back in layer order.
    """
    from geowall import executors

    ex = executor or executors.current()
    cfg_json = cfg.model_dump(mode="json")
    units = [
        (cfg_json, str(run_dir), i, model, layer, depth) for i, (model, layer, depth) in enumerate(layer_depths(cfg))
    ]
    got: dict[int, tuple] = {}
    bar = tqdm(total=len(units), desc="geometry", disable=not progress)
    for args, result in ex.map(_geometry_unit, units, resources=executors.resources_for(cfg.device, "geometry")):
        got[args[2]] = result
        bar.update(1)
    bar.close()
    rows, multi, sens = ([got[i][j] for i in range(len(units))] for j in range(3))
    front = ["model", "layer", "depth", "summary"]
    table = pd.concat(rows, ignore_index=True)
    return (
        table[front + [c for c in table.columns if c not in front]],
        pd.concat(multi, ignore_index=True),
        pd.concat(sens, ignore_index=True),
    )


def truth_table(cfg: Profile, run_dir: Path) -> pd.DataFrame:
    """Ground truth of the synthetic layers (kind, id_true, curvature_true) from their manifests."""
    rows = []
    for m in cfg.models:
        if m.source != "synthetic":
            continue
        for layer in cfg.layers_of(m):
            t = activations.layer_manifest(run_dir, m.name, layer)["truth"]
            rows.append({"model": m.name, "layer": layer, **t})
    return pd.DataFrame(rows)


def _device(cfg: Profile) -> str:
    from geowall.sources.transformer import resolve_device

    return str(resolve_device(cfg.device))


def _trained_unit(cfg_json: dict, run_dir: str, work: str, model: str, layer: int, metrics_path: str) -> list[dict]:
    """Train and evaluate every SAE of one (model, layer) into ``metrics_path`` (resumable:
    rows already there are skipped); returns that table's rows of this layer."""
    from geowall import sae
    from geowall.config import validate
    from geowall.sources import model_info

    cfg = validate(cfg_json)
    spec = cfg.model(model)
    d = model_info(spec).d
    widths, ks = widths_for(cfg, model, layer, d), cfg.ks_of(spec)
    train = activations.load(Path(run_dir), model, layer, "train")
    evl = activations.load(Path(run_dir), model, layer, "eval")
    by_steps: dict[int, list[int]] = {}  # a layer's SAEs with the same step count train together
    for w in widths:
        by_steps.setdefault(cfg.steps_of(spec, w, d), []).append(w)
    s = cfg.sae
    for steps, ws in by_steps.items():
        train_cfg = sae.TrainConfig.from_spec(s, steps=steps, lr_scale=cfg.lr_scale_of(spec))
        sae.run_grid(
            train,
            evl,
            train_cfg,
            model=model,
            layer=layer,
            widths=ws,
            ks=ks,
            seed=cfg.seed,
            device=_device(cfg),
            sae_dir=Path(work),
            metrics_path=Path(metrics_path),
            progress=False,
            plateau_tol=s.plateau_tol,
        )
    table = sae.read_metrics(metrics_path)
    return table[(table.model == model) & (table.layer == layer)].to_dict("records")


def _released_unit(
    cfg_json: dict, run_dir: str, model: str, layer: int, rows: list[dict], metrics_path: str
) -> list[dict]:
    """Evaluate the given Gemma Scope manifest rows of one (model, layer), streamed through
    the profile's SAE cache, into ``metrics_path`` (resumable); returns this layer's rows."""
    from geowall import sae
    from geowall.config import validate
    from geowall.sources import gemma_scope

    cfg = validate(cfg_json)
    spec = cfg.model(model)
    done = sae.MetricsTable(metrics_path)
    table = done.table
    todo = pd.DataFrame(rows)
    todo = todo[[(model, int(r.layer), int(r.width), int(r.k), cfg.seed) not in done for r in todo.itertuples()]]
    if len(todo):
        acts = activations.load(Path(run_dir), model, layer, "eval")
        for row in gemma_scope.evaluate_rows(
            spec, todo, acts, cache=gemma_scope.cache_for(cfg.sae, run_dir), seed=cfg.seed, device=_device(cfg)
        ):
            table = sae.append_metrics(metrics_path, table, row)
    return table[(table.model == model) & (table.layer == layer)].to_dict("records")


def merge_rows(metrics_path: Path, rows: list[dict]) -> int:
    """Add the rows whose (model, layer, width, k, seed) key is not in ``metrics_path`` yet,
    in one atomic rewrite; returns how many were new. The driver's only write: a task that
    was retried, or a run resumed with another executor, never duplicates a row."""
    from geowall import sae
    from geowall.io import write_parquet
    from geowall.sae.grid import _coerce_metrics

    table = sae.read_metrics(metrics_path)
    done = sae.MetricsTable(metrics_path)
    new = [r for r in rows if (r["model"], int(r["layer"]), int(r["width"]), int(r["k"]), int(r["seed"])) not in done]
    new = list({(r["model"], int(r["layer"]), int(r["width"]), int(r["k"]), int(r["seed"])): r for r in new}.values())
    if new:
        write_parquet(metrics_path, _coerce_metrics(pd.concat([table, pd.DataFrame(new)], ignore_index=True)))
    return len(new)


def sae_work_dir(cfg: Profile, run_dir: Path) -> Path:
    """``<run_dir>/saes/<settings>/``: ``<settings>`` hashes what a trained SAE's result depends
    on beyond its (model, layer, width, k, seed) key (training steps, batch size, learning
    rate, the activation request), so a changed setting never reuses a stale SAE."""
    from geowall.io import sha256_json

    settings = {
        "sae": cfg.sae.model_dump(
            mode="json",
            exclude={
                "showcase_layers",
                "showcase_width_multiples",
                "width_multiples",
                "ks",
                "cache_budget_gb",
                "keep_downloads",
                "cache_dir",
                "budget_check",
            },
        ),
        "activations": cfg.activations.model_dump(mode="json"),
        "corpus": cfg.corpus.model_dump(
            mode="json",
            exclude=None
            if cfg.corpus.kind in ("folder", "hf")
            else {"folder", "dataset", "dataset_config", "split", "text_field", "max_docs"},
        ),
    }
    return Path(run_dir) / "saes" / sha256_json(settings)[:12]


def _part(ex, work: Path, model: str, layer: int) -> str:
    """Where a (model, layer) unit writes its rows: the shared ``metrics.parquet`` locally, its
    own table under ``parts/`` on Ray (the driver merges them)."""
    return str(
        work / "metrics.parquet" if ex.name == "local" else work / "parts" / f"{model}__layer_{layer:03d}.parquet"
    )


def sae_grid(
    cfg: Profile, run_dir: Path, *, progress: bool = True, executor=None, units: dict | None = None
) -> pd.DataFrame:
    """Step 01 for every model and layer: train (or load) the SAEs, one metrics row each.

    Work happens under ``<run_dir>/saes/<settings>/`` where ``<settings>`` hashes what an
    SAE's result depends on beyond its (model, layer, width, k, seed) key (training steps,
    batch size, learning rate, the activation request): rows land in that folder's
    ``metrics.parquet`` as each SAE finishes (atomically), so a killed run resumes, and a
    changed setting never reuses a stale SAE. The step's result, the rows of the current
    grid only, is written to ``<run_dir>/sae_metrics.parquet``.

    Each (model, layer) is a unit of work for ``executor`` (default
    :func:`geowall.executors.current`). The local executor writes each SAE's row into
    ``metrics.parquet`` as it finishes; on Ray each task keeps its own resumable table
    under ``parts/`` and returns its rows, which this process (the only writer of
    ``metrics.parquet``) merges with :func:`merge_rows`. ``units`` replaces the per-layer
    functions (keys ``trained`` / ``released``; fault-injection tests wrap them).
    """
    from geowall import executors, sae
    from geowall.io import write_parquet
    from geowall.sources import model_info

    ex = executor or executors.current()
    work = sae_work_dir(cfg, run_dir)
    metrics = work / "metrics.parquet"
    before = sae.read_metrics(metrics)  # rows of an earlier (possibly killed) run: not retrained
    done = sae.MetricsTable(metrics)
    cfg_json = cfg.model_dump(mode="json")
    wanted, trained_units, released_units = [], [], []

    for spec in cfg.models:
        if spec.sae_source == "gemma-scope":
            from geowall.sources import gemma_scope

            check_budget(cfg)
            rows = gemma_scope.layer_rows(spec, cfg.layers_of(spec))
            wanted.extend((spec.name, int(r.layer), int(r.width), int(r.k)) for r in rows.itertuples())
            for layer, group in rows.groupby("layer", sort=True):
                todo = [
                    r
                    for r in group.to_dict("records")
                    if (spec.name, int(layer), int(r["width"]), int(r["k"]), cfg.seed) not in done
                ]
                if todo:
                    released_units.append(
                        (cfg_json, str(run_dir), spec.name, int(layer), todo, _part(ex, work, spec.name, layer))
                    )
            continue
        d = model_info(spec).d
        for layer in cfg.layers_of(spec):
            grid = [(spec.name, layer, w, k) for w in widths_for(cfg, spec.name, layer, d) for k in cfg.ks_of(spec)]
            wanted.extend(grid)
            if any((*g, cfg.seed) not in done for g in grid):
                trained_units.append(
                    (cfg_json, str(run_dir), str(work), spec.name, layer, _part(ex, work, spec.name, layer))
                )
    bar = tqdm(total=len(trained_units) + len(released_units), desc="SAE layers", disable=not progress)
    fns = {"trained": _trained_unit, "released": _released_unit, **(units or {})}
    for fn, todo in ((fns["trained"], trained_units), (fns["released"], released_units)):
        for _, rows in ex.map(fn, todo, resources=executors.resources_for(cfg.device, "sae")):
            if ex.name != "local":
                merge_rows(metrics, rows)
            bar.update(1)
    bar.close()
    table = sae.read_metrics(metrics)
    key = pd.MultiIndex.from_frame(table[["model", "layer", "width", "k"]])
    table = table[key.isin(wanted) & (table.seed == cfg.seed)].reset_index(drop=True)
    old_keys = pd.MultiIndex.from_frame(before[["model", "layer", "width", "k"]])
    reused = int((old_keys.isin(wanted) & (before.seed == cfg.seed)).sum())
    print(
        f"{reused} of {len(table)} SAEs were already done in {work.name}/ (resumed, not retrained); "
        f"{len(table) - reused} trained or evaluated now"
    )
    write_parquet(Path(run_dir) / "sae_metrics.parquet", table)
    # learning curves: beside the metrics table (local) or beside each task's part (Ray)
    found = [sae.read_curves(p) for p in [sae.curves_path(metrics), *sorted((work / "parts").glob("*_curves.parquet"))]]
    curves = pd.concat([c for c in found if len(c)] or [found[0]], ignore_index=True)
    if len(curves):
        ckey = pd.MultiIndex.from_frame(curves[["model", "layer", "width", "k"]])
        curves = curves[ckey.isin(wanted) & (curves.seed == cfg.seed)]
        curves = curves.drop_duplicates(["model", "layer", "width", "k", "seed", "step"], keep="last")
    write_parquet(Path(run_dir) / "sae_curves.parquet", curves.reset_index(drop=True))
    return table


def budget_models(cfg: Profile) -> list:
    """The models a budget check can retrain: pretrained ones whose SAEs are trained here."""
    from geowall.law import model_kind

    return [m for m in cfg.models if m.sae_source == "trained" and model_kind(m.source) == "pretrained"]


def budget_layers(cfg: Profile) -> list[tuple[str, int]]:
    """The (model, layer) pairs the budget check retrains: for every pretrained model with
    trained SAEs, its showcase layers and ``sae.budget_check.thin_layers`` of its other layers,
    spread over depth (those at the 1/(n+1) ... n/(n+1) quantiles of its thin layers)."""
    bc = cfg.sae.budget_check
    if bc is None:
        return []
    out = []
    for spec in budget_models(cfg):
        layers = cfg.layers_of(spec)
        show = [layer for layer in cfg.sae.showcase_layers.get(spec.name, []) if layer in layers]
        thin = [layer for layer in layers if layer not in show]
        n = min(bc.thin_layers, len(thin))
        picked = {thin[round((i + 1) * (len(thin) - 1) / (n + 1))] for i in range(n)}
        out.extend((spec.name, layer) for layer in sorted(set(show) | picked))
    return out


def longer_budget(cfg: Profile, factor: float) -> Profile:
    """``cfg`` with every SAE step count (``sae.steps`` and per-model ``steps``) times
    ``factor``; warm-up and decay are fractions of the steps, so the schedule keeps its shape."""
    from geowall.config import validate

    data = cfg.model_dump(mode="json")
    data["sae"]["steps"] = max(1, round(data["sae"]["steps"] * factor))
    data["sae"]["budget_check"] = None
    for m in data["models"]:
        if m.get("steps") is not None:
            m["steps"] = max(1, round(m["steps"] * factor))
    return validate(data)


def budget_check(cfg: Profile, run_dir: Path, metrics: pd.DataFrame, *, progress: bool = True, executor=None):
    """Step 01's budget check: retrain the :func:`budget_layers` grids at ``factor`` times the
    steps (same seed, widths, k and schedule shape) under their own ``saes/<settings>/``
    folder (resumable like the main grid), compare the width exponents with
    :func:`geowall.sae.budget_change` and write ``<run_dir>/budget_check.parquet``. Returns
    ``(table, summary)`` (:func:`geowall.sae.budget_summary`); ``(None, None)`` when the
    profile has no ``sae.budget_check`` or no pretrained trained model."""
    from geowall import executors, sae
    from geowall.io import write_parquet

    bc, pairs = cfg.sae.budget_check, budget_layers(cfg)
    if bc is None or not pairs:
        return None, None
    ex = executor or executors.current()
    long_cfg = longer_budget(cfg, bc.factor)
    work = sae_work_dir(long_cfg, run_dir)
    cfg_json = long_cfg.model_dump(mode="json")
    units = [(cfg_json, str(run_dir), str(work), m, layer, _part(ex, work, m, layer)) for m, layer in pairs]
    rows = []
    for _, r in tqdm(
        ex.map(_trained_unit, units, resources=executors.resources_for(cfg.device, "sae")),
        total=len(units),
        desc=f"budget check ({bc.factor:g}x steps)",
        disable=not progress,
    ):
        rows.extend(r)
    long = pd.DataFrame(rows)
    keys = pd.MultiIndex.from_frame(metrics[["model", "layer"]])
    base = metrics[keys.isin(pairs)]
    table = sae.budget_change(base, long)
    # the model's step budget (at width d; sae.steps_width_exponent scales it with width)
    table.insert(3, "steps_base", [cfg.model(m).steps or cfg.sae.steps for m in table.model])
    table.insert(4, "steps_long", [long_cfg.model(m).steps or long_cfg.sae.steps for m in table.model])
    write_parquet(Path(run_dir) / "budget_check.parquet", table)
    return table, sae.budget_summary(table, max_change=bc.max_change, min_spearman=bc.min_spearman)
