"""Peak resident memory of the processes a pipeline step starts (its notebook kernel).

papermill runs each notebook in a Jupyter kernel, a child process of the runner, so the
runner's own ``resource.getrusage`` says nothing about one step (``RUSAGE_CHILDREN`` is a
running maximum over every child so far and only counts reaped ones). :class:`PeakRSS`
polls this process's descendants while a step runs. On Linux it reads each process's
high-water mark (``VmHWM`` in ``/proc/<pid>/status``), which the kernel keeps exactly, so
a short spike between polls is not missed as long as the process is seen once before it
exits; elsewhere it falls back to sampling the current RSS.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

__all__ = ["PeakRSS", "high_water_mb"]


def high_water_mb(proc: psutil.Process) -> float:
    """Peak RSS of ``proc`` so far in MiB (Linux ``VmHWM``), else its current RSS."""
    status = Path(f"/proc/{proc.pid}/status")
    try:
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        return proc.memory_info().rss / 2**20
    except (OSError, psutil.Error):
        return 0.0


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.peak_mb``: the largest peak RSS of any
    descendant process started while the block ran (the processes alive before it are
    ignored, so an earlier step's kernel cannot leak into this one's number)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._before: set[int] = set()

    def _poll(self) -> None:
        try:
            children = self._me.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid not in self._before:
                self.peak_mb = max(self.peak_mb, high_water_mb(child))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> PeakRSS:
        self._before = {c.pid for c in self._me.children(recursive=True)}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
