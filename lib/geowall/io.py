"""Atomic, pickle-free artefact I/O.

Every artefact is written to a temporary file in the destination folder and then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash or SIGKILL
during a write leaves either the old file or none, never a partial one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "atomic_path",
    "write_json",
    "read_json",
    "write_parquet",
    "read_parquet",
    "require_columns",
    "save_npy",
    "load_npy",
    "sha256_file",
    "sha256_json",
    "flatten",
    "SPLITS",
    "ActivationError",
    "layer_dir",
    "layer_manifest",
    "load_activations",
    "check_finite",
]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(path, ".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a parquet artefact from one open file descriptor.

    ``pd.read_parquet(path)`` lets pyarrow stat the path and open it again; if a writer's
    ``os.replace`` lands in between, the size and the bytes belong to different files
    ("Page was smaller than expected"). Holding one descriptor reads one consistent
    snapshot, the old file or the new one.
    """
    with open(path, "rb") as fh:
        return pd.read_parquet(fh)


def require_columns(df: pd.DataFrame, name: str, columns, *, what: str = "expected") -> pd.DataFrame:
    """A copy of table ``df`` after checking it is a DataFrame holding ``columns``;
    ``TypeError`` / ``ValueError`` naming the table (``name``) and what is missing."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; {what} {list(columns)}")
    return df.copy()


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path, ".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)


def load_npy(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------- activation store, read side
# The layout and the checked read of step 00's activation store (geowall.activations writes it
# and re-exports these names). Here, below the model sources, so that a source
# (geowall.sources.gemma_scope) reads evaluation tokens without importing the harvester.

SPLITS = ("train", "eval")


class ActivationError(ValueError):
    """Activations are missing, stale, or contain non-finite values."""


def layer_dir(run_dir: Path, model: str, layer: int) -> Path:
    """Folder of one layer of the activation store: ``<run_dir>/<model>/acts/layer_LL``."""
    return Path(run_dir) / model / "acts" / f"layer_{layer:02d}"


def layer_manifest(run_dir: Path, model: str, layer: int) -> dict:
    path = layer_dir(run_dir, model, layer) / "manifest.json"
    if not path.is_file():
        raise ActivationError(
            f"no activations for model {model!r} layer {layer} under {path.parent} (run step 'activations' first)"
        )
    return read_json(path)


def load_activations(run_dir: Path, model: str, layer: int, split: str = "train", *, check: bool = True) -> np.ndarray:
    """Memory-mapped (n, d) float32 activations of one layer and split of the store
    (``geowall.activations.load``). ``check`` scans for NaN/Inf in chunks."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    man = layer_manifest(run_dir, model, layer)
    x = load_npy(layer_dir(run_dir, model, layer) / f"{split}.npy")
    if x.shape != (man[f"n_{split}"], man["d"]):
        raise ActivationError(f"model {model!r} layer {layer} {split}: shape {x.shape} does not match its manifest")
    if check:
        check_finite(x, model=model, layer=layer, split=split)
    return x


def check_finite(x: np.ndarray, *, model: str, layer: int, split: str, chunk: int = 65536) -> None:
    bad = 0
    for i in range(0, len(x), chunk):
        bad += int((~np.isfinite(np.asarray(x[i : i + chunk]))).any(axis=1).sum())
    if bad:
        raise ActivationError(f"model {model!r} layer {layer} {split}: {bad} of {len(x)} rows contain NaN or Inf")


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"a.b.c": value}`` (lists are values): how Quarto resolves dotted
    ``var`` keys, and how a variant's record lists the profile keys it changed."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
