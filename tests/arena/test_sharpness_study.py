"""The sharpness study's pieces at a tiny size: SAM's step against pytorch_optimizer's SAM, a run of each method.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.arena import sharpness_study as ss
from gradwise.arena.tasks import Task

torch.set_num_threads(1)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def test_sam_step_matches_pytorch_optimizer_sam():
    po = pytest.importorskip("pytorch_optimizer")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g)
    ours, theirs = _net(), _net()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ref = po.SAM(theirs.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, weight_decay=5e-4)
    params = list(ours.parameters())
    for _ in range(5):
        ss.sam_step(ours, params, opt, lambda: F.cross_entropy(ours(x), y), 0.05)

        def closure():
            ref.zero_grad()
            loss = F.cross_entropy(theirs(x), y)
            loss.backward()
            return loss

        closure()
        ref.step(closure)
        for p, q in zip(ours.parameters(), theirs.parameters()):
            # pytorch_optimizer sums the squared gradient norm in float32 (its get_global_gradient_norm), so the
            # perturbation radius agrees to float32 rounding only; ours is float64 here
            torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    # and it is not plain SGD: the gradient is taken at the perturbed weights
    plain = _net()
    sgd = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        sgd.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        sgd.step()
    assert not torch.allclose(plain[0].weight, ours[0].weight, rtol=1e-6, atol=0)


def _tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Task("tiny", x[:30], y[:30], x[30:], y[30:], 3)


TINY = dataclasses.replace(ss.Config(), epochs=4, batch_size=8, hidden=(8,), start_epoch=1, lag=1,
                           hessian_samples=16, hessian_iters=10, seeds=1)


@pytest.mark.parametrize("method", ss.METHODS)
def test_each_method_trains_and_reports(method):
    task = _tiny_task()
    row = ss.train_one(task, task.y_train, TINY, method, seed=0)
    assert row["method"] == method and len(row["curve"]) == TINY.epochs
    assert 0 <= row["test_acc"] <= 1 and 0 <= row["fit_noisy"] <= 1
    assert math.isfinite(row["top_eig"]) and row["top_eig"] > 0 and row["s_per_epoch"] > 0


def test_saf_and_mesa_are_sgd_until_their_start_epoch():
    task = _tiny_task()
    late = dataclasses.replace(TINY, start_epoch=TINY.epochs)  # never on
    base = ss.train_one(task, task.y_train, late, "sgd", seed=0)
    for method in ("saf", "mesa"):
        row = ss.train_one(task, task.y_train, late, method, seed=0)
        assert row["curve"] == base["curve"] and row["top_eig"] == pytest.approx(base["top_eig"], rel=1e-5)
        on = ss.train_one(task, task.y_train, TINY, method, seed=0)
        assert on["top_eig"] != pytest.approx(base["top_eig"], rel=1e-5)  # and the regularizer does act
