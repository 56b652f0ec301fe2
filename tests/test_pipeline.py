"""The runner on a two-notebook toy DAG: injection, skip-if-unchanged, failure reporting."""

import json
import os

import pytest

from geowall import pipeline
from geowall.config import load_profile
from geowall.pipeline import Step, StepFailed

NB_A = """# %% [markdown]
# # A
# %% tags=["parameters"]
profile = "x"
run_dir = None
params = None
# %%
from pathlib import Path
out = Path(run_dir) / "a.txt"
out.write_text(str(params["sae"]["steps"]))
import json, os
keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
(Path(run_dir) / "env.json").write_text(json.dumps({k: os.environ.get(k) for k in keys}))
"""

NB_B = """# %% tags=["parameters"]
profile = "x"
run_dir = None
params = None
# %%
from pathlib import Path
value = int((Path(run_dir) / "a.txt").read_text())
if params["geometry"]["n_boot"] == 13:
    raise RuntimeError("boom: n_boot 13 is unlucky")
(Path(run_dir) / "b.txt").write_text(str(value + 1))
"""

STEPS = (Step("a", "a", ("sae",)), Step("b", "b", ("geometry",), ("a",)))


@pytest.fixture
def toy(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "a.py").write_text(NB_A)
    (nbs / "b.py").write_text(NB_B)

    def run(*overrides, **kw):
        cfg = load_profile("smoke", list(overrides))
        return pipeline.run(
            cfg, steps=STEPS, notebooks_dir=nbs, runs_dir=tmp_path / "runs", progress=False, log=lambda *_: None, **kw
        )

    return run, tmp_path / "runs" / "smoke", nbs


def statuses(records):
    return [r["status"] for r in records]


def test_parameters_are_injected_and_steps_chain(toy):
    run, rd, _ = toy
    assert statuses(run("sae.steps=41")) == ["ran", "ran"]
    assert (rd / "a.txt").read_text() == "41" and (rd / "b.txt").read_text() == "42"
    nb = json.loads((rd / "notebooks" / "a.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and '"steps": 41' in "".join(injected[0]["source"])


def test_kernels_keep_freed_memory_unless_the_environment_says_otherwise(toy, monkeypatch):
    """The runner's kernels get glibc malloc settings that stop page-fault churn; a value the
    user already set is passed through unchanged."""
    run, rd, _ = toy
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    run("sae.steps=43")
    seen = json.loads((rd / "env.json").read_text())
    assert seen == {"MALLOC_MMAP_THRESHOLD_": str(1 << 25), "MALLOC_TRIM_THRESHOLD_": "12345"}
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ  # restored after the run


def test_unchanged_steps_are_skipped_and_changes_propagate(toy):
    run, rd, nbs = toy
    run()
    assert statuses(run()) == ["skipped", "skipped"]
    # a parameter only b reads: a skipped, b reruns
    assert statuses(run("geometry.n_boot=5")) == ["skipped", "ran"]
    # a parameter a reads: a reruns, and so does b (its upstream changed)
    assert statuses(run("geometry.n_boot=5", "sae.steps=9")) == ["ran", "ran"]
    # editing a notebook's source reruns it
    (nbs / "b.py").write_text(NB_B + "\n# edited\n")
    assert statuses(run("geometry.n_boot=5", "sae.steps=9")) == ["skipped", "ran"]
    assert statuses(run("geometry.n_boot=5", "sae.steps=9", force=True)) == ["ran", "ran"]
    assert statuses(run("geometry.n_boot=5", "sae.steps=9", only=["b"])) == ["skipped"]


def test_failing_cell_names_notebook_and_error_and_keeps_upstream(toy):
    run, rd, nbs = toy
    with pytest.raises(StepFailed) as e:
        run("geometry.n_boot=13")
    msg = str(e.value)
    assert str(nbs / "b.py") in msg and "RuntimeError: boom: n_boot 13 is unlucky" in msg
    assert (rd / "a.txt").is_file() and (rd / "notebooks" / "a.ipynb").is_file()
    assert not (rd / "b.txt").exists() and not (rd / "notebooks" / "b.ipynb").exists()
    assert (rd / "notebooks" / "b.failed.ipynb").is_file()
    assert not (rd / "steps" / "b.json").exists()
    # the rerun after the fix skips a and runs b
    assert statuses(run()) == ["skipped", "ran"]


def test_only_needs_upstream_and_rejects_unknown_steps(toy):
    run, _, _ = toy
    with pytest.raises(StepFailed, match=r"needs upstream step\(s\) \['a'\]"):
        run(only=["b"])
    with pytest.raises(ValueError, match="unknown step"):
        run(only=["zzz"])


def test_executed_notebooks_land_in_the_run_folder_never_beside_their_sources(toy):
    # Quarto drops an .ipynb that sits beside its percent script from the site, for any profile
    run, rd, nbs = toy
    run()
    assert sorted(p.name for p in nbs.iterdir()) == ["a.py", "b.py"]
    assert (rd / "notebooks" / "a.ipynb").is_file() and (rd / "notebooks" / "b.ipynb").is_file()
    default = pipeline.run_dir_for(load_profile("default"))
    assert pipeline.output_path(pipeline.STEPS[0], default) == default / "notebooks" / "00_activations.ipynb"


def test_run_folders_inside_the_project_are_injected_as_relative_paths(tmp_path):
    assert pipeline.portable_run_dir(pipeline.RUNS / "smoke") == "data/runs/smoke"
    assert pipeline.portable_run_dir(tmp_path / "smoke") == str((tmp_path / "smoke").resolve())


def test_progress_residue_is_stripped_from_executed_notebooks(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    def err(text):
        return new_output("stream", name="stderr", text=text)

    kept = [
        new_output("stream", name="stdout", text="\n"),  # stdout is the notebook's own
        err("UserWarning: something the reader should see\n"),
    ]
    residue = [
        err("train: 40%|████      | 4/10\n"),
        err("\n"),
        err("\x1b[A"),
        err("\r" + " " * 80),
        err("/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter\n"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x", outputs=residue[:2] + kept + residue[2:])]), path)
    pipeline._strip_progress_bars(path)
    assert nbformat.read(path, as_version=4).cells[0].outputs == kept
