"""The arena: studies that put gradwise's methods side by side on CPU-sized tasks.

A study is a module ``gradwise/arena/<name>_study.py`` that describes itself in
a :class:`~gradwise.arena.study.Study` record (its config dataclass, what one
run trains, the leaderboard's columns, its plot) and registers it with
:func:`~gradwise.arena.study.register_study`; :mod:`gradwise.arena.driver`
runs every study the same way, and ``gradwise arena`` lists the registered
studies. Study modules keep heavy imports (torch, matplotlib) inside
functions so that ``gradwise --help`` stays fast.

Layout: ``study`` (the record and registry), ``options`` (command-line
options from the config), ``driver`` (seeds x methods, summary, leaderboard,
files), ``ray_sweep`` (seeds x methods as Ray tasks, for ``--ray``), ``stats`` (intervals, tied ranks), ``results`` (the results folder,
CSV/JSON, the machine), ``plots`` (styles, y-limits), ``report`` (the
optimizers study's summary and the re-exports of the three before),
``runner``/``tasks``/``baselines`` (what the optimizers study trains).
"""
from __future__ import annotations

from gradwise.arena.study import (DEFAULT_STUDY, Column, Run, Selection, Study, StudyTable, UsageError, ci_column,
                                  load_study, option, register_study, studies)

__all__ = ["STUDIES", "DEFAULT_STUDY", "UsageError", "load_study", "studies", "register_study", "Study", "Run",
           "Column", "Selection", "option", "ci_column", "positive_int", "add_seeds_argument", "add_out_argument"]

# name -> Study, from the registry (the default study first); filled on first use.
STUDIES = StudyTable()


def positive_int(text: str) -> int:
    """argparse type for counts (seeds, steps, epochs): an integer >= 1."""
    from gradwise.arena.options import value_type

    return value_type("value", int, at_least=1)(text)


def add_seeds_argument(parser, default: int) -> None:
    """``--seeds N``: the study runs seeds 0..N-1 (for hand-written parsers; studies get it from their config)."""
    parser.add_argument("--seeds", type=positive_int, default=default, help=f"seeds 0..N-1 (default {default})")


def add_out_argument(parser) -> None:
    """``--out DIR``: the results folder (see :func:`gradwise.arena.results.results_folder`)."""
    parser.add_argument("--out", metavar="DIR", help="results folder (default runs/<timestamp>)")
