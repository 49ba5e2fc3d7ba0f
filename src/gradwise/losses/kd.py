"""Plain knowledge distillation (Hinton, Vinyals & Dean, 2015): the
temperature-softened, T^2-scaled KL divergence that the other distillation
objectives in this package build on.

Besides :func:`kd_loss` this module holds the small pieces the distillation
modules share (checks of a student/teacher logit pair, softened
log-probabilities, row-wise KL and entropy); they are private to the
distillation modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.losses._common import LossModule, check_reduction, check_same_shape, reduce_loss, upcast
from gradwise.registry import register

__all__ = ["kd_loss", "KDLoss"]

PAPER = "Distilling the Knowledge in a Neural Network"


# ----------------------------------------------------------------------------- shared pieces (private)

def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        rng = f"a finite number {name} >= 0" if allow_zero else f"a finite number {name} > 0"
        raise ValueError(f"Invalid {name}: {value!r} (accepted: {rng})")
    return float(value)


def _check_unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: 0 <= {name} <= 1)")
    return float(value)


def _check_logits(x: Tensor, name: str) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [N, C], got {got}")
    if x.dim() != 2:
        raise ValueError(f"Invalid {name}: expected shape [N, C], got {tuple(x.shape)}")


def _check_pair(student_logits: Tensor, teacher_logits: Tensor, student_name: str = "student_logits",
                teacher_name: str = "teacher_logits") -> None:
    """Both [N, C] floating point, same shape."""
    _check_logits(student_logits, student_name)
    _check_logits(teacher_logits, teacher_name)
    check_same_shape(student_logits, teacher_logits, student_name, teacher_name)


def _common_dtype(*xs: Tensor) -> torch.dtype:
    out = xs[0].dtype
    for x in xs[1:]:
        out = torch.promote_types(out, x.dtype)
    return out


def _log_softmax_t(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(upcast(logits) / temperature, dim=1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities: sum_c p_c (log p_c - log q_c).

    Terms with p_c = 0 (exp underflow) contribute 0, as in ``F.kl_div``.
    """
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=1)


def _entropy_rows(log_p: Tensor) -> Tensor:
    """Shannon entropy per row (nats) from log-probabilities."""
    return -(log_p.exp() * log_p).sum(dim=1)


# ----------------------------------------------------------------------------- plain KD

def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) per sample (float32 for half inputs)."""
    log_ps = _log_softmax_t(student_logits, temperature)
    log_pt = _log_softmax_t(teacher_logits, temperature)
    return temperature ** 2 * _kl_rows(log_pt, log_ps)


@register(kind="loss", paper=PAPER, year=2015, arxiv="1503.02531", code=None, seed=False,
          summary="Hinton KD: T^2 KL(softmax(teacher/T) || softmax(student/T)), the base of the distillation losses")
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
    temperature = _check_positive("temperature", temperature)
    check_reduction(reduction)
    _check_pair(student_logits, teacher_logits)
    per = kd_per_sample(student_logits, teacher_logits, temperature)
    return reduce_loss(per, reduction).to(_common_dtype(student_logits, teacher_logits))


class KDLoss(LossModule):
    """Module twin of :func:`kd_loss` (Hinton et al. 2015, arXiv:1503.02531; see it for the math).

    ``KDLoss(temperature=4.0)(student_logits, teacher_logits)``.
    """

    function = kd_loss
