"""BD-KD: balanced forward/reverse KL and where its gradients go."""
from __future__ import annotations

import torch

from gradwise.losses import bdkd_loss, bdkd_teacher_loss, kd_loss
from loss_inputs import kl_rows as _kl


F64 = dict(rtol=1e-9, atol=1e-12)


def test_bdkd_reduces_to_forward_or_reverse_kl_at_its_weight_extremes():
    t = torch.randn(9, 5, dtype=torch.float64) * 3
    scale = torch.tensor([0.3, 0.5, 2.0, 3.0, 0.7, 1.5, 0.2, 4.0, 0.9], dtype=torch.float64)[:, None]
    s = t * scale + 0.1 * torch.randn(9, 5, dtype=torch.float64)  # flatter (<1) or sharper (>1) than the teacher
    T = 2.0
    ps, pt = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    fwd = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=0.0, reverse_weight_confident=0.0, reduction="none")
    rev = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=1.0, reverse_weight_confident=1.0, reduction="none")
    torch.testing.assert_close(fwd, kd_loss(s, t, temperature=T, reduction="none"), **F64)
    torch.testing.assert_close(rev, T ** 2 * _kl(ps, pt), **F64)
    # default: reverse KL where the student's entropy exceeds the teacher's, forward KL elsewhere
    ent = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    uncertain = ent(ps) > ent(pt)
    assert 0 < uncertain.sum() < 9  # both branches are exercised
    torch.testing.assert_close(bdkd_loss(s, t, temperature=T, reduction="none"), torch.where(uncertain, rev, fwd),
                               **F64)
    mix = bdkd_loss(s, t, temperature=T, reverse_weight_uncertain=0.25, reverse_weight_confident=0.25,
                    reduction="none")
    torch.testing.assert_close(mix, 0.75 * fwd + 0.25 * rev, **F64)


def test_bdkd_gradient_reaches_the_student_only_and_teacher_loss_the_teacher_only():
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    bdkd_loss(s, t).backward()
    assert s.grad is not None and t.grad is None
    s.grad = None
    bdkd_teacher_loss(t, s).backward()
    assert t.grad is not None and s.grad is None
