"""The ND loss (Wang et al., 2023): regularize the student's feature norm and
its direction towards the teacher's class-mean embedding (KD++ = CE + KD + ND).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_int
from gradwise.losses._common import (NAN_FOR_INF_EMBEDDING, LossModule, check_label_range, check_reduction,
                                     prepare_logits_target, reduce_loss, upcast)
from gradwise.losses._distill import common_dtype
from gradwise.registry import register

__all__ = ["nd_loss", "NDLoss", "class_means"]

PAPER = "Improving Knowledge Distillation via Regularizing Feature Norm and Direction"
CODE = "https://github.com/WangYZ1608/Knowledge-Distillation-via-ND"


def _check_features(x: Tensor, name: str) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        got = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [N, D], got {got}")
    if x.dim() != 2:
        raise ValueError(f"Invalid {name}: expected shape [N, D], got {tuple(x.shape)}")


def _check_inputs(student_features: Tensor, teacher_features: Tensor, target: Tensor, class_centers: Tensor,
                  ignore_index: int | None, validate: bool) -> None:
    _check_features(student_features, "student_features")
    _check_features(teacher_features, "teacher_features")
    if teacher_features.shape != student_features.shape:
        raise ValueError(f"Invalid teacher_features: expected the shape of student_features "
                         f"{tuple(student_features.shape)} (project the student's features to the teacher's "
                         f"dimension first), got {tuple(teacher_features.shape)}")
    _check_features(class_centers, "class_centers")
    if class_centers.shape[1] != student_features.shape[1]:
        raise ValueError(f"Invalid class_centers: expected shape [C, {student_features.shape[1]}], "
                         f"got {tuple(class_centers.shape)}")
    if not torch.is_tensor(target) or target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"Invalid target: expected an integer tensor of class indices of shape [N], got "
                         f"{target.dtype if torch.is_tensor(target) else type(target).__name__}")
    if target.shape != student_features.shape[:1]:
        raise ValueError(f"Invalid target: expected shape [{student_features.shape[0]}], got {tuple(target.shape)}")
    if validate:
        check_label_range(target, class_centers.shape[0], ignore_index)


@register(kind="loss", paper=PAPER, year=2023, arxiv="2305.17007", code=CODE,
          summary="ND loss: 1 - <f_s, e_y> / max(|f_s|, |f_t|), e_y the teacher's unit class-mean embedding",
          info={"reliability": {"inputs": ("x", "teacher", "labels", "class_matrix"), "ignore_index": True,
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_EMBEDDING)}}})
def nd_loss(student_features: Tensor, teacher_features: Tensor, target: Tensor, class_centers: Tensor, *,
            reduction: str = "mean", ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Norm-and-direction (ND) loss of Wang et al. (2023).

    Paper: "Improving Knowledge Distillation via Regularizing Feature Norm and
    Direction", Yuzhu Wang, Lechao Cheng, Manni Duan, Yongheng Wang, Zunlei Feng,
    Shu Kong, arXiv:2305.17007. Authors' code:
    https://github.com/WangYZ1608/Knowledge-Distillation-via-ND
    (``CIFAR/utils.py: DirectNormLoss``; the same in their ImageNet and
    detection folders).

    Math (student embedding ``f_s`` and teacher embedding ``f_t`` of a sample
    with label ``y``, the teacher's class-mean embeddings ``c_k`` computed on
    the training set, ``e_y = c_y / ||c_y||``)::

        l_ND = 1 - <f_s, e_y> / max(||f_s||, ||f_t||)

    It pulls the student's embedding towards the teacher's class-mean direction
    and, since the projection ``<f_s, e_y>`` is divided by the larger of the two
    norms only, rewards a student norm as large as the teacher's (and larger).
    KD++ trains with ``CE + w_kd * KD + w_nd * ND`` (their CIFAR-100 scripts
    use ``w_nd`` in 0.5 .. 2.0); multiply this loss by ``w_nd`` yourself.

    ``class_centers`` [C, D]: use :func:`class_means` on the teacher's
    embeddings of the training set (the code's ``emb_fea_distribution.py``). When
    the student's embedding dimension differs from the teacher's, the code maps it
    with a learned linear layer (``EmbTrans``) before this loss; do the same.

    Departures: the code loops over samples in Python; this is vectorized
    (same value, same gradient: through ``f_s`` in the numerator and, when
    ``||f_s|| >= ||f_t||``, through ``||f_s||`` in the denominator; ties go
    to the student, as Python's ``max`` returns its first argument). The
    denominator is clamped at the dtype's smallest normal number so an
    all-zero pair gives ``1`` instead of NaN. ``reduction="mean"`` is the
    code's mean over the batch; ``ignore_index`` samples are left out.
    float16/bfloat16 inputs are computed in float32 and cast back.

    Example::

        >>> centers = class_means(teacher_feats_train, y_train, num_classes=10)
        >>> loss = ce + kd_loss(s_logits, t_logits) + 2.0 * nd_loss(proj(s_feat), t_feat, y, centers)
    """
    check_reduction(reduction)
    _check_inputs(student_features, teacher_features, target, class_centers, ignore_index, validate)
    s, t, c = upcast(student_features), upcast(teacher_features), upcast(class_centers)
    _, tgt, mask = prepare_logits_target(s, target, ignore_index)
    c = c.to(s.dtype)
    e = c / torch.linalg.vector_norm(c, dim=1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    e_y = e[tgt]
    s_norm = torch.linalg.vector_norm(s, dim=1)
    t_norm = torch.linalg.vector_norm(t, dim=1).to(s_norm.dtype)
    max_norm = torch.where(s_norm >= t_norm, s_norm, t_norm).clamp_min(torch.finfo(s_norm.dtype).tiny)
    per = 1.0 - (s * e_y).sum(dim=1) / max_norm
    return reduce_loss(per, reduction, mask).to(common_dtype(student_features, teacher_features))


class NDLoss(LossModule):
    """Module twin of :func:`nd_loss` (arXiv:2305.17007; see it for the math).

    Holds the teacher's class centers as a buffer:
    ``NDLoss(class_centers)(student_features, teacher_features, target)``.
    """

    function = nd_loss

    def __init__(self, class_centers: Tensor, *, reduction: str = "mean", ignore_index: int = -100,
                 validate: bool = True) -> None:
        """``class_centers`` [C, D] (copied into a buffer); the keyword arguments are :func:`nd_loss`'s."""
        super().__init__(reduction=reduction, ignore_index=ignore_index, validate=validate)
        _check_features(class_centers, "class_centers")
        self.register_buffer("class_centers", class_centers.detach().clone())

    def forward(self, student_features: Tensor, teacher_features: Tensor, target: Tensor) -> Tensor:
        return nd_loss(student_features, teacher_features, target, self.class_centers, **self.kwargs)


@torch.no_grad()
def class_means(features: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Per-class mean of ``features`` [N, D] over labels ``target`` [N]: the ND loss's class centers [C, D].

    A class without samples gets a zero center (its direction is then undefined;
    :func:`nd_loss` treats it as zero, giving loss 1 for that class).
    """
    _check_features(features, "features")
    check_int("num_classes", num_classes, lo=1)
    tgt = target.long()
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, tgt, features)
    counts = torch.bincount(tgt, minlength=num_classes).clamp_min(1).to(features.dtype)
    return sums / counts[:, None]
