"""The quant-training study's pieces at a small size (its smallest command line runs in
tests/arena/test_studies.py)."""
import dataclasses

import torch

from gradwise.arena import quant_training_study as qt
from gradwise.arena.tasks import Task

SMALL = dataclasses.replace(qt.Config(), hidden=8, batch_size=16, pre_epochs=1, epochs=1)


def _task():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g)
    return Task(name="toy", x_train=x[:32], y_train=y[:32], x_eval=x[32:], y_eval=y[32:], num_classes=10)


def test_fixed_int8_keeps_its_format_and_adapt_reports_one():
    task = _task()
    fixed = qt.run_one(task, SMALL, "fixed-int8", 0)
    assert (fixed["mean_wl"], fixed["mean_fl"]) == (8, 6) and 0 <= fixed["accuracy"] <= 1
    adapt = qt.run_one(task, SMALL, "adapt", 0)
    assert 1 <= adapt["mean_fl"] <= adapt["mean_wl"] <= 32


def test_codebook_methods_share_the_rounded_start_and_pv_counts_code_moves():
    task = _task()
    ste, pv = (qt.run_one(task, SMALL, m, 1) for m in ("ste-2bit", "pv-2bit"))
    assert ste["fp_accuracy"] == pv["fp_accuracy"] and ste["q0_accuracy"] == pv["q0_accuracy"]
    assert ste["codes_changed"] == 0 and pv["codes_changed"] >= 0 and 0 <= pv["accuracy"] <= 1
