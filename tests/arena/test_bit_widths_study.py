"""The bit-widths study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import torch

from gradwise.arena import bit_widths_study as bw
from gradwise.arena.tasks import Task
from gradwise.compression import DoubleRoundingQuantizer, ElasticQuantLinear

SMALL = dataclasses.replace(bw.Config(), hidden=8, batch_size=16, pre_epochs=1, epochs=1)


def _task():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 64, generator=g), torch.randint(0, 10, (48,), generator=g)
    return Task(name="toy", x_train=x[:32], y_train=y[:32], x_eval=x[32:], y_eval=y[32:], num_classes=10)


def test_models_quantize_only_the_two_middle_layers():
    for kind, cls in (("dr", DoubleRoundingQuantizer), ("eq", ElasticQuantLinear)):
        net = bw.mlp(SMALL, kind)
        assert sum(isinstance(m, cls) for m in net.modules()) == 2
        assert net(torch.randn(3, 64)).shape == (3, 10)


def test_joint_methods_report_every_width_and_alrs_counts_negative_rates():
    task = _task()  # (all four methods run in the smallest command line of test_studies.py)
    for method in ("dr-joint-alrs", "eqnet-joint"):
        row = bw.run_one(task, SMALL, method, 0)
        accs = [row[f"acc_w{b}"] for b in bw.WIDTHS]
        assert all(0 <= a <= 1 for a in accs) and abs(row["acc_mean"] - sum(accs) / 4) < 1e-12
        assert row["negative_lr"] >= 0 and (method == "dr-joint-alrs" or row["negative_lr"] == 0)
