"""PeakRSS sees the peak memory of a child process, not the parent's, and not an earlier child's."""

import subprocess
import sys

from geowall.memory import PeakRSS

ALLOC = "import numpy as np, time; a = np.ones({mb} * 2**20 // 8); time.sleep(0.6); del a; time.sleep(0.6)"


def _child(mb: int) -> None:
    subprocess.run([sys.executable, "-c", ALLOC.format(mb=mb)], check=True)


def test_peak_of_a_child_that_allocates_and_frees():
    with PeakRSS(interval=0.05) as small:
        _child(20)
    with PeakRSS(interval=0.05) as big:
        _child(300)
    # the peak persists after the array is freed (VmHWM), and the two children are told apart
    assert 300 <= big.peak_mb < 300 + 150, big.peak_mb
    assert small.peak_mb < 20 + 150, small.peak_mb
    assert big.peak_mb - small.peak_mb > 200


def test_processes_alive_before_are_ignored():
    hog = subprocess.Popen([sys.executable, "-c", ALLOC.format(mb=300).replace("0.6", "3")])
    try:
        import time

        time.sleep(0.8)
        with PeakRSS(interval=0.05) as m:
            _child(10)
        assert m.peak_mb < 10 + 150, m.peak_mb
    finally:
        hog.wait()
