"""The arena: studies that put gradwise's methods side by side on CPU-sized tasks.

A study is a module in this package with

* ``HELP: str`` -- one line for ``gradwise arena --help``;
* ``add_arguments(parser: argparse.ArgumentParser) -> None`` -- its options;
* ``run(args: argparse.Namespace, console: rich.console.Console) -> pathlib.Path``
  -- runs the study, prints its report and returns the results folder.

Study modules keep heavy imports (torch, matplotlib) inside functions so that
``gradwise --help`` stays fast. Add a study by adding a module and a line to
``STUDIES``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["STUDIES", "DEFAULT_STUDY", "UsageError", "load_study", "positive_int", "add_seeds_argument",
           "add_out_argument"]


class UsageError(ValueError):
    """A bad request from the user (unknown name, bad option); the CLI prints it without a traceback."""


# study name -> module path; the order here is the order in `gradwise arena --help`.
STUDIES: dict[str, str] = {
    "optimizers": "gradwise.arena.optimizers_study",
    "noisy-labels": "gradwise.arena.noisy_labels_study",
    "distillation": "gradwise.arena.distillation_study",
    "calibration": "gradwise.arena.calibration_study",
    "imbalance": "gradwise.arena.imbalance_study",
    "preference": "gradwise.arena.preference_study",
}
DEFAULT_STUDY = "optimizers"


def positive_int(text: str) -> int:
    """argparse type for counts (seeds, steps, epochs)."""
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_seeds_argument(parser, default: int) -> None:
    """``--seeds N``: the study runs seeds 0..N-1."""
    parser.add_argument("--seeds", type=positive_int, default=default, help=f"seeds 0..N-1 (default {default})")


def add_out_argument(parser) -> None:
    """``--out DIR``: the results folder (see :func:`gradwise.arena.report.results_dir`)."""
    parser.add_argument("--out", metavar="DIR", help="results folder (default runs/<timestamp>)")


def load_study(name: str) -> ModuleType:
    """The module implementing study ``name``."""
    try:
        return importlib.import_module(STUDIES[name])
    except KeyError:
        raise UsageError(f"unknown study {name!r}; choose from: {', '.join(STUDIES)}") from None
