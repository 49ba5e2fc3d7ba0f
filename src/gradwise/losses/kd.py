"""Plain knowledge distillation (Hinton, Vinyals & Dean, 2015): the
temperature-softened, T^2-scaled KL divergence that the other distillation
objectives in this package build on.

The small pieces the distillation modules share (checks of a student/teacher
logit pair, softened log-probabilities, row-wise KL and entropy) are in
``gradwise.losses._distill``.
"""
from __future__ import annotations

from torch import Tensor

from gradwise._validate import check_positive
from gradwise.losses._common import NAN_FOR_INF_STUDENT_LOGPROB, LossModule, check_reduction, reduce_loss
from gradwise.losses._distill import check_pair, common_dtype, kl_rows, log_softmax_t
from gradwise.registry import register

__all__ = ["kd_loss", "KDLoss"]

PAPER = "Distilling the Knowledge in a Neural Network"


# ----------------------------------------------------------------------------- plain KD

def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) per sample (float32 for half inputs)."""
    log_ps = log_softmax_t(student_logits, temperature)
    log_pt = log_softmax_t(teacher_logits, temperature)
    return temperature ** 2 * kl_rows(log_pt, log_ps)


@register(kind="loss", paper=PAPER, year=2015, arxiv="1503.02531", code=None, seed=False,
          summary="Hinton KD: T^2 KL(softmax(teacher/T) || softmax(student/T)), the base of the distillation losses",
          info={"reliability": {"inputs": ("x", "teacher"), "labels": "none",
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_STUDENT_LOGPROB)}}})
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 4.0,
            reduction: str = "mean") -> Tensor:
    r"""Knowledge-distillation loss of Hinton, Vinyals & Dean (2015).

    Paper: "Distilling the Knowledge in a Neural Network", Geoffrey Hinton,
    Oriol Vinyals, Jeff Dean, NIPS 2014 Deep Learning Workshop, arXiv:1503.02531.
    Authors' code: none released. Not a seed paper; it is the shared base of
    the distillation objectives here (DHKD, ND/KD++, BD-KD, MTARD).

    Math (student logits ``s``, teacher logits ``t``, temperature ``T``)::

        p^t = softmax(t / T),  p^s = softmax(s / T)
        l(s, t) = T^2 * KL(p^t || p^s) = T^2 * sum_c p^t_c (log p^t_c - log p^s_c)

    The ``T^2`` factor keeps the gradient's scale independent of ``T`` (the
    gradient of the KL w.r.t. ``s`` is ``(p^s - p^t) / T``), as the paper
    recommends when mixing it with the hard-label cross-entropy.

    Choices: ``reduction="mean"`` is the mean over samples of the per-sample
    sum over classes (``F.kl_div(..., reduction="batchmean")``, what the
    distillation codebases that build on it compute). Gradients flow into
    both arguments; detach ``teacher_logits`` for offline distillation.
    Computed in log space (``log_softmax``) so it is finite for any finite
    logits; float16/bfloat16 inputs are computed in float32 and the result is
    cast back.

    Example::

        >>> s = torch.randn(8, 10, requires_grad=True); t = torch.randn(8, 10)
        >>> loss = F.cross_entropy(s, y) + kd_loss(s, t, temperature=4.0)
    """
    temperature = check_positive("temperature", temperature)
    check_reduction(reduction)
    check_pair(student_logits, teacher_logits)
    per = kd_per_sample(student_logits, teacher_logits, temperature)
    return reduce_loss(per, reduction).to(common_dtype(student_logits, teacher_logits))


class KDLoss(LossModule):
    """Module twin of :func:`kd_loss` (Hinton et al. 2015, arXiv:1503.02531; see it for the math).

    ``KDLoss(temperature=4.0)(student_logits, teacher_logits)``.
    """

    function = kd_loss
