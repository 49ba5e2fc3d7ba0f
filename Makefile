# Two commands: `make arena` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: arena test env test-env bench docs clean

# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build.
# setuptools, wheel and ninja too, because gradwise is built without build isolation (below).
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH) "setuptools>=68" wheel "ninja>=1.11"

# Compiles the native kernels (one library per family, setup.py) against the torch installed above:
# an isolated build would install its own unpinned torch. Nothing compiles later, at import or step.
KERNEL_SOURCES := setup.py src/gradwise/_kernels.py $(wildcard src/gradwise/*/csrc/*)
$(VENV)/.installed: $(BIN)/python pyproject.toml $(KERNEL_SOURCES)
	$(BIN)/pip install -q --no-build-isolation -e .
	$(BIN)/python -c "from gradwise._kernels import FAMILIES; [print(f) for f in FAMILIES.values() if f.load() or 1]"
	touch $@

# The test, bench, federated, diffusion, rl, peft and sciml extras alone (CI runs the Flower tests): `pip install -e '.[test]'` would rebuild the kernels.
# (tomllib is Python >= 3.11; pip vendors the same parser for 3.10.)
define EXTRAS_PY
import sys
try:
    import tomllib
except ImportError:
    from pip._vendor import tomli as tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print(*[req for name in sys.argv[1:] for req in extras[name]], sep="\n")
endef
export EXTRAS_PY
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -c "$$EXTRAS_PY" test bench federated diffusion rl peft sciml > $(VENV)/test-requirements.txt
	$(BIN)/pip install -q -r $(VENV)/test-requirements.txt
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
	$(BIN)/python benchmarks/layer_step.py --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/state_bits.py --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/unlearning_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/lame_step.py --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/tta_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/diffusion_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/sara_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/reste_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/dynmole_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/adapter_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/ode_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/ntk_step.py --threads 1 --markdown docs/benchmarks.md
	$(BIN)/python benchmarks/pinn_step.py --threads 1 --markdown docs/benchmarks.md
# bandit_step.py, rl_step.py and lpn_step.py time the authors' code beside gradwise's, so they need a checkout of
# it (their docstrings say how: REF_PYTHON/DLB_REPO, ODICE_REPO, LPN_REPO): run them by hand

docs: env
	$(BIN)/python tools/docs/gen_docs.py

clean:
	rm -rf $(VENV) runs build src/gradwise/*/_C*.so src/gradwise/*/_C.build.json
