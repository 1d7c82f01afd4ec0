# fastnets: set-up, build, test, benchmark. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= $(shell nproc)

.PHONY: help venv build test demo bench info gpu-check clean

help:
	@echo "make demo       set up .venv, build, run 'python -m fastnets demo'"
	@echo "make test       set up .venv, build, run the tests"
	@echo "make bench      benchmarks against the PyTorch references (bench/)"
	@echo "make info       build information"
	@echo "make gpu-check  on a GPU machine with its own torch: build, CUDA tests, benchmarks (no .venv)"

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

build: $(STAMP)
	MAX_JOBS=$(JOBS) $(PY) setup.py --quiet build_ext --inplace

test: build
	$(PY) -m pytest tests -q -ra

demo: build
	$(PY) -m fastnets demo

bench: build
	$(PY) -m fastnets bench

info: build
	$(PY) -m fastnets info

# For a machine with an NVIDIA GPU and a python3 that already holds torch (no network there).
# Builds in place, runs the CUDA tests and the benchmarks, prints a summary table last and
# writes the full logs under $$OUT (default: gpu-check-logs/).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf build fastnets/_C*.so .pytest_cache .benchmarks
