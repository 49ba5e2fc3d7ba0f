"""The arena: digits task, runner determinism, reports, and the `optimizers` study end to end."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from gradwise import registry
from gradwise.arena import STUDIES, Study, UsageError, load_study, optimizers_study, report
from gradwise.arena.runner import RunResult, train
from gradwise.arena.tasks import digits
from gradwise.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(task, seed: int, steps: int = 15) -> RunResult:
    return train(task, "AdamW", torch.optim.AdamW, lr=3e-3, seed=seed, steps=steps, batch_size=64,
                 hidden=(32,), eval_every=5, target_loss=0.5)


def _run_arena(tmp_path, *extra: str) -> tuple[list[dict], dict]:
    out = tmp_path / "run"
    assert main(["arena", "--steps", "20", "--out", str(out), *extra]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    doc = json.loads((out / "results.json").read_text())
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "curves.csv").stat().st_size > 0
    return rows, doc


def test_every_study_has_the_interface():
    for name in STUDIES:
        study = load_study(name)
        assert isinstance(study, Study) and study.name == name
        assert isinstance(study.help, str) and callable(study.add_arguments) and callable(study.run)
    with pytest.raises(UsageError):
        load_study("no-such-study")


def test_digits_split_is_fixed_stratified_and_standardized():
    test, val = digits(), digits(eval_split="val")
    assert len(test.y_train) + len(test.y_eval) == 1797
    assert len(val.y_train) + len(val.y_eval) == len(test.y_train)
    assert torch.equal(digits().x_eval, test.x_eval)  # same split every time
    assert set(test.y_eval.tolist()) == set(range(10))
    assert test.x_train.mean(0).abs().max() < 1e-4
    assert test.x_train.dtype == torch.float32 and test.y_train.dtype == torch.int64
    with pytest.raises(ValueError, match="eval_split"):
        digits(eval_split="train")


def test_same_seed_same_result_other_seed_differs():
    task = digits()
    a, b, c = _train(task, 0), _train(task, 0), _train(task, 1)
    assert a.curve_loss == b.curve_loss and a.eval_acc == b.eval_acc and a.eval_loss == b.eval_loss
    assert a.curve_loss != c.curve_loss
    assert a.curve_steps == [0, 5, 10, 15]


def test_summary_steps_to_target_counts_only_seeds_that_reached_it():
    def run(name, acc, reached):
        return RunResult(optimizer=name, seed=0, lr=0.1, steps=10, eval_acc=acc, eval_loss=0.1,
                         final_train_loss=0.1, steps_to_target=reached, wall_s=1.0)

    summary = report.summarize([run("A", 0.5, 10), run("A", 0.7, None), run("A", 0.9, 30),
                                run("B", 0.9, None), run("B", 0.9, None)])
    assert [s.name for s in summary] == ["B", "A"]
    b, a = summary
    assert a.steps_to_target == 20 and a.reached == 2 and a.runs == 3
    assert math.isclose(a.acc_mean, 0.7) and math.isclose(a.acc_std, 0.2)
    assert b.steps_to_target is None and b.reached == 0 and b.acc_std == 0


def test_resolve_optimizer_names():
    known = ["AdamW", "Lion", "SPAM"]
    assert optimizers_study.resolve(None, known) == known
    assert optimizers_study.resolve("spam, adamw,SPAM", known) == ["SPAM", "AdamW"]
    with pytest.raises(UsageError, match="Nope.*valid: AdamW, Lion, SPAM"):
        optimizers_study.resolve("lion,Nope", known)


def test_learning_rate_falls_back_to_class_default():
    class Untuned(torch.optim.SGD):
        def __init__(self, params, lr=0.05):
            super().__init__(params, lr=lr)

    assert optimizers_study.learning_rate("AdamW", torch.optim.AdamW) == (optimizers_study.LRS["AdamW"], "sweep")
    assert optimizers_study.learning_rate("Untuned", Untuned) == (0.05, "class default")


def test_every_gradwise_optimizer_is_a_candidate():
    names = list(optimizers_study.candidates())
    assert names[0] == "AdamW"
    assert {m.name for m in registry.methods(kind="optimizer")} <= set(names)


def test_results_dir_is_fresh_each_time(tmp_path):
    a, b = report.results_dir(None, root=tmp_path), report.results_dir(None, root=tmp_path)
    assert a != b and a.is_dir() and b.is_dir() and a.parent == tmp_path


def test_arena_adamw_writes_results(tmp_path, capsys):
    rows, doc = _run_arena(tmp_path, "--seeds", "1", "--optimizers", "AdamW")
    assert [(r["optimizer"], r["seed"], r["steps"]) for r in rows] == [("AdamW", "0", "20")]
    assert 0 <= float(rows[0]["eval_acc"]) <= 1 and float(rows[0]["wall_s"]) > 0
    assert doc["study"] == "optimizers"
    assert doc["config"]["steps"] == 20 and doc["config"]["seeds"] == 1
    assert doc["config"]["optimizers"]["AdamW"]["lr"] == optimizers_study.LRS["AdamW"]
    assert [s["name"] for s in doc["summary"]] == ["AdamW"]
    assert "AdamW" in capsys.readouterr().out  # the leaderboard


def test_arena_with_a_gradwise_optimizer(tmp_path):
    opts = registry.methods(kind="optimizer")
    if not opts:
        pytest.skip("no gradwise optimizer registered yet")
    name = opts[0].name
    rows, doc = _run_arena(tmp_path, "--seeds", "2", "--optimizers", f"AdamW,{name}")
    assert sorted((r["optimizer"], r["seed"]) for r in rows) == sorted(
        (n, s) for n in ("AdamW", name) for s in ("0", "1"))
    assert all(0 <= float(r["eval_acc"]) <= 1 for r in rows)
    assert {s["name"] for s in doc["summary"]} == {"AdamW", name}
    assert all(s["runs"] == 2 for s in doc["summary"])


def test_arena_rejects_unknown_optimizer(tmp_path, capsys):
    try:  # cli.py refuses it while parsing (SystemExit) or the study does (UsageError, returned as 2)
        code = main(["arena", "--optimizers", "AdamW,NoSuchOpt", "--out", str(tmp_path / "x")])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "NoSuchOpt" in err and "AdamW" in err
    assert not (tmp_path / "x").exists()  # nothing written


def test_arena_is_deterministic(tmp_path):
    def acc_and_losses(out):
        main(["arena", "--steps", "10", "--seeds", "1", "--optimizers", "AdamW", "--out", str(out)])
        runs = json.loads((out / "results.json").read_text())["runs"]
        return [(r["eval_acc"], r["eval_loss"], r["final_train_loss"]) for r in runs]

    assert acc_and_losses(tmp_path / "a") == acc_and_losses(tmp_path / "b")


def test_divergence_is_recorded_and_reported(tmp_path):
    task = digits()
    bad = train(task, "SGD", torch.optim.SGD, lr=1e6, seed=0, steps=50, batch_size=64, hidden=(32,),
                eval_every=5, target_loss=0.5)
    assert bad.diverged and len(bad.curve_steps) < 11  # stopped at the first non-finite loss
    good = _train(task, 0)
    summary = report.summarize([bad, good])
    assert [s.name for s in summary] == ["AdamW", "SGD"] and summary[1].diverged == 1
    report.write_results(tmp_path, study="t", config={}, results=[bad, good], summary=summary)
    report.plot_curves(tmp_path / "c.png", [bad, good], target_loss=0.5)

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    doc = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert doc["runs"][0]["diverged"] is True


def test_mean_std_is_the_mean_and_sample_deviation():
    xs = [0.5, 0.25, 1.0, 2.0]
    mean, std = report.mean_std(iter(xs))  # any iterable
    assert mean == pytest.approx(sum(xs) / 4)
    assert std == pytest.approx(torch.tensor(xs, dtype=torch.float64).std(unbiased=True).item())
    assert report.mean_std([3.0]) == (3.0, 0.0)
    fields = report.mean_std_fields([{"a": 1.0, "b": 4.0}, {"a": 3.0, "b": 4.0}], ("b", "a"))
    assert list(fields) == ["b_mean", "b_std", "a_mean", "a_std"]
    assert fields == {"b_mean": 4.0, "b_std": 0.0, "a_mean": 2.0, "a_std": pytest.approx(math.sqrt(2))}


def test_write_json_and_csv_are_standard(tmp_path):
    report.write_json(tmp_path / "r.json", {"x": [math.nan, math.inf, 1.5], "t": (1, 2)})

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=reject) == {"x": [None, None, 1.5],
                                                                                    "t": [1, 2]}
    report.write_csv(tmp_path / "r.csv", [{"a": 1, "b": None, "extra": [1]}, {"a": 2}], ["a", "b"])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", "1,", "2,"]


@pytest.mark.parametrize("study", list(STUDIES))
def test_every_study_takes_seeds_and_out_and_rejects_zero_seeds(study, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    load_study(study).add_arguments(parser)
    args = parser.parse_args(["--seeds", "2", "--out", str(tmp_path)])
    assert args.seeds == 2 and args.out == str(tmp_path)
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "0"])
