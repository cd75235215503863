# sidpipe: `make demo` sets up and runs the main job on the bundled example; `make test` sets up and tests.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch is installed first so that pip never pulls a multi-GB CUDA build on a machine
# without a GPU. On a CUDA machine: make setup TORCH=torch
TORCH  ?= torch==2.13.0
OUT    ?= out

.PHONY: setup demo test test-all wheel-check bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: setup
	mkdir -p $(OUT)
	$(BIN)/sidpipe run examples/balloons.png --out $(OUT)/balloons_sample.png --seed 0

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

wheel-check:
	PY=$(PY) TORCH="$(TORCH)" bash .ci/wheel-check

bench: setup
	$(BIN)/python benchmarks/bench_denoiser.py examples/balloons.png

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
