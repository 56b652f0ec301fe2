"""Training several TopK SAEs of one layer at once (the grid trainer).

Every SAE of a layer sees the same batches, so one step of the whole group shares:

* one encoder matmul for all SAEs: ``[x, 1] @ [W_enc_all, c]^T`` with the widths'
  encoders stacked (``c = b_enc - W_enc b_dec`` folds each SAE's pre-encoder bias into a
  per-latent constant, so the different ``b_dec`` need no separate input copies);
* hand-written gradients (no autograd graph): the TopK code's gradients reach only the
  selected latents; the decoder and encoder weight gradients are scattered with one
  stable sort of the selected indices per SAE (shared by both), see
  :func:`geowall.sae.sparse_ops.scatter_rows_shared`;
* one Adam update over the stacked parameters (a per-row learning rate, so each width
  keeps its own ``lr``), the decoder-norm constraint and dead-latent counters on the
  stacked tensors.

Per SAE it is exactly the recipe of :class:`~geowall.sae.train.TopKTrainer` (Gao et
al.'s TopK + AuxK, unit-norm decoder rows with the parallel gradient removed, Adam eps
6.25e-10, inputs rescaled to mean squared norm d); the tests check one group step
against that trainer's autograd step. What differs: the SAEs of a group share the batch
order, and the learning rate can follow a schedule (``lr_warmup`` and ``lr_decay``
fractions of the steps: linear warm-up from 0, then constant, then linear decay to 0).

Learning curves: ``curve_points`` times during training the held-out fvu of every SAE is
measured on ``curve_tokens`` evaluation tokens (with the SAEs as they stand), so the grid
can say whether each SAE's error has levelled off (:func:`plateau_change`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from geowall.sae.init import init_dictionary
from geowall.sae.model import TopKConfig, TopKSAE, TrainedSAE
from geowall.sae.sparse_ops import per_sample_weights_grad, scatter_rows_shared
from geowall.sae.train import ADAM_EPS, TrainConfig, derive_seed, lr_factor, prepare_training

BETAS = (0.9, 0.999)
STAGES = ("batch", "encode", "topk", "decode", "backward", "optimiser")
FUSED_ADAM = hasattr(torch, "_fused_adam_")
# AuxK over the dead latents as dense matmuls while there are at most this many times k_aux of
# them (else gathers like the TopK code): the dead are few, and a (B, n_dead) @ (n_dead, d)
# matmul runs at BLAS speed where a gather of B x k_aux rows is memory-bound. On MPNet layer 9
# (6 SAEs, batch 512, 4% to 16% dead) the backward stage took 9.4 s of 20 s with gathers.
AUX_DENSE_FACTOR = 8


def _dense_topk(a: Tensor, k: int) -> Tensor:
    """``a`` (B, n) with all but each row's ``k`` largest entries (``topk``'s choice) set to 0."""
    if k >= a.shape[1]:
        return a
    vals, idx = a.topk(k, dim=1, sorted=False)
    return torch.zeros_like(a).scatter_(1, idx, vals)


def _aux_grads_dense(
    a_acts: Tensor,
    dead_idx: Tensor,
    g_aux: Tensor,
    sae_in: Tensor,
    W_dead: Tensor,
    W_enc: Tensor,
    gW_dec: Tensor,
    gW_enc: Tensor,
    gb_enc: Tensor,
    gb_dec: Tensor,
) -> None:
    """Add the AuxK loss's gradients to ``gW_dec``, ``gW_enc``, ``gb_enc`` and ``gb_dec`` (in
    place) with dense matmuls over the dead latents ``dead_idx``: ``a_acts`` (B, n_dead) holds
    each token's selected dead activations (0 elsewhere), ``g_aux`` (B, d) the loss's gradient
    at the auxiliary reconstruction, ``W_dead`` the dead latents' decoder rows (n_dead, d). The
    same sums as the gather path, term by term."""
    g_a = (g_aux @ W_dead.T).mul_(a_acts > 0)  # d loss / d pre-activation
    gW_dec.index_add_(0, dead_idx, a_acts.T @ g_aux)
    gW_enc.index_add_(0, dead_idx, g_a.T @ sae_in)
    col = g_a.sum(0)
    gb_enc.index_add_(0, dead_idx, col)
    gb_dec -= col @ W_enc.index_select(0, dead_idx)


@dataclass
class GroupState:
    """Stacked parameters of S SAEs: rows ``off[s]:off[s+1]`` of the (sum W, d) tensors are SAE s."""

    W_enc: Tensor
    W_dec: Tensor
    b_enc: Tensor
    b_dec: Tensor  # (S, d)


class GroupTrainer:
    """Train SAEs of shapes ``shapes = [(width, k), ...]`` on ``x`` (n, d) together.

    ``inits``: per SAE, ``(W_dec, W_enc)`` initial (W, d) tensors (unit-norm rows);
    ``lrs``: per SAE base learning rate. ``x`` is already on the device and rescaled.
    ``b_dec0``: (d,) initial decoder bias (the scaled data mean).
    """

    def __init__(
        self,
        x: Tensor,
        shapes: list[tuple[int, int]],
        inits: list[tuple[Tensor, Tensor]],
        lrs: list[float],
        b_dec0: Tensor,
        *,
        steps: int,
        batch_size: int,
        generator: torch.Generator,
        dead_tokens: int,
        k_aux: int | None = None,
        auxk_coef: float = 1 / 32,
        lr_warmup: float = 0.0,
        lr_decay: float = 0.0,
        bf16: bool = False,
        timings: bool = False,
    ):
        self.x = x
        n, d = x.shape
        self.d, self.S = d, len(shapes)
        self.widths = [int(w) for w, _ in shapes]
        self.ks = [int(k) for _, k in shapes]
        self.off = [0]
        for w in self.widths:
            self.off.append(self.off[-1] + w)
        dev = x.device
        self.state = GroupState(
            W_enc=torch.cat([e for _, e in inits]).to(dev).contiguous(),
            W_dec=torch.cat([dd for dd, _ in inits]).to(dev).contiguous(),
            b_enc=torch.zeros(self.off[-1], device=dev),
            b_dec=b_dec0.to(dev).expand(self.S, d).clone(),
        )
        p = self.state
        self.m = {k: torch.zeros_like(v) for k, v in vars(p).items()}
        self.v = {k: torch.zeros_like(v) for k, v in vars(p).items()}
        self.g = {k: torch.zeros_like(v) for k, v in vars(p).items()}  # every slice rewritten each step
        self.adam_steps = [[torch.zeros((), device="cpu") for _ in range(4)] for _ in shapes]
        self.base_lr = torch.tensor(lrs, dtype=torch.float32, device=dev)
        self.row_sae = torch.repeat_interleave(torch.arange(self.S, device=dev), torch.tensor(self.widths, device=dev))
        self.k_aux = max(1, k_aux if k_aux is not None else d // 2)
        self.auxk_coef = auxk_coef
        self.steps, self.batch_size = int(steps), int(batch_size)
        self.dead_tokens = int(dead_tokens)
        self.warmup, self.decay = lr_warmup, lr_decay
        self.since_fired = torch.zeros(self.off[-1], dtype=torch.long, device=dev)
        self.fvus = torch.zeros(self.steps, self.S, device=dev)
        self.n_dead = torch.zeros(self.steps, self.S, dtype=torch.long, device=dev)
        self.gen = generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0
        self.step_count = 0
        self.timings = {s: 0.0 for s in STAGES} if timings else None
        self.bf16 = bool(bf16)
        self._pre = torch.empty(
            min(self.batch_size, n), self.off[-1], dtype=torch.bfloat16 if self.bf16 else x.dtype, device=dev
        )

    # ------------------------------------------------------------------ helpers
    def _tick(self, stage: str, t0: float) -> float:
        if self.timings is None:
            return t0
        if self.x.is_cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.timings[stage] += t1 - t0
        return t1

    def _next_batch(self) -> Tensor:
        n = self.x.shape[0]
        if self.pos + self.batch_size > n:
            self.perm, self.pos = torch.randperm(n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return self.x.index_select(0, idx.to(self.x.device))

    def pre_acts(self, x: Tensor, *, bf16: bool = False, out: Tensor | None = None) -> Tensor:
        """(B, sum W) encoder pre-activations of every SAE: one matmul (``c + x W_enc^T``).

        ``bf16``: inputs, weights and the result in bfloat16 (products accumulated in float32
        by the BLAS); 3.5x to 4.5x a float32 matmul on CPUs with AVX512-BF16 or AMX and on
        recent GPUs. ``out``: a reused result buffer (a fresh one is fresh pages each step)."""
        p = self.state
        c = p.b_enc - torch.cat([p.W_enc[self.sae_slice(s)] @ p.b_dec[s] for s in range(self.S)])
        if bf16:
            bf = torch.bfloat16
            return torch.addmm(c.to(bf), x.to(bf), p.W_enc.to(bf).T, out=out)
        return torch.addmm(c, x, p.W_enc.T, out=out)

    def sae_slice(self, s: int) -> slice:
        return slice(self.off[s], self.off[s + 1])

    # -------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self) -> None:
        if self.step_count >= self.steps:
            raise RuntimeError(f"all {self.steps} steps are done")
        i, p = self.step_count, self.state
        t = time.perf_counter() if self.timings is not None else 0.0
        x = self._next_batch()
        B = x.shape[0]
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(torch.finfo(x.dtype).tiny)
        t = self._tick("batch", t)
        pre = self.pre_acts(x, bf16=self.bf16, out=self._pre if B == self._pre.shape[0] else None)
        t = self._tick("encode", t)
        dead = self.since_fired > self.dead_tokens
        codes = []
        for s in range(self.S):
            sl = self.sae_slice(s)
            ps = pre[:, sl]
            vals, idx = ps.topk(self.ks[s], dim=1, sorted=False)
            vals = vals.float()
            n_dead = int(dead[sl].sum())
            aux = None
            if n_dead:
                k_aux = min(self.k_aux, n_dead)
                dead_idx = torch.nonzero(dead[sl], as_tuple=True)[0]
                a_pre, a_scale = ps.index_select(1, dead_idx), min(n_dead / self.k_aux, 1.0)
                if n_dead <= AUX_DENSE_FACTOR * self.k_aux:  # (B, n_dead) activations, the dead latents
                    aux = (_dense_topk(a_pre.float(), k_aux), dead_idx, a_scale)
                else:  # (B, k_aux) activations and their latents
                    a_vals, a_pos = a_pre.topk(k_aux, dim=1, sorted=False)
                    aux = (a_vals.float(), dead_idx[a_pos], a_scale)
            codes.append((vals, idx, aux, n_dead))
        t = self._tick("topk", t)
        g = self.g
        for s, (vals, idx, aux, n_dead) in enumerate(codes):
            sl = self.sae_slice(s)
            W_dec, W_enc, b_dec = p.W_dec[sl], p.W_enc[sl], p.b_dec[s]
            acts = vals.relu()
            x_hat = F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=acts) + b_dec
            err = x - x_hat
            fvu = err.pow(2).sum() / total_var
            self.fvus[i, s] = fvu
            self.n_dead[i, s] = n_dead
            g_out = err * (-2.0 / total_var)  # d fvu / d x_hat
            if aux is not None:
                a_vals, a_idx, a_scale = aux
                a_acts = a_vals.relu()
                if a_idx.dim() == 1:  # dense: a_acts is (B, n_dead), a_idx the dead latents
                    W_dead = W_dec.index_select(0, a_idx)
                    aux_out = a_acts @ W_dead
                else:
                    aux_out = F.embedding_bag(a_idx, W_dec, mode="sum", per_sample_weights=a_acts)
                g_aux = (aux_out - err) * (2.0 * self.auxk_coef * a_scale / total_var)
            t = self._tick("decode", t)
            # decoder: d/d acts, d/d W_dec, d/d b_dec
            g_acts = per_sample_weights_grad(g_out, W_dec, idx) * (vals > 0)
            sae_in = x - b_dec
            gW_dec, gW_enc = scatter_rows_shared(idx, [(acts, g_out), (g_acts, sae_in)], W_dec.shape[0])
            gb_enc = torch.zeros(W_dec.shape[0], device=x.device).index_add_(0, idx.reshape(-1), g_acts.reshape(-1))
            gb_dec = g_out.sum(0) - F.embedding_bag(idx, W_enc, mode="sum", per_sample_weights=g_acts).sum(0)
            if aux is not None and a_idx.dim() == 1:
                _aux_grads_dense(a_acts, a_idx, g_aux, sae_in, W_dead, W_enc, gW_dec, gW_enc, gb_enc, gb_dec)
            elif aux is not None:
                g_aacts = per_sample_weights_grad(g_aux, W_dec, a_idx) * (a_vals > 0)
                gWd_a, gWe_a = scatter_rows_shared(a_idx, [(a_acts, g_aux), (g_aacts, sae_in)], W_dec.shape[0])
                gW_dec += gWd_a
                gW_enc += gWe_a
                gb_enc.index_add_(0, a_idx.reshape(-1), g_aacts.reshape(-1))
                gb_dec -= F.embedding_bag(a_idx, W_enc, mode="sum", per_sample_weights=g_aacts).sum(0)
            g["W_dec"][sl] = gW_dec
            g["W_enc"][sl] = gW_enc
            g["b_enc"][sl] = gb_enc
            g["b_dec"][s] = gb_dec
            fired = idx[acts > 0]
            self.since_fired[sl] += B
            self.since_fired[sl][fired] = 0  # a view: writes through
            t = self._tick("backward", t)
        # decoder-norm constraint: no gradient along each (unit) decoder row
        g["W_dec"] -= (g["W_dec"] * p.W_dec).sum(1, keepdim=True) * p.W_dec
        self._adam(g, lr_factor(i, self.steps, self.warmup, self.decay))
        p.W_dec /= p.W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(p.W_dec.dtype).eps)
        self._tick("optimiser", t)
        self.step_count += 1

    def _adam(self, grads: dict[str, Tensor], factor: float) -> None:
        """Adam with bias correction and a per-SAE learning rate: torch's fused kernel on each
        SAE's rows of the stacked tensors (a plain implementation where it is missing)."""
        p = self.state
        if FUSED_ADAM:
            for s in range(self.S):
                sl = self.sae_slice(s)

                def views(t: dict[str, Tensor], sl: slice = sl, s: int = s) -> list[Tensor]:
                    return [t["W_enc"][sl], t["W_dec"][sl], t["b_enc"][sl], t["b_dec"][s]]

                for st in self.adam_steps[s]:
                    st.fill_(self.step_count + 1)
                torch._fused_adam_(
                    views(vars(p)),
                    views(grads),
                    views(self.m),
                    views(self.v),
                    [],
                    self.adam_steps[s],
                    lr=float(self.base_lr[s]) * factor,
                    beta1=BETAS[0],
                    beta2=BETAS[1],
                    weight_decay=0.0,
                    eps=ADAM_EPS,
                    amsgrad=False,
                    maximize=False,
                )
            return
        t = self.step_count + 1  # pragma: no cover - a torch build without the fused kernel
        b1, b2 = BETAS
        lr_rows = self.base_lr[self.row_sae] * factor
        lr_of = {
            "W_enc": lr_rows[:, None],
            "W_dec": lr_rows[:, None],
            "b_enc": lr_rows,
            "b_dec": (self.base_lr * factor)[:, None],
        }
        c1, c2 = 1 - b1**t, math.sqrt(1 - b2**t)
        for name, p in vars(self.state).items():
            gr, m, v = grads[name], self.m[name], self.v[name]
            m.lerp_(gr, 1 - b1)
            v.mul_(b2).addcmul_(gr, gr, value=1 - b2)
            denom = (v.sqrt() / c2).add_(ADAM_EPS)
            p.sub_(m / denom * (lr_of[name] / c1))

    # ----------------------------------------------------------------- curves
    @torch.no_grad()
    def heldout_fvu(self, x: Tensor, chunk: int = 4096) -> list[float]:
        """Held-out fvu of every SAE on ``x`` (scaled like the training tokens), with the
        encoder precision of training (``bf16``): the curve's points are comparable with each
        other, and cost a quarter of a float32 pass (the grid's final fvu is float32)."""
        p = self.state
        sse = torch.zeros(self.S, dtype=torch.float64, device=x.device)
        for s0 in range(0, x.shape[0], chunk):
            xb = x[s0 : s0 + chunk]
            pre = self.pre_acts(xb, bf16=self.bf16)
            for s in range(self.S):
                sl = self.sae_slice(s)
                vals, idx = pre[:, sl].topk(self.ks[s], dim=1, sorted=False)
                vals = vals.float()
                x_hat = F.embedding_bag(idx, p.W_dec[sl], mode="sum", per_sample_weights=vals.relu()) + p.b_dec[s]
                sse[s] += (xb - x_hat).double().pow(2).sum()
        tv = (x.double() - x.double().mean(0)).pow(2).sum()
        return (sse / tv).tolist()


# ------------------------------------------------------------------ plateau


def plateau_change(steps: list[int], fvu: list[float], window: float = 0.2, end: int | None = None) -> float:
    """Relative fall of held-out fvu over the last ``window`` fraction of training up to step
    ``end`` (default: the last curve point): ``(fvu at the window's first curve point - fvu at
    its last) / fvu at its last``; positive while the error still falls. With a learning-rate
    decay, ``end`` is where the decay starts: the annealing drop that follows is a bonus of the
    schedule, not a sign that the constant-rate phase had not levelled off. NaN with fewer than
    two curve points in the window."""
    end = steps[-1] if end is None and steps else end
    if len(steps) < 2 or not end:
        return float("nan")
    inside = [i for i, s in enumerate(steps) if end - window * end - 1e-9 <= s <= end]
    if len(inside) < 2:
        return float("nan")
    a, b = fvu[inside[0]], fvu[inside[-1]]
    return (a - b) / max(b, 1e-12)


# ------------------------------------------------------------------ driver


def train_group(
    acts,
    shapes,
    config=None,
    *,
    seed: int,
    device="cpu",
    eval_acts=None,
    progress: bool = True,
    timings: bool = False,
    **overrides,
):
    """Train the SAEs ``shapes = [(width, k), ...]`` of one layer together (see the module notes).

    ``config`` (:class:`~geowall.sae.train.TrainConfig`) and ``overrides`` set the training;
    SAE (W, k) is initialised from ``derive_seed(seed, W, k)`` like :func:`train_sae`; the
    shared batch order from ``derive_seed(seed, 0, 0)``. With ``eval_acts`` and
    ``config.curve_points``, each returned :class:`TrainedSAE` carries its held-out learning
    curve (``curve_steps``, ``curve_fvu``) and ``plateau_change``. Returns the SAEs in the
    order of ``shapes`` (and, with ``timings``, the trainer's per-stage seconds).
    """
    cfg = TrainConfig.make(config, **overrides)
    setup = prepare_training(acts, cfg, device)
    d, steps, batch_size, scale = setup.d, setup.steps, setup.batch_size, setup.scale
    xs = setup.x * scale
    inits, lrs = [], []
    b_dec0 = setup.b_dec0.float()
    for w, k in shapes:
        gen = torch.Generator().manual_seed(derive_seed(seed, w, k))
        if cfg.init == "random":  # exactly TopKSAE's own start (and TopKTrainer's)
            sae = TopKSAE(TopKConfig(d_in=d, width=int(w), k=int(k)), generator=gen)
            inits.append((sae.W_dec.detach(), sae.W_enc.detach()))
        else:
            inits.append(
                init_dictionary(
                    xs, int(w), b_dec=b_dec0, method=cfg.init, generator=gen, kmeanspp_pool=cfg.kmeanspp_pool
                )
            )
        lrs.append(cfg.lr_for(int(w)))
    gt = GroupTrainer(
        xs,
        list(shapes),
        inits,
        lrs,
        b_dec0,
        steps=steps,
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(derive_seed(seed, 0, 0)),
        dead_tokens=setup.dead_tokens,
        k_aux=cfg.k_aux,
        auxk_coef=cfg.auxk_coef,
        lr_warmup=cfg.lr_warmup,
        lr_decay=cfg.lr_decay,
        bf16=cfg.bf16,
        timings=timings,
    )
    curve_steps: list[int] = []
    curve_fvu: list[list[float]] = []
    x_curve = None
    curve_every = max(1, steps // cfg.curve_points) if cfg.curve_points else 0
    if eval_acts is not None and curve_every:
        x_curve = setup.eval_batch(eval_acts, device)
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc=f"{len(shapes)} SAEs", disable=not progress, leave=False) as bar:
        for i in range(steps):
            gt.step()
            if x_curve is not None and ((i + 1) % curve_every == 0 or i + 1 == steps):
                curve_steps.append(i + 1)
                curve_fvu.append(gt.heldout_fvu(x_curve))
            bar.update(1)
    out = []
    p = gt.state
    decay_start = steps - int(round(cfg.lr_decay * steps)) if cfg.lr_decay else None
    for s, (w, k) in enumerate(shapes):
        sl = gt.sae_slice(s)
        sae = TopKSAE(
            TopKConfig(d_in=d, width=int(w), k=int(k), k_aux=cfg.k_aux, auxk_coef=cfg.auxk_coef), device=device
        )
        with torch.no_grad():
            sae.W_enc.copy_(p.W_enc[sl])
            sae.W_dec.copy_(p.W_dec[sl])
            sae.b_enc.copy_(p.b_enc[sl] / scale)  # fold the input scale back (see train.py)
            sae.b_dec.copy_(p.b_dec[s] / scale)
        cs, cf = curve_steps, [c[s] for c in curve_fvu]
        out.append(
            TrainedSAE(
                sae=sae.eval(),
                width=int(w),
                k=int(k),
                seed=derive_seed(seed, w, k),
                steps=steps,
                train_tokens=steps * batch_size,
                lr=lrs[s],
                fvu_history=gt.fvus[:, s].cpu().tolist(),
                dead_history=gt.n_dead[:, s].cpu().tolist(),
                curve_steps=list(cs),
                curve_fvu=cf,
                plateau_change=plateau_change(cs, cf, cfg.plateau_window, decay_start),
            )
        )
    return (out, gt.timings) if timings else out
