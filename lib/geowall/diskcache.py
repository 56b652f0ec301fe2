"""A download cache under a disk budget, shared by the processes of one machine.

Streaming the 844 Gemma Scope SAEs (about 2.3 TB of float32 parameters) through a
normal disk needs every download to be evicted once it has been evaluated.
:class:`DiskCache` does that:

- ``with cache.fetched(key, nbytes, fetch) as path:`` reserves ``nbytes`` under the
  budget (evicting the least recently used entries nobody is using; waiting while
  other processes hold the space), runs ``fetch(tmp_path)`` outside the lock, renames
  the file into place, and yields its path. On leaving the block the entry is deleted,
  unless the cache keeps downloads (``keep=True``), in which case it stays until the
  budget needs its space.
- A key larger than the whole budget is refused before anything is fetched
  (:class:`BudgetError`).
- The bookkeeping lives in ``<root>/.ledger.json``, read and rewritten (atomically)
  under an exclusive ``flock`` on ``<root>/.lock``, so several processes on one machine
  (Ray workers, parallel runs) share one budget. Each entry records the host and pid
  of its users; entries of processes that died (same host) are reclaimed, and their
  half-fetched files deleted, the next time anyone takes the lock.
- ``peak_bytes`` in the ledger is the high-water mark of the bytes reserved or on disk,
  which never exceeds the budget (a file that turns out larger than its reservation
  evicts others to make room; if it cannot, the overshoot is recorded and logged).

Put ``root`` on a machine-local disk: the budget is per machine, and ``flock`` is not
reliable across NFS clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from geowall.io import write_json

log = logging.getLogger(__name__)
LEDGER, LOCK = ".ledger.json", ".lock"


class BudgetError(ValueError):
    """An item cannot fit under the cache's disk budget."""


def _alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell, assume alive
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class DiskCache:
    """See the module docstring. ``budget_bytes=None`` means no cap."""

    def __init__(
        self,
        root: str | os.PathLike,
        budget_bytes: int | None = None,
        *,
        keep: bool = False,
        poll_s: float = 0.2,
        wait_s: float = 6 * 3600,
    ):
        self.root = Path(root)
        self.budget = None if budget_bytes is None else int(budget_bytes)
        self.keep = bool(keep)
        self.poll_s, self.wait_s = poll_s, wait_s
        self.root.mkdir(parents=True, exist_ok=True)

    # -- ledger -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        with open(self.root / LOCK, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                path = self.root / LEDGER
                ledger = json.loads(path.read_text()) if path.is_file() else {}
                ledger.setdefault("entries", {})
                ledger.setdefault("peak_bytes", 0)
                before = json.dumps(ledger, sort_keys=True)
                self._reclaim(ledger)
                yield ledger
                if json.dumps(ledger, sort_keys=True) != before:
                    write_json(path, ledger)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _path(self, key: str) -> Path:
        return self.root / key

    def _reclaim(self, ledger: dict) -> None:
        """Drop users that died; delete half-fetched files of dead fetchers and unkept
        entries nobody uses any more."""
        for key, e in list(ledger["entries"].items()):
            e["users"] = [u for u in e["users"] if _alive(u)]
            if e["state"] == "fetching" and not _alive(e["owner"]):
                shutil.rmtree(self.root / e["tmp"], ignore_errors=True)
                del ledger["entries"][key]
            elif e["state"] == "ready" and not e["users"] and not e["keep"]:
                self._delete(ledger, key)

    def _delete(self, ledger: dict, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
        parent = self._path(key).parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
        ledger["entries"].pop(key, None)

    @staticmethod
    def used(ledger: dict) -> int:
        return sum(e["bytes"] for e in ledger["entries"].values())

    def _make_room(self, ledger: dict, nbytes: int) -> bool:
        """Evict unused entries (least recently used first) until ``nbytes`` more fit."""
        if self.budget is None:
            return True
        idle = sorted((e["used"], k) for k, e in ledger["entries"].items() if e["state"] == "ready" and not e["users"])
        for _, key in idle:
            if self.used(ledger) + nbytes <= self.budget:
                break
            log.info("disk cache: evicting %s to make room", key)
            self._delete(ledger, key)
        return self.used(ledger) + nbytes <= self.budget

    def _note_peak(self, ledger: dict) -> None:
        ledger["peak_bytes"] = max(ledger["peak_bytes"], self.used(ledger))

    # -- public -----------------------------------------------------------------------
    def check_fits(self, nbytes: int, what: str = "item") -> None:
        if self.budget is not None and nbytes > self.budget:
            raise BudgetError(f"{what} needs {fmt_bytes(nbytes)} but the disk budget is {fmt_bytes(self.budget)}")

    @contextlib.contextmanager
    def fetched(self, key: str, nbytes: int, fetch: Callable[[Path], None]) -> Iterator[Path]:
        """Path of ``key``'s file, fetched with ``fetch(dest)`` if not cached; see the module docstring."""
        self.check_fits(nbytes, key)
        path = self._path(key)
        deadline = time.monotonic() + self.wait_s
        tmp_dir = None
        while True:
            with self._locked() as ledger:
                e = ledger["entries"].get(key)
                if e is not None and e["state"] == "ready" and not path.is_file():
                    log.warning("disk cache: %s vanished from %s; fetching it again", key, self.root)
                    del ledger["entries"][key]
                    e = None
                if e is not None and e["state"] == "ready":
                    e["users"].append(_me())
                    e["used"] = time.time()
                    break
                if e is None and self._make_room(ledger, nbytes):
                    tmp_dir = f".fetch-{uuid.uuid4().hex[:12]}"
                    ledger["entries"][key] = {
                        "bytes": int(nbytes),
                        "state": "fetching",
                        "owner": _me(),
                        "tmp": tmp_dir,
                        "users": [],
                        "keep": self.keep,
                        "used": time.time(),
                    }
                    self._note_peak(ledger)
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"disk cache {self.root}: no room for {key} ({fmt_bytes(nbytes)}) "
                    f"after {self.wait_s:.0f} s; other processes hold the budget"
                )
            time.sleep(self.poll_s)
        if tmp_dir is not None:
            self._fetch(key, nbytes, fetch, tmp_dir)
        try:
            yield path
        finally:
            with self._locked() as ledger:
                e = ledger["entries"].get(key)
                if e is not None:
                    me = _me()
                    for i, u in enumerate(e["users"]):
                        if u == me:
                            del e["users"][i]
                            break
                    if not e["users"] and not e["keep"]:
                        self._delete(ledger, key)

    def _fetch(self, key: str, nbytes: int, fetch: Callable[[Path], None], tmp_dir: str) -> None:
        path = self._path(key)
        tmp = self.root / tmp_dir
        try:
            tmp.mkdir(parents=True)
            dest = tmp / path.name
            fetch(dest)
            if not dest.is_file():
                raise FileNotFoundError(f"fetch of {key} did not produce {dest}")
            size = dest.stat().st_size
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(dest, path)
        except BaseException:
            with self._locked() as ledger:
                ledger["entries"].pop(key, None)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        with self._locked() as ledger:
            e = ledger["entries"][key]
            e.update(state="ready", bytes=int(size), users=[_me()], used=time.time())
            if size > nbytes and not self._make_room(ledger, 0):
                log.warning(
                    "disk cache: %s is %s, more than the %s reserved; over budget",
                    key,
                    fmt_bytes(size),
                    fmt_bytes(nbytes),
                )
            self._note_peak(ledger)

    def stats(self) -> dict:
        """``used_bytes``, ``peak_bytes``, ``n_entries``, ``budget_bytes`` from the ledger."""
        with self._locked() as ledger:
            return {
                "used_bytes": self.used(ledger),
                "peak_bytes": int(ledger["peak_bytes"]),
                "n_entries": len(ledger["entries"]),
                "budget_bytes": self.budget,
            }

    def files(self) -> list[Path]:
        """Every file under the root except the ledger (and its temporary rewrites) and its lock."""
        return sorted(p for p in self.root.rglob("*") if p.is_file() and p.name != LOCK and LEDGER not in p.name)
