"""Atomic artefact I/O: a reader polling an artefact while it is rewritten never sees a torn file."""

import threading

import numpy as np
import pandas as pd
import pytest

from geowall import io


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "t.parquet"
    io.write_parquet(target, pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    pd.testing.assert_frame_equal(io.read_parquet(target), pd.DataFrame({"a": [1, 2]}))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # temporary file removed


def test_read_parquet_while_rewritten(tmp_path):
    # pd.read_parquet(path) stats the path and reopens it; a rename in between tore ~3% of
    # reads in CI ("Page was smaller than expected"). io.read_parquet reads one descriptor.
    target = tmp_path / "m.parquet"
    io.write_parquet(target, pd.DataFrame({"a": [0]}))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            io.write_parquet(target, pd.DataFrame({"a": np.arange(i % 50 + 1), "s": ["x" * (i % 7)] * (i % 50 + 1)}))

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(1500):
            df = io.read_parquet(target)
            assert list(df["a"]) == list(range(len(df)))
    finally:
        stop.set()
        t.join()


def test_require_columns_names_the_table_and_what_is_missing():
    df = pd.DataFrame({"model": ["m"], "layer": [0]})
    out = io.require_columns(df, "metrics_df", ["model", "layer"])
    assert out is not df and out.equals(df)  # a copy
    with pytest.raises(ValueError, match=r"metrics_df: missing column\(s\) \['fvu'\]; expected \['model', 'fvu'\]"):
        io.require_columns(df, "metrics_df", ["model", "fvu"])
    with pytest.raises(TypeError, match="metrics_df: expected a pandas DataFrame, got list"):
        io.require_columns([1, 2], "metrics_df", ["model"])
