"""The offline corpus: deterministic, split by document, user files with clear errors."""

import pytest

from geowall import corpus


@pytest.fixture(scope="module")
def stdlib():
    return corpus.build()


def test_stdlib_corpus_is_large_deterministic_and_split(stdlib):
    assert stdlib.n_words > 200_000  # several hundred thousand words of English prose
    assert len(stdlib.train) > 1000 and len(stdlib.eval) > 200
    assert not set(stdlib.train) & set(stdlib.eval)
    assert 0.1 < len(stdlib.eval) / (len(stdlib.train) + len(stdlib.eval)) < 0.3
    again = corpus.build()
    assert again.hash == stdlib.hash and again.train[:5] == stdlib.train[:5]


def test_cleaning_drops_doctests_and_collapses_whitespace():
    text = "Sort a list.\n\n    >>> sorted([2, 1])\n    [1, 2]\n    ... more\nIt   is stable."
    assert corpus.clean(text) == "Sort a list. [1, 2] It is stable."


def test_user_files_paragraphs_and_split(tmp_path):
    f = tmp_path / "mine.txt"
    paras = [f"Paragraph number {i} has enough words to be kept as a document here." for i in range(40)]
    f.write_text("\n\n".join(paras), encoding="utf-8")
    c = corpus.build("files", [f], eval_fraction=0.25)
    assert sorted(c.train + c.eval) == sorted(paras)


@pytest.mark.parametrize("content, needle", [(b"", "empty"), (b"caf\xe9 au lait " * 20, "not UTF-8")])
def test_bad_user_files_are_named(tmp_path, content, needle):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=f"corpus file {f}: {needle}"):
        corpus.build("files", [f])
