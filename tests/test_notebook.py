"""The notebook preamble: one helper resolves parameters the same way wherever a notebook runs."""

import os

import jupytext
import pytest

from geowall import notebook, pipeline
from geowall.config import load_profile


def test_setup_resolves_profile_run_folder_and_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a kernel's working directory must not matter
    cfg, run_dir, seed = notebook.setup("smoke")
    assert cfg.name == "smoke" and run_dir == pipeline.RUNS / "smoke" and seed == cfg.seed
    _, run_dir, _ = notebook.setup("smoke", None, "data/runs/elsewhere")
    assert run_dir == pipeline.ROOT / "data" / "runs" / "elsewhere"
    _, run_dir, _ = notebook.setup("smoke", None, tmp_path / "r")
    assert run_dir == tmp_path / "r"
    cfg, _, _ = notebook.setup("smoke", ["stage1.draws=17", "seed=3"])  # overrides, as in a Lab session
    assert cfg.stage1.draws == 17 and cfg.name == "smoke"
    injected = load_profile("smoke", ["seed=7"]).model_dump(mode="json")  # what the runner passes wins
    cfg, _, seed = notebook.setup("default", injected, None)
    assert cfg.name == "smoke" and seed == 7


def test_versions_name_the_packages_behind_the_results():
    v = notebook.versions()
    assert v["geowall"] and v["python"].count(".") == 2 and v["torch"] and v["pymc"]
    assert set(notebook.VERSIONED) <= set(v)


@pytest.mark.parametrize("path", sorted((pipeline.ROOT / "notebooks").glob("*.py")), ids=os.path.basename)
def test_every_notebook_keeps_its_parameters_cell_and_uses_the_one_preamble(path):
    cells = jupytext.read(path).cells
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "run_dir = None" in params[0].source and "params = None" in params[0].source
    after = cells[cells.index(params[0]) + 1]
    assert "notebook.setup(profile, params, run_dir)" in after.source
    assert "config.resolve" not in after.source and "default_rng" not in after.source.split("setup")[0]
    assert cells[-1].source.strip() == "notebook.versions()"
