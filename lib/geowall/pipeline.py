"""The runner: execute the pipeline notebooks in DAG order with papermill.

Each step is a jupytext percent notebook (``notebooks/NN_name.py``, the source of
truth). The runner reads it with jupytext, injects the validated profile into its
``parameters`` cell (``profile``, ``run_dir``, ``params``) and executes it with
``papermill.execute_notebook``. Executed notebooks land under ``<run_dir>/notebooks/``
for every profile, never beside their percent scripts (the report stages them into a
Quarto project). The injected ``run_dir`` is relative to the project root when the run
folder lies inside it, so executed notebooks carry no machine-specific path.

Skip-if-unchanged: a step's fingerprint hashes its notebook source, the profile
sections it reads, and the fingerprints of its upstream steps (so a rerun upstream
that changed anything reruns everything below it). A step is skipped when its
last successful record under ``<run_dir>/steps/<name>.json`` has the same
fingerprint and its executed notebook exists. ``force`` reruns. A failing cell stops
the run with a :class:`StepFailed` naming the notebook and the cell's error; the
executed notebook with the traceback is kept as ``NN_name.failed.ipynb``; artefacts
of earlier steps are untouched. Each step's record also keeps its wall time and the
peak resident memory of its kernel (``peak_rss_mb``, see :mod:`geowall.memory`).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from geowall import preflight
from geowall.config import Profile, load_profile
from geowall.io import read_json, sha256_json, write_json
from geowall.memory import PeakRSS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
RUNS = ROOT / "data" / "runs"


@dataclass(frozen=True)
class Step:
    name: str
    notebook: str  # stem under the notebooks folder
    sections: tuple[str, ...]  # profile keys whose values this step depends on
    upstream: tuple[str, ...] = field(default_factory=tuple)


STEPS: tuple[Step, ...] = (
    Step("activations", "00_activations", ("seed", "device", "models", "corpus", "activations")),
    Step("sae_grid", "01_sae_grid", ("seed", "device", "models", "sae"), ("activations",)),
    Step("geometry", "02_geometry", ("seed", "device", "models", "geometry"), ("activations",)),
    Step("stage1", "03_stage1_scaling", ("seed", "models", "sae", "stage1"), ("sae_grid",)),
    Step("stage2", "04_stage2_geometry_law", ("seed", "stage2"), ("stage1", "geometry")),
    Step("transfer", "05_transfer", ("seed", "stage2", "transfer"), ("stage1", "geometry")),
    Step("floor", "06_floor", ("seed", "sae"), ("stage1", "geometry")),
    Step("walkthrough", "walkthrough", ("seed", "walkthrough")),
)


_TQDM = re.compile(r"\d+%\||TqdmWarning: IProgress not found")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_progress_output(output) -> bool:
    """A stderr stream output that is tqdm progress: a bar, tqdm's warning that notebook
    widgets are missing, or the cursor moves and blank lines nested bars leave behind
    (thousands of them in a long SAE grid, which made a 340,000-pixel page)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    text = output.get("text", "")
    return bool(_TQDM.search(text)) or not _ANSI.sub("", text).strip()


def _strip_progress_bars(path: Path) -> None:
    """Drop tqdm progress output from an executed notebook: useful live, noise in a report."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.get("outputs", []) if not is_progress_output(o)]
    nbformat.write(nb, path)


class StepFailed(RuntimeError):
    """A notebook cell raised. ``str()`` names the notebook and the cell's error."""


def run_dir_for(profile: Profile, runs_dir: Path | None = None) -> Path:
    return Path(runs_dir or RUNS) / profile.name


def select(steps: tuple[Step, ...], only: list[str] | None) -> list[Step]:
    if not only:
        return list(steps)
    names = [s.name for s in steps] + [s.notebook for s in steps]
    unknown = [o for o in only if o not in names]
    if unknown:
        raise ValueError(f"--only: unknown step(s) {unknown}; expected some of {[s.name for s in steps]}")
    return [s for s in steps if s.name in only or s.notebook in only]


def fingerprint(step: Step, profile: Profile, notebook_text: str, upstream: dict[str, str]) -> str:
    params = profile.model_dump(mode="json")
    return sha256_json(
        {
            "notebook": notebook_text,
            "params": {k: params[k] for k in step.sections},
            "upstream": {u: upstream.get(u) for u in step.upstream},
        }
    )


def output_path(step: Step, run_dir: Path) -> Path:
    """Where a step's executed notebook lands: ``<run_dir>/notebooks/<notebook>.ipynb``."""
    return run_dir / "notebooks" / f"{step.notebook}.ipynb"


def portable_run_dir(run_dir: Path) -> str:
    """``run_dir`` relative to the project root (POSIX) when it lies inside it, else absolute."""
    path = Path(run_dir).resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def run(
    profile: str | Path | Profile,
    *,
    only: list[str] | None = None,
    overrides: list[str] | dict | None = None,
    force: bool = False,
    steps: tuple[Step, ...] = STEPS,
    notebooks_dir: Path | None = None,
    runs_dir: Path | None = None,
    progress: bool = True,
    log=print,
    executor: str = "local",
    address: str | None = None,
) -> list[dict]:
    """Run the pipeline (or ``only`` some steps) for a profile. Returns one record per step.

    ``executor``: where the per-model and per-(model, layer) work of steps 00-02 runs
    (``local`` or ``ray``, see :mod:`geowall.executors`); ``address``: the Ray cluster to
    join (default: a local Ray instance started here and shared by every step)."""
    from geowall import executors

    env = {**kernel_malloc_env(), **executors.environment(executor, address)}
    cfg = profile if isinstance(profile, Profile) else load_profile(profile, overrides)
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS)
    run_dir = run_dir_for(cfg, runs_dir)
    chosen = select(steps, only)
    for s in chosen:  # fail before any work if a notebook is missing
        if not (notebooks_dir / f"{s.notebook}.py").is_file():
            raise FileNotFoundError(f"step {s.name!r}: notebook {notebooks_dir / (s.notebook + '.py')} not found")
    preflight.check(cfg, [s.name for s in chosen])  # the chosen steps' preconditions (disk budget included)
    prints = {}
    for s in steps:  # upstream fingerprints of steps not chosen come from their records
        rec = run_dir / "steps" / f"{s.name}.json"
        if rec.is_file():
            prints[s.name] = read_json(rec)["fingerprint"]
    available = set(prints)
    for s in chosen:  # an upstream step neither chosen before it nor run earlier: refuse before any work
        missing = [u for u in s.upstream if u not in available]
        if missing:
            raise StepFailed(
                f"step {s.name!r} needs upstream step(s) {missing} to have run for profile {cfg.name!r} "
                f"(add them to --only, or run them first)"
            )
        available.add(s.name)
    if executor == "ray" and not address:  # one local Ray instance for all steps, joined by each kernel
        env[executors.ENV_ADDRESS] = executors.RayExecutor().ray.get_runtime_context().gcs_address
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # read by geowall.executors.current() in the notebook kernels
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "profile.json", cfg.model_dump(mode="json"))
        records = []
        bar = tqdm(chosen, desc=f"geowall {cfg.name}", unit="step", disable=not progress)
        for s in bar:
            bar.set_postfix_str(s.name)
            missing = [u for u in s.upstream if u not in prints]
            if missing:
                raise StepFailed(
                    f"step {s.name!r} needs upstream step(s) {missing} to have run for profile {cfg.name!r}"
                )
            records.append(_run_step(s, cfg, run_dir, notebooks_dir, prints, force, progress, log))
        return records
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# glibc malloc hands freed blocks above 128 KiB back to the OS at once, so a trainer or kNN
# pass that allocates its work arrays afresh each step faults fresh pages in every time (a
# killed default SAE grid had taken 17 million minor faults). Kernels started by the runner
# keep freed memory for reuse instead (32 MiB is glibc's largest mmap threshold on 64-bit):
# the bf16 grouped trainer at MPNet's shapes went from 12.7 s to 10.8 s, 74% to 88% of a
# float32 matmul (bench_sae.py --grid --d 768 --grid-widths 384,1536, 1 thread, same machine,
# another job running). Settings already in the environment win; other platforms ignore them.
KERNEL_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 25), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def kernel_malloc_env() -> dict[str, str]:
    """The malloc settings of :data:`KERNEL_MALLOC` not already set in this environment."""
    return {k: v for k, v in KERNEL_MALLOC.items() if k not in os.environ}


def _run_step(
    s: Step, cfg: Profile, run_dir: Path, notebooks_dir: Path, prints: dict, force: bool, progress: bool, log
) -> dict:
    import jupytext
    import papermill as pm

    src = notebooks_dir / f"{s.notebook}.py"
    text = src.read_text()
    fp = fingerprint(s, cfg, text, prints)
    out = output_path(s, run_dir)
    rec_path = run_dir / "steps" / f"{s.name}.json"
    if not force and rec_path.is_file() and out.is_file() and read_json(rec_path).get("fingerprint") == fp:
        log(f"[{s.name}] unchanged (parameters and upstream artefacts): skipped; --force reruns it")
        prints[s.name] = fp
        return {"step": s.name, "status": "skipped", "notebook": str(out)}
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out.parent.mkdir(parents=True, exist_ok=True)
    failed = out.with_suffix(".failed.ipynb")
    failed.unlink(missing_ok=True)
    log(f"[{s.name}] executing {src.relative_to(notebooks_dir.parent) if notebooks_dir.parent in src.parents else src}")
    t0 = time.time()
    params = {"profile": cfg.name, "run_dir": portable_run_dir(run_dir), "params": cfg.model_dump(mode="json")}
    tmp = out.with_name(f".{out.stem}.partial.ipynb")
    memory = PeakRSS()
    try:
        with memory:
            pm.execute_notebook(
                nb,
                str(tmp),
                parameters=params,
                kernel_name="python3",
                progress_bar=progress,
                cwd=str(notebooks_dir),
                log_output=False,
            )
    except pm.PapermillExecutionError as e:
        if tmp.exists():
            os.replace(tmp, failed)
        advice = preflight.step_advice(s.name, cfg, e.ename, e.evalue)  # which key to change, and to what
        raise StepFailed(
            f"step {s.name!r} failed in {src} (cell {e.cell_index}, execution {e.exec_count}): "
            f"{e.ename}: {e.evalue}{advice}\nexecuted notebook with the traceback: {failed}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _strip_progress_bars(tmp)
    os.replace(tmp, out)  # the executed notebook appears atomically, only on success
    dt = time.time() - t0
    peak = round(memory.peak_mb, 1)
    write_json(
        rec_path,
        {
            "step": s.name,
            "fingerprint": fp,
            "notebook": str(out),
            "seconds": round(dt, 1),
            "peak_rss_mb": peak,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    prints[s.name] = fp
    log(f"[{s.name}] done in {dt:.1f} s, kernel peak RSS {peak:.0f} MiB -> {out}")
    return {"step": s.name, "status": "ran", "notebook": str(out), "seconds": dt, "peak_rss_mb": peak}
