"""Where the benchmark scripts are: ``benchmarks/`` beside the package's source tree.

The benchmarks (``benchmarks/harness.py`` and the scripts that use it) are not part of the
installed package: they ship with a source checkout, where ``make`` installs gradwise in editable
mode, so ``<checkout>/src/gradwise`` is this package and ``<checkout>/benchmarks`` sits two folders
up. From a wheel the folder is absent and :func:`load` says so.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["BenchmarksNotFound", "benchmarks_dir", "load"]

MISSING = ("the benchmarks are not part of this installation: they are in the benchmarks/ folder of a "
           "gradwise source checkout (git clone, then `make bench` or `python benchmarks/optim_step.py`)")


class BenchmarksNotFound(ImportError):
    """No ``benchmarks/`` folder beside the package (gradwise installed from a wheel)."""


def benchmarks_dir() -> Path | None:
    """``<checkout>/benchmarks`` when gradwise runs from a source checkout, else None."""
    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    return folder if (folder / "harness.py").is_file() else None


def load(script: str) -> ModuleType:
    """Import ``benchmarks/<script>.py`` (its folder goes on ``sys.path``: the scripts import ``harness``)."""
    folder = benchmarks_dir()
    if folder is None or not (folder / f"{script}.py").is_file():
        raise BenchmarksNotFound(MISSING, name=script)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(script)
