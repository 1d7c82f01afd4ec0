# fastnets: set-up, build, test, benchmark. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JOBS ?= $(shell nproc)

.PHONY: help venv build test demo bench info gpu-check gpu-sanitize asan-test clean

help:
	@echo "make demo       set up .venv, build, run 'python -m fastnets demo'"
	@echo "make test       set up .venv, build, run the tests"
	@echo "make bench      benchmarks against the PyTorch references (bench/)"
	@echo "make info       build information"
	@echo "make gpu-check  on a GPU machine with its own torch: build, CUDA tests, benchmarks (no .venv)"
	@echo "make gpu-sanitize  after gpu-check: the CUDA tests under compute-sanitizer memcheck and racecheck"
	@echo "make asan-test  the CPU tests against a build with AddressSanitizer and UBSan (in build/asan)"

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

# After gpu-check (it builds in place): the CUDA tests under compute-sanitizer, leaving out
# torch.compile and opcheck (slow under the sanitizer, and they test PyTorch's machinery).
SANITIZED_TESTS = tests -q -x -p no:cacheprovider -m cuda
gpu-sanitize:
	compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest $(SANITIZED_TESTS) \
	  -k "not compile and not opcheck"
	compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest $(SANITIZED_TESTS) \
	  -k "(conv or max_pool) and not compile and not opcheck"

# A copy of the tracked tree built CPU-only with the sanitizers, its CPU tests run with the
# sanitizer runtimes preloaded into python; a report stops the run and is printed. Leak checking
# is off (the interpreter's own "leaks").
ASAN_TREE := build/asan
asan-test: $(STAMP)
	rm -rf $(ASAN_TREE) && mkdir -p $(ASAN_TREE)
	git ls-files -z | xargs -0 cp --parents -t $(ASAN_TREE)
	cd $(ASAN_TREE) && FASTNETS_CUDA=0 FASTNETS_SANITIZE=1 MAX_JOBS=$(JOBS) $(CURDIR)/$(PY) setup.py --quiet build_ext --inplace
	rm -f build/asan-report.*
	cd $(ASAN_TREE) && LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0:abort_on_error=1:log_path=$(CURDIR)/build/asan-report \
	  UBSAN_OPTIONS=print_stacktrace=1:log_path=$(CURDIR)/build/asan-report \
	  $(CURDIR)/$(PY) -m pytest tests -q -x -p no:cacheprovider -m "not cuda" \
	    --deselect tests/test_benchmark.py::test_quick_suite_end_to_end \
	    --deselect tests/test_determinism.py::test_many_calls_do_not_grow_memory \
	  || { cat $(CURDIR)/build/asan-report.* 2>/dev/null; exit 1; }

clean:
	rm -rf build fastnets/_C*.so .pytest_cache .benchmarks
