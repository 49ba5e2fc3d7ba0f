"""The `gradwise` command line: help, `methods` filtering, `bench` delegation."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import gradwise
from gradwise import registry
from gradwise.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def wide(monkeypatch):
    """Rich tables at 200 columns, so cells are not truncated."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def fake_registry(monkeypatch):
    """The real registry plus two made-up records, restored after the test."""
    registry.methods()  # import the real packages first, into the real registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register(kind="loss", paper="Zebra Losses for Striped Data", year=2031, arxiv=None, code=None,
                       summary="a made-up loss")
    def ZebraLoss():  # noqa: N802
        pass

    @registry.register(kind="optimizer", paper="Quokka: A Made-Up Optimizer", year=2032, arxiv="3201.00001",
                       code=None, summary="quux steps")
    class Quokka:
        pass


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("methods", "arena", "bench"):
        assert command in out


def test_arena_help_lists_studies_and_options(capsys):
    with pytest.raises(SystemExit):
        main(["arena", "--help"])
    assert "optimizers" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["arena", "optimizers", "--help"])
    out = capsys.readouterr().out
    for option in ("--optimizers", "--seeds", "--steps", "--out"):
        assert option in out


def test_unknown_command_and_study_are_usage_errors(capsys):
    for argv in (["frobnicate"], ["arena", "no-such-study"], ["methods", "--kind", "nonsense"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_python_m_gradwise():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "gradwise", "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "arena" in proc.stdout


def test_methods_filters_by_text(fake_registry, wide, capsys):
    assert main(["methods", "zebra"]) == 0
    out = capsys.readouterr().out
    assert "ZebraLoss" in out and "Quokka" not in out
    assert main(["methods", "QUUX"]) == 0  # summary, case-insensitive
    out = capsys.readouterr().out
    assert "Quokka" in out and "ZebraLoss" not in out


def test_methods_filters_by_kind(fake_registry, wide, capsys):
    assert main(["methods", "--kind", "loss"]) == 0
    out = capsys.readouterr().out
    assert "ZebraLoss" in out and "Quokka" not in out
    assert main(["methods", "made-up", "--kind", "optimizer"]) == 0
    out = capsys.readouterr().out
    assert "Quokka" in out and "ZebraLoss" not in out


def test_methods_without_filter_lists_all(fake_registry, wide, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in registry.methods())


def test_methods_no_match(fake_registry, capsys):
    assert main(["methods", "no method has this text"]) == 0
    assert "no methods match" in capsys.readouterr().out


def _fake_bench(monkeypatch, main_fn):
    module = types.ModuleType("gradwise.bench")
    module.main = main_fn
    monkeypatch.setitem(sys.modules, "gradwise.bench", module)
    monkeypatch.setattr(gradwise, "bench", module, raising=False)


def test_bench_delegates_its_arguments(monkeypatch):
    seen = []
    _fake_bench(monkeypatch, lambda argv: seen.append(argv) or 0)
    assert main(["bench", "--rounds", "3", "-x"]) == 0
    assert seen == [["--rounds", "3", "-x"]]


def test_bench_without_pytorch_optimizer_is_a_clear_error(monkeypatch, capsys):
    def needs_peer(argv):
        raise ModuleNotFoundError("No module named 'pytorch_optimizer'", name="pytorch_optimizer")

    _fake_bench(monkeypatch, needs_peer)
    assert main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "pytorch_optimizer" in err and "gradwise[bench]" in err
