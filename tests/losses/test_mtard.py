"""MTARD: KL, the teachers' weight update, adversarial examples (golden values from the authors' code)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradwise.losses import MTARDBalancer, MTARDLoss, kd_loss, mtard_adversarial_examples, mtard_kl


GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "distillation_golden.pt", weights_only=True)
F64 = dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN["mtard_kl"], ids=lambda c: f"C={c['student'].shape[1]}")
def test_mtard_kl_matches_reference(case):
    s = case["student"].clone().requires_grad_()
    loss = mtard_kl(s, case["teacher"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["mtard_weights"], ids=lambda c: f"lr={c['lr']}")
def test_mtard_weight_update_matches_reference(case):
    bal = MTARDBalancer(lr=case["lr"], beta=case["beta"])
    got = torch.stack([torch.stack(bal.update(la, ln)) for la, ln in case["losses"]])
    torch.testing.assert_close(got, case["weights"], **F64)


def test_mtard_kl_is_kl_over_classes_when_eps_is_zero():
    s, t = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    torch.testing.assert_close(mtard_kl(s, t, eps=0.0), kd_loss(s, t, temperature=1.0) / 5, **F64)


def test_mtard_loss_combines_with_updated_weights_and_round_trips_state():
    torch.manual_seed(0)
    crit = MTARDLoss(lr=0.2)
    seq = [[torch.randn(4, 3, dtype=torch.float64) for _ in range(4)] for _ in range(5)]
    for sa, ta, sn, tn in seq[:3]:
        crit(sa, ta, sn, tn)
    w_adv, w_nat = crit.balancer.weight_adv.item(), crit.balancer.weight_nat.item()
    assert w_adv != 0.5 and math.isclose(w_adv + w_nat, 1.0)
    clone = MTARDLoss(lr=0.2)
    clone.load_state_dict(crit.state_dict())
    for sa, ta, sn, tn in seq[3:]:
        a, b = crit(sa, ta, sn, tn), clone(sa, ta, sn, tn)
        assert torch.equal(a, b)
    sa, ta, sn, tn = seq[0]
    w = crit.balancer.weight_nat.clone()
    crit.eval()
    out = crit(sa, ta, sn, tn)
    assert torch.equal(crit.balancer.weight_nat, w)  # eval: no update
    torch.testing.assert_close(out, (1 - w) * mtard_kl(sa, ta) + w * mtard_kl(sn, tn), **F64)


def test_mtard_adversarial_examples_stay_in_the_ball_and_raise_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.rand(16, 5), torch.randint(0, 3, (16,))
    x_adv = mtard_adversarial_examples(model, x, y, epsilon=0.05, step_size=0.02, steps=5)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert model.training


def test_mtard_adversarial_examples_follow_the_authors_loop():
    # mtard_inner_loss_ce: x_adv = x + 0.001 N(0,1) (unclamped); 10 x { x_adv += step * sign(grad CE);
    # project onto the l_inf ball around x; clamp to [0, 1] }, the model in eval mode; transcribed here with the
    # same start noise drawn from the same generator
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.rand(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    x[:4] = 0.0  # pixels at the data bound: the unclamped start matters there
    model = model.double()
    got = mtard_adversarial_examples(model, x, y, generator=torch.Generator().manual_seed(7))
    ref = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    model.eval()
    for _ in range(10):
        ref.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(ref), y), ref)
        ref = ref.detach() + 2 / 255 * g.sign()
        ref = torch.min(torch.max(ref, x - 8 / 255), x + 8 / 255).clamp(0.0, 1.0)
    model.train()
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="random_start"):
        mtard_adversarial_examples(model, x, y, random_start=True)
    with pytest.raises(ValueError, match="start_noise"):
        mtard_adversarial_examples(model, x, y, start_noise=-1.0)
