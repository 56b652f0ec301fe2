"""Activation inputs of the SAE code: checked (n, d) tensors and streaming moments."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_acts", "check_acts_shape", "RunningMoments", "moments"]


def as_acts(acts: Any, device: str | torch.device, name: str = "acts", min_rows: int = 2) -> Tensor:
    """(n, d) float32 tensor on ``device``; clear ValueError on a bad shape or non-finite values."""
    if isinstance(acts, Tensor):
        x = acts.detach()
    else:
        arr = np.asarray(acts)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected a numeric (n, d) array, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        with warnings.catch_warnings():
            # read-only memory-mapped activations: shared, never written to (torch warns anyway)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(arr)
    if x.ndim != 2 or x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (n >= {min_rows}, d >= 1), got {tuple(x.shape)}")
    x = x.to(device=device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


class RunningMoments:
    """Streaming mean and total sum of squared deviations (Chan et al. merge, float64)."""

    def __init__(self, d: int, device: str | torch.device = "cpu"):
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.m2 = 0.0

    def update(self, x: Tensor) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        xb = x.to(torch.float64)
        bmean = xb.mean(0)
        bm2 = float((xb - bmean).pow(2).sum())
        total = self.n + nb
        delta = bmean - self.mean
        self.m2 += bm2 + float(delta.pow(2).sum()) * self.n * nb / total
        self.mean += delta * (nb / total)
        self.n = total


def moments(x: Tensor, chunk: int = 65536) -> RunningMoments:
    """The :class:`RunningMoments` of the rows of ``x``, accumulated ``chunk`` rows at a time."""
    mom = RunningMoments(x.shape[1], x.device)
    for s in range(0, x.shape[0], chunk):
        mom.update(x[s : s + chunk])
    return mom


def check_acts_shape(acts: Any, d_in: int) -> tuple[int, int]:
    """(n, d) of an activation array; ValueError unless 2-D with n >= 2 and d == ``d_in``."""
    shape = tuple(acts.shape)
    if len(shape) != 2 or shape[0] < 2:
        raise ValueError(f"acts: expected shape (n >= 2, d), got {shape}")
    if shape[1] != d_in:
        raise ValueError(f"acts: last dimension {shape[1]} does not match the SAE's d_in={d_in}")
    return int(shape[0]), int(shape[1])
