"""Simulation-based calibration of Stage 1 (Talts et al. 2018) on two grids; `make sbc`.

Not collected by pytest (a small version is ``test_simulation_based_calibration_small``
in tests/test_scaling.py). Run::

    python tests/benchmarks/sbc_stage1.py [--n-sims 100 --draws 200 --tune 300]

Grids: the default profile's (three layers with widths 0.5, 1, 2, 4 x d and k = 8, 16, 32,
plus one showcase layer with 6 widths over 32x, which gets a floor term) and the Gemma
Scope grid read offline from ``gemma_scope.manifest()`` (three layers of gemma-2-2b with
their own two widths and nominal l0, plus the 7-width showcase layer 12, with a floor
term). For each, ``n_sims`` parameter sets are drawn from the Stage 1 prior, data are
simulated from them, the model is refitted, and the rank of each true ``alpha`` (every
layer) and ``f`` (the floor as a fraction of its bound, the floor layer) among the
thinned posterior draws is recorded. Writes ``data/sbc/stage1_sbc.parquet`` (ranks, one
row per sim x parameter x layer, with the grid) and prints the chi-square uniformity
test per grid and parameter; notebook 03 draws the rank histograms from that file.
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

import pandas as pd  # noqa: E402

from geowall import scaling as S  # noqa: E402
from geowall import simulate  # noqa: E402
from geowall.bayes import SamplerSettings  # noqa: E402
from geowall.io import write_parquet  # noqa: E402

OUT = ROOT / "data" / "sbc" / "stage1_sbc.parquet"


def default_grid() -> pd.DataFrame:
    d = 384
    rows = [(l, int(m * d), k * 0.97) for l in range(3) for m in (0.5, 1, 2, 4) for k in (8, 16, 32)]
    rows += [(3, int(m * d), k * 0.97) for m in (0.25, 0.5, 1, 2, 4, 8) for k in (8, 16, 32)]
    return pd.DataFrame(rows, columns=["layer", "width", "l0"])


def gemma_grid() -> pd.DataFrame:
    from geowall.sources import gemma_scope

    man = gemma_scope.manifest()
    man = man[man["model"] == "gemma-2-2b"]
    parts = []
    for i, layer in enumerate((0, 1, 2, 12)):
        sub = man[man["layer"] == layer]
        if layer == 12:  # showcase: every width, three sparsities each
            sub = sub.groupby("width").head(3)
        parts.append(
            pd.DataFrame({"layer": i, "width": sub["width"].to_numpy() // 64, "l0": sub["l0"].to_numpy(float)})
        )
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-sims", type=int, default=100)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--tune", type=int, default=300)
    ap.add_argument("--thin", type=int, default=4)
    args = ap.parse_args()
    out = []
    for name, grid in (("default", default_grid()), ("gemma-scope", gemma_grid())):
        table = simulate.simulate_power_law(grid, alpha=0.4, seed=0).metrics
        layers, _ = S.layer_table(table)
        t0 = time.perf_counter()
        ranks = simulate.simulation_based_calibration(
            table,
            n_sims=args.n_sims,
            settings=SamplerSettings(draws=args.draws, tune=args.tune, chains=2),
            thin=args.thin,
            seed=11,
        )
        wall = time.perf_counter() - t0
        ranks["grid"] = name
        out.append(ranks)
        u = simulate.sbc_uniformity(ranks)
        print(
            f"{name}: {len(layers)} layers ({int(layers.floor_term.sum())} with a floor term), {args.n_sims} sims, "
            f"{wall:.0f} s, divergent refits {int((ranks.groupby('sim').divergences.first() > 0).sum())}"
        )
        for r in u.itertuples():
            print(f"  {r.param}: n = {r.n}, chi2 = {r.chi2:.1f} on {r.df} df, p = {r.p_value:.3f}, counts {r.counts}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(OUT, pd.concat(out, ignore_index=True))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
