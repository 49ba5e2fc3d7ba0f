"""What every distillation loss shares: zero for identical student and teacher, finite values for large
logits, consistent reductions, ignore_index, module twins, clear errors."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.losses import (BDKDLoss, DHKDLoss, DualHeadKD, KDLoss, MTARDBalancer, NDLoss, bdkd_loss,
                             bdkd_teacher_loss, binary_kl_loss, dhkd_loss, kd_loss, mtard_kl, nd_loss)


F64 = dict(rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fn", [
    lambda s, t: kd_loss(s, t, reduction="none"),
    lambda s, t: binary_kl_loss(s, t, reduction="none"),
    lambda s, t: binary_kl_loss(s, t, variant="plain", reduction="none"),
    lambda s, t: bdkd_loss(s, t, reduction="none"),
    lambda s, t: bdkd_loss(s, t, reverse_weight_uncertain=0.3, reverse_weight_confident=0.6, reduction="none"),
    lambda s, t: bdkd_teacher_loss(t, s, reduction="none"),
    lambda s, t: mtard_kl(s, t, eps=0.0, reduction="none"),
], ids=["kd", "binkl-norm", "binkl-plain", "bdkd", "bdkd-mix", "bdkd-teacher", "mtard"])
def test_identical_student_and_teacher_give_zero_and_different_give_positive(fn):
    s = torch.randn(6, 4, dtype=torch.float64)
    torch.testing.assert_close(fn(s, s.clone()), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (fn(s, s + torch.randn(6, 4, dtype=torch.float64)) > 0).all()


# ----------------------------------------------------------------------------- properties

BIG = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


def _tensor(draw, shape, dtype):
    vals = draw(st.lists(BIG, min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(vals, dtype=torch.float32).view(shape).to(dtype)


@st.composite
def pairs(draw):
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    return _tensor(draw, (n, c), dtype), _tensor(draw, (n, c), dtype), torch.tensor(
        draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))


LOGIT_LOSSES = {
    "kd": lambda s, t, y, r: kd_loss(s, t, reduction=r),
    "binkl-norm": lambda s, t, y, r: binary_kl_loss(s, t, reduction=r),
    "binkl-plain": lambda s, t, y, r: binary_kl_loss(s, t, variant="plain", reduction=r),
    "bdkd": lambda s, t, y, r: bdkd_loss(s, t, reduction=r),
    "bdkd-teacher": lambda s, t, y, r: bdkd_teacher_loss(s, t, reduction=r),
    "dhkd": lambda s, t, y, r: dhkd_loss(s, s * 0.5, t, y, reduction=r),
    "nd": lambda s, t, y, r: nd_loss(s, t, y, torch.eye(s.shape[1], dtype=s.dtype) + 0.1, reduction=r),
    "mtard": lambda s, t, y, r: mtard_kl(s, t, reduction=r),
}


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@settings(max_examples=25, deadline=None)
@given(data=pairs())
def test_finite_loss_and_grad_for_large_logits(name, data):
    s, t, y = data
    s = s.clone().requires_grad_()
    loss = LOGIT_LOSSES[name](s, t, y, "mean")
    (g,) = torch.autograd.grad(loss, s)
    assert loss.dtype == s.dtype
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@settings(max_examples=15, deadline=None)
@given(data=pairs())
def test_reductions_are_consistent(name, data):
    s, t, y = (x.double() if x.is_floating_point() else x for x in data)
    fn = LOGIT_LOSSES[name]
    none = fn(s, t, y, "none")
    assert none.shape == (s.shape[0],)
    torch.testing.assert_close(fn(s, t, y, "sum"), none.sum(), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(fn(s, t, y, "mean"), none.mean(), rtol=1e-9, atol=1e-6)


def test_ignore_index_leaves_samples_out():
    s, aux, t = (torch.randn(6, 4, dtype=torch.float64) for _ in range(3))
    y = torch.tensor([0, 1, -100, 3, -100, 2])
    keep = y != -100
    full = dhkd_loss(s, aux, t, y, reduction="none")
    assert (full[~keep] == 0).all()
    torch.testing.assert_close(dhkd_loss(s, aux, t, y), dhkd_loss(s[keep], aux[keep], t[keep], y[keep]), **F64)
    f, ft, centers = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64), torch.randn(
        4, 3, dtype=torch.float64)
    torch.testing.assert_close(nd_loss(f, ft, y, centers), nd_loss(f[keep], ft[keep], y[keep], centers), **F64)


def test_module_twins_equal_their_functions():
    s, aux, t = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    assert torch.equal(KDLoss(temperature=2.0)(s, t), kd_loss(s, t, temperature=2.0))
    assert torch.equal(BDKDLoss(temperature=2.0, reduction="sum")(s, t), bdkd_loss(s, t, temperature=2.0,
                                                                                    reduction="sum"))
    assert torch.equal(DHKDLoss(alpha=0.5)(s, aux, t, y), dhkd_loss(s, aux, t, y, alpha=0.5))
    centers = torch.randn(4, 4)
    crit = NDLoss(centers, reduction="none")
    assert torch.equal(crit(s, t, y), nd_loss(s, t, y, centers, reduction="none"))
    assert "class_centers" in crit.state_dict()


@pytest.mark.parametrize("call, arg", [
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0), "temperature"),
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 5)), "teacher_logits"),
    (lambda: kd_loss(torch.randn(3), torch.randn(3)), "student_logits"),
    (lambda: kd_loss(torch.randn(3, 4), torch.randn(3, 4), reduction="avg"), "reduction"),
    (lambda: binary_kl_loss(torch.randn(3, 4), torch.randn(3, 4), variant="zscore"), "variant"),
    (lambda: bdkd_loss(torch.randn(3, 4), torch.randn(3, 4), reverse_weight_uncertain=1.5),
     "reverse_weight_uncertain"),
    (lambda: bdkd_loss(torch.randn(3, 4), torch.randint(0, 3, (3, 4))), "teacher_logits"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 4])), "target"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])),
     "aux_logits"),
    (lambda: dhkd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]), alpha=-1),
     "alpha"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 5), torch.tensor([0, 1, 2]), torch.randn(3, 4)),
     "teacher_features"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 3]), torch.randn(3, 4)), "target"),
    (lambda: nd_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.randn(3, 5)),
     "class_centers"),
    (lambda: mtard_kl(torch.randn(3, 4), torch.randn(3, 4), eps=-1.0), "eps"),
    (lambda: MTARDBalancer(lr=-0.1), "lr"),
    (lambda: DualHeadKD(in_features=8, num_classes=4, aux="mlp"), "aux"),
    (lambda: DualHeadKD(), "in_features"),
])
def test_invalid_input_is_rejected_naming_the_argument(call, arg):
    with pytest.raises(ValueError, match=f"Invalid {arg}"):
        call()
