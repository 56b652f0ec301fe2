"""Corpus kinds closer to a model's pretraining text: a folder of text files, a Hugging Face dataset."""

from __future__ import annotations

import json

import pytest

from geowall import corpus
from geowall.config import CorpusSpec, ProfileError, load_profile

PARA = "The quick brown fox jumps over the lazy dog number {i} while the river keeps flowing north."


def test_folder_corpus_reads_text_files_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("\n\n".join(PARA.format(i=i) for i in range(30)))
    (tmp_path / "sub" / "b.md").write_text("\n\n".join(PARA.format(i=i) for i in range(30, 60)))
    (tmp_path / "skip.py").write_text(PARA.format(i=999))
    assert [p.name for p in corpus.folder_files(tmp_path)] == ["a.txt", "b.md"]
    spec = CorpusSpec(kind="folder", folder=tmp_path, eval_fraction=0.3)
    c = corpus.load_or_build(tmp_path / "cache.json", spec)
    docs = set(c.train + c.eval)
    assert len(docs) == 60 and PARA.format(i=999) not in docs and c.train and c.eval
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder: corpus folder .*: no .txt / .md files"):
        CorpusSpec(kind="folder", folder=tmp_path / "empty")


def test_hf_dataset_corpus_from_a_local_dataset_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "ds"
    folder.mkdir()
    with open(folder / "train.jsonl", "w") as fh:
        fh.writelines(json.dumps({"content": PARA.format(i=i), "id": i}) + "\n" for i in range(50))
    docs = corpus.hf_documents(str(folder), text_field="content", max_docs=40)
    assert docs == [PARA.format(i=i) for i in range(40)]
    spec = CorpusSpec(kind="hf", dataset=str(folder), text_field="content", max_docs=50)
    c = corpus.build("hf", spec=spec, eval_fraction=0.2)
    assert len(c.train) + len(c.eval) == 50
    with pytest.raises(ValueError, match="no column 'text'"):
        corpus.hf_documents(str(folder))
    with pytest.raises(ValueError, match="corpus dataset 'no-such-org/no-such-dataset'.*cannot be read"):
        corpus.hf_documents("no-such-org/no-such-dataset")


def test_corpus_kinds_in_a_profile_are_checked_before_work(tmp_path):
    with pytest.raises(ProfileError, match="kind 'hf' needs dataset"):
        load_profile("smoke", {"corpus": {"kind": "hf"}})
    with pytest.raises(ProfileError, match="corpus folder not found"):
        load_profile("smoke", {"corpus": {"kind": "folder", "folder": str(tmp_path / "missing")}})
    assert load_profile("smoke").corpus.kind == "stdlib"  # the offline default
