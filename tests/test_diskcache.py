"""geowall.diskcache: a download cache under a disk budget, shared by processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geowall.diskcache import LEDGER, BudgetError, DiskCache


def _writer(nbytes: int, log: list | None = None):
    def fetch(dest: Path) -> None:
        dest.write_bytes(b"x" * nbytes)
        if log is not None:
            log.append(dest.name)

    return fetch


def _on_disk(root: Path) -> int:
    """Bytes under root, read while other processes create and delete files and folders:
    os.walk skips a folder that vanished between listing and reading (Path.rglob raises)."""
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if name == ".lock" or LEDGER in name:
                continue
            try:
                total += (Path(folder) / name).stat().st_size
            except FileNotFoundError:  # deleted by another process meanwhile
                pass
    return total


def test_each_download_is_deleted_after_use_unless_kept(tmp_path):
    cache = DiskCache(tmp_path / "c", budget_bytes=250)
    with cache.fetched("a/params.npz", 100, _writer(100)) as p:
        assert p.read_bytes() == b"x" * 100
    assert cache.files() == [] and cache.stats()["peak_bytes"] == 100
    kept = DiskCache(tmp_path / "k", budget_bytes=250, keep=True)
    fetched: list = []
    for key in ("a", "b", "a"):  # the second "a" is a cache hit
        with kept.fetched(key, 100, _writer(100, fetched)):
            pass
    assert len(fetched) == 2 and [p.name for p in kept.files()] == ["a", "b"]


def test_budget_forces_least_recently_used_eviction(tmp_path):
    cache = DiskCache(tmp_path, budget_bytes=250, keep=True)
    peak = 0
    for key in ("a", "b", "a", "c", "d"):
        with cache.fetched(key, 100, _writer(100)):
            peak = max(peak, _on_disk(tmp_path))
    # after "a" was reused, "b" was the least recently used: evicted for "c"; then "a" for "d"
    assert [p.name for p in cache.files()] == ["c", "d"]
    assert peak <= 250 and cache.stats()["peak_bytes"] <= 250


def test_too_large_for_the_budget_is_refused_before_fetching(tmp_path):
    cache = DiskCache(tmp_path, budget_bytes=99)
    called: list = []
    with (
        pytest.raises(BudgetError, match="needs 100 B but the disk budget is 99 B"),
        cache.fetched("big", 100, _writer(100, called)),
    ):
        pass
    assert called == []


def test_a_failed_fetch_leaves_nothing(tmp_path):
    cache = DiskCache(tmp_path, budget_bytes=1000)

    def broken(dest: Path) -> None:
        dest.write_bytes(b"half")
        raise ConnectionError("network down")

    with pytest.raises(ConnectionError), cache.fetched("k", 10, broken):
        pass
    assert cache.files() == [] and cache.stats()["n_entries"] == 0


def test_dead_process_entries_are_reclaimed(tmp_path):
    """A fetcher killed mid-download (and a user killed mid-evaluation) leave files that the
    next process taking the lock deletes."""
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from geowall.diskcache import DiskCache\n"
        "c = DiskCache(sys.argv[1], budget_bytes=1000)\n"
        "def die(dest):\n"
        "    dest.write_bytes(b'partial')\n"
        "    os._exit(9)\n"
        "if sys.argv[2] == 'fetch':\n"
        "    with c.fetched('k1', 100, die): pass\n"
        "else:\n"
        "    with c.fetched('k2', 100, lambda d: d.write_bytes(b'y' * 100)):\n"
        "        os._exit(9)\n"
    )
    for mode in ("fetch", "use"):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path), mode], capture_output=True, check=False)
        assert r.returncode == 9, r.stderr
    assert DiskCache(tmp_path).files() != []  # partial .fetch-* and k2 are there ...
    cache = DiskCache(tmp_path, budget_bytes=1000)
    assert cache.stats()["n_entries"] == 0 and cache.files() == []  # ... until the lock is next taken


def _worker(root: str, keys: list[str], out) -> None:
    cache = DiskCache(root, budget_bytes=300, poll_s=0.01)
    peak = 0
    for k in keys:
        with cache.fetched(k, 100, _writer(100)):
            peak = max(peak, _on_disk(Path(root)))
    out.put(peak)


def test_processes_share_one_budget(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), [f"p{i}/{j}" for j in range(6)], out)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    peaks = [out.get() for _ in procs]
    ledger = json.loads((tmp_path / LEDGER).read_text())
    assert max(peaks) <= 300 and ledger["peak_bytes"] <= 300 and ledger["entries"] == {}
    assert DiskCache(tmp_path).files() == []
