"""What every notebook does first and last: resolve its parameters, record its versions.

Each notebook keeps its own papermill ``parameters`` cell (``profile``, ``run_dir``,
``params``) so that it runs on its own, under the runner, or under papermill, and then
calls :func:`setup`::

    cfg, run_dir, RANDOM_SEED = notebook.setup(profile, params, run_dir)

and ends with a cell holding ``notebook.versions()``.

The runner writes ``run_dir`` into the parameters cell relative to the project root when
it lies inside it (``data/runs/smoke``; :func:`portable_run_dir`), so an executed
notebook shows no machine-specific path; :func:`setup` resolves a relative ``run_dir``
against the project root, not the kernel's working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from geowall.config import Profile, load_profile, resolve
from geowall.pipeline import ROOT, portable_run_dir, run_dir_for

__all__ = ["Setup", "setup", "versions", "portable_run_dir"]

VERSIONED = ("torch", "transformers", "sae-lens", "numpy", "pandas", "pymc", "arviz", "altair", "papermill")


class Setup(NamedTuple):
    """The resolved profile, the run folder (absolute) and the seed of a notebook run."""

    cfg: Profile
    run_dir: Path
    seed: int


def setup(
    profile: str | os.PathLike, params: dict | list[str] | None = None, run_dir: str | os.PathLike | None = None
) -> Setup:
    """Resolve a notebook's ``parameters`` cell.

    ``profile`` is a profile name or a ``.yaml`` path. ``params`` is either the whole
    validated profile (a dict: what the runner injects; it wins over ``profile``) or a
    list of overrides of ``profile`` (``["stage1.draws=2000"]``, as ``geowall run --set``
    takes them). ``run_dir`` defaults to ``data/runs/<profile name>`` under the project
    root, and a relative ``run_dir`` is taken relative to the project root. The seed is
    the profile's. Altair charts then render with :mod:`geowall.charts`' renderer.
    """
    import geowall.charts  # noqa: F401  (registers the renderer that draws charts offline)

    if isinstance(params, (list, tuple)):
        cfg = load_profile(profile, list(params))
    else:
        cfg = resolve(str(profile), params)
    if run_dir is None or str(run_dir) == "":
        folder = run_dir_for(cfg)
    else:
        folder = Path(run_dir)
        folder = folder if folder.is_absolute() else ROOT / folder
    return Setup(cfg, folder, int(cfg.seed))


def versions() -> dict[str, str | None]:
    """geowall, Python and the versions of the packages the results depend on (None: not installed)."""
    import importlib.metadata as md
    import platform

    import geowall

    out: dict[str, str | None] = {"geowall": geowall.__version__, "python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
