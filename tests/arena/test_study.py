"""The Study record and the registry of studies (gradwise.arena.study), and the arena's old import paths."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import pytest

import gradwise.arena as arena
from gradwise.arena import DEFAULT_STUDY, STUDIES, Study, UsageError, load_study, studies
from gradwise.arena.study import Column


@dataclass(frozen=True)
class _Config:
    seeds: int = 1


def _kw(**kw):
    base = dict(name="t", help="t", config=_Config, methods=lambda: ("a",), title=lambda run, rows: "t",
                columns=(Column("method", lambda s: s["method"]),), outputs=(), smoke=(),
                run_one=lambda run, m, seed, shared: {"method": m, "x": 0.0}, summary_keys=("x",), rank_on="x")
    base.update(kw)
    return base


def test_a_study_is_checked_when_it_is_made():
    Study(**_kw())
    with pytest.raises(TypeError, match="exactly one of run_one and run_seed"):
        Study(**_kw(run_seed=lambda run, seed: []))
    with pytest.raises(TypeError, match="exactly one of run_one and run_seed"):
        Study(**_kw(run_one=None))
    with pytest.raises(TypeError, match="seed_setup needs"):
        Study(**_kw(seed_setup=lambda run, seed: (None, None)))
    with pytest.raises(TypeError, match="summary_keys and rank_on"):
        Study(**_kw(summary_keys=()))
    with pytest.raises(TypeError, match="config must be a dataclass"):
        Study(**_kw(config=dict))


def test_every_study_module_registers_its_study():
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules(arena.__path__) if m.name.endswith("_study")]
    found = studies()
    assert len(found) == len(modules) == 39
    assert list(found)[0] == DEFAULT_STUDY
    for name in modules:  # each module's STUDY is the registered record of that name
        module = importlib.import_module(f"gradwise.arena.{name}")
        assert found[module.STUDY.name] is module.STUDY
        assert module.STUDY.description == module.__doc__
    assert list(STUDIES) == list(found) and len(STUDIES) == 39 and STUDIES["imbalance"] is found["imbalance"]
    with pytest.raises(UsageError, match="unknown study 'nope'; choose from: optimizers, "):
        load_study("nope")


def test_old_import_paths_keep_working():
    import argparse

    from gradwise.arena import add_out_argument, add_seeds_argument, positive_int, report

    for name in ("mean_ci", "tie_ranks", "rank_summaries", "fmt_ci", "results_folder", "write_csv", "write_json",
                 "machine_line", "versions", "progress", "curve_styles", "plot_curves", "summarize", "leaderboard",
                 "write_results", "CI_NOTE", "RANK_NOTE"):
        assert hasattr(report, name), name
    for module in ("optimizers_study", "noisy_labels_study", "distillation_study", "calibration_study",
                   "imbalance_study", "preference_study", "grokking_study"):
        m = importlib.import_module(f"gradwise.arena.{module}")
        assert isinstance(m.HELP, str) and m.CONFIG == m.Config() and callable(m.add_arguments) and callable(m.run)
    with pytest.warns(DeprecationWarning, match=r"load_study\(name\).HELP is deprecated; use load_study\(name\).help"):
        assert load_study("imbalance").HELP == load_study("imbalance").help  # load_study returned the module
    p = argparse.ArgumentParser()
    add_seeds_argument(p, 3)
    add_out_argument(p)
    assert p.parse_args([]).seeds == 3 and positive_int("2") == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--seeds", "0"])
