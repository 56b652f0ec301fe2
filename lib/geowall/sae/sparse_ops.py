"""Sparse autograd ops behind :mod:`geowall.sae`'s TopK autoencoders.

Only ``k`` latents per token are active, so the decoder runs as an ``embedding_bag`` over
the active rows (``B k d`` work instead of ``B W d``) and the encoder's backward pass is
sparse too (gradients reach only the selected latents, scattered with a sorted
``embedding_bag``). :func:`dense_decode` is the plain reference the tests compare
against. The autograd model (:mod:`geowall.sae.model`) uses :class:`SparseEncode` and
:func:`sparse_decode`; the grid trainer's hand-written gradients
(:mod:`geowall.sae.group`) use :func:`per_sample_weights_grad` and
:func:`scatter_rows_shared`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as _F
from torch import Tensor

__all__ = [
    "SparseEncode",
    "dense_decode",
    "encoder_pre_acts",
    "per_sample_weights_grad",
    "scatter_rows",
    "scatter_rows_shared",
    "sparse_decode",
]


def encoder_pre_acts(sae_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, bf16: bool) -> torch.Tensor:
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


def scatter_rows(indices: torch.Tensor, weights: torch.Tensor, src: torch.Tensor, n_rows: int) -> torch.Tensor:
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
    return _F.embedding_bag(rows, src, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order])


def scatter_rows_shared(indices: Tensor, pairs: list[tuple[Tensor, Tensor]], n_rows: int) -> list[Tensor]:
    """:func:`scatter_rows` for several (weights, src) pairs over the same
    ``indices`` (the decoder's and the encoder's weight gradients): one sort for both."""
    m = indices.shape[1]
    flat = indices.reshape(-1)
    # small integer keys sort far faster on CPU (int16: radix-like, ~10x int32, ~80x int64)
    keys = flat.to(torch.int16) if n_rows <= 2**15 else flat.to(torch.int32) if n_rows < 2**31 else flat
    order = torch.argsort(keys, stable=True)
    rows = torch.div(order, m, rounding_mode="floor")
    counts = torch.bincount(flat, minlength=n_rows)
    offsets = torch.cumsum(counts, 0) - counts
    return [
        _F.embedding_bag(rows, src, offsets, mode="sum", per_sample_weights=w.reshape(-1)[order]) for w, src in pairs
    ]


class SparseEncode(torch.autograd.Function):
    """``relu(values)`` with values = pre-activations gathered at ``indices``.

    The forward receives the already computed pre-activations (the dense matmul is
    done once, without autograd); the backward sends gradients only to the gathered
    latents: ``B m d`` work instead of the dense ``B W d``. Call as
    ``SparseEncode.apply(sae_in, W_enc, b_enc, indices, values)``.
    """

    @staticmethod
    def forward(ctx, sae_in, W_enc, b_enc, indices, values):  # type: ignore[override]
        acts = values.relu()
        ctx.save_for_backward(sae_in, W_enc, indices, acts)
        ctx.mark_non_differentiable(indices)
        return acts

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        sae_in, W_enc, indices, acts = ctx.saved_tensors
        grad = grad * (acts > 0).to(grad.dtype)
        grad_in = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_in = _F.embedding_bag(indices, W_enc, mode="sum", per_sample_weights=grad.to(W_enc.dtype))
        if ctx.needs_input_grad[1]:
            grad_w = scatter_rows(indices, grad.to(sae_in.dtype), sae_in, W_enc.shape[0])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_in, grad_w, grad_b, None, None


def per_sample_weights_grad(grad: torch.Tensor, W_dec: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``out[b, j] = <grad[b], W_dec[indices[b, j]]>`` (gradient of the decode w.r.t. acts).

    Uses the aten kernel behind ``embedding_bag``'s own backward; if a torch build
    lacks it, falls back to differentiating ``embedding_bag`` again.
    """
    B, m = indices.shape
    try:
        flat = indices.reshape(-1)
        offsets = torch.arange(0, B * m, m, device=indices.device)
        offset2bag = torch.arange(B, device=indices.device).repeat_interleave(m)
        out = torch.ops.aten._embedding_bag_per_sample_weights_backward(grad, W_dec, flat, offsets, offset2bag, 0, -1)
        return out.view(B, m)
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        with torch.enable_grad():
            w = torch.ones(B, m, dtype=W_dec.dtype, device=W_dec.device, requires_grad=True)
            y = _F.embedding_bag(indices, W_dec.detach(), mode="sum", per_sample_weights=w)
            return torch.autograd.grad(y, w, grad)[0]


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` decode with a sort-based weight gradient (faster than aten's)."""

    @staticmethod
    def forward(ctx, acts, indices, W_dec):  # type: ignore[override]
        ctx.save_for_backward(acts, indices, W_dec)
        return _F.embedding_bag(indices, W_dec, mode="sum", per_sample_weights=acts)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        acts, indices, W_dec = ctx.saved_tensors
        grad = grad.contiguous()
        grad_acts = per_sample_weights_grad(grad, W_dec, indices) if ctx.needs_input_grad[0] else None
        grad_w = scatter_rows(indices, acts, grad, W_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_acts, None, grad_w


def sparse_decode(acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j acts[b, j] * W_dec[indices[b, j]]`` via ``embedding_bag`` (no bias)."""
    return _SparseDecode.apply(acts.to(W_dec.dtype), indices, W_dec)


def dense_decode(acts: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`sparse_decode`: scatter into a dense (B, W) code, then matmul."""
    code = acts.new_zeros(acts.shape[0], W_dec.shape[0]).scatter(1, indices, acts)
    return code.to(W_dec.dtype) @ W_dec
