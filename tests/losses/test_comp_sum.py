"""Comp-sum losses (Mao, Mohri, Zhong): closed forms, continuity in tau, gradients."""
import torch
import torch.nn.functional as F

import gradwise.losses as L
from loss_inputs import logits_target as _data


f64 = torch.float64


def _p_y(x, y):
    return torch.softmax(x, 1).gather(1, y[:, None]).squeeze(1)


# ----- comp-sum -------------------------------------------------------------------------------------------------

def test_comp_sum_closed_forms():
    x, y = _data()
    p = _p_y(x, y)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=1.0), F.cross_entropy(x, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=2.0, reduction="none"), 1 - p, rtol=0, atol=1e-12)
    sum_exp = (torch.exp(x - x.gather(1, y[:, None])).sum(1) - 1)
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=0.0, reduction="none"), sum_exp, rtol=1e-12, atol=1e-12)
    q = 0.5
    torch.testing.assert_close(L.comp_sum_loss(x, y, tau=1 + q, reduction="none"), (1 - p ** q) / q,
                               rtol=1e-12, atol=1e-12)


def test_comp_sum_continuous_in_tau():
    x, y = _data()
    for t0 in (1.0, 2.0):
        ref = L.comp_sum_loss(x, y, tau=t0)
        for h in (1e-6, -1e-6):
            assert abs(float(L.comp_sum_loss(x, y, tau=t0 + h) - ref)) < 1e-4
    # monotone in tau (Phi^tau decreases with tau for u >= 1)
    vals = [float(L.comp_sum_loss(x, y, tau=t)) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_comp_sum_gradient_matches_autograd_of_formula():
    x, y = _data()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    L.comp_sum_loss(x1, y, tau=1.5).backward()
    ((1 - _p_y(x2, y) ** 0.5) / 0.5).mean().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
