"""Direct coverage optimization (limiting confidence): closed form and gradient."""
import math

import torch
import torch.nn.functional as F

import gradwise.losses as L
from loss_inputs import logits_target as _data


f64 = torch.float64


# ----- direct coverage optimization ---------------------------------------------------------------------------

def test_coverage_loss_closed_form_and_limits():
    p = torch.tensor([1e-3, 0.1, 0.5, 0.9, 0.999], dtype=f64)
    for n in (1, 2, 7.5, 64):
        torch.testing.assert_close(L.coverage_loss(p.log(), n=n, reduction="none"), -torch.log1p(-(1 - p) ** n))
    x, y = _data()
    torch.testing.assert_close(L.coverage_classification_loss(x, y, n=1), F.cross_entropy(x, y))
    # tiny p: -log p - log N even when p underflows; p -> 1: loss and gradient vanish
    lp = torch.tensor([-2e4, -1e-30, 0.0], dtype=torch.float32, requires_grad=True)
    out = L.coverage_loss(lp, n=8, reduction="none")
    out_ = out.detach()
    assert abs(float(out_[0]) - (2e4 - math.log(8))) < 1e-2 and float(out_[1]) == 0.0 and float(out_[2]) == 0.0
    out.sum().backward()
    assert torch.isfinite(lp.grad).all() and float(lp.grad[2]) == 0.0


def test_coverage_gradient_is_ce_scaled_by_F():
    p = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=f64)
    lp = p.log().requires_grad_(True)
    n = 8
    L.coverage_loss(lp, n=n, reduction="sum").backward()
    f = n * p * (1 - p) ** (n - 1) / (1 - (1 - p) ** n)
    torch.testing.assert_close(lp.grad, -f)
    assert float(f[-1]) < 1e-6 < float(f[0])  # confident examples stop pushing
