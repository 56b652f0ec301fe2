"""Gemma Scope residual-stream SAEs: the manifest of the 844 checkpoints, and loading.

``manifest()`` reads the pretrained-SAE registry shipped inside the installed sae-lens
package (``sae_lens/pretrained_saes.yaml``; no network, and without importing sae-lens,
which is slow to import). It lists the full (non-canonical) releases
``gemma-scope-2b-pt-res`` and ``gemma-scope-9b-pt-res``, whose ids are
``layer_<L>/width_<W>/average_l0_<L0>``; the four ``embedding/...`` SAEs of each
release are excluded. The ``-canonical`` releases hold only one SAE per (layer, width)
and are not used.

``load_released_sae(folder)`` reads a local Gemma Scope ``params.npz`` into a sae-lens
``JumpReLUSAE``; ``from_pretrained`` goes through ``sae_lens.SAE.from_pretrained``
(which also works offline from a filled Hugging Face cache with ``HF_HUB_OFFLINE=1``).
``run_manifest`` evaluates every manifest SAE of some layers, one SAE in memory at a
time, appending one metrics row per SAE (resume-safe through ``geowall.sae.MetricsTable``,
like ``geowall.sae.run_grid``).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["RELEASES", "manifest", "load_released_sae", "from_pretrained", "run_manifest", "registry_path",
           "parse_width"]

RELEASES = ("gemma-scope-2b-pt-res", "gemma-scope-9b-pt-res")
_ID_RE = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>\d+[km])/average_l0_(?P<l0>\d+)$")
PARAM_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def registry_path() -> Path:
    """Path of ``pretrained_saes.yaml`` inside the installed sae-lens (found without importing it)."""
    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("sae_lens is not installed; it provides the Gemma Scope registry")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"sae-lens registry not found at {path}")
    return path


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(registry_path()) as fh:
        return yaml.load(fh, Loader=loader)


def parse_width(token: str) -> int:
    """Gemma Scope width label to latents: ``'16k' -> 16384``, ``'65k' -> 65536``, ``'1m' -> 2**20``.

    The labels are rounded decimal forms of powers of two (as in sae-lens's own map).
    """
    num, unit = int(token[:-1]), token[-1].lower()
    approx = num * {"k": 1_000, "m": 1_000_000}[unit]
    return 2 ** round(math.log2(approx))


def manifest(releases: tuple[str, ...] = RELEASES) -> pd.DataFrame:
    """One row per residual-stream Gemma Scope SAE (embedding SAEs excluded).

    Columns: release, model, layer, width, l0 (nominal, from the id), sae_id,
    showcase (the layer has every width that occurs anywhere in its release),
    repo_id, path, hook_name. Sorted by model, layer, width, l0.
    """
    reg = _registry()
    rows = []
    for release in releases:
        if release not in reg:
            raise ValueError(f"release {release!r} not in the sae-lens registry {registry_path()}")
        entry = reg[release]
        for sae in entry["saes"]:
            m = _ID_RE.match(str(sae["id"]))
            if m is None:  # embedding/width_4k/... and anything not a layer SAE
                continue
            layer = int(m["layer"])
            rows.append({
                "release": release, "model": entry["model"], "layer": layer,
                "width": parse_width(m["width"]), "l0": int(m["l0"]), "sae_id": str(sae["id"]),
                "repo_id": entry["repo_id"], "path": str(sae["path"]),
                "hook_name": f"blocks.{layer}.hook_resid_post",
            })
    df = pd.DataFrame(rows)
    all_widths = df.groupby("release")["width"].nunique()
    layer_widths = df.groupby(["release", "layer"])["width"].nunique()
    full = layer_widths[layer_widths.values == all_widths.reindex(
        layer_widths.index.get_level_values("release")).values].index
    df["showcase"] = pd.MultiIndex.from_frame(df[["release", "layer"]]).isin(full)
    cols = ["release", "model", "layer", "width", "l0", "sae_id", "showcase", "repo_id", "path", "hook_name"]
    return df[cols].sort_values(["model", "layer", "width", "l0"], kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------------------- load


def _read_params(path: Path) -> dict[str, np.ndarray]:
    """The five JumpReLU arrays of ``params.npz``; ValueError naming the file and key on trouble."""
    if not path.is_file():
        raise FileNotFoundError(f"Gemma Scope params file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz (truncated or corrupt): {err}") from err
    out: dict[str, np.ndarray] = {}
    with npz:
        for key in PARAM_KEYS:
            if key not in npz.files:
                raise ValueError(f"{path}: missing key {key!r} (expected keys {list(PARAM_KEYS)})")
            try:
                out[key] = np.asarray(npz[key])
            except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
                raise ValueError(f"{path}: key {key!r} cannot be read (truncated or corrupt): {err}") from err
    return out


def _check_shapes(path: Path, arrs: dict[str, np.ndarray]) -> tuple[int, int]:
    """(d, W) from ``W_enc``; ValueError naming the key, its shape and the expected one."""
    w_enc = arrs["W_enc"]
    if w_enc.ndim != 2:
        raise ValueError(f"{path}: key 'W_enc' has shape {w_enc.shape}, expected 2-D (d, W)")
    d, width = w_enc.shape
    expected = {"W_enc": (d, width), "W_dec": (width, d), "b_enc": (width,), "b_dec": (d,),
                "threshold": (width,)}
    for key, shape in expected.items():
        arr = arrs[key]
        if arr.shape != shape:
            raise ValueError(f"{path}: key {key!r} has shape {arr.shape}, expected {shape} "
                             f"(d={d}, W={width} from W_enc)")
        if arr.dtype.kind != "f":
            raise ValueError(f"{path}: key {key!r} has dtype {arr.dtype}, expected floating point")
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: key {key!r} contains NaN or infinite values")
    return int(d), int(width)


def load_released_sae(folder: str | os.PathLike, *, device: str = "cpu", metadata: dict[str, Any] | None = None):
    """A sae-lens ``JumpReLUSAE`` from ``folder/params.npz`` (a Gemma Scope checkpoint).

    ``folder`` may also be the ``params.npz`` file itself. The checkpoint holds
    ``W_enc (d, W)``, ``W_dec (W, d)``, ``b_enc (W,)``, ``b_dec (d,)`` and
    ``threshold (W,)``; Gemma Scope does not subtract ``b_dec`` from the input.
    """
    import torch
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    folder = Path(folder)
    path = folder if folder.suffix == ".npz" else folder / "params.npz"
    arrs = _read_params(path)
    d, width = _check_shapes(path, arrs)
    cfg = JumpReLUSAEConfig(
        d_in=d, d_sae=width, dtype="float32", device="cpu", apply_b_dec_to_input=False,
        normalize_activations="none", metadata=SAEMetadata(**(metadata or {"source": str(path)})),
    )
    sae = JumpReLUSAE(cfg)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrs.items()}
    sae.load_state_dict(state)
    return sae.to(device).eval()


def from_pretrained(release: str, sae_id: str, *, device: str = "cpu"):
    """``sae_lens.SAE.from_pretrained(release, sae_id)`` after checking both against the registry.

    Works offline from a filled Hugging Face cache with ``HF_HUB_OFFLINE=1``. Credentials,
    if any are needed, are read by huggingface_hub from its usual environment; this
    function never reads or logs them.
    """
    reg = _registry()
    if release not in reg:
        raise ValueError(f"release {release!r} not in the sae-lens registry {registry_path()}")
    ids = {str(s["id"]) for s in reg[release]["saes"]}
    if sae_id not in ids:
        raise ValueError(f"sae_id {sae_id!r} not in release {release!r} (e.g. {sorted(ids)[:3]})")
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device).eval()


def _local_params(local_dir: str | os.PathLike, release: str, sae_id: str) -> Path:
    """``<local_dir>/<release>/<sae_id>/params.npz`` (the local mirror layout)."""
    return Path(local_dir) / release / sae_id / "params.npz"


def _open_sae(spec: Any, row: Any, device: str):
    """The SAE of a manifest row: from ``spec.sae_local_dir`` if set, else through sae-lens."""
    local_dir = getattr(spec, "sae_local_dir", None)
    if local_dir is not None:
        return load_released_sae(_local_params(local_dir, row.release, row.sae_id), device=device,
                        metadata={"release": row.release, "sae_id": row.sae_id})
    return from_pretrained(row.release, row.sae_id, device=device)


def run_manifest(spec: Any, layers: Any, *, run_dir: str | os.PathLike, metrics_path: str | os.PathLike,
                 seed: int, device: str = "cpu", progress: bool = True) -> pd.DataFrame:
    """Evaluate every Gemma Scope SAE of ``spec.sae_release`` at ``layers`` on held-out activations.

    ``spec`` is a model spec (``name``, ``sae_release``, optional ``sae_local_dir`` laid out
    as ``<release>/<sae_id>/params.npz``); the evaluation tokens are
    ``geowall.activations.load(run_dir, spec.name, layer, "eval")``. One SAE is in memory
    at a time; each adds a row to ``metrics_path`` (model = ``spec.name``, k = the nominal
    L0, l0 = measured, source ``"gemma-scope"``, sae_id ``<release>/<id>``, train_tokens 0
    as these SAEs were not trained here) as soon as it is evaluated, and rows already
    there are skipped. Returns the manifest rows of those layers, with ``k`` = nominal L0.
    """
    from tqdm.auto import tqdm

    from geowall import activations
    from geowall import sae as S

    release = spec.sae_release
    man = manifest((release,))
    layers = sorted({int(x) for x in layers})
    unknown = sorted(set(layers) - set(man.layer))
    if unknown:
        raise ValueError(f"layers {unknown} have no residual SAEs in release {release!r} "
                         f"(layers {man.layer.min()}..{man.layer.max()})")
    rows = man[man.layer.isin(layers)].assign(k=lambda df: df.l0).reset_index(drop=True)
    metrics = S.MetricsTable(metrics_path)
    key = rows.set_index(["layer", "width", "k"]).index
    todo = rows.iloc[metrics.todo(range(len(rows)), lambda i: (spec.name, *key[i], seed),
                                  what=f"run_manifest {spec.name} (Gemma Scope)")]
    bar = tqdm(total=len(todo), desc=f"{spec.name} Gemma Scope", disable=not progress)
    for layer, group in todo.groupby("layer", sort=True):
        eval_acts = activations.load(Path(run_dir), spec.name, int(layer), "eval")
        for r in group.itertuples():
            sae = _open_sae(spec, r, device)
            if int(sae.cfg.d_sae) != r.width:
                raise ValueError(f"{release}/{r.sae_id}: SAE has {sae.cfg.d_sae} latents, manifest says {r.width}")
            scores = S.evaluate(sae, eval_acts, device=device)
            del sae
            metrics.add(model=spec.name, layer=layer, width=r.width, k=r.k, seed=seed, metrics=scores,
                        source="gemma-scope", sae_id=f"{release}/{r.sae_id}", train_tokens=0)
            bar.update(1)
    bar.close()
    return rows
