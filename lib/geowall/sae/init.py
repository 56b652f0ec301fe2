"""Data-based initialisation of a TopK SAE's dictionary.

A random Gaussian decoder starts every atom far from the data: on a low-dimensional
manifold most random directions are never the top-k choice of any token, so they start
dead and the live ones must travel the whole way. With k = 1 a TopK SAE is a gain-shape
vector quantiser (each token is one non-negatively scaled atom), whose best error on a
d-dimensional manifold falls as W^(-2/d) (Zador 1982); its standard starting point is the
data itself. Two data seedings and the old random start, all with the encoder tied to the decoder at the start (so a
token's first choice is the atom it points along, as in Lloyd's assignment step):

* ``"sample"``: W distinct training tokens, centred at the decoder bias and normalised;
* ``"kmeans++"``: gain-shape k-means++ (Arthur & Vassilvitskii 2007): each new atom is a
  token drawn with probability proportional to its error under the atoms chosen so far,
  ``||x||^2 - max(0, max_i <x, c_i>)^2``; on a subsample of ``kmeanspp_pool`` tokens
  (the seeding is W passes over the pool, so its cost is ``W * pool * d``).
* ``"random"``: Gaussian directions (sparsify's and the earlier trainer's start).

Written here, not taken from scikit-learn: sklearn's ``kmeans_plusplus`` scores squared
Euclidean distance to centres, not the gain-shape error of a TopK code, and runs on numpy
arrays only (this runs on the training device, from the same torch generator as the rest).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["INIT_METHODS", "init_dictionary"]

INIT_METHODS = ("kmeans++", "sample", "random")


def _unit_rows(M: Tensor) -> Tensor:
    return M / M.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _random(width: int, d: int, generator: torch.Generator) -> Tensor:
    W = torch.randn(width, d, generator=generator, dtype=torch.float64)
    return _unit_rows(W).float()


def _distinct_nonzero(xc: Tensor) -> Tensor:
    """Row indices of ``xc`` with a non-negligible norm (a centred token at the bias has no direction)."""
    norms = xc.norm(dim=1)
    return torch.nonzero(norms > 1e-6 * norms.max().clamp_min(1e-30), as_tuple=True)[0]


def _sample(xc: Tensor, width: int, generator: torch.Generator) -> Tensor:
    ok = _distinct_nonzero(xc)
    pick = ok[torch.randperm(len(ok), generator=generator)[:width].to(ok.device)]
    atoms = _unit_rows(xc.index_select(0, pick).float())
    if len(pick) < width:  # fewer usable tokens than latents: the rest start random
        atoms = torch.cat([atoms, _random(width - len(pick), xc.shape[1], generator).to(atoms.device)])
    return atoms


def _kmeanspp(xc: Tensor, width: int, generator: torch.Generator, pool: int) -> Tensor:
    ok = _distinct_nonzero(xc)
    ok = ok[torch.randperm(len(ok), generator=generator)[: max(pool, width)].to(ok.device)]
    P = xc.index_select(0, ok).float()
    if len(P) < width:
        return _sample(xc, width, generator)
    norm2 = P.pow(2).sum(1)
    best = torch.zeros_like(norm2)  # max(0, <x, c>)^2 over the atoms so far
    atoms = torch.empty(width, P.shape[1], device=P.device)
    first = int(torch.randint(len(P), (1,), generator=generator))
    atoms[0] = _unit_rows(P[first : first + 1])[0]
    for i in range(1, width):
        best = torch.maximum(best, (P @ atoms[i - 1]).clamp_min(0).pow(2))
        err = (norm2 - best).clamp_min(0).double()
        total = float(err.sum())
        if not total > 0:  # every pool token is already represented exactly: fill by sampling
            atoms[i:] = _sample(P, width - i, generator)
            break
        u = torch.rand((), generator=generator, dtype=torch.float64) * total
        j = int(torch.searchsorted(err.cumsum(0).cpu(), u).clamp_max(len(P) - 1))
        atoms[i] = _unit_rows(P[j : j + 1])[0]
    return atoms


def init_dictionary(
    x: Tensor,
    width: int,
    *,
    b_dec: Tensor,
    method: str = "kmeans++",
    generator: torch.Generator,
    kmeanspp_pool: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Initial ``(W_dec, W_enc)``, each (width, d) with unit-norm rows, the encoder tied.

    ``x`` (n, d): the (scaled) training tokens; ``b_dec`` (d,): the decoder bias they are
    centred at. ``method`` is one of :data:`INIT_METHODS`.
    """
    if method not in INIT_METHODS:
        raise ValueError(f"init method must be one of {INIT_METHODS}, got {method!r}")
    if method == "random":
        W_dec = _random(width, x.shape[1], generator).to(x.device)
    else:
        xc = x - b_dec.to(x.dtype)
        W_dec = _sample(xc, width, generator) if method == "sample" else _kmeanspp(xc, width, generator, kmeanspp_pool)
    return W_dec.contiguous(), W_dec.clone()
