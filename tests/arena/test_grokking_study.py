"""The grokking study (arXiv 2501.04697) beyond its smoke run (tests/arena/test_studies.py): the modular-addition
split, the steps-to-accuracy helper, Softmax Collapse showing in a tiny run and not under StableMax or ⊥AdamW,
bad options, and (slow) the paper's headline at the defaults."""
from __future__ import annotations

import json

import pytest
import torch

from gradwise.arena.grokking_study import DEFAULT_METHODS, Config, modular_addition, run_one, steps_to
from gradwise.cli import main


def test_modular_addition_split_covers_every_pair_once_with_the_right_labels():
    p = 11
    xtr, ytr, xte, yte = modular_addition(p, 0.4, seed=3)
    assert len(xtr) == int(0.4 * p * p) and len(xtr) + len(xte) == p * p
    x, y = torch.cat([xtr, xte]), torch.cat([ytr, yte])
    a, b = x[:, :p].argmax(1), x[:, p:].argmax(1)
    assert (x.sum(1) == 2).all() and torch.equal(y, (a + b) % p)
    assert len(set((a * p + b).tolist())) == p * p  # train and test are disjoint and cover all pairs
    again = modular_addition(p, 0.4, seed=3)
    assert torch.equal(again[1], ytr) and not torch.equal(modular_addition(p, 0.4, seed=4)[1], ytr)


def test_steps_to_is_the_first_recorded_step_at_the_level():
    assert steps_to([0, 10, 20, 30], [0.1, 0.95, 0.5, 1.0], 0.9) == 10
    assert steps_to([0, 10, 20, 30], [0.1, 0.95, 0.5, 1.0], 0.99) == 30
    assert steps_to([0, 10], [0.1, 0.2], 0.9) is None


def test_softmax_collapses_in_a_tiny_run_and_stablemax_and_perp_do_not():
    cfg = Config(p=7, train_fraction=0.6, steps=60, lr=0.05, log_every=5, hidden=(32, 32))
    rows = {m: run_one(cfg, m, 0) for m in ("softmax", "stablemax", "softmax-perp")}
    for r in rows.values():
        assert r["logged_steps"][0] == 0 and r["logged_steps"][-1] == cfg.steps
        assert all(len(v) == len(r["logged_steps"]) for v in r["curves"].values())
        assert r["final_train_acc"] == 1.0  # every method fits the training pairs
    soft, stable, perp = rows["softmax"], rows["stablemax"], rows["softmax-perp"]
    # softmax CE: most training losses are exactly 0 in float32 (Softmax Collapse)
    assert soft["final_zero_loss"] > 0.5 and soft["final_sc"] > 0.5
    # StableMax's logits are as large (their softmax would collapse) but its own loss never rounds to 0
    assert stable["max_sc"] > 0.5 and max(stable["curves"]["zero_loss"]) == 0.0
    # ⊥AdamW stops the weight growth that leads there
    assert perp["max_sc"] < soft["max_sc"] and perp["final_zero_loss"] < soft["final_zero_loss"]


def test_bad_split_and_unknown_method_are_refused(tmp_path, capsys):
    assert main(["arena", "grokking", "--p", "3", "--train-fraction", "0.05", "--out", str(tmp_path / "a")]) != 0
    assert "--train-fraction 0.05 with --p 3 leaves 0 training pairs" in capsys.readouterr().err
    for bad in (["--methods", "nope"], ["--train-fraction", "1.5"], ["--p", "1"]):
        with pytest.raises(SystemExit):
            main(["arena", "grokking", *bad])
        assert bad[0] in capsys.readouterr().err


@pytest.mark.slow
def test_headline_at_defaults_stablemax_and_perp_beat_the_softmax_baseline(tmp_path):
    out = tmp_path / "run"
    assert main(["arena", "grokking", "--out", str(out)]) == 0
    summary = {s["method"]: s for s in json.loads((out / "results.json").read_text())["summary"]}
    assert set(summary) == set(DEFAULT_METHODS)
    base = summary["softmax"]["final_test_acc_mean"]
    assert summary["stablemax"]["final_test_acc_mean"] > base + 0.05
    assert summary["softmax-perp"]["final_test_acc_mean"] > max(0.9, base + 0.5)
    assert summary["softmax"]["max_sc_mean"] > 0.1  # the baseline reaches Softmax Collapse
