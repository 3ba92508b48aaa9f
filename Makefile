# The two commands a newcomer needs (see README.md):
#   make demo   set up .venv and run the pipeline on the built-in synthetic dataset
#   make test   set up .venv and run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export MPLBACKEND := Agg
export PYTHONHASHSEED := 0

.PHONY: setup demo test lint bench reproduce clean

# torch's PyPI build brings several GB of CUDA libraries: --no-cache-dir keeps a second copy
# out of ~/.cache (a CI machine once ran out of disk during this install).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --quiet --no-cache-dir --constraint constraints.txt --editable ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	snakemake --cores 2
	medtailor status

test: setup
	pytest

lint: setup
	ruff check .
	ruff format --check .
	snakemake --lint
	snakefmt --check Snakefile src/medtailor/workflow

bench: setup
	python bench/resample_vs_sitk.py
	python bench/patches_bench.py
	python bench/train_overhead.py
	python bench/evaluate_bench.py
	python bench/calibration.py
	python bench/ingest_vs_dcm2niix.py
	python bench/search_overhead.py
	python bench/search_seg_bench.py
	python bench/seg_seed_robustness.py
	python bench/detector_realdata.py

# Every example project at its CPU scale on the public datasets (docs/reproductions.md):
# hours on 2 cores, not part of `make test`. Projects land in $(REPRODUCTIONS)/<example>.
DATASETS ?= ../shared/realdata
REPRODUCTIONS ?= reproductions
reproduce: setup
	python -m medtailor.examples --datasets $(DATASETS) --into $(REPRODUCTIONS)

clean:
	rm -rf data metrics plots logs mlflow.db mlartifacts .snakemake
