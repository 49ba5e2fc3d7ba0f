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

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
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
	$(BIN)/python benchmarks/optim_step.py

docs: env
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf $(VENV) runs
