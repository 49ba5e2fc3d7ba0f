"""The binary-nets study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import torch

from gradwise.arena import binary_nets_study as bn
from gradwise.arena.tasks import Task
from gradwise.compression import BinaryConv2d

SMALL = dataclasses.replace(bn.Config(), epochs=2, width=4, batch_size=16)


def _task():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g)
    return Task(name="toy", x_train=x[:32], y_train=y[:32], x_eval=x[32:], y_eval=y[32:], num_classes=10)


def test_methods_pair_bits_with_estimators_and_the_model_binarizes_two_convs():
    assert len(bn.METHODS) == 8 and bn.METHODS[0] == "1w1a-ste" and bn.METHODS[-1] == "1w32a-reste-o3"
    net = bn.binary_cnn(4, False, "reste")
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    assert len(convs) == 2 and not convs[0].binarize_activations
    assert net(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_estimating_error_falls_with_o_end_on_the_same_seed():
    task = _task()
    rows = {m: bn.run_one(task, SMALL, m, 0) for m in ("1w1a-reste-o1", "1w1a-reste-o2", "1w1a-reste-o3")}
    errs = [rows[m]["estimating_error"] for m in rows]
    assert errs[0] > errs[1] > errs[2] > 0
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and len(r["errors"]) == 2 and r["gradient_stability"] > 0
