"""Pieces the distillation losses share (kd, bdkd, dual_head_kd, mtard, nd): checks of a student/teacher
logit pair, the common dtype, softened log-probabilities, row-wise KL and entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.losses._common import check_same_shape, upcast

__all__ = ["check_logits_2d", "check_pair", "common_dtype", "log_softmax_t", "kl_rows", "entropy_rows"]


def check_logits_2d(x: Tensor, name: str) -> None:
    """``x`` is a floating-point [N, C] tensor (logits without labels to check against)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [N, C], got {got}")
    if x.dim() != 2:
        raise ValueError(f"Invalid {name}: expected shape [N, C], got {tuple(x.shape)}")


def check_pair(student_logits: Tensor, teacher_logits: Tensor, student_name: str = "student_logits",
               teacher_name: str = "teacher_logits") -> None:
    """Both [N, C] floating point, same shape."""
    check_logits_2d(student_logits, student_name)
    check_logits_2d(teacher_logits, teacher_name)
    check_same_shape(student_logits, teacher_logits, student_name, teacher_name)


def common_dtype(*xs: Tensor) -> torch.dtype:
    out = xs[0].dtype
    for x in xs[1:]:
        out = torch.promote_types(out, x.dtype)
    return out


def log_softmax_t(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(upcast(logits) / temperature, dim=1)


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities: sum_c p_c (log p_c - log q_c).

    Terms with p_c = 0 (exp underflow) contribute 0, as in ``F.kl_div``.
    """
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=1)


def entropy_rows(log_p: Tensor) -> Tensor:
    """Shannon entropy per row (nats) from log-probabilities."""
    return -(log_p.exp() * log_p).sum(dim=1)
