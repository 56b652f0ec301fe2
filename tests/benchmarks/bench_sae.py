"""Benchmark: geowall's TopK SAE trainer against sae-lens's own trainer, same data and budget.

Both train a TopK SAE of width W=3072 and k=32 on the same in-memory synthetic
activations (50k x 384 training tokens, sparse non-negative combinations of 4096
ground-truth directions with power-law frequencies, plus noise and an offset), with
the same number of steps, batch size (4096), learning rate and AuxK weight (1/32),
and are scored with the same ``geowall.sae.evaluate`` on 10k held-out tokens.

* geowall: ``geowall.sae.TopKTrainer`` (the loop behind ``train_sae``: sparse encoder
  backward + embedding_bag decode, fused Adam).
* sae-lens: ``sae_lens.SAETrainer`` driving ``sae_lens.TopKTrainingSAE`` (sae-lens
  defaults otherwise: decoder init norm 0.1, rescale_acts_by_decoder_norm, grad-norm
  clipping 1.0, b_dec starting at zero), fed by a plain Python iterator of in-memory
  batches (no language model, no ActivationsStore). ``SAETrainerConfig`` needs
  ``lr_end`` set explicitly (the runner config normally fills it in).

Timing. By default the trainers alternate single steps (geowall's ``step()``, and
sae-lens's ``maybe_reset_sparsity`` + ``step`` + step counter: exactly the body of
``SAETrainer.fit``'s loop minus wandb/checkpoint/progress-bar calls) and each step is
timed on its own, so that other jobs loading a shared machine slow both alike.
``--sequential`` instead times ``SAETrainer.fit()`` and geowall's loop back to back.

``--grid`` instead benchmarks training a whole layer's grid (default: d=384, widths
192 and 768, k 8/16/32, like the default profile's thin layers): the SAEs one after the
other (``TopKTrainer``, autograd) against all of them together (``geowall.sae.group``,
one stacked encoder matmul, hand-written sparse gradients), and prints the grouped
trainer's per-step time split (batch, encode, top-k, decode, backward, optimiser) and both
trainers' fraction of a plain matmul of the stacked encoder's shape, measured in the same
run. ``--threads N`` pins torch's thread count (1 makes the ratios robust on a machine
shared with other jobs).

It prints wall times and their ratio, both held-out FVUs, and geowall's achieved
GFLOP/s (FLOPs it actually executes) next to a plain torch matmul of the encoder's
shape (the machine's practical roofline). Run:

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_sae.py [--steps 200] [--device cpu]
        [--sae-lens-mean-init]   # adds sae-lens with b_dec started at the data mean
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def synthetic_acts(
    n: int, d: int, n_features: int = 4096, active: float = 24.0, seed: int = 0, noise: float = 0.05
) -> torch.Tensor:
    """Sparse non-negative sums of unit directions, power-law feature frequencies."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_features, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    p = 1.0 / torch.arange(1, n_features + 1, dtype=torch.float64) ** 0.7
    p = (p / p.sum() * active).clamp(max=1.0)
    x = torch.empty(n, d)
    for s in range(0, n, 4096):
        m = min(4096, n - s)
        on = torch.rand(m, n_features, generator=g, dtype=torch.float64) < p
        mag = torch.rand(m, n_features, generator=g) * 2
        x[s : s + m] = (on * mag) @ D
    x += noise * torch.randn(n, d, generator=g)
    return x + 0.5 * torch.randn(d, generator=g)


def matmul_roofline(B: int, d: int, W: int, device: str, reps: int = 10, dtype=torch.float32) -> float:
    """GFLOP/s of a plain (B, d) @ (d, W) matmul (the encoder's shape) in ``dtype``."""
    a = torch.randn(B, d, device=device, dtype=dtype)
    b = torch.randn(d, W, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * B * d * W / float(np.median(times)) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def geowall_flops(B: int, d: int, W: int, k: int, k_aux: int, dead_history: list[int]) -> float:
    """FLOPs the geowall trainer executes: dense encoder forward + sparse rest.

    Per step: encoder matmul 2BdW; decode forward 2Bkd; decoder backward (W_dec and
    activations) 4Bkd; encoder backward (W_enc and input) 4Bkd; plus the same 10 B k' d
    for the k' = min(k_aux, n_dead) AuxK latents on steps with dead latents.
    """
    total = 0.0
    for n_dead in dead_history:
        m = k + min(k_aux, n_dead)
        total += 2 * B * d * W + 10 * B * m * d
    return total


def make_sae_lens(x_train, steps, B, W, k, lr, device, seed, dead_window_steps, mean_init=False):
    """A sae-lens ``SAETrainer`` around a fresh ``TopKTrainingSAE``, fed from memory."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=x_train.shape[1],
            d_sae=W,
            k=k,
            aux_loss_coefficient=1 / 32,
            normalize_activations="none",
            device=device,
        )
    )
    x_dev = x_train.to(device)
    if mean_init:  # give sae-lens geowall's (Gao et al.'s) b_dec initialisation
        with torch.no_grad():
            sae.b_dec.copy_(x_dev.mean(0))

    def batches():
        g = torch.Generator().manual_seed(seed)
        n = x_dev.shape[0]
        while True:
            perm = torch.randperm(n, generator=g).to(device)
            for s in range(0, n - B + 1, B):
                yield x_dev[perm[s : s + B]]

    cfg = SAETrainerConfig(
        total_training_samples=steps * B,
        train_batch_size_samples=B,
        lr=lr,
        lr_end=lr / 10,
        device=device,
        dead_feature_window=dead_window_steps,
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg=cfg, sae=sae, data_provider=batches())


def sae_lens_step(trainer) -> None:
    """One iteration of ``SAETrainer.fit``'s loop through its public seams (no wandb, no pbar)."""
    trainer.maybe_reset_sparsity()
    trainer.step(next(trainer.data_provider))
    trainer.n_training_steps += 1


def timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def run_interleaved(gw, sl_trainers, steps, device):
    """Alternate single steps of every trainer, so machine load hits all of them alike."""
    t_gw, t_sl = 0.0, [0.0] * len(sl_trainers)
    for trainer in sl_trainers:
        trainer.sae.to(device)
    for _ in range(steps):
        t_gw += timed(gw.step, device)
        for j, trainer in enumerate(sl_trainers):
            t_sl[j] += timed(lambda trainer=trainer: sae_lens_step(trainer), device)
    for trainer in sl_trainers:
        trainer.set_final_sae_metadata()
    return t_gw, t_sl


def run_sequential(gw, sl_trainers, steps, device):
    """Each trainer's own loop (``TopKTrainer`` steps, ``SAETrainer.fit``) one after the other."""
    t_gw = timed(lambda: [gw.step() for _ in range(steps)], device)
    return t_gw, [timed(trainer.fit, device) for trainer in sl_trainers]


def grid_bench(args) -> None:
    """A layer's grid: one SAE at a time (autograd trainer) vs all together (grouped trainer),
    the grouped trainer with float32 and with bfloat16 encoder matmuls."""
    from geowall.sae import TopKTrainer, TrainConfig, evaluate
    from geowall.sae.group import STAGES, train_group

    B, d, steps = args.batch_size, args.d, args.steps
    widths = [int(w) for w in args.grid_widths.split(",")]
    ks = [int(k) for k in args.grid_ks.split(",")]
    shapes = [(w, k) for w in widths for k in ks]
    x_all = synthetic_acts(args.n_train + args.n_eval, d, seed=args.seed)
    x, x_eval = x_all[: args.n_train], x_all[args.n_train :]
    cfg = TrainConfig(steps=steps, batch_size=B, lr_scale=4)
    sum_w = sum(w for w, _ in shapes)
    print(
        f"# grid: d={d}, {len(shapes)} SAEs (widths {widths} x k {ks}, stacked width {sum_w}), batch {B}, "
        f"{steps} steps, threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.2f}"
    )
    roof0 = matmul_roofline(B, d, sum_w, args.device)
    rows, splits, fvus = [], {}, {}
    if not args.skip_one_at_a_time:
        t0 = time.perf_counter()
        dead = []
        for w, k in shapes:
            tr = TopKTrainer(x, w, k, cfg, seed=args.seed, device=args.device)
            for _ in range(steps):
                tr.step()
            dead.append((w, k, tr.n_dead.tolist()))
        rows.append(
            ("one at a time", time.perf_counter() - t0, sum(geowall_flops(B, d, w, k, d // 2, nd) for w, k, nd in dead))
        )
    for name, bf16 in (("grouped fp32", False), ("grouped bf16 encoder", True)):
        t0 = time.perf_counter()
        saes, timings = train_group(
            x, shapes, cfg, seed=args.seed, device=args.device, progress=False, timings=True, bf16=bf16
        )
        rows.append(
            (
                name,
                time.perf_counter() - t0,
                sum(geowall_flops(B, d, s.width, s.k, d // 2, s.dead_history) for s in saes),
            )
        )
        splits[name] = timings
        fvus[name] = [evaluate(s.sae, x_eval, device=args.device)["fvu"] for s in saes]
    roof = max(roof0, matmul_roofline(B, d, sum_w, args.device))
    roof_bf16 = matmul_roofline(B, d, sum_w, args.device, dtype=torch.bfloat16)
    print(f"{'trainer':<22} {'wall_s':>8} {'ms/step':>8} {'GFLOP/s':>8} {'of fp32 matmul':>14}")
    for name, t, f in rows:
        print(f"{name:<22} {t:8.1f} {1e3 * t / steps:8.1f} {f / t / 1e9:8.1f} {f / t / 1e9 / roof:14.0%}")
    print(
        f"plain matmul ({B}x{d})@({d}x{sum_w}): float32 {roof:.1f} GFLOP/s (best of start/end), "
        f"bfloat16 {roof_bf16:.1f} GFLOP/s"
    )
    if rows[0][0] == "one at a time":
        print(f"grouped fp32 speed-up over one at a time {rows[0][1] / rows[1][1]:.2f}x")
    for name, timings in splits.items():
        total = sum(timings.values())
        print(
            f"{name} per-step split: "
            + ", ".join(f"{s} {1e3 * timings[s] / steps:.1f} ms ({timings[s] / total:.0%})" for s in STAGES)
        )
    a, b = np.array(fvus["grouped fp32"]), np.array(fvus["grouped bf16 encoder"])
    rel = (b - a) / a
    print(
        "held-out fvu per SAE (W, k): fp32 / bf16 encoder: "
        + ", ".join(f"({w},{k}) {x:.4f}/{y:.4f}" for (w, k), x, y in zip(shapes, a, b))
    )
    print(
        f"bf16 encoder vs fp32: held-out fvu relative difference max |{np.abs(rel).max():.2%}|, "
        f"mean {rel.mean():+.2%} (the bar: within 1%)"
    )
    print(f"# load avg at end {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-eval", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--width", type=int, default=3072)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=None, help="default: geowall's 2e-4/sqrt(W/2^14)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--grid", action="store_true", help="benchmark a layer's grid: one at a time vs grouped")
    ap.add_argument("--grid-widths", default="192,768")
    ap.add_argument("--grid-ks", default="8,16,32")
    ap.add_argument("--skip-one-at-a-time", action="store_true", help="--grid: only the grouped trainer")
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="time each trainer's own full loop one after the other (default: alternate "
        "single steps, which is robust to other jobs loading the machine)",
    )
    ap.add_argument(
        "--sae-lens-mean-init",
        action="store_true",
        help="also train sae-lens with b_dec initialised at the data mean (a third row)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grid:
        return grid_bench(args)

    from geowall.sae import default_lr, evaluate

    B, d, W, k, steps = args.batch_size, args.d, args.width, args.k, args.steps
    lr = args.lr if args.lr is not None else default_lr(W)
    x = synthetic_acts(args.n_train + args.n_eval, d, seed=args.seed)
    x_train, x_eval = x[: args.n_train], x[args.n_train :]
    total_tokens = steps * B
    dead_tokens = min(10_000_000, max(total_tokens // 10, B))  # geowall's default
    dead_window_steps = max(1, dead_tokens // B)

    print(
        f"# bench_sae: torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"{platform.processor() or platform.machine()}, load avg {os.getloadavg()[0]:.2f}"
    )
    print(
        f"# data {args.n_train}x{d} train / {args.n_eval} held out; W={W} k={k} batch={B} "
        f"steps={steps} ({total_tokens} tokens, {total_tokens / args.n_train:.1f} epochs) lr={lr:.3g} "
        f"AuxK 1/32, dead after {dead_tokens} tokens"
    )

    from geowall.sae import TopKTrainer, TrainConfig

    roof_start = matmul_roofline(B, d, W, args.device)
    gw = TopKTrainer(x_train, W, k, TrainConfig(steps=steps, batch_size=B, lr=lr), seed=args.seed, device=args.device)
    names = ["sae-lens"] + (["sae-lens+mean-b_dec"] if args.sae_lens_mean_init else [])
    sl = [
        make_sae_lens(
            x_train, steps, B, W, k, lr, args.device, args.seed, dead_window_steps, mean_init=(name != "sae-lens")
        )
        for name in names
    ]
    run = run_sequential if args.sequential else run_interleaved
    t_gw, t_sl = run(gw, sl, steps, args.device)
    gw = gw.finish()
    rows = [("geowall", t_gw, evaluate(gw, x_eval, device=args.device))]
    rows += [(name, t, evaluate(tr.sae.eval(), x_eval, device=args.device)) for name, t, tr in zip(names, t_sl, sl)]
    (_, _, m_gw), (_, t_sl, m_sl) = rows[0], rows[1]
    flops = geowall_flops(B, d, W, k, gw.sae.cfg.k_aux_nominal, gw.dead_history)
    roof = max(roof_start, matmul_roofline(B, d, W, args.device))  # best of start and end

    print(f"timing: {'interleaved single steps' if not args.sequential else 'sequential runs'}")
    print(f"{'trainer':<20} {'wall_s':>8} {'ms/step':>8} {'fvu_heldout':>12} {'l0':>6} {'dead_frac':>9}")
    for name, t, m in rows:
        print(f"{name:<20} {t:8.1f} {1e3 * t / steps:8.1f} {m['fvu']:12.4f} {m['l0']:6.2f} {m['dead_frac']:9.4f}")
    print(f"speed-up (sae-lens wall / geowall wall): {t_sl / t_gw:.2f}x")
    print(
        f"fvu: geowall {m_gw['fvu']:.4f} vs sae-lens {m_sl['fvu']:.4f} "
        f"({'equal or better' if m_gw['fvu'] <= m_sl['fvu'] else 'WORSE'})"
    )
    print(
        f"geowall achieved {flops / t_gw / 1e9:.1f} GFLOP/s (executed FLOPs, "
        f"{sum(1 for n in gw.dead_history if n)} of {steps} steps with AuxK); plain torch matmul "
        f"({B}x{d})@({d}x{W}) roofline {roof:.1f} GFLOP/s "
        f"(best of start/end; geowall at {flops / t_gw / 1e9 / roof:.0%} of it)"
    )
    print(f"# load avg at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
