"""The arena's shared reporting: confidence intervals, ranks with ties, plot styles and
y-limits, the results folder (--out errors, written all at once), and the torch.optim
baselines of the optimizers study."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.arena import UsageError, baselines, calibration_study, optimizers_study, report, results
from gradwise.arena.report import Rank
from gradwise.arena.runner import RunResult
from gradwise.cli import main


def _run(name: str, acc: float, seed: int = 0, curve: list[float] | None = None) -> RunResult:
    curve = curve if curve is not None else [2.0, 1.0, 0.5]
    return RunResult(optimizer=name, seed=seed, lr=0.1, steps=10, eval_acc=acc, eval_loss=0.1,
                     final_train_loss=curve[-1], steps_to_target=None, wall_s=1.0,
                     curve_steps=list(range(0, 5 * len(curve), 5)), curve_loss=curve)


# ------------------------------------------------------------------ intervals and ranks

def test_mean_ci_is_the_student_t_interval():
    mean, half = report.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{0.975, 2 df} * s / sqrt(n), s = 1
    mean, half = report.mean_ci([0.5, 0.7, 0.6, 0.9, 0.8])
    assert half == pytest.approx(2.7764451051977987 * np.std([0.5, 0.7, 0.6, 0.9, 0.8], ddof=1) / math.sqrt(5))
    assert report.mean_ci([0.3]) == (0.3, math.inf)  # one seed: no interval
    assert math.isnan(report.mean_ci([0.3, math.nan])[1])
    assert report.fmt_ci(0.5, math.inf) == "0.5000 ± —"
    assert report.fmt_ci(0.91234, 0.01, 2, scale=100) == "91.23 ± 1.00"
    fields = report.mean_ci_fields([{"a": 1.0}, {"a": 2.0}, {"a": 3.0}], ("a",))
    assert fields == {"a_mean": 2.0, "a_std": 1.0, "a_ci": pytest.approx(2.4841377118)}


def test_tie_ranks_share_the_rank_of_the_best_of_their_group():
    # sorted: A 0.90 [0.88, 0.92]; C 0.85 [0.79, 0.91] overlaps A; B 0.80 [0.79, 0.81] is clear of A
    # (though it overlaps C); D 0.50 is alone
    ranks = report.tie_ranks([0.90, 0.80, 0.85, 0.50], [0.02, 0.01, 0.06, 0.01])
    assert ranks == [Rank(1, True), Rank(3, False), Rank(1, True), Rank(4, False)]
    assert [report.rank_label(r) for r in ranks] == ["=1", "3", "=1", "4"]
    # B and D now overlap each other: a tie at rank 3
    assert report.tie_ranks([0.90, 0.80, 0.85, 0.79], [0.02, 0.01, 0.06, 0.01])[3] == Rank(3, True)


def test_tie_ranks_lower_is_better_nan_last_and_one_seed_ties_everything():
    assert report.tie_ranks([0.02, 0.10, 0.01], [0.001, 0.001, 0.001], higher_is_better=False) == [
        Rank(2, False), Rank(3, False), Rank(1, False)]
    assert report.tie_ranks([math.nan, 0.5, 0.9], [0.1, 0.01, 0.01]) == [Rank(3, False), Rank(2, False),
                                                                        Rank(1, False)]
    assert report.tie_ranks([0.5, 0.9], [math.inf, math.inf]) == [Rank(1, True), Rank(1, True)]
    with pytest.raises(ValueError):
        report.tie_ranks([0.5], [])


def test_rank_summaries_sorts_by_rank_then_mean():
    rows = [{"m": "x", "acc_mean": 0.5, "acc_ci": 0.01}, {"m": "y", "acc_mean": 0.9, "acc_ci": 0.1},
            {"m": "z", "acc_mean": 0.85, "acc_ci": 0.01}]
    out = report.rank_summaries(rows, "acc")
    assert [(r["m"], r["rank"], r["tied"]) for r in out] == [("y", 1, True), ("z", 1, True), ("x", 3, False)]


def test_summarize_ranks_on_test_accuracy_with_intervals():
    runs = [_run("A", a, s) for s, a in enumerate((0.95, 0.96, 0.97))]
    runs += [_run("B", a, s) for s, a in enumerate((0.94, 0.96, 0.96))]
    runs += [_run("C", a, s) for s, a in enumerate((0.50, 0.51, 0.52))]
    summary = report.summarize(runs)
    assert [(s.name, s.rank, s.tied) for s in summary] == [("A", 1, True), ("B", 1, True), ("C", 3, False)]
    assert summary[0].acc_ci == pytest.approx(report.mean_ci([0.95, 0.96, 0.97])[1])


def test_compare_rankings_finds_changed_leaders_and_reversals():
    a = {"A": Rank(1, True), "B": Rank(1, True), "C": Rank(3, False), "D": Rank(4, False)}
    assert report.compare_rankings(a, dict(a))["agree"]
    b = {"A": Rank(1, False), "B": Rank(2, False), "C": Rank(3, False), "D": Rank(4, False)}
    res = report.compare_rankings(a, b)
    assert res["leaders_b"] == ["A"] and not res["agree"] and res["reversals"] == []
    c = {"A": Rank(3, False), "B": Rank(3, False), "C": Rank(1, False), "D": Rank(4, False)}
    assert report.compare_rankings(a, c)["reversals"] == [("A", "C"), ("B", "C")]


def test_machine_names_the_cpu_and_torch():
    m = report.machine()
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] == torch.__version__
    assert m["cpu"] in report.machine_line() and "cores" in report.machine_line()
    assert report.versions()["machine"] == m


# ------------------------------------------------------------------ plots

def test_every_method_gets_its_own_colour_and_style():
    names = list(optimizers_study.candidates())
    styles = report.curve_styles(names)
    assert len({s["color"] for s in styles.values()}) == len(names)  # today's 14: all colours distinct
    assert styles["StableSPAM"]["color"] != styles["AdamW"]["color"]
    assert styles["Lion"]["markevery"] != styles["LionK"]["markevery"]  # identical curves stay visible
    many = report.curve_styles([f"m{i}" for i in range(40)])
    assert len({(s["color"], s["ls"], s["marker"]) for s in many.values()}) == 40


def test_identical_curves_are_named_in_the_legend(tmp_path):
    runs = [_run("Lion", 0.9), _run("LionK", 0.9), _run("AdamW", 0.9, curve=[2.0, 0.5, 0.1])]
    labels = report.plot_curves(tmp_path / "c.png", runs, target_loss=0.2, title="t")
    assert labels[:3] == ["Lion", "LionK (identical to Lion)", "AdamW"]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_robust_ylim_ignores_a_spike_to_zero():
    curve = list(np.geomspace(2.3, 1e-3, 200)) + [1e-11, 0.0, math.nan]
    lo, hi = report.robust_log_ylim(curve)
    assert hi == pytest.approx(2.3 * 1.5)
    assert 1e-4 < lo < 1e-2  # the 2% quantile, not the 1e-11 spike
    lo, _ = report.robust_log_ylim([1.0] * 99 + [1e-30] * 10, max_decades=3)
    assert lo == pytest.approx(1e-3 / 1.5)  # never more than max_decades below the top
    assert report.robust_log_ylim([0.0, math.nan, -1.0]) is None


def test_long_titles_are_wrapped():
    title = "imbalance on digits: " + "long tail ratio 50 " * 8
    lines = report.wrap_title(title, 60).split("\n")
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines)


def test_calibration_panels_show_the_table_statistic(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = {m: torch.rand(40, 10, generator=g).softmax(1) for m in ("raw", "CA")}
    y = torch.randint(0, 10, (40,), generator=g)
    titles = calibration_study._plot(tmp_path / "r.png", probs, y, 15, "t",
                                     {"raw": (0.0123, 0.004), "CA": (0.2, math.inf)})
    assert titles == ["raw\nECE 0.0123 ± 0.0040 (mean over seeds)", "CA\nECE 0.2000 ± — (mean over seeds)"]


# ------------------------------------------------------------------ --out and the results folder

def _arena(out, *extra: str) -> int:
    return main(["arena", "--optimizers", "AdamW", "--steps", "2", "--seeds", "1", "--out", str(out), *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "--out" in err and "takes a folder that can be written" in err
    return err


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep me")
    assert _arena(f) == 2
    assert "is not a folder" in _one_line_error(capsys)
    assert f.read_text() == "keep me"
    assert _arena(f / "sub") == 2  # a folder below a file cannot be made
    assert "cannot write there" in _one_line_error(capsys)


def test_out_cannot_be_written(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(results.tempfile, "mkdtemp", refuse)  # what an unwritable parent folder does
    assert _arena(tmp_path / "new") == 2
    assert "Permission denied" in _one_line_error(capsys)
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys, where no one can make a folder")
def test_out_in_a_read_only_place(capsys):
    assert _arena("/sys/gradwise-arena-test") == 2
    _one_line_error(capsys)


def test_out_keeps_the_users_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert _arena(tmp_path) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"  # never deleted: this is not an arena folder
    assert {"results.json", "results.csv", "loss_curves.png"} <= {p.name for p in tmp_path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_run_leaves_no_results_folder(tmp_path, monkeypatch):
    from gradwise.arena import runner

    calls = []
    real_train = runner.train

    def train_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted mid-run")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner, "train", train_then_fail)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="interrupted"):
        main(["arena", "--optimizers", "AdamW,Lion", "--steps", "2", "--seeds", "1", "--out", str(out)])
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


def test_rerun_replaces_an_earlier_results_folder_whole(tmp_path):
    out = tmp_path / "run"
    assert _arena(out) == 0
    (out / "stale.png").write_bytes(b"old")
    assert _arena(out) == 0
    assert not (out / "stale.png").exists()
    assert json.loads((out / "results.json").read_text())["study"] == "optimizers"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert _arena(tmp_path / "empty_dir_ok") == 0


def test_results_folder_direct_use(tmp_path):
    with report.results_folder(None, root=tmp_path) as folder:
        (folder.tmp / "results.json").write_text('{"study": "t"}')
        assert not folder.final.exists() and folder.tmp.parent == tmp_path
    assert (folder.final / "results.json").exists() and not folder.tmp.exists()
    with pytest.raises(UsageError, match="--out"):
        with report.results_folder(folder.final / "results.json"):
            pass


# ------------------------------------------------------------------ torch.optim baselines

def test_torch_baselines_run_in_the_study(tmp_path, capsys):
    out = tmp_path / "run"
    names = ("SGD-momentum", "Adafactor", "Muon+AdamW")
    assert main(["arena", "--optimizers", ",".join(names), "--steps", "3", "--seeds", "1", "--first-seed", "4",
                 "--out", str(out)]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["optimizer"], r["seed"]) for r in rows) == sorted((n, "4") for n in names)
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert {n: cfg["optimizers"][n]["lr_source"] for n in names} == {
        "SGD-momentum": "sweep", "Adafactor": "sweep", "Muon+AdamW": "class default"}  # see OPT_IN
    assert cfg["first_seed"] == 4 and json.loads((out / "results.json").read_text())["versions"]["machine"]["cpu"]
    printed = capsys.readouterr().out
    assert "Muon+AdamW" in printed and "machine:" in printed


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    from gradwise.arena.tasks import mlp

    model = mlp(64, 10, (128, 128))
    opt = baselines.muon_adamw(model.parameters(), lr=0.02)
    muon, adamw = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [tuple(p.shape) for p in muon.param_groups[0]["params"]] == [(128, 128)]
    assert len(adamw.param_groups[0]["params"]) == 5  # first and last weights, three biases
    assert muon.param_groups[0]["lr"] == 0.02 and adamw.param_groups[0]["lr"] == baselines.MUON_ADAMW_LR
    assert baselines.MUON_ADAMW_LR == optimizers_study.LRS["AdamW"]  # the AdamW half at AdamW's swept rate
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert baselines.sgd_momentum(model.parameters(), lr=0.1).param_groups[0]["momentum"] == 0.9


def test_every_default_candidate_has_a_swept_learning_rate():
    known = optimizers_study.candidates()
    default = optimizers_study.resolve(None, list(known))
    assert set(known) - set(default) == set(optimizers_study.OPT_IN) == {"Muon+AdamW"}
    assert optimizers_study.resolve("muon+adamw", list(known)) == ["Muon+AdamW"]  # runs when named
    for name in default:
        assert optimizers_study.learning_rate(name, known[name]())[1] == "sweep", name
    assert optimizers_study.learning_rate("Muon+AdamW", known["Muon+AdamW"]()) == (0.02, "class default")
