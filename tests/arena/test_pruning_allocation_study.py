"""The pruning-allocation study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import torch

from gradwise.arena import pruning_allocation_study as pa
from gradwise.arena.tasks import Task

SMALL = dataclasses.replace(pa.Config(), epochs=1, calib=16, grid=10)


def _task():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 64, generator=g), torch.randint(0, 10, (80,), generator=g)
    return Task(name="toy", x_train=x[:60], y_train=y[:60], x_eval=x[60:], y_eval=y[60:], num_classes=10)


def test_cnn_has_five_prunable_layers():
    net = pa.cnn()
    assert [m.weight.numel() for m in pa.prunable(net)] == [144, 4608, 9216, 8192, 640]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_every_method_meets_its_sparsity_and_additivity_is_the_ratio():
    rows = pa.run_seed(_task(), SMALL, 0)
    assert [r["method"] for r in rows] == ["dense", *pa.METHODS]
    for r in rows[1:]:
        s = float(r["method"].split("-")[0][1:])
        assert abs(r["sparsity"] - s) < 0.02, r["method"]  # RD-DP can keep less than one grid step more
        assert r["joint_distortion"] > 0 and r["sum_distortion"] > 0
        assert abs(r["additivity"] - r["joint_distortion"] / r["sum_distortion"]) < 1e-12
        if r["method"].endswith("uniform"):
            assert r["amounts"] == [s] * 5
