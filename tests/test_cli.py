"""The `gradwise` command line: help, `methods` filtering, `bench` delegation."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console

from gradwise import cli, registry
from gradwise.arena import STUDIES, load_study
from gradwise.cli import escape_percent, main, print_methods, rst_to_text

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

    @registry.register(kind="loss", family="losses", paper="Zebra Losses for Striped Data", year=2031, arxiv=None,
                       code="https://github.com/zebra-lab/stripes", summary="a made-up loss")
    def ZebraLoss():  # noqa: N802
        pass

    @registry.register(kind="optimizer", family="optim", paper="Quokka: A Made-Up Optimizer", year=2032, arxiv="3201.00001",
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
    for option in ("--optimizers", "--seeds", "--steps", "--out", "--ray", "--ray-address"):
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
    assert main(["methods", "no method has this text"]) == 1
    assert "No gradwise method matches 'no method has this text'" in capsys.readouterr().out


def _fake_bench(monkeypatch, main_fn):
    # `gradwise bench` runs benchmarks/optim_step.py of the checkout; a made-up script stands in for it
    from gradwise import _benchmarks

    module = types.ModuleType("optim_step")
    module.main = main_fn
    monkeypatch.setattr(_benchmarks, "load", lambda script: module if script == "optim_step" else None)


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


def test_bench_from_an_installation_without_the_benchmarks_folder_is_one_line_and_exit_2(monkeypatch, capsys):
    from gradwise import _benchmarks

    monkeypatch.setattr(_benchmarks, "benchmarks_dir", lambda: None)
    assert main(["bench", "--small"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradwise bench: error: the benchmarks are not part of this "
                                                   "installation") and "benchmarks/" in err


def test_bench_finds_the_checkouts_benchmarks_folder():
    from gradwise import _benchmarks

    folder = _benchmarks.benchmarks_dir()
    assert folder is not None and (folder / "optim_step.py").is_file() and folder.parent.joinpath("src").is_dir()


# --------------------------------------------------------------------------- help text is plain text

_RST = re.compile(r"``|:[a-z]+:`|\{'option_strings'")


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_arena_help_shows_every_study_line_as_written(capsys, wide):
    out = _help(["arena", "--help"], capsys)
    assert not _RST.search(out), out  # the noisy-labels line printed a Python dict ("40%" reached argparse)
    for name in STUDIES:
        assert _flat(rst_to_text(load_study(name).help)) in _flat(out), name


@pytest.mark.parametrize("study", list(STUDIES))
def test_each_study_help_is_plain_text(study, capsys):
    out = _help(["arena", study, "--help"], capsys)
    assert not _RST.search(out), out
    assert f"Study {study}:" in out  # the docstring's first line, markup removed


def test_study_help_with_percent_signs_and_rest_markup(monkeypatch, capsys, wide):
    from dataclasses import dataclass

    from gradwise.arena import study as study_registry
    from gradwise.arena.study import Column, Study, option

    @dataclass(frozen=True)
    class Config:
        rate: float = option(0.4, "keep 50% of ``rate`` (see :func:`~gradwise.losses.kd_loss`)")
        seeds: int = 1

    fake = Study(name="fake", help="drops 40% of the labels of :class:`~torch.nn.Linear`", config=Config,
                 description="Study ``fake``: uses :class:`gradwise.optim.Lion` and **bold** *words*, 100%.\n\n"
                             "Methods::\n\n* ``one`` -- the first;\n* ``two`` -- the second, on a\n  continued line.\n",
                 methods=lambda: ("one", "two"), run_one=lambda run, m, seed, shared: {"method": m, "x": 1.0},
                 summary_keys=("x",), rank_on="x", title=lambda run, rows: "t",
                 columns=(Column("method", lambda s: s["method"]),), outputs=(), smoke=())
    monkeypatch.setitem(study_registry._STUDIES, "fake", fake)
    top = _help(["arena", "--help"], capsys)
    assert "drops 40% of the labels of Linear" in _flat(top) and "option_strings" not in top
    out = _help(["arena", "fake", "--help"], capsys)
    assert "Study fake: uses gradwise.optim.Lion and bold words, 100%." in _flat(out)
    assert "keep 50% of rate (see kd_loss) (default 0.4)" in _flat(out)
    assert "Methods:\n" in out and "::" not in out
    lines = out.splitlines()  # list items keep their own lines instead of running into one paragraph
    assert "* one -- the first;" in lines
    assert "* two -- the second, on a continued line." in lines


def test_rst_to_text_and_escape_percent():
    assert rst_to_text(":class:`~gradwise.preference.PreferenceTrainer`") == "PreferenceTrainer"
    assert rst_to_text(":func:`gradwise.losses.kd_loss`") == "gradwise.losses.kd_loss"
    assert rst_to_text(":ref:`the guide <guide-label>`") == "the guide"
    assert rst_to_text("``LRS`` and `x` and 2 * ND * 3") == "LRS and x and 2 * ND * 3"
    assert rst_to_text("Example::\n\n    code\n.. math::\n\n    a = b") == "Example:\n\n    code\n\n    a = b"
    assert escape_percent("40% (default %(default)s, %% kept)") == "40%% (default %(default)s, %% kept)"
    assert escape_percent("%s %d") == "%%s %%d"  # only named formats are argparse's


def test_build_parser_imports_no_method_package():
    """`gradwise --help` and `gradwise arena` stay fast: the --kind choices are resolved only when used."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from gradwise.cli import build_parser; from gradwise.registry import FAMILIES; "
            "build_parser(); print(sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(tuple(f'gradwise.{f}' for f in FAMILIES))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- methods: search, kinds, layout


@pytest.mark.parametrize("text", ["3201.00001", "arXiv:3201.00001", "https://arxiv.org/abs/3201.00001",
                                  "quokka a made-up optimizer"])
def test_methods_finds_arxiv_ids_and_titles(fake_registry, wide, capsys, text):
    assert main(["methods", text]) == 0
    out = capsys.readouterr().out
    assert "Quokka" in out and "ZebraLoss" not in out


def test_methods_finds_code_urls(fake_registry, wide, capsys):
    assert main(["methods", "zebra-lab/stripes"]) == 0
    out = capsys.readouterr().out
    assert "ZebraLoss" in out and "Quokka" not in out


def test_methods_finds_every_record_by_its_arxiv_id_and_code():
    for m in registry.methods():
        if m.arxiv:
            assert m in registry.methods(m.arxiv), m.name
        if m.code:
            assert m in registry.methods(m.code), m.name


@pytest.fixture
def only_fake_kinds(monkeypatch):
    """A registry holding only a loss and an optimizer."""
    registry.methods()
    monkeypatch.setattr(registry, "_REGISTRY", {})

    @registry.register(kind="loss", family="losses", paper="Zebra Losses for Striped Data", year=2031, arxiv=None, code=None,
                       summary="a made-up loss")
    def ZebraLoss():  # noqa: N802
        pass

    @registry.register(kind="optimizer", family="optim", paper="Quokka: A Made-Up Optimizer", year=2032, arxiv=None, code=None,
                       summary="quux steps")
    class Quokka:
        pass


def test_kind_choices_are_the_kinds_that_have_methods(only_fake_kinds, capsys):
    assert main(["methods", "--kind", "loss"]) == 0
    assert "ZebraLoss" in capsys.readouterr().out
    assert "metric" in registry.KINDS  # kept for future families ...
    with pytest.raises(SystemExit) as exc:  # ... but not offered without a method
        main(["methods", "--kind", "metric"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'metric'" in err and "'optimizer', 'loss'" in err


def test_kind_choices_match_the_registry():
    kind_action = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["methods"]._actions
                       if a.dest == "kind")
    assert tuple(kind_action.choices) == tuple(k for k in registry.KINDS if registry.methods(kind=k))


@pytest.mark.parametrize("width", [40, 60, 80, 100, 200])
def test_methods_table_never_splits_a_word(width):
    """Every word of every cell is printed whole (the table used to fold words mid-word at 80 columns)."""
    records = registry.methods()
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    print_methods(console, records)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    printed = set(re.sub(r"[\u2500-\u257f]", " ", text).split())  # box-drawing characters out
    for m in records:
        for field in (m.name, m.family, m.kind, str(m.year), m.paper, m.arxiv or "", m.summary):
            missing = [w for w in field.split() if w not in printed]
            assert not missing, (width, m.name, missing)


def test_methods_not_implemented_points_to_coverage(wide, capsys):
    assert main(["methods", "kto"]) == 1
    out = _flat(capsys.readouterr().out)
    assert "No gradwise method matches 'kto': gradwise does not implement it" in out
    assert "docs/coverage.md" in out


def test_methods_not_implemented_shows_the_seed_list_status(wide, capsys):
    from gradwise.docs import seed_papers

    paper = next(p for p in seed_papers() if p.status == "planned" and not registry.methods(p.title))
    assert main(["methods", paper.title.lower()]) == 1
    out = _flat(capsys.readouterr().out)
    assert "does not implement it" in out and "docs/coverage.md" in out
    assert f"│ {paper.idx} │ {paper.title.split()[0]}" in out and "│ planned" in out


def test_methods_of_another_kind_are_named(fake_registry, wide, capsys):
    assert main(["methods", "quokka", "--kind", "loss"]) == 1
    out = capsys.readouterr().out
    assert "No method of kind 'loss' matches 'quokka'" in out and "Quokka (optim, optimizer)" in out
    assert "does not implement" not in out


def test_methods_filters_by_family_and_shows_it(fake_registry, wide, capsys):
    assert main(["methods", "--family", "losses"]) == 0
    out = capsys.readouterr().out
    assert "ZebraLoss" in out and "Quokka" not in out and "│ losses" in out
    assert all(m.name in out for m in registry.methods(family="losses"))
    assert main(["methods", "quokka", "--family", "losses"]) == 1
    assert "No method of family 'losses' matches 'quokka'" in capsys.readouterr().out
    assert main(["methods", "--family", "metrics", "--kind", "optimizer"]) == 1
    out = capsys.readouterr().out
    assert "No method of kind 'optimizer' in family 'metrics'" in out and "metric" in out


def test_family_choices_are_the_registry_families(capsys):
    family_action = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["methods"]._actions
                         if a.dest == "family")
    assert tuple(family_action.choices) == registry.FAMILIES
    with pytest.raises(SystemExit) as exc:
        main(["methods", "--family", "nonsense"])
    assert exc.value.code == 2 and "argument --family: invalid choice: 'nonsense'" in capsys.readouterr().err


# --------------------------------------------------------------------------- user mistakes: one line, exit 2

def _study_parsers():
    """{study: its argparse parser}, from the CLI's own parser (so a new study or option is covered)."""
    import argparse

    def sub(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices

    return sub(sub(cli.build_parser())["arena"])


# bad values by what an option accepts; each must be refused by argparse, before the study runs
_BAD_COUNTS = ["0", "-1", "x", "1.5", ""]
_BAD_BY_OPTION = {
    ("data-free", "--bits"): ["1", "0", "9", "-4", "2.5", "x"],
    ("optimizers", "--first-seed"): ["-1", "x", "0.5"],
    ("optimizers", "--optimizers"): ["nope", "AdamW,nope", ",", " "],
    ("noisy-labels", "--noise"): ["0.9", "-0.1", "nan", "inf", "x"],
    ("noisy-labels", "--losses"): ["nope", "CE,nope", "ce"],
    ("imbalance", "--ratio"): ["0.5", "nan", "inf", "-3", "x"],
    ("fdvl", "--noise"): ["-0.1", "nan", "inf", "x"],
    ("adapters", "--lr"): ["0", "-1e-3", "1", "nan", "inf", "x"],
    ("node-reg", "--lam-error"): ["-0.1", "nan", "inf", "x"],
    ("node-reg", "--lam-stiffness"): ["-0.1", "nan", "inf", "x"],
    ("node-reg", "--lam-local"): ["-0.1", "nan", "inf", "x"],
    ("lpn", "--gamma-min"): ["0", "-0.1", "nan", "inf", "x"],
    ("lpn", "--rho"): ["0", "-1", "nan", "inf", "x"],
    ("lr-sensitivity", "--configs"): ["nope", "pre,mid", "pre+qk+qk"],
    ("lr-sensitivity", "--lr-min"): ["0", "-1e-3", "nan", "x"],
    ("lr-sensitivity", "--lr-max"): ["0", "-1", "nan", "x"],
    ("lr-sensitivity", "--probe-lr"): ["0", "-0.1", "nan", "x"],
    ("lr-sensitivity", "--probe-lr-high"): ["0", "-0.1", "nan", "x"],
    ("grokking", "--p"): ["1", "0", "x", "2.5"],
    ("grokking", "--train-fraction"): ["0", "1", "1.5", "nan", "x"],
    ("grokking", "--lr"): ["-1", "nan", "inf", "x"],
    ("grokking", "--weight-decay"): ["-1", "nan", "inf", "x"],
    ("grokking", "--methods"): ["nope", "softmax,nope"],
    ("powernorm", "--max-len"): ["1", "0", "x", "1.5"],
    ("powernorm", "--batch-size"): ["1", "0", "x", "2.5"],
    ("powernorm", "--warmup"): ["-1", "x", "0.5"],
    ("powernorm", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("annealing-law", "--laws"): ["nope", "annealing,nope"],
    ("annealing-law", "--steps"): ["9", "0", "x", "2.5"],
    ("annealing-law", "--peak-lr"): ["0", "-1", "nan", "inf", "x"],
    ("annealing-law", "--min-lr-fraction"): ["-0.1", "1", "nan", "x"],
    ("annealing-law", "--wsd-decay-fraction"): ["0", "1", "nan", "x"],
    ("annealing-law", "--step-factor"): ["0", "1", "2", "nan", "x"],
    ("annealing-law", "--decay"): ["-0.1", "1", "nan", "x"],
    ("annealing-law", "--d-model"): ["3", "0", "x", "8.5"],
    ("batch-size", "--methods"): ["nope", "norm-1,nope", "norm-2"],
    ("batch-size", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("batch-size", "--hidden"): ["-1", "x", "2.5"],
    ("batch-size", "--target"): ["-0.1", "1", "nan", "x"],
    ("sharpness", "--noise"): ["0.9", "-0.1", "nan", "inf", "x"],
    ("sharpness", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("sharpness", "--rho"): ["-0.1", "nan", "inf", "x"],
    ("sharpness", "--saf-coef"): ["-1", "nan", "inf", "x"],
    ("sharpness", "--mesa-coef"): ["-1", "nan", "inf", "x"],
    ("sharpness", "--start-epoch"): ["-1", "x", "0.5"],
    ("sharpness", "--temperature"): ["0", "-1", "nan", "inf", "x"],
    ("sharpness", "--mesa-horizon"): ["0", "-1", "nan", "inf", "x"],
    ("adaptive-smoothing", "--eps"): ["0", "1", "-0.1", "nan", "inf", "x"],
    ("adaptive-smoothing", "--alpha-min"): ["1", "-0.1", "nan", "inf", "x"],
    ("compression", "--methods"): ["nope", "ls-sgd,nope", "cnn-powersgd-3"],
    ("compression", "--heterogeneity"): ["-1", "nan", "inf", "x"],
    ("compression", "--topk-ratio"): ["0", "1", "-0.1", "nan", "x"],
    ("compression", "--ls-lr"): ["0", "2", "-1", "nan", "x"],
    ("compression", "--ls-noise"): ["-1", "nan", "inf", "x"],
    ("compression", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("federated", "--methods"): ["nope", "FedAvg,nope", ","],
    ("federated", "--clients"): ["1", "0", "x", "2.5"],
    ("federated", "--alpha-strong"): ["0", "-1", "nan", "inf", "x"],
    ("federated", "--alpha-mild"): ["0", "-1", "nan", "inf", "x"],
    ("federated", "--participation-mean"): ["0", "1.5", "nan", "x"],
    ("federated", "--participation-min"): ["-0.1", "1.5", "nan", "x"],
    ("federated", "--participation-alpha"): ["0", "-1", "nan", "x"],
    ("federated", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("federated", "--target"): ["-0.1", "1", "nan", "x"],
    ("continual", "--methods"): ["nope", "ER,nope", "er", ","],
    ("continual", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("continual", "--ewc-lambda"): ["-1", "nan", "inf", "x"],
    ("unlearning", "--methods"): ["nope", "FT,nope", "SCRUB", ","],
    ("unlearning", "--forget-class"): ["-2", "10", "x", "0.5"],
    ("unlearning", "--forget-fraction"): ["0", "1", "-0.1", "nan", "x"],
    ("unlearning", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("unlearning", "--unlearn-lr"): ["0", "-1", "nan", "inf", "x"],
    ("unlearning", "--ga-lr"): ["0", "-1", "nan", "inf", "x"],
    ("unlearning", "--salun-ratio"): ["0", "1", "1.5", "nan", "x"],
    ("unlearning", "--dm-models"): ["1", "0", "x", "2.5"],
    ("unlearning", "--dm-lr"): ["0", "-1", "nan", "inf", "x"],
    ("unlearning", "--klom-models"): ["1", "0", "x", "2.5"],
    ("tta", "--methods"): ["nope", "tent,nope", ",", "alpha-bn"],
    ("consistency", "--methods"): ["nope", "ict,nope", ","],
    ("consistency", "--steps"): ["19", "0", "x", "2.5"],
    ("consistency", "--batch-size"): ["1", "0", "x", "2.5"],
    ("consistency", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("consistency", "--width"): ["7", "0", "x", "2.5"],
    ("consistency", "--train-samples"): ["15", "0", "x", "2.5"],
    ("consistency", "--eval-samples"): ["15", "0", "x", "2.5"],
    ("consistency", "--outlier-frac"): ["-0.1", "1", "nan", "x"],
    ("consistency", "--outlier-df"): ["0", "-1", "nan", "inf", "x"],
    ("consistency", "--outlier-scale"): ["-0.1", "nan", "inf", "x"],
    ("consistency", "--sigma-max"): ["0.5", "-1", "nan", "inf", "x"],
    ("consistency", "--c"): ["-0.1", "nan", "inf", "x"],
    ("consistency", "--mid-sigma"): ["0", "-1", "nan", "inf", "x"],
    ("consistency", "--ema-mu0"): ["-0.1", "1", "nan", "x"],
    ("consistency", "--digits-steps"): ["19", "0", "x", "2.5"],
    ("consistency", "--digits-batch"): ["1", "0", "x", "2.5"],
    ("consistency", "--digits-lr"): ["0", "-1", "nan", "inf", "x"],
    ("consistency", "--digits-channels"): ["7", "0", "x", "2.5"],
    ("consistency", "--digits-eval-per-class"): ["1", "0", "x", "2.5"],
    ("delta-pruning", "--pre-epochs"): ["0", "x", "2.5"],
    ("delta-pruning", "--ft-epochs"): ["0", "x", "2.5"],
    ("delta-pruning", "--l2"): ["-0.1", "nan", "inf", "x"],
    ("pruning-allocation", "--epochs"): ["0", "x", "2.5"],
    ("pruning-allocation", "--calib"): ["0", "x", "2.5"],
    ("reward-diffusion", "--methods"): ["nope", "controlnet++,nope", "find", ","],
    ("reward-diffusion", "--eval-samples"): ["9", "0", "x", "2.5"],
    ("reward-diffusion", "--eval-steps"): ["1", "0", "x", "2.5"],
    ("reward-diffusion", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("reward-diffusion", "--batch-size"): ["1", "0", "x", "2.5"],
    ("reward-diffusion", "--reward-weight"): ["-0.1", "nan", "inf", "x"],
    ("reward-diffusion", "--reward-sigma"): ["0", "-1", "nan", "inf", "x"],
    ("reward-diffusion", "--noise-p"): ["-0.1", "1", "nan", "x"],
    ("reward-diffusion", "--u-scale"): ["-0.1", "nan", "inf", "x"],
    ("reward-diffusion", "--adjoint-steps"): ["1", "0", "x", "2.5"],
    ("reward-diffusion", "--adjoint-lr"): ["0", "-1", "nan", "inf", "x"],
    ("reward-diffusion", "--ddim-steps"): ["1", "0", "x", "2.5"],
    ("reward-diffusion", "--pairs"): ["1", "0", "x", "2.5"],
    ("reward-diffusion", "--pref-lr"): ["0", "-1", "nan", "inf", "x"],
    ("reward-diffusion", "--beta"): ["0", "-1", "nan", "inf", "x"],
    ("reward-diffusion", "--memory"): ["-1", "2", "x", "0.5"],
    ("guidance", "--steps"): ["1", "0", "x", "2.5"],
    ("guidance", "--tune-w"): ["0.5", "-1", "nan", "inf", "x"],
    ("guidance", "--ag-w"): ["0.5", "-1", "nan", "inf", "x"],
    ("guidance", "--solver-w"): ["0.5", "-1", "nan", "inf", "x"],
    ("guidance", "--reference-steps"): ["9", "0", "x", "2.5"],
    ("one-step", "--methods"): ["nope", "dmd,nope", "sim", ","],
    ("one-step", "--batch-size"): ["1", "0", "x", "2.5"],
    ("one-step", "--gen-lr"): ["0", "-1", "nan", "inf", "x"],
    ("one-step", "--fake-lr"): ["0", "-1", "nan", "inf", "x"],
    ("one-step", "--gan-weight"): ["-0.1", "nan", "inf", "x"],
    ("one-step", "--eval-n"): ["15", "0", "x", "2.5"],
    ("one-step", "--checkpoints"): ["1", "0", "x", "2.5"],
    ("bandits", "--methods"): ["nope", "linucb,nope", "LinUCB", ","],
    ("bandits", "--sigma"): ["-0.1", "nan", "inf", "x"],
    ("bandits", "--horizon"): ["9", "0", "x", "2.5"],
    ("neucb", "--methods"): ["nope", "igw-kl,nope", "IGW-KL", ","],
    ("neucb", "--rounds"): ["9", "0", "x", "2.5"],
    ("neucb", "--gamma-scale"): ["-1", "nan", "inf", "x"],
    ("neucb", "--epsilon"): ["-0.1", "1", "nan", "x"],
    ("riql", "--methods"): ["nope", "IQL,nope", "riql", ","],
    ("riql", "--steps"): ["0", "x", "2.5"],
    ("riql", "--data-steps"): ["1", "0", "x", "2.5"],
    ("riql", "--rate"): ["-0.1", "1", "nan", "inf", "x"],
    ("riql", "--episodes"): ["0", "x", "2.5"],
    ("odice", "--modes"): ["nope", "semi,nope", "SEMI", ","],
    ("odice", "--replay-steps"): ["-1", "x", "0.5"],
    ("odice", "--lam"): ["-0.1", "1", "nan", "x"],
    ("odice", "--eta"): ["-1", "nan", "inf", "x"],
    ("ntk", "--widths"): ["nope", "64,nope", "100", ","],
    ("ntk", "--points"): ["1", "0", "x", "2.5"],
    ("tta", "--batch-size"): ["1", "0", "x", "2.5"],
    ("tta", "--label-alpha"): ["-0.1", "nan", "inf", "x"],
    ("tta", "--lr"): ["0", "-1", "nan", "inf", "x"],
    ("tta", "--fisher-alpha"): ["-1", "nan", "inf", "x"],
    ("tta", "--npc-k"): ["0", "1078", "x", "2.5"],
    ("tta", "--test-limit"): ["1", "0", "x", "2.5"],
    ("tta", "--rws"): ["-1", "2", "x", "0.5"],
    ("causal-pinn", "--chunks"): ["1", "0", "x", "2.5"],
    ("causal-pinn", "--t-end"): ["0.5", "nan", "inf", "x"],
    ("causal-pinn", "--ac-t-end"): ["0.05", "nan", "inf", "x"],
    ("causal-pinn", "--causal-eps"): ["-1", "nan", "inf", "x"],
    ("rlhf-resets", "--batch"): ["1", "0", "x", "2.5"],
    ("rlhf-resets", "--kl-coef"): ["-0.1", "nan", "inf", "x"],
    ("rlhf-resets", "--beta"): ["-0.1", "1.5", "nan", "inf", "x"],
}

# options every study has
_BAD_ANY_STUDY = {"--ray-address": ["", "cluster", "host:", "host:99999", "http://host:80"]}


def _bad_cases():
    cases = []
    for study, parser in _study_parsers().items():
        for action in parser._actions:
            # --out: the arena's own checks; --ray: a flag without a value
            if not action.option_strings or action.dest in ("help", "out", "ray"):
                continue
            opt = action.option_strings[-1]
            bad = _BAD_BY_OPTION.get((study, opt), _BAD_ANY_STUDY.get(opt))
            if bad is None:
                assert getattr(action.type, "accepted", None) == "an integer >= 1", \
                    f"{study} {opt}: add its bad values to _BAD_BY_OPTION"
                bad = _BAD_COUNTS
            cases += [(study, opt, v) for v in bad]
    return cases


def _run_cli(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.fixture
def no_study_runs(monkeypatch):
    """A study that gets past argument checking fails the test instead of running."""
    from gradwise.arena import driver

    monkeypatch.setattr(driver, "run_from_args", lambda study, args, console: pytest.fail(f"ran with {args}"))


def test_every_study_option_with_a_bad_value_is_one_line_and_exit_2(capsys, no_study_runs):
    cases = _bad_cases()
    assert {s for s, _, _ in cases} == set(STUDIES)
    for study, opt, value in cases:
        rc, err = _run_cli(["arena", study, f"{opt}={value}"], capsys)
        assert rc == 2, (study, opt, value)
        assert err.count("\n") == 1 and "Traceback" not in err, (study, opt, value, err)
        assert err.startswith(f"gradwise arena {study}: error: argument {opt}: "), err
        assert "expected" in err or "accepted" in err, err


def test_named_examples_from_the_issue(capsys, no_study_runs):
    for argv, says in (
        (["arena", "--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
        (["arena", "optimizers", "--steps", "-1"], "argument --steps: expected an integer >= 1, got '-1'"),
        (["arena", "noisy-labels", "--noise", "0.9"],
         "argument --noise: expected a finite number with 0.0 <= noise < 0.9, got '0.9'"),
        (["arena", "optimizers", "--optimizers", "nope"], "argument --optimizers: unknown 'nope'; accepted: "
                                                          "comma-separated optimizer names from AdamW,"),
        (["arena", "no-such-study"], "argument STUDY: invalid choice: 'no-such-study' (choose from 'optimizers'"),
        (["methods", "--kind", "nonsense"], "argument --kind: invalid choice: 'nonsense'"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["arena", "optimizers", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ):
        rc, err = _run_cli(argv, capsys)
        assert rc == 2 and err.count("\n") == 1 and says in err, (argv, err)


def test_good_values_still_reach_the_study(monkeypatch, capsys):
    from gradwise.arena import driver

    seen = {}
    monkeypatch.setattr(driver, "run_from_args", lambda study, args, console: seen.update(vars(args), study=study.name))
    assert main(["arena", "noisy-labels", "--seeds", "2", "--noise", "0.25", "--losses", "CE,LDR-KL"]) == 0
    assert seen["study"] == "noisy-labels" and seen["seeds"] == 2 and seen["noise"] == 0.25
    assert seen["losses"] == ["CE", "LDR-KL"]  # resolved while parsing
    assert main(["arena", "--optimizers", "adamw,lion,ADAMW", "--first-seed", "0"]) == 0
    assert seen["study"] == "optimizers" and seen["optimizers"] == ["AdamW", "Lion"] and seen["first_seed"] == 0


def test_usage_error_from_a_study_is_one_line(monkeypatch, capsys):
    from gradwise.arena import UsageError, driver

    def refuse(study, args, console):
        raise UsageError("--out runs/x: the folder is not writable")
    monkeypatch.setattr(driver, "run_from_args", refuse)
    rc, err = _run_cli(["arena", "imbalance"], capsys)
    assert rc == 2 and err == "gradwise arena imbalance: error: --out runs/x: the folder is not writable\n"
