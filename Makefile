# Two commands: `make arena` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: arena test env test-env bench docs clean

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.installed: $(BIN)/python pyproject.toml src/gradwise/optim/csrc/fused.cpp src/gradwise/losses/csrc/losses.cpp
	$(BIN)/pip install -q -e .
	@# build the fused CPU kernels now rather than on the first optimizer step (falls back if it cannot)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -c "from gradwise.optim import _fused; print('fused CPU kernels:', _fused.load() or _fused.error())"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

env: $(VENV)/.installed
test-env: $(VENV)/.installed-test

arena: env
	$(BIN)/gradwise arena

test: test-env
	$(BIN)/python -m pytest

bench: test-env
	$(BIN)/python benchmarks/optim_step.py --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/loss_step.py --markdown docs/benchmarks.md

docs: env
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf $(VENV) runs
