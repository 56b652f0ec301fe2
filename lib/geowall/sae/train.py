"""Training TopK SAEs: one :class:`TrainConfig`, a step-by-step trainer, one SAE or a grid.

* Adam (eps 6.25e-10) with the learning rate scaled as ``2e-4 / sqrt(W / 2**14)``;
* AuxK's dead latents: no firing in the last ``dead_tokens`` tokens.

Inputs are rescaled internally during training so that the centred activations have
mean squared norm ``d`` (this makes the learning rate independent of the activation
scale); the scale is folded back into ``b_enc`` and ``b_dec`` at the end, so saved
SAEs act on raw activations and the decoder rows stay unit norm.

Every training setting lives in :class:`TrainConfig`. The entry points take one
(``config=``) and, for convenience, its fields as keyword overrides
(``train_sae(x, 64, 8, steps=100)``), resolved once by :meth:`TrainConfig.make`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Any

import torch
from torch import Tensor

from geowall.sae.data import as_acts, moments
from geowall.sae.init import init_dictionary
from geowall.sae.model import TopKConfig, TopKSAE, TrainedSAE

__all__ = [
    "ADAM_EPS",
    "SPEC_FIELDS",
    "TrainConfig",
    "TrainSetup",
    "prepare_training",
    "lr_factor",
    "TopKTrainer",
    "default_lr",
    "derive_seed",
    "train_sae",
    "train_grid",
    "grid_pairs",
]

ADAM_EPS = 6.25e-10
# The TrainConfig fields a profile's ``sae`` section (geowall.config.SaeSpec) sets: TrainConfig.from_spec
SPEC_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "lr_scale",
    "lr_warmup",
    "lr_decay",
    "bf16",
    "curve_points",
    "plateau_window",
)


@dataclass(frozen=True)
class TrainConfig:
    """How one SAE is trained (shape aside: width and k are given per SAE).

    Exactly one of ``steps`` (optimiser steps) and ``epochs`` (passes over the training
    tokens) must be set. ``batch_size`` tokens per step (capped at the number of tokens);
    ``lr`` defaults to :func:`default_lr` of the width; ``dead_tokens`` (a latent is dead
    after that many tokens without firing) defaults to
    ``min(10M, max(total_tokens // 10, batch_size))``; ``k_aux`` dead latents used by
    AuxK (default d/2) with weight ``auxk_coef``; ``bf16`` bfloat16 encoder matmuls (the grid
    trainer :mod:`geowall.sae.group` on any device; the one-SAE :class:`TopKTrainer` on CUDA only).
    ``lr_scale`` multiplies the default learning rate; ``lr_warmup`` / ``lr_decay``: fractions
    of the steps with a linear warm-up from 0 and a linear decay to 0 at the end
    (:func:`lr_factor`). The grid trainer (:mod:`geowall.sae.group`)
    records ``curve_points`` held-out fvu measurements on ``curve_tokens`` evaluation tokens
    and the plateau statistic over the last ``plateau_window`` of training. ``init``: how the
    dictionary starts (:func:`geowall.sae.init.init_dictionary`: ``"kmeans++"`` gain-shape
    seeding on ``kmeanspp_pool`` tokens, ``"sample"`` tokens, or ``"random"`` directions; the
    encoder tied to the decoder at the start).

    Which defaults apply when. The defaults here are the library's, for direct calls
    (``train_sae(x, 64, 8, steps=100)``, the benchmarks): ``batch_size`` 4096,
    ``curve_points`` 0, ``steps`` unset. A profile's run never sees them for the fields
    the profile's ``sae`` section (:class:`geowall.config.SaeSpec`) sets: the pipeline
    builds its config with :meth:`from_spec`, which takes every one of
    :data:`SPEC_FIELDS` from the profile (``batch_size`` 1024, ``curve_points`` 10,
    ``steps`` 1000 there by default) and the model's own steps and learning-rate scale as
    overrides. The fields the profile does not set (``dead_tokens``, ``k_aux``,
    ``auxk_coef``, ``curve_tokens``, ``init``, ``kmeanspp_pool``, ``epochs``) keep the
    defaults here on both paths.
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 4096
    lr: float | None = None
    dead_tokens: int | None = None
    k_aux: int | None = None
    auxk_coef: float = 1.0 / 32.0
    bf16: bool = False
    lr_scale: float = 1.0
    lr_warmup: float = 0.0
    lr_decay: float = 0.0
    curve_points: int = 0
    curve_tokens: int = 4096
    plateau_window: float = 0.2
    init: str = "random"
    kmeanspp_pool: int = 8192

    @classmethod
    def from_spec(cls, spec: Any, **overrides: Any) -> TrainConfig:
        """The training config of a profile's ``sae`` section (a :class:`geowall.config.SaeSpec`):
        its :data:`SPEC_FIELDS`, then ``overrides`` (a model's ``steps`` from
        ``Profile.steps_of`` and ``lr_scale`` from ``Profile.lr_scale_of``). Read by attribute,
        so this module needs no import of :mod:`geowall.config`."""
        return cls.make(**({name: getattr(spec, name) for name in SPEC_FIELDS} | overrides))

    @classmethod
    def make(cls, config: TrainConfig | None = None, **overrides: Any) -> TrainConfig:
        """``config`` (default: all defaults) with some fields replaced; TypeError names an unknown one."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown training setting(s) {unknown}; TrainConfig has {sorted(known)}")
        return dataclasses.replace(config or cls(), **overrides)

    def lr_for(self, width: int) -> float:
        """Base learning rate of an SAE of ``width`` latents: ``lr`` if set, else ``lr_scale`` x :func:`default_lr`."""
        return self.lr_scale * default_lr(width) if self.lr is None else float(self.lr)

    def total_steps(self, n: int) -> int:
        """Optimiser steps for ``n`` training tokens; ValueError unless exactly one of steps/epochs is valid."""
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps= or epochs=")
        if self.steps is not None:
            if int(self.steps) < 1:
                raise ValueError(f"steps must be >= 1, got {self.steps}")
            return int(self.steps)
        if not self.epochs or self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        return max(1, math.ceil(self.epochs * n / min(int(self.batch_size), n)))


def lr_factor(step: int, steps: int, warmup: float, decay: float) -> float:
    """Multiplier on the base learning rate at 0-based ``step`` of ``steps``: linear warm-up over
    the first ``warmup`` fraction, linear decay to 0 over the last ``decay`` fraction."""
    n_warm, n_decay = int(round(warmup * steps)), int(round(decay * steps))
    if n_warm and step < n_warm:
        return (step + 1) / n_warm
    if n_decay and step >= steps - n_decay:
        return (steps - step) / n_decay
    return 1.0


def default_lr(width: int) -> float:
    """Gao et al. / sparsify learning-rate scaling: ``2e-4 / sqrt(W / 2**14)``."""
    return 2e-4 / math.sqrt(width / 2**14)


def derive_seed(seed: int, width: int, k: int) -> int:
    """A per-SAE seed that depends only on (seed, width, k) (stable across runs and machines)."""
    digest = hashlib.sha256(f"geowall-sae:{int(seed)}:{int(width)}:{int(k)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def _batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterable[Tensor]:
    """Row indices of each step's batch: consecutive slices of fresh permutations."""
    perm, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=generator), 0
        yield perm[pos : pos + batch_size]
        pos += batch_size


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


@dataclass(frozen=True)
class TrainSetup:
    """What both trainers (:class:`TopKTrainer`, :func:`geowall.sae.group.train_group`) derive
    from the training tokens and the config before the first step (:func:`prepare_training`).

    ``x``: the raw (n, d) tokens on the device; ``batch_size``: the config's, capped at n
    (also the tokens per step of the learning curves); ``steps``: optimiser steps;
    ``scale``: the input scale (training sees ``scale * x``, whose centred tokens have mean
    squared norm d); ``mean``: the tokens' mean (raw units); ``dead_tokens``: tokens without
    firing after which a latent is dead.
    """

    config: TrainConfig
    x: Tensor
    batch_size: int
    steps: int
    scale: float
    mean: Tensor
    dead_tokens: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @property
    def b_dec0(self) -> Tensor:
        """The initial decoder bias of every SAE: the data mean, in training (scaled) units."""
        return self.mean * self.scale

    def eval_batch(self, eval_acts: Any, device: str | torch.device) -> Tensor:
        """The first ``config.curve_tokens`` of ``eval_acts``, checked, on ``device`` and scaled like
        the training tokens (the tokens of the held-out learning curves)."""
        return as_acts(eval_acts[: self.config.curve_tokens], device, "eval_acts") * self.scale


def prepare_training(acts: Any, config: TrainConfig, device: str | torch.device) -> TrainSetup:
    """The setup both trainers share (see :class:`TrainSetup`).

    ValueError for bad tokens (:func:`~geowall.sae.data.as_acts`), a bad step count
    (:meth:`TrainConfig.total_steps`), or tokens with zero variance (nothing to learn).
    """
    x = as_acts(acts, device)
    n, d = x.shape
    batch_size = min(int(config.batch_size), n)
    steps = config.total_steps(n)
    mom = moments(x)
    if not mom.m2 > 0:
        raise ValueError("acts: training activations have zero variance; nothing to learn")
    total = steps * batch_size
    dead_tokens = (
        min(10_000_000, max(total // 10, batch_size)) if config.dead_tokens is None else int(config.dead_tokens)
    )
    return TrainSetup(
        config=config,
        x=x,
        batch_size=batch_size,
        steps=steps,
        scale=math.sqrt(d * n / mom.m2),
        mean=mom.mean,
        dead_tokens=dead_tokens,
    )


class TopKTrainer:
    """Step-by-step training of one TopK SAE (what :func:`train_sae` drives).

    Holds the SAE, Adam, the input scale, the dead-latent counters and the batch order;
    ``step()`` runs one optimisation step on the next batch, ``finish()`` folds the
    input scale back and returns the :class:`TrainedSAE`. ``seed`` seeds initialisation
    and batch order directly.
    """

    def __init__(
        self,
        acts: Any,
        width: int,
        k: int,
        config: TrainConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device = "cpu",
        **overrides: Any,
    ):
        cfg = self.config = TrainConfig.make(config, **overrides)
        setup = prepare_training(acts, cfg, device)
        self.x_all, n = setup.x, setup.n
        self.device = torch.device(device)
        self.batch_size, self.steps, self.dead_tokens = setup.batch_size, setup.steps, setup.dead_tokens
        self.lr = cfg.lr_for(width)
        self.seed = int(seed)
        shape = TopKConfig(
            d_in=setup.d,
            width=int(width),
            k=int(k),
            k_aux=cfg.k_aux,
            auxk_coef=cfg.auxk_coef,
            bf16=bool(cfg.bf16) and self.device.type == "cuda",
        )
        gen = torch.Generator().manual_seed(self.seed)
        self.sae = TopKSAE(shape, device=device, generator=gen)
        self.scale = setup.scale
        with torch.no_grad():
            self.sae.b_dec.copy_(setup.b_dec0.to(self.sae.b_dec.dtype))
            if cfg.init != "random":
                W_dec, W_enc = init_dictionary(
                    self.x_all * self.scale,
                    shape.width,
                    b_dec=self.sae.b_dec,
                    method=cfg.init,
                    generator=gen,
                    kmeanspp_pool=cfg.kmeanspp_pool,
                )
                self.sae.W_dec.copy_(W_dec)
                self.sae.W_enc.copy_(W_enc)
        self.opt = _adam(self.sae, self.lr)
        self.since_fired = torch.zeros(shape.width, dtype=torch.long, device=device)
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
        if self.config.lr_warmup or self.config.lr_decay:
            for group in self.opt.param_groups:
                group["lr"] = self.lr * lr_factor(i, self.steps, self.config.lr_warmup, self.config.lr_decay)
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
        return TrainedSAE(
            sae=self.sae,
            width=cfg.width,
            k=cfg.k,
            seed=self.seed,
            steps=self.step_count,
            train_tokens=self.step_count * self.batch_size,
            lr=self.lr,
            fvu_history=self.fvus[: self.step_count].cpu().tolist(),
            dead_history=self.n_dead[: self.step_count].cpu().tolist(),
        )


def train_sae(
    acts: Any,
    width: int,
    k: int,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **overrides: Any,
) -> TrainedSAE:
    """Train one TopK SAE of ``width`` latents and sparsity ``k`` on ``acts`` (n, d).

    ``config`` (a :class:`TrainConfig`) and keyword ``overrides`` of its fields set the
    training; ``seed`` seeds initialisation and batch order directly (``train_grid``
    derives it per SAE).
    """
    trainer = TopKTrainer(acts, width, k, config, seed=seed, device=device, **overrides)
    from tqdm.auto import tqdm

    with tqdm(total=trainer.steps, desc=f"SAE W={width} k={k}", disable=not progress, leave=False) as bar:
        for i in range(trainer.steps):
            trainer.step()
            if progress and (i % 25 == 0 or i == trainer.steps - 1):
                bar.set_postfix(fvu=f"{float(trainer.fvus[i]):.4f}", dead=int(trainer.n_dead[i]))
            bar.update(1)
    return trainer.finish()


def train_grid(
    acts: Any,
    widths: Sequence[int],
    ks: Sequence[int],
    config: TrainConfig | None = None,
    *,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **overrides: Any,
) -> list[TrainedSAE]:
    """Train one TopK SAE per (width, k), in sorted order, each with ``derive_seed(seed, width, k)``."""
    config = TrainConfig.make(config, **overrides)
    grid = grid_pairs(widths, ks)
    x_all = as_acts(acts, device)
    from tqdm.auto import tqdm

    return [
        train_sae(x_all, width, k, config, seed=derive_seed(seed, width, k), device=device, progress=progress)
        for width, k in tqdm(grid, desc="SAE grid", disable=not progress)
    ]


def grid_pairs(widths: Sequence[int], ks: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated (width, k) pairs; ValueError on a k above its width."""
    ws = sorted({int(w) for w in widths})
    kk = sorted({int(k) for k in ks})
    if not ws or not kk or ws[0] < 1 or kk[0] < 1:
        raise ValueError(f"widths and ks must be non-empty positive ints, got {widths!r}, {ks!r}")
    bad = [(w, k) for w, k in product(ws, kk) if k > w]
    if bad:
        raise ValueError(f"k must not exceed width; offending (width, k): {bad}")
    return list(product(ws, kk))
