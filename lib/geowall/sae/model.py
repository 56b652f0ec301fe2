"""The TopK sparse autoencoder module and its outputs.

The model follows Gao et al. (2024, "Scaling and evaluating sparse autoencoders") and
the layout of EleutherAI/sparsify's ``sparse_coder.py``:

* ``z = ReLU(TopK(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec``;
* decoder rows have unit norm (renormalised after every step, and the gradient
  component parallel to each row is removed before the step);
* ``b_dec`` starts at the data mean, ``W_enc`` starts as ``W_dec`` (the transpose of
  the decoder in ``(d, W)`` terms);
* loss = FVU of the batch + 1/32 * AuxK, where AuxK asks the top ``k_aux = d/2``
  dead latents to reconstruct the residual.

Speed. The decoder and the encoder's backward pass are sparse (the kernels live in
:mod:`geowall.sae.sparse_ops`: ``sparse_decode``, ``SparseEncode``); the only dense ``B x W``
work left is the forward encoder matmul and the top-k. A plain dense reference (dense
autograd through the encoder, dense ``(B, W) @ (W, d)`` decode) is kept beside it;
``GEOWALL_DENSE_DECODE=1`` forces the reference everywhere, and the tests check that
both paths give the same outputs and gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from geowall.sae.sparse_ops import SparseEncode, dense_decode, encoder_pre_acts, sparse_decode

__all__ = [
    "DENSE_ENV",
    "use_dense_reference",
    "TopKConfig",
    "EncoderOutput",
    "ForwardOutput",
    "TopKSAE",
    "TrainedSAE",
    "unwrap",
]

DENSE_ENV = "GEOWALL_DENSE_DECODE"


def use_dense_reference() -> bool:
    """True when ``GEOWALL_DENSE_DECODE=1`` asks for the dense reference path."""
    return os.environ.get(DENSE_ENV, "0").strip().lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class TopKConfig:
    """Shape and training-loss settings of one TopK SAE.

    ``d_in`` activation dimension d, ``width`` number of latents W, ``k`` active
    latents per token, ``k_aux`` dead latents used by AuxK (default ``d_in // 2``),
    ``auxk_coef`` AuxK weight (1/32), ``bf16`` use bfloat16 encoder matmuls on CUDA.
    """

    d_in: int
    width: int
    k: int
    k_aux: int | None = None
    auxk_coef: float = 1.0 / 32.0
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("d_in", "width", "k"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"TopKConfig.{name} must be a positive int, got {value!r}")
        if self.k > self.width:
            raise ValueError(f"TopKConfig.k={self.k} must be <= width={self.width}")

    @property
    def k_aux_nominal(self) -> int:
        """Number of dead latents AuxK uses when enough are dead (Gao et al.: d/2)."""
        return max(1, self.k_aux if self.k_aux is not None else self.d_in // 2)


class EncoderOutput(NamedTuple):
    """``top_acts`` (B, k) ReLU'd values, ``top_indices`` (B, k), ``pre_acts`` (B, W) before ReLU."""

    top_acts: Tensor
    top_indices: Tensor
    pre_acts: Tensor


class ForwardOutput(NamedTuple):
    """Reconstruction, active latents and the loss terms of one batch."""

    sae_out: Tensor
    latent_acts: Tensor
    latent_indices: Tensor
    fvu: Tensor
    auxk_loss: Tensor
    loss: Tensor


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder (parameters as in sparsify: ``W_enc`` and ``W_dec`` are (W, d)).

    ``generator`` makes the initialisation reproducible; ``device``/``dtype`` place it.
    """

    def __init__(
        self,
        cfg: TopKConfig,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        W_dec = torch.randn(cfg.width, cfg.d_in, generator=generator, dtype=torch.float64)
        W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        W_dec = W_dec.to(device=device, dtype=dtype)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.width, device=device, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, device=device, dtype=dtype))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def k(self) -> int:
        return self.cfg.k

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    # ---- inference
    def encode(self, x: Tensor) -> EncoderOutput:
        """TopK code of ``x`` (B, d): values after ReLU, their indices, raw pre-activations."""
        pre = encoder_pre_acts(x - self.b_dec, self.W_enc, self.b_enc, self.cfg.bf16)
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(vals.relu(), idx, pre)

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Reconstruction from the active latents (sparse, or dense under the env switch)."""
        dec = dense_decode if use_dense_reference() else sparse_decode
        return dec(top_acts, top_indices, self.W_dec) + self.b_dec

    # ---- training forward
    def forward(self, x: Tensor, *, dead_mask: Tensor | None = None) -> ForwardOutput:
        """Reconstruct ``x`` and compute FVU and AuxK (on the latents in ``dead_mask``)."""
        if use_dense_reference():
            return self._forward_dense(x, dead_mask)
        return self._forward_sparse(x, dead_mask)

    def _aux_budget(self, dead_mask: Tensor | None) -> tuple[int, float]:
        n_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        if n_dead == 0:
            return 0, 0.0
        nominal = self.cfg.k_aux_nominal
        return min(nominal, n_dead), min(n_dead / nominal, 1.0)

    def _forward_sparse(self, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        k = self.cfg.k
        sae_in = x - self.b_dec
        k_aux, scale = self._aux_budget(dead_mask)
        with torch.no_grad():
            pre = encoder_pre_acts(sae_in, self.W_enc, self.b_enc, self.cfg.bf16)
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            if k_aux:
                dead_idx = torch.nonzero(dead_mask, as_tuple=True)[0]
                aux_vals, aux_pos = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
                vals = torch.cat([vals, aux_vals], 1)
                idx = torch.cat([idx, dead_idx[aux_pos]], 1)
            del pre
        acts_all = SparseEncode.apply(sae_in, self.W_enc, self.b_enc, idx, vals)
        acts, top_idx = acts_all[:, :k], idx[:, :k]
        sae_out = sparse_decode(acts, top_idx, self.W_dec) + self.b_dec
        aux_out = sparse_decode(acts_all[:, k:], idx[:, k:], self.W_dec) if k_aux else None
        return self._losses(x, sae_out, acts, top_idx, aux_out, scale)

    def _forward_dense(self, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        pre = encoder_pre_acts(x - self.b_dec, self.W_enc, self.b_enc, self.cfg.bf16)
        vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
        acts = vals.relu()
        sae_out = dense_decode(acts, idx, self.W_dec) + self.b_dec
        k_aux, scale = self._aux_budget(dead_mask)
        aux_out = None
        if k_aux:
            masked = torch.where(dead_mask[None], pre, torch.full_like(pre, -torch.inf))
            aux_vals, aux_idx = masked.topk(k_aux, dim=-1, sorted=False)
            aux_out = dense_decode(aux_vals.relu(), aux_idx, self.W_dec)
        return self._losses(x, sae_out, acts, idx, aux_out, scale)

    def _losses(
        self, x: Tensor, sae_out: Tensor, acts: Tensor, idx: Tensor, aux_out: Tensor | None, scale: float
    ) -> ForwardOutput:
        err = x - sae_out
        total_variance = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        fvu = err.pow(2).sum() / total_variance
        if aux_out is None:
            auxk = fvu.new_zeros(())
        else:
            auxk = scale * (aux_out - err.detach()).pow(2).sum() / total_variance
        loss = fvu + self.cfg.auxk_coef * auxk
        return ForwardOutput(sae_out, acts, idx, fvu, auxk, loss)

    # ---- decoder-norm constraint
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Renormalise every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(self.W_dec.dtype).eps)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of ``W_dec.grad`` the component along each (unit) decoder row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec


@dataclass
class TrainedSAE:
    """A trained SAE with the facts needed for its metrics row.

    ``fvu_history`` is the training-batch FVU of every step, ``dead_history`` the
    number of dead latents (AuxK targets) at every step.
    """

    sae: TopKSAE
    width: int
    k: int
    seed: int
    steps: int
    train_tokens: int
    lr: float
    fvu_history: list[float] = field(default_factory=list)
    dead_history: list[int] = field(default_factory=list)
    curve_steps: list[int] = field(default_factory=list)  # held-out learning curve (grid trainer)
    curve_fvu: list[float] = field(default_factory=list)
    plateau_change: float = float("nan")  # relative fvu fall over the curve's last window

    def __getattr__(self, name: str) -> Any:  # forward encode/decode/... to the module
        if name == "sae":
            raise AttributeError(name)
        return getattr(self.sae, name)


def unwrap(sae: Any) -> Any:
    """The module inside a :class:`TrainedSAE` (anything else is returned as is)."""
    return sae.sae if isinstance(sae, TrainedSAE) else sae
