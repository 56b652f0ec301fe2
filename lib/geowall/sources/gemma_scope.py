"""Gemma Scope residual-stream SAEs: the manifest of the 844 checkpoints, and loading.

``manifest()`` reads the pretrained-SAE registry shipped inside the installed sae-lens
package (``sae_lens/pretrained_saes.yaml``; no network, and without importing sae-lens,
which is slow to import). It lists the full (non-canonical) releases
``gemma-scope-2b-pt-res`` and ``gemma-scope-9b-pt-res``, whose ids are
``layer_<L>/width_<W>/average_l0_<L0>``; the four ``embedding/...`` SAEs of each
release are excluded. The ``-canonical`` releases hold only one SAE per (layer, width)
and are not used.

``load_released_sae(folder)`` streams a Gemma Scope ``params.npz`` onto a device (no full host
copy, see :func:`read_params`) into a sae-lens ``JumpReLUSAE``; ``from_pretrained`` goes
through ``sae_lens.SAE.from_pretrained`` (which also works offline from a filled Hugging
Face cache with ``HF_HUB_OFFLINE=1``). ``run_manifest`` / ``evaluate_rows`` evaluate the
manifest SAEs of some layers one at a time, each downloaded (from the hub, or a
``sae_mirror`` folder) into a :class:`geowall.diskcache.DiskCache` under the profile's disk
budget and deleted after use unless downloads are kept; rows are appended one per SAE
(resume-safe, like ``geowall.sae.run_grid``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from geowall.io import load_activations

__all__ = [
    "RELEASES",
    "manifest",
    "load_released_sae",
    "from_pretrained",
    "run_manifest",
    "registry_path",
    "parse_width",
]

RELEASES = ("gemma-scope-2b-pt-res", "gemma-scope-9b-pt-res")
_ID_RE = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>\d+[km])/average_l0_(?P<l0>\d+)$")
PARAM_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
            rows.append(
                {
                    "release": release,
                    "model": entry["model"],
                    "layer": layer,
                    "width": parse_width(m["width"]),
                    "l0": int(m["l0"]),
                    "sae_id": str(sae["id"]),
                    "repo_id": entry["repo_id"],
                    "path": str(sae["path"]),
                    "hook_name": f"blocks.{layer}.hook_resid_post",
                }
            )
    df = pd.DataFrame(rows)
    all_widths = df.groupby("release")["width"].nunique()
    layer_widths = df.groupby(["release", "layer"])["width"].nunique()
    full = layer_widths[
        layer_widths.values == all_widths.reindex(layer_widths.index.get_level_values("release")).values
    ].index
    df["showcase"] = pd.MultiIndex.from_frame(df[["release", "layer"]]).isin(full)
    cols = ["release", "model", "layer", "width", "l0", "sae_id", "showcase", "repo_id", "path", "hook_name"]
    return df[cols].sort_values(["model", "layer", "width", "l0"], kind="mergesort").reset_index(drop=True)


# ---------------------------------------------------------------------------- streamed load

CHUNK_BYTES = 64 * 2**20  # host buffer per copy: bounds host memory when the target is a GPU


@dataclasses.dataclass(frozen=True)
class NpzMember:
    """One array of an ``.npz``: where its bytes are and what they hold."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    info: zipfile.ZipInfo

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _member_stream(fh, zf: zipfile.ZipFile, info: zipfile.ZipInfo):
    """A readable positioned at the start of the member's ``.npy`` bytes.

    Stored (uncompressed) members, as in Gemma Scope's ``params.npz``, are read straight
    from the file at their offset (``fh`` seeked past the local header); compressed ones
    go through ``zipfile`` (which checks their CRC itself).
    """
    if info.compress_type != zipfile.ZIP_STORED:
        return zf.open(info)
    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"member {info.filename!r}: bad local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    return fh


def _read_npy_header(stream, path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header length in bytes) of the ``.npy`` at ``stream``."""
    from numpy.lib import format as npformat

    start = stream.tell() if stream.seekable() else 0
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(stream)
    except (ValueError, EOFError, OSError) as err:
        raise ValueError(f"{path}: key {key!r} cannot be read (truncated or corrupt): {err}") from err
    header = (stream.tell() - start) if stream.seekable() else None
    return tuple(int(s) for s in shape), bool(fortran), np.dtype(dtype), header


def npz_members(path: str | os.PathLike) -> dict[str, NpzMember]:
    """Shape and dtype of every array in an ``.npz`` without reading any array data.

    ValueError naming the file (and key) if it is not a readable ``.npz``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Gemma Scope params file not found: {path}")
    out: dict[str, NpzMember] = {}
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                stream = _member_stream(fh, zf, info)
                try:
                    shape, fortran, dtype, _ = _read_npy_header(stream, path, key)
                finally:
                    if stream is not fh:
                        stream.close()
                out[key] = NpzMember(key, shape, dtype, fortran, info)
    except (zipfile.BadZipFile, OSError, EOFError, struct.error) as err:
        raise ValueError(f"{path}: not a readable .npz (truncated or corrupt): {err}") from err
    return out


def _readinto_full(stream, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _stream_member(
    fh,
    zf: zipfile.ZipFile,
    path: Path,
    m: NpzMember,
    *,
    device: torch.device,
    dtype: torch.dtype,
    chunk_bytes: int,
    verify: bool,
    check_finite: bool,
) -> torch.Tensor:
    """One array of the ``.npz`` read in chunks into a tensor allocated on ``device``.

    On the CPU (with no dtype change) the bytes are read straight into the destination
    tensor's memory; elsewhere through one reused host buffer of ``chunk_bytes``, so host
    memory stays at one chunk whatever the array's size. ``verify`` checks the member's
    CRC-32 as the bytes go by (zipfile checks compressed members itself).
    """
    stream = _member_stream(fh, zf, m.info)
    try:
        _, _, _, header = _read_npy_header(stream, path, m.key)
        crc = 0
        if verify and m.info.compress_type == zipfile.ZIP_STORED:  # the npy header counts in the CRC
            fh.seek(-header, os.SEEK_CUR)
            crc = zlib.crc32(fh.read(header))
        shape = m.shape[::-1] if m.fortran_order else m.shape
        dest = torch.empty(shape, dtype=dtype, device=device)
        flat = dest.view(-1)
        n_total = flat.numel()
        native = m.dtype.newbyteorder("=")
        direct = device.type == "cpu" and torch.from_numpy(np.empty(0, native)).dtype == dtype
        step = max(1, chunk_bytes // m.dtype.itemsize)
        buf = None if direct else np.empty(min(step, max(n_total, 1)), dtype=m.dtype)
        for start in range(0, n_total, step):
            n = min(step, n_total - start)
            if direct:
                target = flat[start : start + n].numpy()
                view = memoryview(target.view(np.uint8))
            else:
                target = buf[:n]
                view = memoryview(target.view(np.uint8))
            if _readinto_full(stream, view) != len(view):
                raise ValueError(
                    f"{path}: key {m.key!r} cannot be read (truncated or corrupt): file ends inside the array"
                )
            if verify and m.info.compress_type == zipfile.ZIP_STORED:
                crc = zlib.crc32(view, crc)
            if check_finite and not np.isfinite(target).all():
                raise ValueError(f"{path}: key {m.key!r} contains NaN or infinite values")
            if not direct:
                src = torch.from_numpy(target if target.dtype.isnative else target.astype(native))
                flat[start : start + n].copy_(src)
        if n_total == 0 and verify and m.info.compress_type != zipfile.ZIP_STORED:
            stream.read()
        if verify and m.info.compress_type == zipfile.ZIP_STORED and crc != m.info.CRC:
            raise ValueError(f"{path}: key {m.key!r} cannot be read (truncated or corrupt): CRC-32 mismatch")
        if m.info.compress_type != zipfile.ZIP_STORED:
            stream.read(1)  # reaching the end makes zipfile compare the CRC
    except zipfile.BadZipFile as err:
        raise ValueError(f"{path}: key {m.key!r} cannot be read (truncated or corrupt): {err}") from err
    finally:
        if stream is not fh:
            stream.close()
    return dest.permute(*reversed(range(dest.ndim))) if m.fortran_order else dest


def expected_shapes(d: int, width: int) -> dict[str, tuple[int, ...]]:
    """The Gemma Scope JumpReLU parameter shapes for residual width ``d`` and ``width`` latents."""
    return {"W_enc": (d, width), "W_dec": (width, d), "b_enc": (width,), "b_dec": (d,), "threshold": (width,)}


def check_members(path: Path, members: dict[str, NpzMember]) -> tuple[int, int]:
    """(d, W) from ``W_enc``; ValueError naming the key, its shape and the expected one."""
    for key in PARAM_KEYS:
        if key not in members:
            raise ValueError(f"{path}: missing key {key!r} (expected keys {list(PARAM_KEYS)})")
    w_enc = members["W_enc"].shape
    if len(w_enc) != 2:
        raise ValueError(f"{path}: key 'W_enc' has shape {w_enc}, expected 2-D (d, W)")
    d, width = w_enc
    for key, shape in expected_shapes(d, width).items():
        m = members[key]
        if m.shape != shape:
            raise ValueError(f"{path}: key {key!r} has shape {m.shape}, expected {shape} (d={d}, W={width} from W_enc)")
        if m.dtype.kind != "f":
            raise ValueError(f"{path}: key {key!r} has dtype {m.dtype}, expected floating point")
    return int(d), int(width)


def read_params(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    chunk_bytes: int = CHUNK_BYTES,
    verify: bool = True,
    check_finite: bool = True,
) -> dict[str, torch.Tensor]:
    """The five JumpReLU arrays of ``params.npz`` as tensors on ``device``, streamed.

    No full host copy is made: each array is allocated on the target device and filled
    chunk by chunk (see :func:`_stream_member`), so loading a 30 GB 9B 1M-width SAE onto a
    GPU needs one ``chunk_bytes`` host buffer, and onto the CPU the parameters themselves
    and nothing more. ``verify`` checks each member's CRC-32; ``check_finite`` rejects NaN
    or infinite values. ValueError naming the file and key on any trouble.
    """
    path = Path(path)
    members = npz_members(path)
    check_members(path, members)
    device = torch.device(device)
    out: dict[str, torch.Tensor] = {}
    try:
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            for key in PARAM_KEYS:
                out[key] = _stream_member(
                    fh,
                    zf,
                    path,
                    members[key],
                    device=device,
                    dtype=DTYPES[dtype],
                    chunk_bytes=chunk_bytes,
                    verify=verify,
                    check_finite=check_finite,
                )
    except (zipfile.BadZipFile, OSError, EOFError, struct.error) as err:
        raise ValueError(f"{path}: not a readable .npz (truncated or corrupt): {err}") from err
    return out


def sae_from_params(params: dict[str, torch.Tensor], *, metadata: dict[str, Any] | None = None):
    """A sae-lens ``JumpReLUSAE`` whose parameters *are* ``params`` (no copy: built on the
    meta device, then the tensors are assigned)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d, width = params["W_enc"].shape
    device = params["W_enc"].device
    dtype = {v: k for k, v in DTYPES.items()}[params["W_enc"].dtype]
    cfg = JumpReLUSAEConfig(
        d_in=int(d),
        d_sae=int(width),
        dtype=dtype,
        device="meta",
        apply_b_dec_to_input=False,
        normalize_activations="none",
        metadata=SAEMetadata(**(metadata or {})),
    )
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict(params, assign=True)
    sae.cfg.device = str(device)
    return sae.eval()


def load_released_sae(
    folder: str | os.PathLike,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    metadata: dict[str, Any] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
):
    """A sae-lens ``JumpReLUSAE`` from ``folder/params.npz`` (a Gemma Scope checkpoint),
    streamed onto ``device`` (see :func:`read_params`).

    ``folder`` may also be the ``params.npz`` file itself. The checkpoint holds
    ``W_enc (d, W)``, ``W_dec (W, d)``, ``b_enc (W,)``, ``b_dec (d,)`` and
    ``threshold (W,)``; Gemma Scope does not subtract ``b_dec`` from the input.
    """
    folder = Path(folder)
    path = folder if folder.suffix == ".npz" else folder / "params.npz"
    params = read_params(path, device=device, dtype=dtype, chunk_bytes=chunk_bytes)
    return sae_from_params(params, metadata=metadata or {"source": str(path)})


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


# ---------------------------------------------------------------------------- streaming under a budget

RELEASE_D = {"gemma-scope-2b-pt-res": 2304, "gemma-scope-9b-pt-res": 3584}  # residual width of each release
NPZ_OVERHEAD = 4096  # zip and .npy headers of the five members, rounded up


def sae_nbytes(d: int, width: int, itemsize: int = 4) -> int:
    """Bytes of a Gemma Scope ``params.npz`` (stored float32 arrays) of residual width ``d``."""
    return itemsize * (2 * d * width + 2 * width + d) + NPZ_OVERHEAD


def release_d(release: str) -> int:
    if release not in RELEASE_D:
        raise ValueError(f"release {release!r}: residual width unknown (known: {sorted(RELEASE_D)})")
    return RELEASE_D[release]


def hub_fetch(row: Any):
    """``fetch(dest)`` downloading a manifest row's ``params.npz`` from the Hugging Face hub.

    It downloads into a folder beside ``dest`` (``local_dir``: no copy lands in the shared
    Hugging Face cache, which is never evicted) and moves the file onto ``dest``.
    Credentials, if any are needed, are read by huggingface_hub from its usual
    environment; geowall never reads or logs them.
    """

    def fetch(dest: Path) -> None:
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(repo_id=row.repo_id, filename=f"{row.path}/params.npz", local_dir=dest.parent / "hub")
        os.replace(got, dest)

    return fetch


def mirror_fetch(mirror: str | os.PathLike, row: Any):
    """``fetch(dest)`` copying a row's ``params.npz`` from a mirror folder laid out as
    ``<mirror>/<release>/<sae_id>/params.npz`` (e.g. a network mount)."""

    def fetch(dest: Path) -> None:
        import shutil

        src = _local_params(mirror, row.release, row.sae_id)
        if not src.is_file():
            raise FileNotFoundError(f"sae_mirror: {src} not found")
        shutil.copyfile(src, dest)

    return fetch


def cache_for(sae_spec: Any, run_dir: str | os.PathLike):
    """The :class:`geowall.diskcache.DiskCache` of a profile's ``sae`` section."""
    from geowall.diskcache import DiskCache

    root = getattr(sae_spec, "cache_dir", None) or Path(run_dir) / "sae_cache"
    gb = getattr(sae_spec, "cache_budget_gb", None)
    return DiskCache(root, None if gb is None else int(gb * 1e9), keep=bool(getattr(sae_spec, "keep_downloads", False)))


def check_budget(spec: Any, layers: Any, budget_bytes: int | None) -> int:
    """Bytes of the largest SAE this model's layers stream; ``BudgetError`` (naming
    ``sae.cache_budget_gb``) if it alone does not fit the budget. Returns the bytes."""
    from geowall.diskcache import BudgetError, fmt_bytes

    if getattr(spec, "sae_local_dir", None) is not None:
        return 0  # read in place: nothing is downloaded
    man = manifest((spec.sae_release,))
    rows = man[man.layer.isin([int(x) for x in layers])]
    if rows.empty:
        return 0
    biggest = rows.loc[rows.width.idxmax()]
    nbytes = sae_nbytes(release_d(spec.sae_release), int(biggest.width))
    if budget_bytes is not None and nbytes > budget_bytes:
        raise BudgetError(
            f"sae.cache_budget_gb: {budget_bytes / 1e9:g} GB cannot hold the largest SAE model "
            f"{spec.name!r} streams ({spec.sae_release}/{biggest.sae_id}: {fmt_bytes(nbytes)}); "
            f"raise the budget or leave out layers {sorted(rows[rows.width == biggest.width].layer.unique())}"
        )
    return nbytes


def _streamed_sae(spec: Any, row: Any, *, cache: Any, device: str):
    """Context manager yielding a manifest row's SAE, on ``device``, fetched through ``cache``
    (or read in place from ``spec.sae_local_dir``)."""
    import contextlib

    meta = {"release": row.release, "sae_id": row.sae_id}
    local_dir = getattr(spec, "sae_local_dir", None)
    if local_dir is not None:
        return contextlib.nullcontext(
            load_released_sae(_local_params(local_dir, row.release, row.sae_id), device=device, metadata=meta)
        )

    @contextlib.contextmanager
    def opened():
        mirror = getattr(spec, "sae_mirror", None)
        fetch = mirror_fetch(mirror, row) if mirror is not None else hub_fetch(row)
        nbytes = int(row.nbytes) if hasattr(row, "nbytes") else sae_nbytes(release_d(row.release), int(row.width))
        with cache.fetched(f"{row.release}/{row.sae_id}/params.npz", nbytes, fetch) as path:
            sae = load_released_sae(path, device=device, metadata=meta)
        yield sae  # the file may be evicted now: the parameters live on the device

    return opened()


def layer_rows(spec: Any, layers: Any) -> pd.DataFrame:
    """The manifest rows of ``spec.sae_release`` at ``layers``, with ``k`` = the nominal L0 and
    ``nbytes`` = the size of the row's ``params.npz`` (what a worker reserves in its cache)."""
    release = spec.sae_release
    man = manifest((release,))
    layers = sorted({int(x) for x in layers})
    unknown = sorted(set(layers) - set(man.layer))
    if unknown:
        raise ValueError(
            f"layers {unknown} have no residual SAEs in release {release!r} "
            f"(layers {man.layer.min()}..{man.layer.max()})"
        )
    d = release_d(release)
    return (
        man[man.layer.isin(layers)]
        .assign(k=lambda df: df.l0, nbytes=lambda df: [sae_nbytes(d, int(w)) for w in df.width])
        .reset_index(drop=True)
    )


def evaluate_rows(spec: Any, rows: pd.DataFrame, eval_acts: Any, *, cache: Any, seed: int, device: str = "cpu"):
    """Yield one metrics row (a dict) per manifest row, evaluating one SAE at a time.

    Each SAE is fetched through ``cache``, loaded onto ``device`` (streamed), the file is
    released (deleted unless the cache keeps downloads), then it is evaluated on
    ``eval_acts``. This is the unit of work both executors run for one (model, layer).
    """
    from geowall import sae as S

    for r in rows.itertuples():
        with _streamed_sae(spec, r, cache=cache, device=device) as sae:
            if int(sae.cfg.d_sae) != r.width:
                raise ValueError(f"{r.release}/{r.sae_id}: SAE has {sae.cfg.d_sae} latents, manifest says {r.width}")
            m = S.evaluate(sae, eval_acts, device=device)
            del sae
        yield {
            "model": spec.name,
            "layer": int(r.layer),
            "width": int(r.width),
            "k": int(r.k),
            **{key: m[key] for key in ("l0", "fvu", "mse", "dead_frac", "n_tokens")},
            "source": "gemma-scope",
            "sae_id": f"{r.release}/{r.sae_id}",
            "train_tokens": 0,
            "seed": int(seed),
        }


def run_manifest(
    spec: Any,
    layers: Any,
    *,
    run_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    seed: int,
    device: str = "cpu",
    progress: bool = True,
    cache: Any = None,
) -> pd.DataFrame:
    """Evaluate every Gemma Scope SAE of ``spec.sae_release`` at ``layers`` on held-out activations.

    ``spec`` is a model spec (``name``, ``sae_release``, optional ``sae_local_dir`` laid out
    as ``<release>/<sae_id>/params.npz`` and read in place, optional ``sae_mirror`` of the
    same layout to fetch from instead of the hub); the evaluation tokens are
    ``geowall.activations.load(run_dir, spec.name, layer, "eval")`` (read with
    :func:`geowall.io.load_activations`: a source does not import the harvester). SAEs are streamed
    through ``cache`` (a :class:`geowall.diskcache.DiskCache`; default
    ``<run_dir>/sae_cache`` with no budget, deleting each download after use): the run
    refuses to start if the largest SAE does not fit its budget. One SAE is in memory at
    a time; each adds a row to ``metrics_path`` (model = ``spec.name``, k = the nominal
    L0, l0 = measured, source ``"gemma-scope"``, sae_id ``<release>/<id>``, train_tokens 0
    as these SAEs were not trained here) as soon as it is evaluated, and rows already
    there are skipped. Returns the manifest rows of those layers, with ``k`` = nominal L0.
    """
    from tqdm.auto import tqdm

    from geowall import sae as S  # on use: reading the manifest (geowall plan, preflight) needs no SAE code
    from geowall.diskcache import DiskCache

    rows = layer_rows(spec, layers)
    cache = cache if cache is not None else DiskCache(Path(run_dir) / "sae_cache")
    check_budget(spec, layers, cache.budget)
    metrics = S.MetricsTable(metrics_path)
    key = rows.set_index(["layer", "width", "k"]).index
    todo = rows.iloc[
        metrics.todo(
            range(len(rows)), lambda i: (spec.name, *key[i], seed), what=f"run_manifest {spec.name} (Gemma Scope)"
        )
    ]
    bar = tqdm(total=len(todo), desc=f"{spec.name} Gemma Scope", disable=not progress)
    for layer, group in todo.groupby("layer", sort=True):
        eval_acts = load_activations(Path(run_dir), spec.name, int(layer), "eval")
        for row in evaluate_rows(spec, group, eval_acts, cache=cache, seed=seed, device=device):
            metrics.add(
                **{k: row[k] for k in ("model", "layer", "width", "k", "seed", "source", "sae_id", "train_tokens")},
                metrics=row,
            )
            bar.update(1)
    bar.close()
    return rows
