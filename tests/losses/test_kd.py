"""Plain knowledge distillation (Hinton et al.): golden values and the T^2-scaled KL by hand."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwise.losses import kd_loss
from loss_inputs import kl_rows as _kl


GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "distillation_golden.pt", weights_only=True)
F64 = dict(rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- golden values from the authors' code

@pytest.mark.parametrize("case", GOLDEN["kd"], ids=lambda c: f"T={c['temperature']}")
def test_kd_matches_reference_code(case):
    s = case["student"].clone().requires_grad_()
    loss = kd_loss(s, case["teacher"], temperature=case["temperature"])
    (g,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, case["loss"], **F64)
    torch.testing.assert_close(g, case["grad"], **F64)


# ----------------------------------------------------------------------------- closed forms and limits

def test_kd_is_t_squared_kl_by_hand():
    s, t = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    T = 3.0
    by_hand = T ** 2 * _kl(torch.softmax(t / T, 1), torch.softmax(s / T, 1))
    torch.testing.assert_close(kd_loss(s, t, temperature=T, reduction="none"), by_hand, **F64)
    torch.testing.assert_close(kd_loss(s, t, temperature=T), by_hand.mean(), **F64)
