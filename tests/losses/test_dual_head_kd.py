"""Dual-head knowledge distillation: binary KL, the DHKD loss, the dual head and gradient alignment
(golden values from the authors' code, tests/data/distillation_golden.pt)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradwise.losses import DualHeadKD, binary_kl_loss, dhkd_aligned_backward, dhkd_loss, kd_loss


GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "distillation_golden.pt", weights_only=True)
F64 = dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN["binary_kl"], ids=lambda c: f"{c['variant']}-T={c['temperature']}")
def test_binary_kl_matches_dhkd_code(case):
    s = case["student"].clone().requires_grad_()
    loss = binary_kl_loss(s, case["teacher"], temperature=case["temperature"], variant=case["variant"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


@pytest.mark.parametrize("case", GOLDEN["dhkd"], ids=lambda c: f"alpha={c['alpha']}")
def test_dhkd_loss_matches_dhkd_training_loop(case):
    main, aux = case["main"].clone().requires_grad_(), case["aux"].clone().requires_grad_()
    loss = dhkd_loss(main, aux, case["teacher"], case["target"], gamma=case["gamma"], alpha=case["alpha"],
                     temperature=case["temperature"])
    gm, ga = torch.autograd.grad(loss, [main, aux])
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(gm, case["grad_main"], **F64)
    torch.testing.assert_close(ga, case["grad_aux"], **F64)


@pytest.mark.parametrize("case", GOLDEN["dhkd_ga"], ids=lambda c: f"seed={c['seed']}")
def test_gradient_alignment_matches_dhkd_optimizer(case):
    torch.manual_seed(case["seed"])
    backbone, fc, fc2 = (torch.nn.Linear(6, 4, dtype=torch.float64), torch.nn.Linear(4, 3, dtype=torch.float64),
                         torch.nn.Linear(4, 3, dtype=torch.float64))
    params = [*backbone.parameters(), *fc.parameters(), *fc2.parameters()]
    with torch.no_grad():
        for p, v in zip(params, case["init"]):
            p.copy_(v)
    feat = torch.relu(backbone(case["x"]))
    l_cls = F.cross_entropy(fc(feat), case["target"])
    l_kd = binary_kl_loss(fc2(feat), case["teacher"], temperature=2.0)
    dhkd_aligned_backward([l_cls, l_kd], params)
    for p, g in zip(params, case["grads"]):
        torch.testing.assert_close(p.grad, g, **F64)


def test_binary_kl_norm_sees_logit_shifts_that_softmax_ignores():
    s = torch.randn(4, 6, dtype=torch.float64)
    assert kd_loss(s + 3.0, s).abs().max() < 1e-12          # softmax is shift invariant
    assert binary_kl_loss(s + 3.0, s) > 0.1                   # the logit-level loss is not
    x = 3.0 / 2.0                                             # closed form of the norm variant for a constant shift
    per_class = 0.5 * (math.log1p(math.exp(x)) + math.log1p(math.exp(-x))) - math.log(2)
    torch.testing.assert_close(binary_kl_loss(s + 3.0, s, temperature=2.0).item(), 4 * 6 * per_class, rtol=1e-12,
                               atol=0)


# ----------------------------------------------------------------------------- the dual head

def test_dual_head_routes_each_loss_to_its_own_head_and_both_to_the_backbone():
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 8)
    dh = DualHeadKD(in_features=8, num_classes=4)
    x, y, t = torch.randn(10, 6), torch.randint(0, 4, (10,)), torch.randn(10, 4)
    main, aux = dh(backbone(x))
    assert main.shape == aux.shape == (10, 4)
    ce_only = dh.loss(main, aux, t, y) - 1.0 * binary_kl_loss(aux, t)
    grads = torch.autograd.grad(ce_only, [dh.head.weight, dh.aux_head.weight, backbone.weight], retain_graph=True,
                                allow_unused=True)
    assert grads[0].abs().sum() > 0 and (grads[1] is None or grads[1].abs().sum() == 0) and grads[2].abs().sum() > 0
    kd_only = binary_kl_loss(aux, t)
    grads = torch.autograd.grad(kd_only, [dh.head.weight, dh.aux_head.weight, backbone.weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0 and grads[2].abs().sum() > 0
    nonlinear = DualHeadKD(torch.nn.Linear(8, 4), aux="nonlinear")
    assert nonlinear(torch.randn(3, 8))[1].shape == (3, 4)


def test_gradient_alignment_projects_only_conflicting_gradients():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    dhkd_aligned_backward([(w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([-1.0, 1.0])).sum()], [w])
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 1.0]))   # conflict: [-1, 1] -> [0, 1]
    dhkd_aligned_backward([(w * torch.tensor([1.0, 0.0])).sum(), (w * torch.tensor([1.0, 1.0])).sum()], [w])
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 1.0]))   # no conflict: plain sum
