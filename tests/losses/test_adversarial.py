"""Smooth adversarial comp-sum loss and the PGD attack it trains against."""
import pytest
import torch
import torch.nn.functional as F

import gradwise.losses as L
from loss_inputs import logits_target as _data


f64 = torch.float64


# ----- smooth adversarial comp-sum and PGD ----------------------------------------------------------------------

def test_smooth_adversarial_closed_form_and_reduction_to_comp_sum():
    x, y = _data()
    adv = x + torch.randn_like(x) * 0.1
    d = adv - x
    reg = (d - d.gather(1, y[:, None])).norm(dim=1)
    out = L.smooth_adversarial_comp_sum_loss(x, adv, y, tau=1.5, nu=0.3, reduction="none")
    torch.testing.assert_close(out, L.comp_sum_loss(x, y, tau=1.5, reduction="none") + 0.3 * reg)
    # x' = x: no regularizer, finite (zero) gradient of the norm
    xx = x.clone().requires_grad_(True)
    L.smooth_adversarial_comp_sum_loss(xx, xx, y, tau=1.0, nu=5.0).backward()
    assert torch.isfinite(xx.grad).all()
    torch.testing.assert_close(L.smooth_adversarial_comp_sum_loss(x, x + 3.0, y, nu=2.0), F.cross_entropy(x, y))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_increases_loss(norm):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    x = torch.randn(32, 5, dtype=f64)
    y = torch.randint(0, 3, (32,))
    eps = 0.3
    g = torch.Generator().manual_seed(1)
    xa = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, generator=g)
    delta = (xa - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-9
    assert F.cross_entropy(model(xa), y) > F.cross_entropy(model(x), y) + 1e-3
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # custom objective: the smooth term grows
    clean = model(x).detach()
    reg = lambda out, t: L.score_difference_regularizer(clean, out, t).sum()  # noqa: E731
    # (from x' = x the norm's zero subgradient leaves PGD stuck: the random start is needed)
    stuck = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=3, norm=norm, loss_fn=reg, random_start=False)
    assert torch.equal(stuck, x)
    x1 = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=1, norm=norm, loss_fn=reg, generator=g)
    x10 = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, loss_fn=reg,
                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        r1 = L.score_difference_regularizer(clean, model(x1), y).mean()
        r10 = L.score_difference_regularizer(clean, model(x10), y).mean()
    assert float(r10) > float(r1) > 0
    xc = L.pgd_attack(model, x, y, eps=eps, alpha=eps / 4, steps=3, norm=norm, clamp=(-0.5, 0.5), generator=g)
    assert float(xc.abs().max()) <= 0.5
