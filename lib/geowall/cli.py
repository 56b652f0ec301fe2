"""Command line: ``geowall run --profile P [--only STEP ...] [--set k=v ...] [--force] [--as NAME]``.

``--as NAME`` runs a variant in ``data/runs/NAME/`` that links the profile run's unchanged
steps; ``geowall diff RUN_A RUN_B`` prints what changed between two runs.

Errors the user can fix (bad profile, bad input file, a failing notebook cell) print
one readable message and exit with status 2 (1 for a failed step); ``--debug`` shows
the full traceback instead. ``check`` and ``run`` validate the profile (schema, then
:mod:`geowall.preflight`: the preconditions every step asserts) before any step runs.
"""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geowall", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute the pipeline notebooks for a profile")
    r.add_argument("--profile", default="default", help="profile name under params/ or a .yaml path")
    r.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (names or notebook stems)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (dotted key, YAML value); repeatable",
    )
    r.add_argument("--force", action="store_true", help="rerun steps even if unchanged")
    r.add_argument("--runs-dir", default=None, help="where runs live (default: data/runs)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where per-model / per-layer work of steps 00-02 runs (ray: pip install 'geowall[ray]')",
    )
    r.add_argument("--address", default=None, help="--executor ray: the cluster to join (e.g. ray://head:10001)")
    r.add_argument(
        "--as",
        dest="as_name",
        default=None,
        metavar="NAME",
        help="run as a variant in data/runs/NAME/, linking the profile run's unchanged steps (its own run is kept)",
    )
    d = sub.add_parser("diff", help="what changed between two runs: steps, verdicts, exponents, law, transfer")
    d.add_argument("run_a", metavar="RUN_A", help="a run name under data/runs/ or a run folder")
    d.add_argument("run_b", metavar="RUN_B", help="a run name under data/runs/ or a run folder")
    d.add_argument("--runs-dir", default=None, help="where runs live (default: data/runs)")
    c = sub.add_parser("check", help="validate a profile (and overrides) without running anything")
    c.add_argument("--profile", default="default")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    rp = sub.add_parser("report", help="build the report (Quarto if installed, else offline HTML)")
    rp.add_argument("--profile", default="default")
    rp.add_argument("--runs-dir", default=None)
    rp.add_argument("--offline", action="store_true", help="offline HTML build even if Quarto is installed")
    rp.add_argument(
        "--pdf",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also render the paper as index.pdf (default: when XeLaTeX and the fonts are installed)",
    )
    rp.add_argument(
        "--browser",
        action="store_true",
        help="open the built pages in headless Chromium, screenshot them, check that charts drew",
    )
    pl = sub.add_parser("plan", help="what a run will download, store, use and take, before any work")
    pl.add_argument("--profile", default="default")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument("--throughput", metavar="FILE", help="a throughput record (from --measure on the target machine)")
    pl.add_argument("--measure", metavar="FILE", help="measure the profile device's throughput now, save it to FILE")
    pl.add_argument("--bandwidth", type=float, metavar="MB_PER_S", help="download bandwidth to time downloads with")
    pl.add_argument("--concurrency", type=int, default=1, help="SAE evaluations at once per machine (Ray workers)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    sub.add_parser("steps", help="list the pipeline steps in order")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("geowall: interrupted; finished artefacts are kept and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one readable message at the command line
        if args.debug:
            raise
        from geowall.pipeline import StepFailed

        msg = str(e).encode("utf-8", "backslashreplace").decode()  # printable whatever the input held
        print(f"geowall: error: {msg}", file=sys.stderr)
        return 1 if isinstance(e, StepFailed) else 2


def _dispatch(args) -> int:
    from geowall import config, pipeline

    if args.cmd == "steps":
        for s in pipeline.STEPS:
            print(f"{s.name:12s} notebooks/{s.notebook}.py  upstream={list(s.upstream)}")
        return 0
    if args.cmd == "report":
        return _report(args)
    if args.cmd == "diff":
        from pathlib import Path

        from geowall import rundiff

        print(rundiff.diff_runs(args.run_a, args.run_b, runs_dir=Path(args.runs_dir) if args.runs_dir else None))
        return 0
    cfg = config.load_profile(args.profile, args.overrides)
    if args.cmd == "plan":
        return _plan(args, cfg)
    if args.cmd == "check":
        from geowall import preflight

        preflight.check(cfg, machine=False)  # every step's preconditions; device etc. are checked by `run`
        print(
            f"profile {cfg.name!r}: valid ({len(cfg.models)} models; the preconditions of all "
            f"{len(pipeline.STEPS)} steps hold)"
        )
        return 0
    from pathlib import Path

    pipeline.run(
        cfg,
        only=args.only,
        force=args.force,
        runs_dir=Path(args.runs_dir) if args.runs_dir else None,
        progress=not args.no_progress,
        executor=args.executor,
        address=args.address,
        overrides=args.overrides,
        as_name=args.as_name,
    )
    return 0


def _plan(args, cfg) -> int:
    import json

    from geowall import plan
    from geowall.sources.transformer import resolve_device

    throughput = None
    if args.throughput:
        throughput = plan.load_throughput(args.throughput)
    else:
        try:
            resolve_device(cfg.device)
            available = True
        except ValueError:
            available = False
        if args.measure and not available:
            raise ValueError(f"--measure: device {cfg.device!r} is not available on this machine")
        if available:
            throughput = plan.measure_throughput(cfg.device)
            throughput["source"] = "measured now by geowall plan"
            if args.measure:
                from geowall.io import write_json

                write_json(args.measure, {**throughput, "source": args.measure})
    p = plan.build(cfg, throughput=throughput, bandwidth_mb_s=args.bandwidth, concurrency=args.concurrency)
    print(json.dumps(p.as_dict(), indent=2, default=str) if args.json else plan.render(p))
    return 0


def _report(args) -> int:
    from pathlib import Path

    from geowall import report
    from geowall.config import load_profile
    from geowall.pipeline import run_dir_for

    runs_dir = Path(args.runs_dir) if args.runs_dir else None
    site = report.build(args.profile, runs_dir=runs_dir, use_quarto=False if args.offline else None, pdf=args.pdf)
    if args.browser and (site / "index.pdf").is_file():  # the PDF read back, its pages beside the screenshots
        screens = run_dir_for(load_profile(args.profile), runs_dir) / "screens"
        rec = report.pdf_check(site / "index.pdf", site / "index.html", screens / "pdf")
        print(
            f"index.pdf: {rec['pages']} pages, figures {len(rec['figures'])} (site {len(rec['site_figures'])}), "
            f"{rec['placeholders']} placeholders, unresolved {rec['unresolved']} -> {screens / 'pdf'}"
        )
        if rec["placeholders"] or rec["unresolved"] or rec["figures"] != rec["site_figures"]:
            raise report.ReportError(f"the PDF does not match the site: {rec}")
    if args.browser:
        if report.find_chromium() is None:
            print("no chromium on PATH: browser check skipped")
            return 0
        # Quarto puts notebook pages in a subfolder (_site/notebooks/); skip its libraries
        pages = sorted(p for p in site.rglob("*.html") if "site_libs" not in p.parts)
        records = report.browser_check(pages, run_dir_for(load_profile(args.profile), runs_dir) / "screens")
        bad = [
            r
            for r in records
            if r["drawn"] != r["charts"] or r["failed_requests"] or r["console_errors"] or r["unresolved_refs"]
        ]
        for r in records:
            print(
                f"{Path(r['page']).name:32s} charts {r['drawn']}/{r['charts']} drawn, "
                f"{len(r['failed_requests'])} failed requests -> {r['screenshot']}"
            )
        if bad:
            raise report.ReportError(
                f"{len(bad)} page(s) did not render cleanly: {[Path(r['page']).name for r in bad]}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
