"""ND (KD++): golden values, closed form and limits, class means."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwise.losses import class_means, nd_loss


GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "distillation_golden.pt", weights_only=True)
F64 = dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN["nd"], ids=lambda c: f"D={c['student'].shape[1]}")
def test_nd_matches_direct_norm_loss(case):
    s = case["student"].clone().requires_grad_()
    loss = nd_loss(s, case["teacher"], case["target"], case["centers"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


def test_nd_closed_form_and_limits():
    centers = torch.eye(3, 4, dtype=torch.float64) * 5.0
    y = torch.tensor([0, 1, 2])
    e = centers / 5.0
    # a student on its class direction with a norm at least the teacher's has loss 0
    t = torch.randn(3, 4, dtype=torch.float64)
    s = e[y] * (t.norm(dim=1, keepdim=True) * 1.5)
    torch.testing.assert_close(nd_loss(s, t, y, centers, reduction="none"), torch.zeros(3, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # on the direction but shorter than the teacher: 1 - |s| / |t|
    s_short = e[y] * (t.norm(dim=1, keepdim=True) * 0.25)
    torch.testing.assert_close(nd_loss(s_short, t, y, centers, reduction="none"),
                               torch.full((3,), 0.75, dtype=torch.float64), **F64)
    # orthogonal to the class direction: 1
    s_orth = e[(y + 1) % 3] * 2.0
    torch.testing.assert_close(nd_loss(s_orth, t, y, centers, reduction="none"), torch.ones(3, dtype=torch.float64),
                               **F64)


def test_class_means():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    torch.testing.assert_close(class_means(x, torch.tensor([0, 0, 2]), 3),
                               torch.tensor([[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]))
