"""Z-loss: closed form, invariances, gradients."""
import math

import torch

import gradwise.losses as L
from loss_inputs import logits_target as _data


f64 = torch.float64


# ----- Z-loss ---------------------------------------------------------------------------------------------------

def test_z_loss_closed_form_and_invariances():
    x, y = _data(c=9)
    mu, sd = x.mean(1), x.std(1, unbiased=False)
    z = (x.gather(1, y[:, None]).squeeze(1) - mu) / sd
    a, b = 0.7, 2.0
    torch.testing.assert_close(L.z_loss(x, y, a=a, b=b, reduction="none"), torch.log1p(torch.exp(a * (b - z))) / a,
                               rtol=1e-9, atol=1e-9)
    base = L.z_loss(x, y, reduction="none")
    shift = torch.randn(x.shape[0], 1, dtype=f64) * 100
    scale = torch.rand(x.shape[0], 1, dtype=f64) * 50 + 0.01
    torch.testing.assert_close(L.z_loss(x + shift, y, reduction="none"), base, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(L.z_loss(x * scale, y, reduction="none"), base, rtol=1e-9, atol=1e-9)
    xf = x.float()
    torch.testing.assert_close(L.z_loss(xf * 1000 + 5000, y), L.z_loss(xf, y), rtol=1e-4, atol=1e-4)
    # default b is sqrt(C - 1)
    torch.testing.assert_close(L.z_loss(x, y), L.z_loss(x, y, b=math.sqrt(8)))


def test_z_loss_gradcheck_and_constant_row():
    x, y = _data(n=4, c=5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: L.z_loss(t, y, a=0.5, b=1.0, reduction="none"), (x,))
    c = torch.zeros(3, 4, requires_grad=True)
    L.z_loss(c, torch.tensor([0, 1, 2])).backward()
    assert torch.isfinite(c.grad).all()
