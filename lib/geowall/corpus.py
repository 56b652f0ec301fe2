"""The offline English corpus.

Built deterministically from what every Python install carries: the docstrings of the
whole standard library (every ``.py`` file under ``sysconfig``'s stdlib path, all
subpackages, parsed with :mod:`ast`, never imported) plus the help topics of
``pydoc_data.topics``. Users can point the profile at text closer to a model's
pretraining data instead: their own UTF-8 text files (``corpus.kind: files``) or every
``.txt`` / ``.md`` file under a folder (``kind: folder``), where each blank-line-separated
paragraph is a document; or a Hugging Face dataset (``kind: hf``: ``dataset`` is a hub
id, read streamed when the hub is reachable, or a local dataset folder; the first
``max_docs`` rows of ``split``, column ``text_field``, one document each). The stdlib
docstrings stay the default: they need nothing but Python.

Cleaning: ``inspect.cleandoc``, doctest lines (``>>>`` / ``...``) dropped, whitespace
collapsed, documents shorter than ``min_words`` dropped, exact duplicates dropped
(first occurrence kept). The train / evaluation split is per document, decided by a
hash of the document text, so it does not depend on the order or on the seed.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from geowall.io import read_json, sha256_json, write_json

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Corpus:
    train: list[str]
    eval: list[str]
    source: str
    hash: str

    @property
    def n_words(self) -> int:
        return sum(len(d.split()) for d in self.train + self.eval)


def clean(text: str) -> str:
    lines = [ln for ln in inspect.cleandoc(text).splitlines() if not ln.lstrip().startswith((">>>", "... "))]
    return _WS.sub(" ", " ".join(lines)).strip()


def stdlib_documents() -> list[str]:
    """Docstrings of every stdlib module, class and function, then pydoc topics, in sorted file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if "site-packages" in rel.parts or "dist-packages" in rel.parts:
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a few test fixtures are deliberately broken
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    docs.append(doc)
    from pydoc_data.topics import topics

    docs.extend(topics[key] for key in sorted(topics))
    return docs


def read_text_file(f: str | Path) -> str:
    """The text of a user corpus file; ``ValueError`` naming the file if it is not
    strict UTF-8 or holds no text (profile validation calls this before any work)."""
    f = Path(f)
    try:
        text = f.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {f}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ValueError(f"corpus file {f}: empty (expected UTF-8 text)")
    return text


def file_documents(files: list[Path]) -> list[str]:
    """Paragraphs (blank-line separated) of user text files; strict UTF-8."""
    docs: list[str] = []
    for f in files:
        text = read_text_file(f)
        docs.extend(p for p in re.split(r"\n\s*\n", text) if p.strip())
    return docs


TEXT_SUFFIXES = (".txt", ".md")


def folder_files(folder: str | Path) -> list[Path]:
    """The ``.txt`` / ``.md`` files under ``folder`` (recursively, sorted); ValueError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"corpus folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"corpus folder {folder}: no {' / '.join(TEXT_SUFFIXES)} files under it")
    return files


def hf_documents(
    dataset: str, *, config: str | None = None, split: str = "train", text_field: str = "text", max_docs: int = 20000
) -> list[str]:
    """The first ``max_docs`` texts of a Hugging Face dataset split (streamed: nothing else is
    downloaded). ``dataset`` may be a local folder of data files. ValueError naming the
    dataset if it cannot be read (e.g. the hub is unreachable) or lacks ``text_field``."""
    import itertools

    try:
        from datasets import load_dataset

        ds = load_dataset(dataset, config, split=split, streaming=True)
        rows = list(itertools.islice(iter(ds), max_docs))
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad split: one clear message
        raise ValueError(
            f"corpus dataset {dataset!r} (config {config!r}, split {split!r}) cannot be read: {type(e).__name__}: {e}"
        ) from None
    if rows and text_field not in rows[0]:
        raise ValueError(f"corpus dataset {dataset!r}: no column {text_field!r} (columns {sorted(rows[0])})")
    return [str(r[text_field]) for r in rows if r.get(text_field)]


def is_eval(doc: str, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big")
    return h / 2**64 < eval_fraction


def build(
    kind: str = "stdlib", files: list[Path] | None = None, *, eval_fraction: float = 0.2, min_words: int = 8, spec=None
) -> Corpus:
    """The cleaned, de-duplicated, split corpus. ``spec`` (a CorpusSpec) supplies the
    ``folder`` and ``hf`` kinds' settings."""
    if kind == "stdlib":
        raw = stdlib_documents()
    elif kind == "files":
        raw = file_documents(list(files or []))
    elif kind == "folder":
        raw = file_documents(folder_files(spec.folder))
    elif kind == "hf":
        raw = hf_documents(
            spec.dataset,
            config=spec.dataset_config,
            split=spec.split,
            text_field=spec.text_field,
            max_docs=spec.max_docs,
        )
    else:
        raise ValueError(f"corpus kind {kind!r}: expected stdlib, files, folder or hf")
    seen: set[str] = set()
    docs: list[str] = []
    for d in map(clean, raw):
        if len(d.split()) >= min_words and d not in seen:
            seen.add(d)
            docs.append(d)
    if not docs:
        raise ValueError(f"corpus ({kind}): no document with at least {min_words} words")
    train = [d for d in docs if not is_eval(d, eval_fraction)]
    evl = [d for d in docs if is_eval(d, eval_fraction)]
    if not train or not evl:
        raise ValueError(
            f"corpus ({kind}): split left train={len(train)} eval={len(evl)} documents; need both non-empty"
        )
    return Corpus(train, evl, kind, sha256_json([train, evl]))


def load_or_build(cache: Path, spec) -> Corpus:
    """Build the corpus described by a :class:`~geowall.config.CorpusSpec`, cached as JSON."""
    key = sha256_json([spec.model_dump(mode="json"), _file_stamps(spec)])
    cache = Path(cache)
    if cache.is_file():
        data = read_json(cache)
        if data.get("key") == key:
            return Corpus(data["train"], data["eval"], data["source"], data["hash"])
    c = build(spec.kind, spec.files, eval_fraction=spec.eval_fraction, min_words=spec.min_words, spec=spec)
    write_json(cache, {"key": key, "train": c.train, "eval": c.eval, "source": c.source, "hash": c.hash})
    return c


def _file_stamps(spec) -> list:
    import sys

    if spec.kind == "stdlib":
        return [sys.version]
    if spec.kind == "hf":
        local = Path(spec.dataset)
        return (
            [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(local.rglob("*")) if f.is_file()]
            if local.is_dir()
            else []
        )  # a hub dataset: keyed by its id, config, split and field
    files = folder_files(spec.folder) if spec.kind == "folder" else spec.files
    return [[str(f), Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files]


def stats(c: Corpus) -> dict:
    """Document, word and (MiniLM WordPiece) token counts of a corpus."""
    from transformers import AutoTokenizer

    from geowall.sources import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    n_tokens = {
        s: sum(len(ids) for ids in tok(docs, add_special_tokens=False)["input_ids"])
        for s, docs in (("train", c.train), ("eval", c.eval))
    }
    return {
        "source": c.source,
        "hash": c.hash[:16],
        "docs_train": len(c.train),
        "docs_eval": len(c.eval),
        "words": c.n_words,
        "minilm_tokens_train": n_tokens["train"],
        "minilm_tokens_eval": n_tokens["eval"],
    }
