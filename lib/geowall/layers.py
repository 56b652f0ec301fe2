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


def layer_depths(cfg: Profile) -> list[tuple[str, int, float]]:
    """(model, layer, relative depth) for every layer of every model; depth = layer / last layer index."""
    from geowall.sources import model_info

    out = []
    for m in cfg.models:
        last = model_info(m).n_layers - 1
        out.extend((m.name, layer, layer / last if last else 0.0) for layer in cfg.layers_of(m))
    return out


def subsample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows, chosen without replacement by a seeded RNG, in their original order."""
    return np.asarray(x[subsample_index(len(x), n, seed)], dtype=np.float32)


def subsample_index(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The row indices ``subsample`` keeps (all rows when n_rows <= n)."""
    if n_rows <= n:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=n, replace=False))


def geometry_table(cfg: Profile, run_dir: Path, *, progress: bool = True
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summaries, multiscale ID, sensitivity) for every layer, from ``geometry.n_points`` train tokens.

    Standard errors resample whole documents (step 00's ``docs_train.npy``; the synthetic
    zoo, which has none, resamples points). The sensitivity table holds each summary at
    three settings of its main knob and the Levina-Bickel MLE (``geometry.sensitivity``).
    """
    g = cfg.geometry
    rows, multi, sens = [], [], []
    for i, (model, layer, depth) in enumerate(tqdm(layer_depths(cfg), desc="geometry", disable=not progress)):
        seed = cfg.seed * 1_000_003 + i
        acts = activations.load(run_dir, model, layer, "train")
        idx = subsample_index(len(acts), g.n_points, seed)
        x = np.asarray(acts[idx], dtype=np.float32)
        docs = activations.doc_ids(run_dir, model, "train")
        groups = None if docs is None else np.asarray(docs)[idx]
        kw = dict(max_dim=g.max_dim, tangent_tol=g.tangent_tol, near_dup_tol=g.near_dup_tol, device=_device(cfg))
        s = geometry.summaries(x, n_boot=g.n_boot, seed=seed, k=g.k_neighbors, n_base=g.n_base, groups=groups, **kw)
        rows.append(s.assign(model=model, layer=layer, depth=depth, n_distinct=len(np.unique(x, axis=0))))
        ms = geometry.multiscale_id(x, seed=seed, near_dup_tol=g.near_dup_tol, device=_device(cfg))
        multi.append(ms.assign(model=model, layer=layer, depth=depth))
        sv = geometry.sensitivity(x, seed=seed, n_base=g.n_base, defaults=s.set_index("summary").estimate.to_dict(), **kw)
        sens.append(sv.assign(model=model, layer=layer, depth=depth))
    front = ["model", "layer", "depth", "summary"]
    table = pd.concat(rows, ignore_index=True)
    return (table[front + [c for c in table.columns if c not in front]], pd.concat(multi, ignore_index=True),
            pd.concat(sens, ignore_index=True))


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


def widths_for(cfg: Profile, model: str, layer: int, d: int) -> list[int]:
    """The width grid of a layer: multiples of d; showcase layers get the richer grid."""
    showcase = layer in cfg.sae.showcase_layers.get(model, [])
    return widths_of(cfg.sae.showcase_width_multiples if showcase else cfg.sae.width_multiples, d)


def widths_of(multiples, d: int) -> list[int]:
    """Distinct widths (whole latents) of width multiples of d, ascending."""
    return sorted({int(round(m * d)) for m in multiples})


def sae_grid(cfg: Profile, run_dir: Path, *, progress: bool = True) -> pd.DataFrame:
    """Step 01 for every model and layer: train (or load) the SAEs, one metrics row each.

    Work happens under ``<run_dir>/saes/<settings>/`` where ``<settings>`` hashes what an
    SAE's result depends on beyond its (model, layer, width, k, seed) key (training steps,
    batch size, learning rate, the activation request): rows land in that folder's
    ``metrics.parquet`` as each SAE finishes (atomically), so a killed run resumes, and a
    changed setting never reuses a stale SAE. The step's result, the rows of the current
    grid only, is written to ``<run_dir>/sae_metrics.parquet``.
    """
    from geowall import sae
    from geowall.io import sha256_json, write_parquet
    from geowall.sources import model_info

    settings = {"sae": cfg.sae.model_dump(mode="json", exclude={"showcase_layers", "showcase_width_multiples",
                                                                   "width_multiples", "ks"}),
                "activations": cfg.activations.model_dump(mode="json"), "corpus": cfg.corpus.model_dump(mode="json")}
    work = Path(run_dir) / "saes" / sha256_json(settings)[:12]
    metrics = work / "metrics.parquet"
    before = sae.read_metrics(metrics)  # rows of an earlier (possibly killed) run: not retrained
    wanted = []
    for spec in cfg.models:
        if spec.sae_source == "gemma-scope":
            from geowall.sources import gemma_scope

            rows = gemma_scope.run_manifest(spec, cfg.layers_of(spec), run_dir=run_dir, metrics_path=metrics,
                                            seed=cfg.seed, device=_device(cfg), progress=progress)
            wanted.extend((spec.name, r.layer, r.width, r.k) for r in rows.itertuples())
            continue
        d = model_info(spec).d
        for layer in cfg.layers_of(spec):
            widths = widths_for(cfg, spec.name, layer, d)
            ks = cfg.ks_of(spec)
            wanted.extend((spec.name, layer, w, k) for w in widths for k in ks)
            train = activations.load(run_dir, spec.name, layer, "train")
            evl = activations.load(run_dir, spec.name, layer, "eval")
            by_steps: dict[int, list[int]] = {}  # SAEs with the same step count train together
            for w in widths:
                by_steps.setdefault(max(1, round(cfg.sae.steps * (w / d) ** cfg.sae.steps_width_exponent)), []).append(w)
            for steps, ws in by_steps.items():
                s = cfg.sae
                train_cfg = sae.TrainConfig(steps=steps, batch_size=s.batch_size, lr=s.lr, lr_scale=s.lr_scale,
                                            lr_warmup=s.lr_warmup, lr_decay=s.lr_decay, curve_points=s.curve_points,
                                            plateau_window=s.plateau_window)
                sae.run_grid(train, evl, train_cfg, model=spec.name, layer=layer, widths=ws, ks=ks, seed=cfg.seed,
                             device=_device(cfg), sae_dir=work, metrics_path=metrics, progress=progress,
                             plateau_tol=s.plateau_tol)
    table = sae.read_metrics(metrics)
    key = pd.MultiIndex.from_frame(table[["model", "layer", "width", "k"]])
    table = table[key.isin(wanted) & (table.seed == cfg.seed)].reset_index(drop=True)
    old_keys = pd.MultiIndex.from_frame(before[["model", "layer", "width", "k"]])
    reused = int((old_keys.isin(wanted) & (before.seed == cfg.seed)).sum())
    print(f"{reused} of {len(table)} SAEs were already done in {work.name}/ (resumed, not retrained); "
          f"{len(table) - reused} trained or evaluated now")
    write_parquet(Path(run_dir) / "sae_metrics.parquet", table)
    curves = sae.read_curves(sae.curves_path(metrics))
    if len(curves):
        ckey = pd.MultiIndex.from_frame(curves[["model", "layer", "width", "k"]])
        curves = curves[ckey.isin(wanted) & (curves.seed == cfg.seed)].reset_index(drop=True)
    write_parquet(Path(run_dir) / "sae_curves.parquet", curves)
    return table
