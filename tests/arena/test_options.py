"""A study's command-line options, generated from its config dataclass (gradwise.arena.options)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import pytest

from gradwise.arena import STUDIES, load_study
from gradwise.arena.options import add_arguments, config_from_args, methods_from_args, names_type, option_fields, \
    value_type
from gradwise.arena.study import Column, Selection, Study, option


@dataclass(frozen=True)
class ToyConfig:
    steps: int = option(10, "steps per run", at_least=1)
    rate: float = option(0.5, "a rate", at_least=0.0, below=1.0)
    first_seed: int = option(0, "first seed", at_least=0)
    seeds: int = option(2, "seeds 0..N-1", at_least=1)
    hidden: tuple[int, ...] = (8,)   # not an option
    threads: int = 1


def _toy(**kw) -> Study:
    base = dict(name="toy", help="a toy", config=ToyConfig, methods=lambda: ("Alpha", "beta", "Gamma"),
                run_one=lambda run, m, seed, shared: {"method": m, "seed": seed, "x": 1.0},
                summary_keys=("x",), rank_on="x", title=lambda run, rows: "toy",
                columns=(Column("method", lambda s: s["method"]),), outputs=(), smoke=())
    return Study(**{**base, **kw})


def _parser(study: Study) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p, study)
    return p


def test_config_round_trips_through_the_command_line():
    study = _toy()
    p = _parser(study)
    assert config_from_args(study, p.parse_args([])) == ToyConfig()
    args = p.parse_args(["--steps", "7", "--rate", "0.25", "--first-seed", "3", "--seeds", "1", "--out", "x"])
    assert config_from_args(study, args) == replace(ToyConfig(), steps=7, rate=0.25, first_seed=3, seeds=1)
    assert args.out == "x"
    assert [f.name for f in option_fields(ToyConfig)] == ["steps", "rate", "first_seed", "seeds"]
    flags = {a.option_strings[-1] for a in p._actions if a.option_strings}
    assert "--hidden" not in flags and "--threads" not in flags and "--first-seed" in flags
    assert "steps per run (default 10)" in p.format_help()


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_study_parses_to_its_default_config(name):
    study = load_study(name)
    args = _parser(study).parse_args([])
    assert config_from_args(study, args) == study.config()
    assert methods_from_args(study, args)  # something runs by default


def test_values_are_checked_by_validate_with_what_is_accepted():
    count = value_type("steps", int, at_least=1)
    assert count("3") == 3 and count.accepted == "an integer >= 1"
    for bad in ("0", "-1", "1.5", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected an integer >= 1, got {bad!r}"):
            count(bad)
    rate = value_type("rate", float, at_least=0.0, below=0.9)
    assert rate("0") == 0.0 and rate("0.89") == 0.89
    for bad in ("0.9", "-0.1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number with 0.0 <= rate < 0.9"):
            rate(bad)
    assert value_type("n", int, at_least=0, below=3)("2") == 2
    with pytest.raises(argparse.ArgumentTypeError):
        value_type("n", int, at_least=0, below=3)("3")
    with pytest.raises(TypeError, match="only int and float"):
        value_type("name", str)


def test_selection_resolves_names_once_each_in_the_study_spelling():
    study = _toy(select=Selection("things", "thing names", ignore_case=True))
    parse = names_type(study)
    assert parse("alpha, GAMMA,Alpha") == ["Alpha", "Gamma"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown 'nope'; accepted: comma-separated thing names "
                                                         "from Alpha, beta, Gamma"):
        parse("alpha,nope")
    with pytest.raises(argparse.ArgumentTypeError, match="no names"):
        parse(" , ")
    strict = _toy(select=Selection("things", "thing names", empty_means_all=True, ),
                  default_methods=lambda: ("beta",))
    with pytest.raises(argparse.ArgumentTypeError, match="unknown 'alpha'"):
        names_type(strict)("alpha")
    p = _parser(strict)
    assert methods_from_args(strict, p.parse_args(["--things", ""])) == ["beta"]  # empty: the default methods
    assert methods_from_args(strict, p.parse_args([])) == ["beta"]
    assert methods_from_args(strict, p.parse_args(["--things", "Gamma,Alpha"])) == ["Gamma", "Alpha"]
