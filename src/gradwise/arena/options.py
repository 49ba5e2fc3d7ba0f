"""A study's command-line options, generated from its config dataclass.

Every config field made with :func:`gradwise.arena.study.option` becomes
``--<field-name>`` (underscores as dashes), typed by the field's annotation
(``int`` or ``float``), with its default and help, bounded by the field's
``at_least``/``below``. Values are checked by :mod:`gradwise._validate` while
the command line is parsed, so a bad value is argparse's one-line error (exit
status 2) naming what is accepted, before any work starts. A study's
``select`` option (``--optimizers A,B``) is parsed here too, into the list of
method names.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from gradwise._validate import check_int, check_real

__all__ = ["add_arguments", "add_ray_arguments", "value_type", "names_type", "option_fields", "config_from_args", "methods_from_args"]


def _accepted(err: ValueError) -> str:
    """What a :mod:`gradwise._validate` message says is accepted ("Invalid x: v (accepted: ...)")."""
    text = str(err)
    head, sep, tail = text.rpartition("(accepted: ")
    return tail[:-1] if sep and tail.endswith(")") else text


def value_type(name: str, kind: type, at_least: float | None = None,
               below: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for an ``int`` or ``float`` option named ``name``: the text parsed, then
    checked with :func:`~gradwise._validate.check_int` / :func:`~gradwise._validate.check_real`
    (finite, ``at_least <= value < below``); refused as "expected <what is accepted>, got '<text>'"."""
    if kind not in (int, float):
        raise TypeError(f"option {name}: only int and float options are generated, not {kind!r}")

    def check(value: Any) -> Any:
        if kind is int:
            if below is not None:
                return check_int(name, value, None if at_least is None else int(at_least), int(below) - 1)
            return check_int(name, value, None if at_least is None else int(at_least))
        return check_real(name, value, at_least, below, hi_open=True)

    try:
        check(None)
    except ValueError as err:
        accepted = _accepted(err)

    def parse(text: str) -> Any:
        try:
            value: Any = kind(text)
        except ValueError:
            value = text  # not a number: refused below, with the same message
        try:
            return check(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None

    parse.__name__ = accepted  # argparse names the type in some messages
    parse.accepted = accepted  # type: ignore[attr-defined]
    return parse


def names_type(study: Any) -> Callable[[str], list[str] | None]:
    """An argparse ``type`` for ``study.select``: comma-separated names of ``study.methods()``, returned
    as the study spells them, in the order given, each once; None for an empty list where that means all."""
    sel = study.select

    def parse(text: str) -> list[str] | None:
        known = list(study.methods())
        fold = str.lower if sel.ignore_case else str
        by_name = {fold(n): n for n in known}
        parts = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in parts if fold(t) not in by_name]
        if unknown or not (parts or sel.empty_means_all):
            said = f"unknown {', '.join(map(repr, unknown))}" if unknown else "no names"
            raise argparse.ArgumentTypeError(f"{said}; accepted: comma-separated {sel.what} from {', '.join(known)}")
        return list(dict.fromkeys(by_name[fold(t)] for t in parts)) or None

    parse.__name__ = sel.what
    return parse


def option_fields(config: type) -> list[dataclasses.Field]:
    """The fields of ``config`` that are command-line options (made with ``option``)."""
    return [f for f in dataclasses.fields(config) if "help" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, study: Any) -> None:
    """Add ``study``'s options to ``parser``: its ``select`` option, one option per config field made
    with ``option`` (in the order of the fields), and ``--out``."""
    if study.select is not None:
        sel = study.select
        parser.add_argument(f"--{sel.flag}", dest=sel.flag.replace("-", "_"), type=names_type(study), default=None,
                            metavar="A,B,C", help=f"comma-separated {sel.what} (default: {sel.default_text})")
    hints = typing.get_type_hints(study.config)
    for f in option_fields(study.config):
        meta = f.metadata
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                            metavar=meta.get("metavar"),
                            type=value_type(f.name, hints[f.name], meta.get("at_least"), meta.get("below")),
                            help=f"{meta['help']} (default {f.default})")
    parser.add_argument("--out", metavar="DIR", help="results folder (default runs/<timestamp>)")
    add_ray_arguments(parser)


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray`` and ``--ray-address ADDR``: run the seeds x methods as Ray tasks (see
    :mod:`gradwise.arena.ray_sweep`; ray is imported only when they are given)."""
    from gradwise.arena.ray_sweep import ADDRESS_ACCEPTED, address_type

    parser.add_argument("--ray", action="store_true",
                        help="run the seeds x methods as Ray tasks, each on the study's torch thread count, 1 (same rows as the serial "
                             "run); a local Ray with every CPU unless --ray-address; needs ray (the `ray` or "
                             "`federated` extra)")
    parser.add_argument("--ray-address", metavar="ADDR", type=address_type, default=None,
                        help=f"with --ray (implied): the Ray cluster to run on ({ADDRESS_ACCEPTED}; auto: the "
                             "cluster `ray start` began on this machine); gradwise must be installed on its nodes")


def config_from_args(study: Any, args: argparse.Namespace) -> Any:
    """The study's config: its defaults, with the value of each option present in ``args``."""
    given = {f.name: getattr(args, f.name) for f in option_fields(study.config) if hasattr(args, f.name)}
    return study.config(**given)


def methods_from_args(study: Any, args: argparse.Namespace) -> list[str]:
    """The methods to run: those named in the ``select`` option, else the study's default methods."""
    chosen = getattr(args, study.select.flag.replace("-", "_"), None) if study.select is not None else None
    if chosen:
        return list(chosen)
    return list(study.default_methods() if study.default_methods is not None else study.methods())
