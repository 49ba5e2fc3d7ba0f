"""BD-KD (Amara, Sepahvand, Meyer, Gross & Clark, 2022): online distillation
whose student objective weights forward and reverse KL per sample by
comparing the student's and the teacher's entropies.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_positive, check_unit
from gradwise.losses._common import NAN_FOR_INF_STUDENT_LOGPROB, LossModule, check_reduction, reduce_loss
from gradwise.losses._distill import check_pair, common_dtype, entropy_rows, kl_rows, log_softmax_t
from gradwise.registry import register

__all__ = ["bdkd_loss", "BDKDLoss", "bdkd_teacher_loss"]

PAPER = "BD-KD: Balancing the Divergences for Online Knowledge Distillation"


def bdkd_weights(log_ps: Tensor, log_pt: Tensor, reverse_weight_uncertain: float,
                 reverse_weight_confident: float) -> Tensor:
    """Per-sample reverse-KL weight ``w_i`` from the softened log-probabilities (no grad): the entropy gap decides."""
    log_ps, log_pt = log_ps.detach(), log_pt.detach()
    uncertain = entropy_rows(log_ps) > entropy_rows(log_pt)
    return torch.where(uncertain, torch.full_like(uncertain, reverse_weight_uncertain, dtype=log_ps.dtype),
                       torch.full_like(uncertain, reverse_weight_confident, dtype=log_ps.dtype))


@register(kind="loss", paper=PAPER, year=2022, arxiv="2212.12965", code=None,
          summary="BD-KD student loss: per-sample mix of forward/reverse KL chosen by the student-teacher entropy gap",
          info={"reliability": {"inputs": ("x", "teacher"), "labels": "none",
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_STUDENT_LOGPROB)}}})
def bdkd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 4.0,
              reverse_weight_uncertain: float = 1.0, reverse_weight_confident: float = 0.0,
              reduction: str = "mean") -> Tensor:
    r"""The student's distillation term of BD-KD (balanced divergences).

    Paper: "BD-KD: Balancing the Divergences for Online Knowledge Distillation",
    Ibtihel Amara, Nazanin Sepahvand, Brett H. Meyer, Warren J. Gross, James J.
    Clark, arXiv:2212.12965 (2022; revised 2024). Authors' code: none released
    that we could find, so there are no golden values; the tests check the
    formula below and its limits.

    Math (softened distributions ``p^s = softmax(s/T)``, ``p^t = softmax(t/T)``,
    entropies ``H``; forward KL ``KL(p^t || p^s)``, reverse KL ``KL(p^s || p^t)``)::

        w_i = reverse_weight_uncertain   if H(p^s_i) > H(p^t_i)   (student less confident than the teacher)
              reverse_weight_confident   otherwise                 (student as confident or more)
        l_i = T^2 * [ (1 - w_i) * KL(p^t_i || p^s_i) + w_i * KL(p^s_i || p^t_i) ]

    The student's full objective is ``CE(s, y) + l``; in online (mutual)
    distillation the peer/teacher is trained at the same time with
    :func:`bdkd_teacher_loss`. Reverse KL is mode-seeking and sharpens the
    student where it is less confident than the teacher; forward KL is
    mass-covering and softens it where it is (over)confident: the balance the
    paper credits for better calibration. ``w = 0`` everywhere gives the plain
    KD loss (:func:`kd_loss`), ``w = 1`` everywhere the reverse-KL KD loss.

    Our reading, where we could not consult the full text: the abstract and
    summaries state "sample-wise weighting of forward and reverse KL"
    guided by the teacher-student entropy gap, with reverse KL as the
    teacher's regularizer. The two weights, their defaults (a hard switch:
    reverse KL for samples where the student is less confident, forward KL
    otherwise) and the ``T^2`` scaling are our choices; set the weights to
    reproduce any fixed forward/reverse mix. The weights are computed without
    gradient (``w`` is a per-sample coefficient, not optimized); gradients
    flow into ``student_logits`` only (``teacher_logits`` is detached: the
    peer is trained by its own loss).

    Checked against (session 3): still only the abstract (arXiv v1 and v2)
    and a third-party summary (sciencestack.ai, 2212.12965), which confirm
    the naming (forward ``KL(p^t || p^s)``, reverse ``KL(p^s || p^t)``), the
    sample-wise weighting of the two in the student's loss "guided by the
    entropy gap between teacher and student predictions" and reverse KL as
    the teacher's regularizer. The body of the paper could not be read (the
    search store returns only page openings) and no code was found (code
    index searched for BD-KD/bdkd and for entropy-gated forward/reverse KL
    distillation). Unverified, hence options: the weighting function (here a
    hard switch with two weights), which side of the gap gets which
    divergence (here reverse KL where the student is less confident, the
    mode-seeking direction that sharpens it), and the ``T^2`` factor.
    Searched again (session 3, second pass): exact-string searches of the
    code index for the title, "BD-KD" and "Amara et al" find only reference
    lists of citing papers (ABKD, distillation scaling laws, LLM distillation
    papers) and no description of the weighting; a meaning search for
    entropy-gap-gated forward/reverse KL distillation code finds none.

    Example::

        >>> loss_s = F.cross_entropy(s, y) + bdkd_loss(s, t)
        >>> loss_t = F.cross_entropy(t, y) + bdkd_teacher_loss(t, s)
    """
    temperature = check_positive("temperature", temperature)
    reverse_weight_uncertain = check_unit("reverse_weight_uncertain", reverse_weight_uncertain)
    reverse_weight_confident = check_unit("reverse_weight_confident", reverse_weight_confident)
    check_reduction(reduction)
    check_pair(student_logits, teacher_logits)
    log_ps = log_softmax_t(student_logits, temperature)
    log_pt = log_softmax_t(teacher_logits.detach(), temperature)
    w = bdkd_weights(log_ps, log_pt, reverse_weight_uncertain, reverse_weight_confident)
    per = temperature ** 2 * ((1.0 - w) * kl_rows(log_pt, log_ps) + w * kl_rows(log_ps, log_pt))
    return reduce_loss(per, reduction).to(common_dtype(student_logits, teacher_logits))


class BDKDLoss(LossModule):
    """Module twin of :func:`bdkd_loss` (BD-KD, arXiv:2212.12965; see it for the math).

    ``BDKDLoss(temperature=4.0)(student_logits, teacher_logits)``.
    """

    function = bdkd_loss


def bdkd_teacher_loss(teacher_logits: Tensor, student_logits: Tensor, *, temperature: float = 4.0,
                      reduction: str = "mean") -> Tensor:
    r"""The teacher's (peer's) distillation term in BD-KD's online training.

    ``T^2 * KL(p^s || p^t)`` with the student detached: the reverse KL (in
    BD-KD's naming, where forward is ``KL(p^t || p^s)``) acting as a
    regularizer that pulls the teacher towards the student, as in deep mutual
    learning. The teacher's objective is ``CE(t, y) + bdkd_teacher_loss(t, s)``.
    See :func:`bdkd_loss` (arXiv:2212.12965) for what was our reading.
    """
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)
    check_pair(teacher_logits, student_logits, "teacher_logits", "student_logits")
    log_pt = log_softmax_t(teacher_logits, temperature)
    log_ps = log_softmax_t(student_logits.detach(), temperature)
    per = temperature ** 2 * kl_rows(log_ps, log_pt)
    return reduce_loss(per, reduction).to(common_dtype(student_logits, teacher_logits))
