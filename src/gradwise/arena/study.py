"""The :class:`Study` record and the registry of studies.

A study module (``gradwise/arena/<name>_study.py``) holds only what is
particular to its paper: its config dataclass, what one run trains, its plot
and the leaderboard's columns. It describes them in a :class:`Study` record
and registers it with :func:`register_study`; :mod:`gradwise.arena.driver`
does the rest (command-line options from the config, seeds x methods with a
progress bar, summary with 95% intervals and tied ranks, leaderboard, results
folder). :func:`studies` finds every ``*_study`` module of this package, so
the CLI's list of studies comes from the records.

This module stays light (no torch, no matplotlib): ``gradwise --help`` imports
every study module to list them.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradwise.arena.stats import fmt_ci

__all__ = ["UsageError", "Study", "Run", "Column", "Selection", "option", "ci_column", "register_study", "studies",
           "load_study", "DEFAULT_STUDY", "StudyTable"]

DEFAULT_STUDY = "optimizers"


class UsageError(ValueError):
    """A bad request from the user (unknown name, bad option); the CLI prints it without a traceback."""


def option(default: Any, help: str, *, at_least: float | None = None, below: float | None = None,
           metavar: str | None = None) -> Any:
    """A config field that is also a command-line option ``--<field-name>`` (underscores as dashes).

    ``help`` is the option's help (the default is appended); ``at_least`` and
    ``below`` bound the value (``at_least <= value < below``), checked by
    :mod:`gradwise._validate` when the command line is parsed; ``metavar``
    names the value in the help (default: the option's name). Fields made
    with plain ``dataclasses.field`` or a bare default are not options.
    """
    return field(default=default, metadata={"help": help, "at_least": at_least, "below": below, "metavar": metavar})


@dataclass(frozen=True)
class Column:
    """A leaderboard column: its header and the text of its cell for one summary row."""

    label: str
    cell: Callable[[Mapping[str, Any]], str]
    justify: str = "right"


def ci_column(label: str, key: str, digits: int = 4, scale: float = 1.0) -> Column:
    """A column showing ``key``'s mean over seeds ± the half-width of its 95% t-interval."""
    return Column(label, lambda s: fmt_ci(s[key + "_mean"], s[key + "_ci"], digits, scale=scale))


@dataclass(frozen=True)
class Selection:
    """An option ``--<flag> A,B,C`` that runs only the named methods.

    ``what`` names the methods in messages ("optimizer names"); ``default_text``
    says in the help what runs without the option; ``ignore_case`` matches
    names in any case; ``empty_means_all`` lets an empty list mean the default
    methods (else an empty list is refused).
    """

    flag: str
    what: str
    default_text: str = "all"
    ignore_case: bool = False
    empty_means_all: bool = False


@dataclass(frozen=True)
class Run:
    """What the driver hands to a study's functions: the config, the task that ``Study.setup``
    built, the methods and seeds to run, and ``state``, a dict the study may keep things in
    between its functions (the calibration study's test predictions, for the plot), and
    ``references``, the reference rows of ``Study.seed_setup`` (filled by the driver). Under ``--ray``
    each task has its own ``state``, merged into the driver's in the serial order (a new key set, a list
    extended, a dict merged key by key, another value replaced)."""

    cfg: Any
    task: Any
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    state: dict[str, Any] = field(default_factory=dict)
    references: list[dict[str, Any]] = field(default_factory=list)


def _no_task(cfg: Any, methods: tuple[str, ...]) -> None:
    return None


def _no_notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ""


@dataclass(frozen=True)
class Study:
    """One arena study, as the driver runs it.

    What runs: ``setup(cfg, methods)`` builds the task once; then, for every seed and
    method, ``run_one(run, method, seed, shared)`` trains one model and returns
    its row (a dict, or what ``record`` turns into one). A study whose methods
    share work per seed either sets ``seed_setup(run, seed) -> (shared,
    reference_row or None)`` (the distillation study's teacher; ``shared`` is
    passed to each ``run_one`` of that seed, a reference row is reported beside
    the methods, unranked), or replaces ``run_one`` by ``run_seed(run, seed) ->
    rows`` (the calibration study: one model per seed, every method on it).
    Runs go method by method, each over the seeds, unless ``seeds_outer``
    (seed by seed; ``seed_setup`` needs it). ``adjust(cfg)``, if given, makes
    the config that runs and is recorded (the preference study caps its
    iterations at its steps).

    What is reported: ``summarize(run, rows)`` gives one row
    per method (default: ``{name_key: method, "runs": n, <key>_mean/_std/_ci for
    each of summary_keys}`` ranked on ``rank_on`` with tied ranks; ``key``
    names a run row's method field, ``name_key`` a summary row's; a summary
    row whose ``rank`` is None is a reference, shown dimmed and unranked); the
    leaderboard shows a rank column, then ``columns`` (or ``columns(run)``, when
    a header or cell depends on the config); ``notes`` is printed
    under it with the machine. Files: ``results.csv`` (``csv_fields``, or every
    key of a row but ``csv_skip``), ``results.json`` (config, summary, runs,
    ``json_extra``) and whatever ``write_files(out, run, rows, summary,
    title)`` writes (the plot), named in ``outputs``.

    Options: every config field made with :func:`option`, ``--out``, ``--ray`` and
    ``--ray-address`` (the runs as Ray tasks: a worker loads the study by
    name, so it must be a registered ``*_study`` module), and the
    ``select`` option; ``smoke`` is the study's smallest command line, which
    the arena's tests run for every registered study.
    """

    name: str
    help: str
    config: type
    methods: Callable[[], Sequence[str]]
    title: Callable[[Run, list[Any]], str]
    columns: tuple[Column, ...] | Callable[[Run], tuple[Column, ...]]
    outputs: tuple[str, ...]
    smoke: tuple[str, ...]
    description: str = ""
    setup: Callable[[Any, tuple[str, ...]], Any] = _no_task
    adjust: Callable[[Any], Any] | None = None
    default_methods: Callable[[], Sequence[str]] | None = None
    select: Selection | None = None
    run_one: Callable[[Run, str, int, Any], Any] | None = None
    run_seed: Callable[[Run, int], list[dict[str, Any]]] | None = None
    seed_setup: Callable[[Run, int], tuple[Any, dict[str, Any] | None]] | None = None
    seed_setup_label: str = "setup"
    seeds_outer: bool = False
    key: str = "method"
    name_key: str = "method"
    summary_keys: tuple[str, ...] = ()
    rank_on: str = ""
    higher_is_better: bool = True
    summarize: Callable[[Run, list[Any]], list[dict[str, Any]]] | None = None
    notes: Callable[[Run, list[dict[str, Any]]], str] = _no_notes
    extra_table_rows: Callable[[Run, list[dict[str, Any]]], list[list[str]]] | None = None
    record: Callable[[Any], dict[str, Any]] | None = None
    csv_fields: tuple[str, ...] | None = None
    csv_skip: tuple[str, ...] = ()
    config_extra: Callable[[Run], dict[str, Any]] | None = None
    json_extra: Callable[[Run, list[dict[str, Any]]], dict[str, Any]] | None = None
    write_files: Callable[[Path, Run, list[Any], list[dict[str, Any]], str], Any] | None = None

    def __post_init__(self) -> None:
        if (self.run_one is None) == (self.run_seed is None):
            raise TypeError(f"study {self.name!r}: give exactly one of run_one and run_seed")
        if self.seed_setup is not None and not (self.seeds_outer and self.run_one is not None):
            raise TypeError(f"study {self.name!r}: seed_setup needs run_one and seeds_outer=True")
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"study {self.name!r}: config must be a dataclass, got {self.config!r}")
        if self.summarize is None and not (self.summary_keys and self.rank_on):
            raise TypeError(f"study {self.name!r}: give summary_keys and rank_on, or a summarize function")

    @property
    def HELP(self) -> str:  # noqa: N802 -- the old module attribute, read through load_study(name)
        """Deprecated: ``load_study`` returned the study's module, whose one-line help was ``HELP``."""
        warnings.warn("load_study(name).HELP is deprecated; use load_study(name).help (load_study returns the "
                      "Study record); removal planned after version 0.2", DeprecationWarning, stacklevel=2)
        return self.help

    def add_arguments(self, parser: Any) -> None:
        """Add the study's options to an ``argparse`` parser (see :mod:`gradwise.arena.options`)."""
        from gradwise.arena.options import add_arguments

        add_arguments(parser, self)

    def run(self, args: Any, console: Any) -> Path:
        """Run the study with the options parsed into ``args``; print its report and return the results folder."""
        from gradwise.arena import driver

        return driver.run_from_args(self, args, console)


_STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    """Add ``study`` to the registry (a study module calls this once, at import) and return it."""
    old = _STUDIES.get(study.name)
    if old is not None and old is not study and old.config.__module__ != study.config.__module__:
        raise ValueError(f"two studies are named {study.name!r}")
    _STUDIES[study.name] = study
    return study


def _discover() -> None:
    """Import every ``*_study`` module of this package; each registers its study."""
    import gradwise.arena as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_study"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def studies() -> dict[str, Study]:
    """Every registered study by name: the default study first, then by name."""
    _discover()
    names = sorted(_STUDIES, key=lambda n: (n != DEFAULT_STUDY, n))
    return {n: _STUDIES[n] for n in names}


def load_study(name: str) -> Study:
    """The study named ``name``; :class:`UsageError` naming the studies if there is none."""
    known = studies()
    try:
        return known[name]
    except KeyError:
        raise UsageError(f"unknown study {name!r}; choose from: {', '.join(known)}") from None


class StudyTable(Mapping):
    """A read-only view of the registry (``gradwise.arena.STUDIES``), filled on first use."""

    def __getitem__(self, name: str) -> Study:
        return studies()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(studies())

    def __len__(self) -> int:
        return len(studies())

    def __repr__(self) -> str:
        return f"StudyTable({list(self)})"
