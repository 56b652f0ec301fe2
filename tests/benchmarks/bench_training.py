"""Benchmark: which training change carries the gain (issue 19, item 2).

Trains the same grid of TopK SAEs with geowall's grouped trainer (``geowall.sae.train_group``)
under a ladder of training recipes, each measured at equal steps against the trainer's plain
defaults ("today": random Gaussian dictionary, constant rate at ``lr_scale`` 1, AuxK at 1/32):

* ``schedule``: the rate warm-up (5%) and linear decay (last 20%) the profiles use;
* ``schedule+rate``: plus the profile's rate (``--lr-scale``, 12 for real layers);
* ``sample`` / ``kmeans++``: data-seeded dictionaries (tied encoder) at the rate
  ``--seed-lr-scale`` (0.1 on the sphere: a seeded atom is already on the data);
* ``kmeans++ no-AuxK``: the same without the dead-latent loss.

Each row prints the held-out fvu at every width, the width exponent (minus the log-log
slope of fvu on width), the steps to plateau (the first learning-curve point after which
held-out fvu falls by at most 2% relative to its final value) and, for k = 1, the ratio to a
gain-shape Lloyd quantiser (spherical k-means, positive gains: the best a k = 1 code can do)
computed in the same run, beside Zador's exponent 2/d.

Data: ``--data sphere:D`` (k = 1 on the unit D-sphere in R^32, 16k training / 6k held-out
points, widths 16..256) or ``--data run:RUN_DIR:MODEL:LAYER`` (a harvested layer of a geowall
run, widths d/8 .. 8d, k 8/16/32). Run:

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_training.py --data sphere:2 --steps 1000
    OMP_NUM_THREADS=2 python tests/benchmarks/bench_training.py \
        --data run:data/runs/default:minilm:3 --steps 150 --lr-scale 12 --seed-lr-scale 12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from geowall import sae as S

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared quantiser reference
from quantiser import lloyd_fvu, manifold  # noqa: E402


def steps_to_plateau(steps: np.ndarray, fvu: np.ndarray, tol: float = 0.02) -> int:
    """First curve point from which held-out fvu never exceeds its final value by more than ``tol``."""
    final = fvu[-1]
    later_max = np.maximum.accumulate(fvu[::-1])[::-1]  # max of fvu[i:]
    return int(steps[np.argmax(later_max <= final * (1 + tol))])


def recipes(lr_scale: float, seed_lr_scale: float) -> dict[str, dict]:
    sched = {"lr_warmup": 0.05, "lr_decay": 0.2}
    return {
        "today": {},
        "schedule": sched,
        "schedule+rate": {**sched, "lr_scale": lr_scale},
        "sample": {**sched, "lr_scale": seed_lr_scale, "init": "sample"},
        "kmeans++": {**sched, "lr_scale": seed_lr_scale, "init": "kmeans++"},
        "kmeans++ no-AuxK": {**sched, "lr_scale": seed_lr_scale, "init": "kmeans++", "auxk_coef": 0.0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="sphere:2")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr-scale", type=float, default=12.0, help="the profile's rate (schedule+rate row)")
    ap.add_argument("--seed-lr-scale", type=float, default=0.1, help="rate of the data-seeded rows")
    ap.add_argument("--only", default=None, help="comma-separated recipe names")
    args = ap.parse_args()

    if args.data.startswith("sphere:"):
        dim = int(args.data.split(":")[1])
        X, Xe = manifold("sphere", dim, 16000, 0), manifold("sphere", dim, 6000, 1)
        widths, ks = [16, 32, 64, 128, 256], [1]
        lloyd = np.array([lloyd_fvu(X, Xe, w) for w in widths])
        print(f"unit {dim}-sphere in R^32, k = 1; Zador exponent 2/d = {2 / dim:.3f}")
        print(f"  Lloyd (gain-shape k-means, 40 iterations): fvu {np.round(lloyd, 4).tolist()}")
    else:
        from geowall import activations

        _, run, model, layer = args.data.split(":")
        X = np.asarray(activations.load(Path(run), model, int(layer), "train"), dtype=np.float32)
        Xe = np.asarray(activations.load(Path(run), model, int(layer), "eval"), dtype=np.float32)
        d = X.shape[1]
        widths, ks, lloyd = [int(m * d) for m in (0.125, 0.25, 0.5, 1, 2, 4, 8)], [8, 16, 32], None
        print(f"{model} layer {layer} (d = {d}): widths {widths}, k {ks}")
    tr, ev = torch.from_numpy(X), torch.from_numpy(Xe)
    shapes = [(w, k) for w in widths for k in ks]
    todo = recipes(args.lr_scale, args.seed_lr_scale)
    if args.only:
        todo = {n: todo[n] for n in args.only.split(",")}
    print(f"{args.steps} steps x {args.batch_size} tokens each\n")
    for name, over in todo.items():
        t0 = time.perf_counter()
        saes = S.train_group(
            tr, shapes, seed=0, steps=args.steps, batch_size=args.batch_size, eval_acts=ev, curve_points=10,
            progress=False, **over,
        )  # fmt: skip
        secs = time.perf_counter() - t0
        fvu = np.array([S.evaluate(s, ev)["fvu"] for s in saes]).reshape(len(widths), len(ks))
        alpha = [-np.polyfit(np.log(widths), np.log(fvu[:, j]), 1)[0] for j in range(len(ks))]
        plateau = [steps_to_plateau(np.asarray(s.curve_steps), np.asarray(s.curve_fvu)) for s in saes]
        line = (
            f"{name:>17}: exponent {' / '.join(f'{a:.3f}' for a in alpha)}; widest fvu "
            f"{' / '.join(f'{f:.4f}' for f in fvu[-1])}; median steps to plateau "
            f"{int(np.median(plateau))}; {secs:.0f} s"
        )
        if lloyd is not None:
            line += f"; fvu / Lloyd {np.round(fvu[:, 0] / lloyd, 2).tolist()}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
