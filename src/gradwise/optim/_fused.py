"""Loader for the fused CPU kernels (``optim/csrc/fused.cpp``, ``losses/csrc/losses.cpp``).

The kernels are compiled on first use with ``torch.utils.cpp_extension``
(about 15-30 s with gcc; cached under ``~/.cache/torch_extensions``) and
registered as ``torch.ops.gradwise_fused.*``. ``make`` builds them when it sets
up the environment. Where they cannot be built (no compiler, no ninja) the
optimizers fall back to their ``torch._foreach_*`` path with one warning.
``GRADWISE_FUSED=0`` disables them.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import warnings
from pathlib import Path

import torch

_SRC = Path(__file__).with_name("csrc") / "fused.cpp"
_SOURCES = (_SRC, Path(__file__).parents[1] / "losses" / "csrc" / "losses.cpp")
_state: dict = {"tried": False, "ok": False, "error": None}


def _build_name() -> str:
    # -march=native code must not be reused on another CPU: key the cache on
    # the source, the CPU's flags and the torch version.
    h = hashlib.sha1()
    for src in _SOURCES:
        h.update(src.read_bytes())
        h.update(str(src).encode())  # two checkouts must not rebuild each other's cache
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                h.update(line.encode())
                break
    except OSError:
        pass
    return "gradwise_fused_" + h.hexdigest()[:12]


def load(verbose: bool = False) -> bool:
    """Build (once) and load the kernels; return whether they are usable."""
    if _state["tried"]:
        return _state["ok"]
    _state["tried"] = True
    if os.environ.get("GRADWISE_FUSED", "1") == "0":
        _state["error"] = "disabled by GRADWISE_FUSED=0"
        return False
    if shutil.which("ninja") is None:
        # `.venv/bin/python` run without the venv on PATH: ninja sits beside it
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils import cpp_extension

        flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
        if platform.machine() in ("x86_64", "AMD64"):
            flags.append("-march=native")
        cpp_extension.load(name=_build_name(), sources=[str(p) for p in _SOURCES], extra_cflags=flags,
                           extra_ldflags=["-fopenmp", "-lmvec"] if sys.platform.startswith("linux") else ["-fopenmp"], is_python_module=False, verbose=verbose)
        _state["ok"] = hasattr(torch.ops.gradwise_fused, "adamw_") and hasattr(torch.ops.gradwise_losses,
                                                                                  "ldr_softplus")
    except Exception as exc:  # no compiler, no ninja, ...: the foreach path still works
        _state["error"] = f"{type(exc).__name__}: {exc}"
        warnings.warn("gradwise: fused CPU kernels unavailable, using the torch._foreach_ path "
                      f"({_state['error'][:200]})", RuntimeWarning, stacklevel=3)
    return _state["ok"]


def available() -> bool:
    return load()


def error() -> str | None:
    """Why the kernels are unavailable, if they are."""
    return _state["error"]


def ops():
    return torch.ops.gradwise_fused
