"""Correctness-aware calibration loss: closed form, limits, ignore_index, extreme logits, clear errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.losses import CorrectnessAwareLoss, correctness_aware_loss
from loss_inputs import calibration_case as _random_case


# ---------------------------------------------------------------- correctness-aware loss

def _ca_reference(logits, y, balance=True):
    conf, pred = logits.softmax(1).max(1)
    c = (pred == y).double()
    per = (conf - c) ** 2
    if not balance:
        return per.mean()
    a = c.mean()
    w = torch.where(c.bool(), 1 - a, a)  # the authors' weights
    return (w * per).sum() / w.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("balance", [True, False])
def test_ca_loss_matches_closed_form(seed, balance):
    logits, y = _random_case(seed, n=64)
    got = correctness_aware_loss(logits, y, balance=balance)
    assert got.item() == pytest.approx(_ca_reference(logits, y, balance).item(), abs=1e-12)
    none = correctness_aware_loss(logits, y, balance=balance, reduction="none")
    assert none.mean().item() == pytest.approx(got.item(), abs=1e-12)
    assert correctness_aware_loss(logits, y, balance=balance, reduction="sum").item() == pytest.approx(
        none.sum().item(), abs=1e-10)
    assert torch.allclose(CorrectnessAwareLoss(balance=balance)(logits, y), got)


def test_ca_loss_limiting_cases():
    # confident and correct -> 0; confident and wrong -> 1; uniform over C classes, correct -> (1-1/C)^2
    big = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]], dtype=torch.float64)
    assert correctness_aware_loss(big, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-12)
    assert correctness_aware_loss(big, torch.tensor([1, 0])).item() == pytest.approx(1.0, abs=1e-12)
    flat = torch.zeros(4, 3, dtype=torch.float64)  # argmax 0 everywhere
    loss = correctness_aware_loss(flat, torch.tensor([0, 0, 0, 0]))
    assert loss.item() == pytest.approx((1 - 1 / 3) ** 2, abs=1e-12)
    # balanced = average of the correct-group mean and the wrong-group mean, whatever the group sizes
    logits, y = _random_case(5, n=40)
    c = logits.argmax(1) == y
    per = correctness_aware_loss(logits, y, balance=False, reduction="none")
    assert correctness_aware_loss(logits, y).item() == pytest.approx(
        0.5 * (per[c].mean() + per[~c].mean()).item(), abs=1e-12)
    # the gradient raises confidence on correct and lowers it on wrong predictions (temperature view)
    t = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    mid = big / 25  # logits 2 and 0: not saturated
    correctness_aware_loss(mid / t, torch.tensor([0, 1]), balance=False).backward()
    assert t.grad > 0  # all correct: lowering T (sharper, more confident) lowers the loss
    t.grad = None
    correctness_aware_loss(mid / t, torch.tensor([1, 0]), balance=False).backward()
    assert t.grad < 0  # all wrong: raising T (less confident) lowers the loss


def test_ca_loss_ignore_index():
    logits, y = _random_case(6, n=30)
    y2 = y.clone()
    y2[::3] = -100
    keep = y2 != -100
    a = correctness_aware_loss(logits, y2)
    b = correctness_aware_loss(logits[keep], y[keep])
    assert a.item() == pytest.approx(b.item(), abs=1e-12)
    none = correctness_aware_loss(logits, y2, reduction="none")
    assert (none[~keep] == 0).all() and none[keep].mean().item() == pytest.approx(a.item(), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from([1.0, 1e2, 1e4]))
def test_ca_loss_finite_for_extreme_logits(seed, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(16, 5, generator=g) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, 5, (16,), generator=g)
    loss = correctness_aware_loss(logits, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ca_loss_rejects_bad_arguments():
    logits, y = _random_case(0, n=8)
    with pytest.raises(ValueError, match="reduction"):
        correctness_aware_loss(logits, y, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        correctness_aware_loss(logits, y.float())
    with pytest.raises(ValueError, match="balance"):
        correctness_aware_loss(logits, y, balance=1)
