import getpass
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# Inductor's cache of compiled kernels and precompiled headers is not keyed on ATEN_CPU_CAPABILITY
# (torch 2.13): code compiled under AVX2 and reused under `default` fails to build ("'at::vec' has not
# been declared"). One cache per capability, so .ci/run's passes under each capability stay apart.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / (
    f"torchinductor_{getpass.getuser()}_{torch.backends.cpu.get_cpu_capability().lower()}")))

# tests import helpers that sit beside them (optim_problem). Because tests/ is on sys.path, a test folder
# must not be named like an importable package: the peft and compression families' tests are in
# tests/peft_tests and tests/compression_tests, since a tests/peft package would shadow HF PEFT
# (transformers then fails to import its trainer) and tests/compression Python 3.14's compression package.
sys.path.insert(0, str(Path(__file__).parent))

# Hypothesis: no per-example deadline (CI machines vary in speed) and derandomized
# examples, so a CI run explores the same inputs as a local one.
from hypothesis import settings  # noqa: E402

settings.register_profile("gradwise", deadline=None, derandomize=True)
settings.load_profile("gradwise")


# Tests whose results depend on how the CPU's vectorized kernels round: those that compare with stored
# data made by the authors' code on another machine (any module that reads `*_golden` data, found
# here), and those that compare a fused kernel with torch's ops (each sets `pytestmark =
# pytest.mark.numerics` itself). `.ci/run` runs them again under each ATEN_CPU_CAPABILITY the CPU offers
# (`-m numerics`), so a machine-dependent test fails in CI rather than on a user's machine.
def pytest_collection_modifyitems(config, items):
    import pytest

    sources: dict = {}
    for item in items:
        path = Path(str(item.fspath))
        if path not in sources:
            try:
                sources[path] = "_golden" in path.read_text()
            except OSError:
                sources[path] = False
        if sources[path]:
            item.add_marker(pytest.mark.numerics)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: tiny tensors only wait on intra-op threads on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
