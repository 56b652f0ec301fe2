"""TopK sparse autoencoders: a fast trainer, streaming evaluation, sae-lens interop.

The model follows Gao et al. (2024, "Scaling and evaluating sparse autoencoders") and
the layout of EleutherAI/sparsify's ``sparse_coder.py``:

* ``z = ReLU(TopK(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec``;
* decoder rows have unit norm (renormalised after every step, and the gradient
  component parallel to each row is removed before the step);
* ``b_dec`` starts at the data mean, ``W_enc`` starts as ``W_dec`` (the transpose of
  the decoder in ``(d, W)`` terms);
* loss = FVU of the batch + 1/32 * AuxK, where AuxK asks the top ``k_aux = d/2``
  dead latents (no firing in the last ``dead_tokens`` tokens) to reconstruct the
  residual;
* Adam (eps 6.25e-10) with the learning rate scaled as ``2e-4 / sqrt(W / 2**14)``.

Speed. Only ``k`` latents per token are active, so the decoder is evaluated as an
``embedding_bag`` over the active rows (``B k d`` work instead of ``B W d``), and the
encoder's backward pass is sparse as well (custom autograd function: gradients reach
only the selected latents, scattered with a sorted ``embedding_bag``). The only dense
``B x W`` work left is the forward encoder matmul and the top-k. A plain dense
reference (dense autograd through the encoder, dense ``(B, W) @ (W, d)`` decode) is
kept beside it; ``GEOWALL_DENSE_DECODE=1`` forces the reference everywhere, and the
tests check that both paths give the same outputs and gradients.

Inputs are rescaled internally during training so that the centred activations have
mean squared norm ``d`` (this makes the learning rate independent of the activation
scale); the scale is folded back into ``b_enc`` and ``b_dec`` at the end, so saved
SAEs act on raw activations and the decoder rows stay unit norm.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geowall.io import read_parquet, write_parquet

__all__ = [
    "TopKConfig",
    "EncoderOutput",
    "ForwardOutput",
    "TopKSAE",
    "TrainedSAE",
    "TopKTrainer",
    "default_lr",
    "derive_seed",
    "train_sae",
    "train_grid",
    "evaluate",
    "save_sae",
    "load_sae",
    "run_grid",
    "read_metrics",
    "append_metrics",
    "width_trend",
    "check_width_trend",
    "METRIC_COLUMNS",
]

log = logging.getLogger(__name__)

DENSE_ENV = "GEOWALL_DENSE_DECODE"
ADAM_EPS = 6.25e-10
METRIC_COLUMNS = [
    "model", "layer", "width", "k", "l0", "fvu", "mse", "dead_frac", "n_tokens",
    "source", "sae_id", "train_tokens", "seed",
]
_KEY = ["model", "layer", "width", "k", "seed"]
_SORT = ["model", "layer", "width", "k", "seed"]
_GEOWALL_META = "geowall.json"


def use_dense_reference() -> bool:
    """True when ``GEOWALL_DENSE_DECODE=1`` asks for the dense reference path."""
    return os.environ.get(DENSE_ENV, "0").strip().lower() in {"1", "true", "yes"}


# --------------------------------------------------------------------------- model


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


def _pre_acts(sae_in: Tensor, W_enc: Tensor, b_enc: Tensor, bf16: bool) -> Tensor:
    """Encoder pre-activations ``sae_in @ W_enc.T + b_enc`` (bf16 matmul on CUDA if asked).

    The bias rides inside the matmul as an extra input column of ones, which saves a
    full pass over the (B, W) output (``addmm`` first copies the broadcast bias there).
    """
    ones = torch.ones(sae_in.shape[0], 1, dtype=sae_in.dtype, device=sae_in.device)
    x_aug = torch.cat([sae_in, ones], 1)
    w_aug = torch.cat([W_enc, b_enc[:, None]], 1)
    if bf16 and sae_in.is_cuda:
        return (x_aug.to(torch.bfloat16) @ w_aug.to(torch.bfloat16).T).to(sae_in.dtype)
    return x_aug @ w_aug.T


def scatter_rows(indices: Tensor, weights: Tensor, src: Tensor, n_rows: int) -> Tensor:
    """``out[r] = sum over (b, j) with indices[b, j] == r of weights[b, j] * src[b]``.

    The transpose of a sparse decode: it is the gradient of the encoder (and decoder)
    weights. Computed with a stable sort by latent and one ``embedding_bag`` whose bags
    are the latents, so it costs ``B m d`` and materialises nothing of size ``B m d``.
    """
    m = indices.shape[1]
    flat = indices.reshape(-1)
    # int32 keys: the CPU sort of int32 is several times faster than that of int64
    order = torch.argsort(flat.to(torch.int32) if n_rows < 2**31 else flat, stable=True)
    rows = torch.div(order, m, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=n_rows)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(
        rows, src, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order]
    )


class _SparseEncode(torch.autograd.Function):
    """``relu(values)`` with values = pre-activations gathered at ``indices``.

    The forward receives the already computed pre-activations (the dense matmul is
    done once, without autograd); the backward sends gradients only to the gathered
    latents: ``B m d`` work instead of the dense ``B W d``.
    """

    @staticmethod
    def forward(ctx: Any, sae_in: Tensor, W_enc: Tensor, b_enc: Tensor,
                indices: Tensor, values: Tensor) -> Tensor:
        acts = values.relu()
        ctx.save_for_backward(sae_in, W_enc, indices, acts)
        ctx.mark_non_differentiable(indices)
        return acts

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        sae_in, W_enc, indices, acts = ctx.saved_tensors
        grad = grad * (acts > 0).to(grad.dtype)
        grad_in = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_in = F.embedding_bag(indices, W_enc, mode="sum", per_sample_weights=grad.to(W_enc.dtype))
        if ctx.needs_input_grad[1]:
            grad_w = scatter_rows(indices, grad.to(sae_in.dtype), sae_in, W_enc.shape[0])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_in, grad_w, grad_b, None, None


def _per_sample_weights_grad(grad: Tensor, W_dec: Tensor, indices: Tensor) -> Tensor:
    """``out[b, j] = <grad[b], W_dec[indices[b, j]]>`` (gradient of the decode w.r.t. acts).

    Uses the aten kernel behind ``embedding_bag``'s own backward; if a torch build
    lacks it, falls back to differentiating ``embedding_bag`` again.
    """
    B, m = indices.shape
    try:
        flat = indices.reshape(-1)
        offsets = torch.arange(0, B * m, m, device=indices.device)
        offset2bag = torch.arange(B, device=indices.device).repeat_interleave(m)
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(
            grad, W_dec, flat, offsets, offset2bag, 0, -1)
        return out.view(B, m)
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        with torch.enable_grad():
            w = torch.ones(B, m, dtype=W_dec.dtype, device=W_dec.device, requires_grad=True)
            y = F.embedding_bag(indices, W_dec.detach(), mode="sum", per_sample_weights=w)
            return torch.autograd.grad(y, w, grad)[0]


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` decode with a sort-based weight gradient (faster than aten's)."""

    @staticmethod
    def forward(ctx: Any, acts: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(acts, indices, W_dec)
        return F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=acts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
        acts, indices, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        grad_acts = _per_sample_weights_grad(grad, W_dec, indices) if ctx.needs_input_grad[0] else None
        grad_w = scatter_rows(indices, acts, grad, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_acts, None, grad_w


def sparse_decode(acts: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_j acts[b, j] * W_dec[indices[b, j]]`` via ``embedding_bag`` (no bias)."""
    return _SparseDecode.apply(acts.to(W_dec.dtype), indices, W_dec)


def dense_decode(acts: Tensor, indices: Tensor, W_dec: Tensor) -> Tensor:
    """Reference for :func:`sparse_decode`: scatter into a dense (B, W) code, then matmul."""
    code = acts.new_zeros(acts.shape[0], W_dec.shape[0]).scatter(1, indices, acts)
    return code.to(W_dec.dtype) @ W_dec


class TopKSAE(nn.Module):
    """A TopK sparse autoencoder (parameters as in sparsify: ``W_enc`` and ``W_dec`` are (W, d)).

    ``generator`` makes the initialisation reproducible; ``device``/``dtype`` place it.
    """

    def __init__(self, cfg: TopKConfig, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None):
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
        pre = _pre_acts(x - self.b_dec, self.W_enc, self.b_enc, self.cfg.bf16)
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
            pre = _pre_acts(sae_in, self.W_enc, self.b_enc, self.cfg.bf16)
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            if k_aux:
                dead_idx = torch.nonzero(dead_mask, as_tuple=True)[0]
                aux_vals, aux_pos = pre.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
                vals = torch.cat([vals, aux_vals], 1)
                idx = torch.cat([idx, dead_idx[aux_pos]], 1)
            del pre
        acts_all = _SparseEncode.apply(sae_in, self.W_enc, self.b_enc, idx, vals)
        acts, top_idx = acts_all[:, :k], idx[:, :k]
        sae_out = sparse_decode(acts, top_idx, self.W_dec) + self.b_dec
        aux_out = sparse_decode(acts_all[:, k:], idx[:, k:], self.W_dec) if k_aux else None
        return self._losses(x, sae_out, acts, top_idx, aux_out, scale)

    def _forward_dense(self, x: Tensor, dead_mask: Tensor | None) -> ForwardOutput:
        pre = _pre_acts(x - self.b_dec, self.W_enc, self.b_enc, self.cfg.bf16)
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

    def _losses(self, x: Tensor, sae_out: Tensor, acts: Tensor, idx: Tensor,
                aux_out: Tensor | None, scale: float) -> ForwardOutput:
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

    def __getattr__(self, name: str) -> Any:  # forward encode/decode/... to the module
        if name == "sae":
            raise AttributeError(name)
        return getattr(self.sae, name)


# ------------------------------------------------------------------------ training


def default_lr(width: int) -> float:
    """Gao et al. / sparsify learning-rate scaling: ``2e-4 / sqrt(W / 2**14)``."""
    return 2e-4 / math.sqrt(width / 2**14)


def derive_seed(seed: int, width: int, k: int) -> int:
    """A per-SAE seed that depends only on (seed, width, k) (stable across runs and machines)."""
    digest = hashlib.sha256(f"geowall-sae:{int(seed)}:{int(width)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def _as_tensor(acts: Any, device: str | torch.device, name: str = "acts", min_rows: int = 2) -> Tensor:
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


def _moments(x: Tensor, chunk: int = 65536) -> RunningMoments:
    mom = RunningMoments(x.shape[1], x.device)
    for s in range(0, x.shape[0], chunk):
        mom.update(x[s:s + chunk])
    return mom


def _resolve_steps(n: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps= or epochs=")
    if steps is not None:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return int(steps)
    if not epochs or epochs <= 0:
        raise ValueError(f"epochs must be > 0, got {epochs}")
    return max(1, math.ceil(epochs * n / batch_size))


def _batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterable[Tensor]:
    """Row indices of each step's batch: consecutive slices of fresh permutations."""
    perm, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos:pos + batch_size]
        pos += batch_size


class TopKTrainer:
    """Step-by-step training of one TopK SAE (what :func:`train_sae` drives).

    Holds the SAE, Adam, the input scale, the dead-latent counters and the batch order;
    ``step()`` runs one optimisation step on the next batch, ``finish()`` folds the
    input scale back and returns the :class:`TrainedSAE`.
    """

    def __init__(self, acts: Any, width: int, k: int, *, steps: int | None = None,
                 epochs: float | None = None, seed: int = 0, device: str | torch.device = "cpu",
                 batch_size: int = 4096, lr: float | None = None, dead_tokens: int | None = None,
                 k_aux: int | None = None, auxk_coef: float = 1.0 / 32.0, bf16: bool = False):
        self.x_all = _as_tensor(acts, device)
        n, d = self.x_all.shape
        self.device = torch.device(device)
        self.batch_size = min(int(batch_size), n)
        self.steps = _resolve_steps(n, self.batch_size, steps, epochs)
        self.lr = default_lr(width) if lr is None else float(lr)
        self.seed = int(seed)
        total = self.steps * self.batch_size
        self.dead_tokens = (min(10_000_000, max(total // 10, self.batch_size))
                            if dead_tokens is None else int(dead_tokens))
        cfg = TopKConfig(d_in=d, width=int(width), k=int(k), k_aux=k_aux, auxk_coef=auxk_coef,
                         bf16=bool(bf16) and self.device.type == "cuda")
        gen = torch.Generator().manual_seed(self.seed)
        self.sae = TopKSAE(cfg, device=device, generator=gen)
        mom = _moments(self.x_all)
        if not mom.m2 > 0:
            raise ValueError("acts: training activations have zero variance; nothing to learn")
        self.scale = math.sqrt(d * n / mom.m2)
        with torch.no_grad():
            self.sae.b_dec.copy_((mom.mean * self.scale).to(self.sae.b_dec.dtype))
        self.opt = _adam(self.sae, self.lr)
        self.since_fired = torch.zeros(cfg.width, dtype=torch.long, device=device)
        self.fvus = torch.zeros(self.steps, device=device)
        self.n_dead = torch.zeros(self.steps, dtype=torch.long, device=device)
        self.batches = iter(_batch_order(n, self.batch_size, self.steps, gen))
        self.step_count = 0

    def step(self) -> None:
        """One Adam step on the next batch, with the decoder-norm constraint and dead tracking."""
        if self.step_count >= self.steps:
            raise RuntimeError(f"all {self.steps} steps are done")
        sae, i = self.sae, self.step_count
        x = self.x_all.index_select(0, next(self.batches).to(self.device)) * self.scale
        dead_mask = self.since_fired > self.dead_tokens
        out = sae(x, dead_mask=dead_mask)
        out.loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[out.latent_indices[out.latent_acts > 0]] = 0
            self.fvus[i] = out.fvu.detach()
            self.n_dead[i] = dead_mask.sum()
        self.step_count += 1

    def finish(self) -> TrainedSAE:
        """Fold the input scale into the biases and return the trained SAE (eval mode)."""
        _fold_input_scale(self.sae, self.scale)
        self.sae.eval()
        cfg = self.sae.cfg
        return TrainedSAE(sae=self.sae, width=cfg.width, k=cfg.k, seed=self.seed,
                          steps=self.step_count, train_tokens=self.step_count * self.batch_size,
                          lr=self.lr, fvu_history=self.fvus[:self.step_count].cpu().tolist(),
                          dead_history=self.n_dead[:self.step_count].cpu().tolist())


def train_sae(acts: Any, width: int, k: int, *, steps: int | None = None, epochs: float | None = None,
              seed: int = 0, device: str | torch.device = "cpu", batch_size: int = 4096,
              lr: float | None = None, dead_tokens: int | None = None, k_aux: int | None = None,
              auxk_coef: float = 1.0 / 32.0, bf16: bool = False, progress: bool = True) -> TrainedSAE:
    """Train one TopK SAE of ``width`` latents and sparsity ``k`` on ``acts`` (n, d).

    ``seed`` seeds initialisation and batch order directly (``train_grid`` derives it
    per SAE). ``lr`` defaults to :func:`default_lr`. ``dead_tokens`` (a latent is dead
    after that many tokens without firing) defaults to
    ``min(10M, max(total_tokens // 10, batch_size))``.
    """
    trainer = TopKTrainer(acts, width, k, steps=steps, epochs=epochs, seed=seed, device=device,
                          batch_size=batch_size, lr=lr, dead_tokens=dead_tokens, k_aux=k_aux,
                          auxk_coef=auxk_coef, bf16=bf16)
    from tqdm.auto import tqdm
    with tqdm(total=trainer.steps, desc=f"SAE W={width} k={k}", disable=not progress, leave=False) as bar:
        for i in range(trainer.steps):
            trainer.step()
            if progress and (i % 25 == 0 or i == trainer.steps - 1):
                bar.set_postfix(fvu=f"{float(trainer.fvus[i]):.4f}", dead=int(trainer.n_dead[i]))
            bar.update(1)
    return trainer.finish()


def _adam(sae: TopKSAE, lr: float) -> torch.optim.Adam:
    """Adam (betas 0.9/0.999, eps 6.25e-10), the fused kernel where this torch has it."""
    try:
        return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=ADAM_EPS, fused=True)
    except (RuntimeError, TypeError, ValueError):  # pragma: no cover - older torch / other devices
        return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=ADAM_EPS)


@torch.no_grad()
def _fold_input_scale(sae: TopKSAE, scale: float) -> None:
    """Make an SAE trained on ``scale * x`` act on raw ``x`` (same TopK choice, unit decoder)."""
    sae.b_dec /= scale
    sae.b_enc /= scale


def train_grid(acts: Any, widths: Sequence[int], ks: Sequence[int], *, steps: int | None = None,
               epochs: float | None = None, seed: int, device: str | torch.device = "cpu",
               batch_size: int = 4096, lr: float | None = None, progress: bool = True,
               **train_kwargs: Any) -> list[TrainedSAE]:
    """Train one TopK SAE per (width, k), in sorted order, each with ``derive_seed(seed, width, k)``."""
    grid = _grid(widths, ks)
    x_all = _as_tensor(acts, device)
    from tqdm.auto import tqdm
    out = []
    for width, k in tqdm(grid, desc="SAE grid", disable=not progress):
        out.append(train_sae(x_all, width, k, steps=steps, epochs=epochs,
                             seed=derive_seed(seed, width, k), device=device,
                             batch_size=batch_size, lr=lr, progress=progress, **train_kwargs))
    return out


def _grid(widths: Sequence[int], ks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated (width, k) pairs; ValueError on a k above its width."""
    ws = sorted({int(w) for w in widths})
    kk = sorted({int(k) for k in ks})
    if not ws or not kk or ws[0] < 1 or kk[0] < 1:
        raise ValueError(f"widths and ks must be non-empty positive ints, got {widths!r}, {ks!r}")
    bad = [(w, k) for w, k in product(ws, kk) if k > w]
    if bad:
        raise ValueError(f"k must not exceed width; offending (width, k): {bad}")
    return list(product(ws, kk))


# ---------------------------------------------------------------------- evaluation


def _unwrap(sae: Any) -> Any:
    return sae.sae if isinstance(sae, TrainedSAE) else sae


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
    sae = _unwrap(sae)
    d_in, width = _sae_shape(sae)
    sae = sae.to(device)
    n, d = _check_acts_shape(acts, d_in)
    # a sae-lens SAE materialises a dense (B, W) code: keep it under ~2**27 entries
    if not isinstance(sae, TopKSAE):
        batch_size = max(1, min(batch_size, 2**27 // width))
    mom = RunningMoments(d, device)
    sse, l0_sum = 0.0, 0
    fired = torch.zeros(width, dtype=torch.bool, device=device)
    for start in range(0, n, batch_size):
        x = _as_tensor(acts[start:start + batch_size], device, "acts", min_rows=1)
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


def _check_acts_shape(acts: Any, d_in: int) -> tuple[int, int]:
    shape = tuple(acts.shape)
    if len(shape) != 2 or shape[0] < 2:
        raise ValueError(f"acts: expected shape (n >= 2, d), got {shape}")
    if shape[1] != d_in:
        raise ValueError(f"acts: last dimension {shape[1]} does not match the SAE's d_in={d_in}")
    return int(shape[0]), int(shape[1])


# ------------------------------------------------------------------- save / load


def _to_sae_lens(sae: TopKSAE, metadata: dict[str, Any] | None = None):
    """A sae-lens ``TopKSAE`` with our weights (on CPU, float32)."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    cfg = sae_lens.TopKSAEConfig(
        d_in=sae.d_in, d_sae=sae.width, k=sae.k, dtype="float32", device="cpu",
        apply_b_dec_to_input=True, normalize_activations="none",
        rescale_acts_by_decoder_norm=False,
        metadata=SAEMetadata(**{"sae_lens_training_version": None, **(metadata or {})}),
    )
    out = sae_lens.TopKSAE(cfg)
    state = {
        "W_enc": sae.W_enc.detach().float().cpu().T.contiguous(),
        "b_enc": sae.b_enc.detach().float().cpu().clone(),
        "W_dec": sae.W_dec.detach().float().cpu().clone(),
        "b_dec": sae.b_dec.detach().float().cpu().clone(),
    }
    out.load_state_dict(state)
    return out


def save_sae(sae: Any, folder: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Save a geowall SAE in sae-lens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

    ``sae_lens.SAE.load_from_disk(folder)`` gives back a sae-lens ``TopKSAE`` with the
    same reconstructions. ``metadata`` (JSON-serialisable) lands in ``cfg.json``'s
    metadata and in ``geowall.json``. The folder is written in full beside the target
    and renamed into place, so a crash never leaves a half-written SAE.
    """
    trained = sae if isinstance(sae, TrainedSAE) else None
    sae = _unwrap(sae)
    if not isinstance(sae, TopKSAE):
        raise TypeError(f"save_sae: expected a geowall TopKSAE, got {type(sae).__name__}")
    meta = dict(metadata or {})
    if trained is not None:
        meta.setdefault("seed", trained.seed)
        meta.setdefault("steps", trained.steps)
        meta.setdefault("train_tokens", trained.train_tokens)
        meta.setdefault("lr", trained.lr)
    meta.setdefault("trainer", "geowall.sae")
    json.dumps(meta)  # fail early on a non-serialisable metadata value
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _to_sae_lens(sae, meta).save_model(tmp)
        cfg_extra = {"architecture": "topk", "width": sae.width, "k": sae.k, "d_in": sae.d_in,
                     "k_aux": sae.cfg.k_aux, "auxk_coef": sae.cfg.auxk_coef, **meta}
        (tmp / _GEOWALL_META).write_text(json.dumps(cfg_extra, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename directory ``src`` onto ``dst`` (moving an existing ``dst`` aside first)."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_sae(folder: str | os.PathLike, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Load a geowall TopK SAE saved by :func:`save_sae` (reads the sae-lens files)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / "cfg.json", folder / "sae_weights.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"load_sae: missing {p}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("architecture") != "topk" or cfg.get("rescale_acts_by_decoder_norm", False):
        raise ValueError(f"{cfg_path}: expected a plain sae-lens 'topk' SAE, got architecture="
                         f"{cfg.get('architecture')!r}")
    extra = json.loads((folder / _GEOWALL_META).read_text()) if (folder / _GEOWALL_META).is_file() else {}
    state = load_file(str(w_path), device="cpu")
    d, W = int(cfg["d_in"]), int(cfg["d_sae"])
    expected = {"W_enc": (d, W), "b_enc": (W,), "W_dec": (W, d), "b_dec": (d,)}
    for key, shape in expected.items():
        if key not in state or tuple(state[key].shape) != shape:
            got = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"{w_path}: key {key!r} has shape {got}, expected {shape}")
    tk = TopKConfig(d_in=d, width=W, k=int(cfg["k"]), k_aux=extra.get("k_aux"),
                    auxk_coef=float(extra.get("auxk_coef", 1 / 32)))
    sae = TopKSAE(tk, device="cpu")
    with torch.no_grad():
        sae.W_enc.copy_(state["W_enc"].T)
        sae.b_enc.copy_(state["b_enc"])
        sae.W_dec.copy_(state["W_dec"])
        sae.b_dec.copy_(state["b_dec"])
    return sae.to(device).eval()


# ------------------------------------------------------------------------ the grid


def sae_folder(sae_dir: str | os.PathLike, model: str, layer: int, width: int, k: int) -> Path:
    """``sae_dir/<model>/layer_XX/w{width}_k{k}``."""
    return Path(sae_dir) / model / f"layer_{int(layer):02d}" / f"w{int(width)}_k{int(k)}"


def _empty_metrics() -> pd.DataFrame:
    return _coerce_metrics(pd.DataFrame({c: [] for c in METRIC_COLUMNS}))


def _coerce_metrics(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and dtypes, rows sorted by (model, layer, width, k, seed)."""
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics table lacks columns {missing}")
    df = df.copy()
    for c in ("model", "source", "sae_id"):
        df[c] = df[c].astype(str)
    for c in ("layer", "width", "k", "n_tokens", "train_tokens", "seed"):
        df[c] = df[c].astype("int64")
    for c in ("l0", "fvu", "mse", "dead_frac"):
        df[c] = df[c].astype("float64")
    extra = [c for c in df.columns if c not in METRIC_COLUMNS]
    df = df[METRIC_COLUMNS + extra]
    return df.sort_values(_SORT, kind="mergesort").reset_index(drop=True)


def read_metrics(metrics_path: str | os.PathLike) -> pd.DataFrame:
    """The metrics table at ``metrics_path`` (empty, with the right columns, if absent)."""
    p = Path(metrics_path)
    if not p.exists():
        return _empty_metrics()
    try:
        return _coerce_metrics(read_parquet(p))
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err


def append_metrics(metrics_path: str | os.PathLike, table: pd.DataFrame, row: dict[str, Any]) -> pd.DataFrame:
    """Add one row to ``table``, keep it sorted, rewrite ``metrics_path`` atomically; return it."""
    table = _coerce_metrics(pd.concat([table, pd.DataFrame([row])], ignore_index=True))
    write_parquet(metrics_path, table)
    return table


def width_trend(metrics: pd.DataFrame) -> pd.DataFrame:
    """How fvu moves with width at fixed (model, layer, k): one row per group with
    ``n_widths``, ``max_step_increase`` (the largest relative fvu increase from one width
    to the next wider one; negative when fvu always falls), ``end_change`` (widest vs
    narrowest, relative) and ``slope`` (least-squares slope of log fvu on log width).
    Groups with a single width are left out."""
    rows = []
    for (model, layer, k), g in metrics.groupby(["model", "layer", "k"], sort=True):
        g = g.sort_values("width")
        if len(g) < 2:
            continue
        f, w = g.fvu.to_numpy(dtype=float), g.width.to_numpy(dtype=float)
        rows.append({"model": model, "layer": int(layer), "k": int(k), "n_widths": len(g),
                     "max_step_increase": float((f[1:] / f[:-1] - 1).max()), "end_change": float(f[-1] / f[0] - 1),
                     "slope": float(np.polyfit(np.log(w), np.log(f), 1)[0])})
    return pd.DataFrame(rows, columns=["model", "layer", "k", "n_widths", "max_step_increase", "end_change", "slope"])


def check_width_trend(trend: pd.DataFrame, *, slack: float, synthetic: Iterable[str] = ()) -> pd.DataFrame:
    """Step 01's sanity check on a :func:`width_trend` table; raises ``ValueError``.

    Real networks: no step to the next wider SAE may raise fvu by more than ``slack``
    (relative). Models in ``synthetic`` (low-dimensional manifolds trained with k near
    the number of directions they span, where which optimum an SAE reaches varies by
    width): only the median log-log slope of fvu on width must be negative. Returns the
    synthetic groups whose steps exceed ``slack`` (reported, not fatal)."""
    is_synth = trend.model.isin(set(synthetic))
    real, synth = trend[~is_synth], trend[is_synth]
    bad = real[real.max_step_increase > slack]
    if len(bad):
        worst = float(bad.max_step_increase.max())
        raise ValueError(f"fvu increases with width at fixed k beyond the {slack:.0%} slack; to pass: train longer "
                         f"(raise sae.steps, or sae.steps_width_exponent so wider SAEs get more steps), or raise "
                         f"sae.monotone_slack to >= {math.ceil(worst * 100) / 100:g} (null switches the check off):\n{bad}")
    median_slope = synth.groupby("model").slope.median()
    if (median_slope >= 0).any():
        raise ValueError(f"wider SAEs are not better on the typical synthetic layer: {median_slope.to_dict()}; "
                         f"to pass: train longer (raise sae.steps or sae.lr_scale)")
    return synth[synth.max_step_increase > slack]


def done_keys(table: pd.DataFrame) -> set[tuple]:
    """The (model, layer, width, k, seed) keys already in a metrics table."""
    return set(map(tuple, table[_KEY].itertuples(index=False, name=None)))


def run_grid(train_acts: Any, eval_acts: Any, *, model: str, layer: int, widths: Sequence[int],
             ks: Sequence[int], steps: int | None = None, seed: int, device: str | torch.device = "cpu",
             sae_dir: str | os.PathLike, metrics_path: str | os.PathLike, source: str = "trained",
             batch_size: int = 4096, lr: float | None = None, progress: bool = True,
             epochs: float | None = None, **train_kwargs: Any) -> pd.DataFrame:
    """Train, save and evaluate every (width, k) SAE of one model layer; resume-safe.

    A (model, layer, width, k, seed) already in ``metrics_path`` is skipped (logged).
    After each SAE, its folder ``sae_dir/<model>/layer_XX/w{W}_k{k}`` is written, then
    one row is added to ``metrics_path`` (the whole table is rewritten atomically,
    sorted by model, layer, width, k), so a killed and resumed run ends with the same
    table as an uninterrupted one. Returns the whole metrics table.
    """
    grid = _grid(widths, ks)
    table = read_metrics(metrics_path)
    done = done_keys(table)
    todo = [(w, k) for w, k in grid if (str(model), int(layer), w, k, int(seed)) not in done]
    skipped = len(grid) - len(todo)
    log.info("run_grid %s layer %d: %d of %d SAEs already in %s, skipped; %d to train",
             model, layer, skipped, len(grid), metrics_path, len(todo))
    if not todo:
        return table
    x_train = _as_tensor(train_acts, device, "train_acts")
    n_eval, _ = _check_acts_shape(eval_acts, x_train.shape[1])
    from tqdm.auto import tqdm
    for width, k in tqdm(todo, desc=f"{model} layer {layer}", disable=not progress):
        trained = train_sae(x_train, width, k, steps=steps, epochs=epochs,
                            seed=derive_seed(seed, width, k), device=device,
                            batch_size=batch_size, lr=lr, progress=progress, **train_kwargs)
        sae_id = f"{model}/layer_{int(layer):02d}/w{width}_k{k}"
        save_sae(trained, sae_folder(sae_dir, model, layer, width, k),
                 metadata={"model_name": str(model), "layer": int(layer), "sae_id": sae_id,
                           "grid_seed": int(seed)})
        metrics = evaluate(trained, eval_acts, batch_size=batch_size, device=device)
        row = {"model": str(model), "layer": int(layer), "width": width, "k": k,
               **{m: metrics[m] for m in ("l0", "fvu", "mse", "dead_frac", "n_tokens")},
               "source": source, "sae_id": sae_id, "train_tokens": trained.train_tokens,
               "seed": int(seed)}
        table = append_metrics(metrics_path, table, row)
    return table
