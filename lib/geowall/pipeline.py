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
peak resident memory of its kernel (``peak_rss_mb``, see :mod:`geowall.memory`), and
the files it created or replaced in the run folder (``outputs``: paths relative to the run
folder, found by comparing the folder's files before and after the step).

Variants (``as_name``, ``geowall run --as NAME``): the run folder becomes
``<runs>/NAME/``. Before any step runs, every step whose fingerprint equals the one
recorded in the profile's own run (the base) and whose executed notebook is there gets
its outputs, executed notebook and record linked into the variant (hard links, symbolic
links across file systems, never copies), so the skip logic skips it; the other steps
rerun and write only in the variant (artefacts are replaced by rename, which never
writes through a link). ``variant.json`` records the base and the overrides.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from geowall import preflight
from geowall.config import Profile, load_profile
from geowall.io import flatten, read_json, sha256_json, write_json
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
    as_name: str | None = None,
) -> list[dict]:
    """Run the pipeline (or ``only`` some steps) for a profile. Returns one record per step.

    ``executor``: where the per-model and per-(model, layer) work of steps 00-02 runs
    (``local`` or ``ray``, see :mod:`geowall.executors`); ``address``: the Ray cluster to
    join (default: a local Ray instance started here and shared by every step).
    ``as_name``: run as a variant in ``<runs>/<as_name>/``, reusing (linking) the steps of
    the profile's own run whose inputs did not change (see :func:`link_unchanged`);
    ``overrides`` are recorded in its ``variant.json``."""
    from geowall import executors

    env = {**kernel_malloc_env(), **executors.environment(executor, address)}
    cfg = profile if isinstance(profile, Profile) else load_profile(profile, overrides)
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS)
    run_dir = run_dir_for(cfg, runs_dir) if as_name is None else variant_dir(cfg, as_name, runs_dir)
    chosen = select(steps, only)
    for s in chosen:  # fail before any work if a notebook is missing
        if not (notebooks_dir / f"{s.notebook}.py").is_file():
            raise FileNotFoundError(f"step {s.name!r}: notebook {notebooks_dir / (s.notebook + '.py')} not found")
    preflight.check(cfg, [s.name for s in chosen])  # the chosen steps' preconditions (disk budget included)
    if as_name is not None:
        base = run_dir_for(cfg, runs_dir)
        reused = link_unchanged(cfg, base, run_dir, steps=steps, notebooks_dir=notebooks_dir, log=log)
        write_variant_record(cfg, base, run_dir, overrides, reused)
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
    before = snapshot(run_dir)
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
        raise StepFailed(
            f"step {s.name!r} failed in {src} (cell {e.cell_index}, execution {e.exec_count}): "
            f"{e.ename}: {e.evalue}\nexecuted notebook with the traceback: {failed}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _strip_progress_bars(tmp)
    os.replace(tmp, out)  # the executed notebook appears atomically, only on success
    dt = time.time() - t0
    peak = round(memory.peak_mb, 1)
    previous = read_json(rec_path).get("outputs", []) if rec_path.is_file() else []
    after = snapshot(run_dir)
    shared = written_through_links(before, after, run_dir)
    if shared:
        log(f"[{s.name}] WARNING: wrote {shared[:5]} in place, through hard links: the run they link to changed too")
    write_json(
        rec_path,
        {
            "step": s.name,
            "fingerprint": fp,
            "notebook": str(out),
            "seconds": round(dt, 1),
            "peak_rss_mb": peak,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "outputs": step_outputs(before, after, previous),
        },
    )
    prints[s.name] = fp
    log(f"[{s.name}] done in {dt:.1f} s, kernel peak RSS {peak:.0f} MiB -> {out}")
    return {"step": s.name, "status": "ran", "notebook": str(out), "seconds": dt, "peak_rss_mb": peak}


# --------------------------------------------------------------------------- step outputs

RUNNER_DIRS = ("steps", "notebooks")  # the runner's own folders in a run folder: records, executed notebooks
RUNNER_FILES = ("profile.json", "variant.json")  # the runner's own files: no step's output


def snapshot(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """``{relative POSIX path: (inode, mtime_ns, size)}`` of every file (or link) in a run
    folder, leaving out the runner's own (:data:`RUNNER_DIRS`, :data:`RUNNER_FILES`)."""
    run_dir = Path(run_dir)
    out: dict[str, tuple[int, int, int]] = {}
    if not run_dir.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(run_dir):
        here = Path(dirpath)
        if here == run_dir:
            dirnames[:] = [d for d in dirnames if d not in RUNNER_DIRS]
            filenames = [f for f in filenames if f not in RUNNER_FILES]
        for f in filenames:
            try:
                st = os.lstat(here / f)
            except FileNotFoundError:  # a temporary file renamed away meanwhile
                continue
            out[(here / f).relative_to(run_dir).as_posix()] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def step_outputs(before: dict, after: dict, previous: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The files a step wrote: those in ``after`` that are new or changed (another inode,
    mtime or size) since ``before``, plus the ``previous`` record's outputs that still
    exist (a step that resumes leaves its finished files untouched, yet they are its own)."""
    changed = {p for p, st in after.items() if before.get(p) != st}
    return sorted(changed | {p for p in previous if p in after})


def written_through_links(before: dict, after: dict, run_dir: Path) -> list[str]:
    """Files a step changed in place (same inode, other mtime or size) that have more than
    one hard link: writing them changed every run folder linking them (artefacts are meant
    to be replaced by rename, :func:`geowall.io.atomic_path`, which never does)."""
    inplace = [p for p, st in after.items() if p in before and before[p][0] == st[0] and before[p] != st]
    return [p for p in inplace if os.lstat(Path(run_dir) / p).st_nlink > 1]


# --------------------------------------------------------------------------- variants

VARIANT_RECORD = "variant.json"


def variant_dir(cfg: Profile, name: str, runs_dir: Path | None = None) -> Path:
    """The run folder of variant ``name`` of profile ``cfg``: ``<runs>/<name>/``. ``ValueError``
    naming the fix when ``name`` is empty, has a path separator, is a profile's name, or
    names a run folder that is not a variant of this profile; when the profile has no run
    to derive from."""
    from geowall.config import PARAMS_DIR

    seps = {"/", os.sep, os.altsep} - {None}
    if not name or name in (".", "..") or any(c in name for c in seps):
        raise ValueError(f"--as {name!r}: give a plain folder name (no path separators), e.g. --as {cfg.name}-v2")
    if name == cfg.name or (PARAMS_DIR / f"{name}.yaml").is_file():
        raise ValueError(
            f"--as {name!r} is a profile's own name: its run folder holds that profile's results. "
            f"Pick another name (e.g. --as {cfg.name}-v2), or run without --as to replace the profile's artefacts"
        )
    base = run_dir_for(cfg, runs_dir)
    if not (base / "steps").is_dir():
        raise ValueError(
            f"--as {name!r}: profile {cfg.name!r} has no run to derive a variant from ({base} has no step "
            f"records): run the profile first (geowall run --profile {cfg.name}), or run without --as"
        )
    target = Path(runs_dir or RUNS) / name
    rec = target / VARIANT_RECORD
    if target.exists() and (not rec.is_file() or read_json(rec).get("base") != cfg.name):
        raise ValueError(
            f"--as {name!r}: {target} exists and is not a variant of profile {cfg.name!r}; pick another name"
        )
    return target


def fingerprints(cfg: Profile, steps: tuple[Step, ...], notebooks_dir: Path) -> dict[str, str]:
    """Every step's fingerprint under ``cfg`` with the current notebook sources, in DAG
    order (a step whose notebook, or an upstream's, is missing has none)."""
    prints: dict[str, str] = {}
    for s in steps:
        src = Path(notebooks_dir) / f"{s.notebook}.py"
        if src.is_file() and all(u in prints for u in s.upstream):
            prints[s.name] = fingerprint(s, cfg, src.read_text(), prints)
    return prints


def reusable(s: Step, fp: str | None, base: Path) -> list[str] | None:
    """The files of step ``s`` in run folder ``base`` (outputs, executed notebook, record;
    relative paths) when its record there has fingerprint ``fp``, lists its outputs and all
    of them exist; else None (the step must rerun)."""
    rec_path = base / "steps" / f"{s.name}.json"
    nb = output_path(s, base)
    if fp is None or not rec_path.is_file() or not nb.is_file():
        return None
    rec = read_json(rec_path)
    outputs = rec.get("outputs")
    if rec.get("fingerprint") != fp or outputs is None or not all((base / o).exists() for o in outputs):
        return None
    return [*outputs, nb.relative_to(base).as_posix(), rec_path.relative_to(base).as_posix()]


def link_file(src: Path, dst: Path) -> str:
    """Put a link to ``src`` at ``dst`` (replacing what is there, atomically): a hard link,
    or a symbolic link where hard links fail (another file system). Never copies bytes.
    Returns ``"hard"`` or ``"symbolic"``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.link")
    try:
        os.link(src, tmp, follow_symlinks=False)
        kind = "hard"
    except OSError:
        os.symlink(Path(src).resolve(), tmp)
        kind = "symbolic"
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return kind


def link_unchanged(
    cfg: Profile,
    base: Path,
    run_dir: Path,
    *,
    steps: tuple[Step, ...] = STEPS,
    notebooks_dir: Path | None = None,
    log=print,
) -> dict[str, str]:
    """Link into ``run_dir`` the files of every step of ``base`` whose inputs did not change
    (:func:`reusable`), in DAG order; a step below one that cannot be reused is not reused
    either (its fingerprint differs). Returns ``{step: link kind}`` of the steps linked."""
    prints = fingerprints(cfg, steps, Path(notebooks_dir or NOTEBOOKS))
    run_dir.mkdir(parents=True, exist_ok=True)
    linked: dict[str, str] = {}
    for s in steps:
        files = reusable(s, prints.get(s.name), base)
        rec = base / "steps" / f"{s.name}.json"
        if files is None and rec.is_file() and "outputs" not in (r := read_json(rec)):
            if r.get("fingerprint") == prints.get(s.name):
                log(f"[{s.name}] inputs unchanged, but its record in {base} lists no outputs (an older run): it reruns")
        if files is None:
            continue
        kinds = {link_file(base / f, run_dir / f) for f in files}
        linked[s.name] = kinds.pop() if len(kinds) == 1 else "mixed"
        log(f"[{s.name}] inputs unchanged since {base.name}: {len(files)} files linked from {base}")
    return linked


def write_variant_record(cfg: Profile, base: Path, run_dir: Path, overrides, reused: dict[str, str]) -> dict:
    """Write ``<run_dir>/variant.json`` (atomically): the base run, the overrides as given,
    the parameters that differ from the base's profile (``changed``: ``{key: [base, variant]}``)
    and the steps linked from the base. Returns the record."""
    prof = base / "profile.json"
    was = flatten(read_json(prof)) if prof.is_file() else {}
    now = flatten(cfg.model_dump(mode="json"))
    changed = {k: [was.get(k), now.get(k)] for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)}
    rec = {
        "base": cfg.name,
        "base_dir": portable_run_dir(base),
        "overrides": list(overrides) if isinstance(overrides, (list, tuple)) else overrides,
        "changed": changed,
        "reused": reused,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / VARIANT_RECORD, rec)
    return rec
