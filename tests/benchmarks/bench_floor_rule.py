"""Simulation study behind Stage 1's floor rules (scaling.FLOOR_GRID_RULE and
scaling.FLOOR_IDENTIFIED_RULE). Not collected by pytest. Run::

    python tests/benchmarks/bench_floor_rule.py [--draws 500 --tune 500 --seeds 1]

For each grid shape (Gemma Scope's two widths 4x apart read from the manifest; the
default profile's 4 widths over 8x; 5 widths over 16x; 6 over 32x (default showcase);
7 over 64x (Gemma Scope showcase)), one table holds two simulated models of 6 layers:
``power`` (a pure power law, true floor 0) and ``floor`` (additive law with a planted
floor). Every layer is given a floor term (``floors="all"``) and the two-sided
identification rule is applied. Prints, per grid: the share of power-law layers called
identified (false positives), the share of planted floors identified (power) and
covered, and the 94% coverage and mean width of alpha for both kinds; writes
``data/benchmarks/floor_rule.parquet``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from geowall import scaling as S  # noqa: E402
from geowall import simulate  # noqa: E402
from geowall.bayes import SamplerSettings  # noqa: E402
from geowall.io import write_parquet  # noqa: E402

GRIDS = {
    "gemma 2w/4x": None,
    "default 4w/8x": (0.5, 1, 2, 4),
    "5w/16x": (0.5, 1, 2, 4, 8),
    "6w/32x": (0.25, 0.5, 1, 2, 4, 8),
    "7w/64x": (0.25, 0.5, 1, 2, 4, 8, 16),
}


def table(grid_name: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    mults = GRIDS[grid_name]
    if mults is None:
        g = simulate.grid_from_gemma_scope(6)
        widths, ks = sorted(g["width"].unique()), (8, 16, 32)
    else:
        widths = [int(384 * m) for m in mults]
        ks = (8, 16, 32)
        g = pd.DataFrame(
            [(l, w, k * 0.97) for l in range(6) for w in widths for k in ks], columns=["layer", "width", "l0"]
        )
    alphas = np.random.default_rng(seed).permutation(np.linspace(0.3, 0.6, 6))
    pw = simulate.simulate_power_law(g, alpha=alphas, seed=seed, model="power")
    fl = simulate.simulate_metrics(
        models=("floor",), n_layers=6, widths=widths, ks=ks, noise=0.02, seed=seed + 100, floor_range=(0.02, 0.06)
    )
    metrics = pd.concat([pw.metrics, fl.metrics[["model", "layer", "width", "k", "l0", "fvu"]]], ignore_index=True)
    truth = pd.concat([pw.truth[["model", "layer", "alpha", "floor"]], fl.truth[["model", "layer", "alpha", "floor"]]])
    return metrics, truth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--tune", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for name in GRIDS:
        for seed in range(args.seeds):
            metrics, truth = table(name, seed)
            t0 = time.perf_counter()
            fit = S.fit_stage1(
                metrics,
                floors="all",
                seed=seed,
                progressbar=False,
                prior_draws=200,
                settings=SamplerSettings(draws=args.draws, tune=args.tune, chains=2, target_accept=0.95),
            )
            ex = S.exponents(fit).merge(truth, on=["model", "layer"], suffixes=("", "_true"))
            ex["grid"], ex["seed"], ex["wall_s"] = name, seed, time.perf_counter() - t0
            rows.append(ex)
            p, f = ex[ex.model == "power"], ex[ex.model == "floor"]
            cov = lambda d: ((d.alpha >= d.alpha_hdi_3) & (d.alpha <= d.alpha_hdi_97)).mean()  # noqa: E731
            print(
                f"{name:14s} seed {seed}: false positives {p.floor_identified.mean():.2f}, "
                f"planted floors identified {f.floor_identified.mean():.2f}, covered "
                f"{((f.floor >= f.floor_hdi_3) & (f.floor <= f.floor_hdi_97)).mean():.2f}; alpha coverage "
                f"power {cov(p):.2f} (width {(p.alpha_hdi_97 - p.alpha_hdi_3).mean():.2f}), floor {cov(f):.2f} "
                f"(width {(f.alpha_hdi_97 - f.alpha_hdi_3).mean():.2f}); {ex.wall_s.iloc[0]:.0f} s",
                flush=True,
            )
    out = ROOT / "data" / "benchmarks" / "floor_rule.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(out, pd.concat(rows, ignore_index=True))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
