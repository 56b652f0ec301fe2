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
