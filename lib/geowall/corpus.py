"""The offline English corpus.

Built deterministically from what every Python install carries: the docstrings of the
whole standard library (every ``.py`` file under ``sysconfig``'s stdlib path, all
subpackages, parsed with :mod:`ast`, never imported) plus the help topics of
``pydoc_data.topics``. Users can point the profile at their own UTF-8 text files
instead (``corpus.kind: files``), where each blank-line-separated paragraph is a
document.

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


def is_eval(doc: str, eval_fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(doc.encode()).digest()[:8], "big")
    return h / 2**64 < eval_fraction


def build(kind: str = "stdlib", files: list[Path] | None = None, *, eval_fraction: float = 0.2, min_words: int = 8) -> Corpus:
    raw = stdlib_documents() if kind == "stdlib" else file_documents(list(files or []))
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
        raise ValueError(f"corpus ({kind}): split left train={len(train)} eval={len(evl)} documents; need both non-empty")
    return Corpus(train, evl, kind, sha256_json([train, evl]))


def load_or_build(cache: Path, spec) -> Corpus:
    """Build the corpus described by a :class:`~geowall.config.CorpusSpec`, cached as JSON."""
    key = sha256_json([spec.model_dump(mode="json"), _file_stamps(spec)])
    cache = Path(cache)
    if cache.is_file():
        data = read_json(cache)
        if data.get("key") == key:
            return Corpus(data["train"], data["eval"], data["source"], data["hash"])
    c = build(spec.kind, spec.files, eval_fraction=spec.eval_fraction, min_words=spec.min_words)
    write_json(cache, {"key": key, "train": c.train, "eval": c.eval, "source": c.source, "hash": c.hash})
    return c


def _file_stamps(spec) -> list:
    import sys

    if spec.kind == "stdlib":
        return [sys.version]
    return [[str(f), Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in spec.files]


def stats(c: Corpus) -> dict:
    """Document, word and (MiniLM WordPiece) token counts of a corpus."""
    from transformers import AutoTokenizer

    from geowall.sources import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir(), local_files_only=True)
    n_tokens = {s: sum(len(ids) for ids in tok(docs, add_special_tokens=False)["input_ids"]) for s, docs in (("train", c.train), ("eval", c.eval))}
    return {
        "source": c.source,
        "hash": c.hash[:16],
        "docs_train": len(c.train),
        "docs_eval": len(c.eval),
        "words": c.n_words,
        "minilm_tokens_train": n_tokens["train"],
        "minilm_tokens_eval": n_tokens["eval"],
    }
