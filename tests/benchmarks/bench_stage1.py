"""Benchmark: Stage 1 sampling efficiency, nutpie vs PyMC's default NUTS, same run.

Not collected by pytest (no ``test_`` prefix). Run::

    python tests/benchmarks/bench_stage1.py [--draws 1000 --tune 1000 --chains 2]

For a realistic simulated metrics table (two models x 7 residual points, 4 widths x
4 k per layer, two showcase layers per model with 7 widths spanning 64x) and, if it
exists, ``data/runs/default/sae_metrics.parquet``, fit the additive Stage 1 surface with
each sampler and print effective samples per second: min bulk ESS over all posterior
variables / sampling wall time (tuning + draws, excluding compilation), also per total
wall time (including compilation), and the nutpie / PyMC ratio. Both samplers get the
same draws, tune, chains, cores = min(chains, 2) and target_accept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from geowall import bayes, simulate  # noqa: E402
from geowall import scaling as S  # noqa: E402
from geowall.bayes import SamplerSettings  # noqa: E402


def realistic_table(seed: int = 0) -> pd.DataFrame:
    tabs = []
    for i, m in enumerate(("minilm", "minilm-random")):
        sim = simulate.simulate_metrics(
            models=(m,),
            n_layers=7,
            widths=(768, 1536, 3072, 6144),
            ks=(8, 16, 32, 64),
            showcase_layers=(2, 5),
            showcase_widths=(384, 768, 1536, 3072, 6144, 12288, 24576),
            noise=0.02,
            seed=seed + i,
        )
        tabs.append(sim.metrics)
    return pd.concat(tabs, ignore_index=True)


def min_ess(idata) -> tuple[float, str]:
    ess = az.ess(idata.posterior, method="bulk")
    best, name = np.inf, ""
    for v, da in ess.data_vars.items():
        vals = np.asarray(da.values, float)
        vals = vals[np.isfinite(vals)]
        if vals.size and vals.min() < best:
            best, name = float(vals.min()), str(v)
    return best, name


def bench(table: pd.DataFrame, label: str, args) -> list[dict]:
    rows = []
    for sampler in ("nutpie", "pymc"):
        t0 = time.perf_counter()
        idata = S.fit_stage1(
            table,
            form=args.form,
            seed=args.seed,
            prior_draws=0,
            progressbar=False,
            compare_floor=False,
            settings=SamplerSettings(draws=args.draws, tune=args.tune, chains=args.chains, sampler=sampler),
        )
        total = time.perf_counter() - t0
        sampling = float(idata.posterior.attrs.get("sampling_time_s", idata.posterior.attrs["sampling_wall_s"]))
        ess, var = min_ess(idata)
        ndiv = int(idata.sample_stats["diverging"].sum())
        try:
            bayes.check_fit(idata)
            diag = "pass"
        except bayes.FitDiagnosticsError as e:
            diag = "FAIL: " + "; ".join(f"{f['diagnostic']}={bayes._fmt(f['value'])}" for f in e.failures)
        rows.append(
            {
                "table": label,
                "sampler": sampler,
                "min_ess_bulk": ess,
                "worst_var": var,
                "sampling_s": sampling,
                "total_s": total,
                "ess_per_s": ess / sampling,
                "ess_per_s_total": ess / total,
                "divergences": ndiv,
                "check_fit": diag,
            }
        )
        print(
            f"[{label}] {sampler:6s} min bulk ESS {ess:8.1f} ({var}) sampling {sampling:7.1f}s "
            f"total {total:7.1f}s  ESS/s {ess / sampling:7.2f} (incl. compile {ess / total:6.2f}) "
            f"divergences {ndiv}  check_fit {diag}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--tune", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--form", default="additive", choices=S.FORMS)
    ap.add_argument("--metrics", default=str(ROOT / "data/runs/default/sae_metrics.parquet"))
    args = ap.parse_args(argv)

    import nutpie
    import pymc
    import pytensor

    print(
        f"geowall Stage 1 benchmark: form={args.form} draws={args.draws} tune={args.tune} chains={args.chains} "
        f"cores={min(args.chains, 2)} | pymc {pymc.__version__}, nutpie {nutpie.__version__}, "
        f"pytensor {pytensor.__version__}, arviz {az.__version__} | CPUs {os.cpu_count()}",
        flush=True,
    )
    tables = [("simulated (2 models x 7 layers, 4W x 4k, 2 showcase/model)", realistic_table(args.seed))]
    if Path(args.metrics).exists():
        tables.append(
            (
                f"{Path(args.metrics).relative_to(ROOT) if Path(args.metrics).is_relative_to(ROOT) else args.metrics}",
                pd.read_parquet(args.metrics),
            )
        )
    else:
        print(f"(no {args.metrics}: real-table benchmark skipped)")
    rows = []
    for label, tab in tables:
        print(f"table {label}: {len(tab)} SAEs, {tab.groupby(['model', 'layer']).ngroups} layers", flush=True)
        rows += bench(tab, label, args)
    res = pd.DataFrame(rows)
    print()
    for label, g in res.groupby("table", sort=False):
        g = g.set_index("sampler")
        print(
            f"[{label}] nutpie / pymc ESS-per-second ratio: sampling only "
            f"{g.loc['nutpie', 'ess_per_s'] / g.loc['pymc', 'ess_per_s']:.2f}x, "
            f"including compilation {g.loc['nutpie', 'ess_per_s_total'] / g.loc['pymc', 'ess_per_s_total']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
