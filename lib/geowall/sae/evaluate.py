"""Streaming reconstruction metrics of a geowall or sae-lens SAE on held-out activations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geowall.sae.data import RunningMoments, as_acts, check_acts_shape
from geowall.sae.model import TopKSAE, unwrap

__all__ = ["evaluate", "METRICS"]

METRICS = ("l0", "fvu", "mse", "dead_frac", "n_tokens")
"""The keys :func:`evaluate` returns (and the metric columns of a metrics table)."""


def _sae_shape(sae: Any) -> tuple[int, int]:
    """(d_in, width) of our SAE or of a sae-lens SAE."""
    if isinstance(sae, TopKSAE):
        return sae.d_in, sae.width
    cfg = getattr(sae, "cfg", None)
    if cfg is None or not hasattr(sae, "encode") or not hasattr(sae, "decode"):
        raise TypeError(f"evaluate: expected a geowall TopKSAE or a sae-lens SAE, got {type(sae).__name__}")
    return int(cfg.d_in), int(cfg.d_sae)


@torch.no_grad()
def _reconstruct(sae: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x_hat, active latents per token (B,), indices of latents that fired)."""
    if isinstance(sae, TopKSAE):
        acts, idx, _ = sae.encode(x)
        x_hat = sae.decode(acts, idx)
        active = acts > 0
        return x_hat, active.sum(1), idx[active]
    feats = sae.encode(x)
    x_hat = sae.decode(feats)
    active = feats != 0
    return x_hat, active.sum(1), torch.nonzero(active.any(0), as_tuple=True)[0]


def evaluate(sae: Any, acts: Any, *, batch_size: int = 4096, device: str | torch.device = "cpu") -> dict[str, float]:
    """Reconstruction metrics of ``sae`` on held-out ``acts`` (n, d), streamed in batches.

    Works for geowall ``TopKSAE``/``TrainedSAE`` and for sae-lens ``SAE`` objects
    (through their ``encode``/``decode``; e.g. JumpReLU Gemma Scope SAEs). The SAE is
    moved to ``device``. Returns ``fvu`` = sum ||x - x_hat||^2 / sum ||x - mean x||^2
    (mean over these tokens, single-pass Chan merge in float64), ``mse`` (mean over
    tokens and dims), ``l0`` (measured mean active latents per token), ``dead_frac``
    (latents that never fire on these tokens) and ``n_tokens``.
    """
    sae = unwrap(sae)
    d_in, width = _sae_shape(sae)
    sae = sae.to(device)
    n, d = check_acts_shape(acts, d_in)
    # a sae-lens SAE materialises a dense (B, W) code: keep it under ~2**27 entries
    if not isinstance(sae, TopKSAE):
        batch_size = max(1, min(batch_size, 2**27 // width))
    mom = RunningMoments(d, device)
    sse, l0_sum = 0.0, 0
    fired = torch.zeros(width, dtype=torch.bool, device=device)
    for start in range(0, n, batch_size):
        x = as_acts(acts[start : start + batch_size], device, "acts", min_rows=1)
        x_hat, n_active, fired_idx = _reconstruct(sae, x)
        sse += float((x.double() - x_hat.double()).pow(2).sum())
        l0_sum += int(n_active.sum())
        fired[fired_idx] = True
        mom.update(x)
    if mom.m2 <= 0:
        raise ValueError("acts: evaluation tokens have zero variance; fvu is undefined")
    return {
        "fvu": sse / mom.m2,
        "mse": sse / (n * d),
        "l0": l0_sum / n,
        "dead_frac": 1.0 - float(fired.float().mean()),
        "n_tokens": int(n),
    }
