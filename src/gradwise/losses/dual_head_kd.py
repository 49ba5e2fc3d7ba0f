"""Dual-Head Knowledge Distillation (DHKD; Yang, Zong, Huang, Feng & An, 2024/2025).

The student's linear classifier is split in two: the main head is trained
with cross-entropy on the labels, an auxiliary head with a logit-level
distillation loss (BinaryKL, or BinaryKL-Norm by default) against the
teacher's logits. Both losses train the shared backbone; neither head sees
the other's loss. At test time only the main head is used.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_choice, check_nonneg, check_positive
from gradwise.losses._common import (LossModule, check_logits_target, check_reduction, prepare_logits_target,
                                     reduce_loss, upcast)
from gradwise.losses._distill import check_pair, common_dtype
from gradwise.registry import register

__all__ = ["binary_kl_loss", "dhkd_loss", "DHKDLoss", "DualHeadKD", "dhkd_aligned_backward"]

PAPER = "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an Auxiliary Head"
ARXIV = "2411.08937"
CODE = "https://github.com/penghui-yang/DHKD"
VARIANTS = ("norm", "plain")
_LOG2 = math.log(2.0)


def binary_kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float,
                         variant: str = "norm") -> Tensor:
    """Per-sample BinaryKL (summed over classes, times T^2), float32 for half inputs.

    ``plain``: sum_c KL(Bern(sigmoid(t_c/T)) || Bern(sigmoid(s_c/T)))
    ``norm`` : sum_c KL(Bern(1/2) || Bern(sigmoid((s_c - t_c)/T)))
             = sum_c [softplus(x_c)/2 + softplus(-x_c)/2 - log 2],  x = (s - t)/T
    Written with softplus (log sigmoid(x) = -softplus(-x)), so finite for any finite logits.
    """
    s, t = upcast(student_logits), upcast(teacher_logits)
    if variant == "norm":
        x = (s - t) / temperature
        per_class = 0.5 * (F.softplus(x) + F.softplus(-x)) - _LOG2
    else:
        xs, xt = s / temperature, t / temperature
        pt = torch.sigmoid(xt)
        # log p_t - log p_s and log(1-p_t) - log(1-p_s) with log sigmoid(x) = -softplus(-x)
        d_pos = F.softplus(-xs) - F.softplus(-xt)
        d_neg = F.softplus(xs) - F.softplus(xt)
        per_class = pt * d_pos + (1.0 - pt) * d_neg
    return temperature ** 2 * per_class.sum(dim=1)


def binary_kl_loss(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 2.0,
                   variant: str = "norm", reduction: str = "mean") -> Tensor:
    r"""The logit-level distillation loss of DHKD (the auxiliary head's loss).

    From "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with an
    Auxiliary Head" (arXiv:2411.08937), as ``distiller_zoo/BinaryKL.py`` and
    ``BinaryKLNorm.py`` of https://github.com/penghui-yang/DHKD compute it.
    Each class is a binary problem through the sigmoid, so the logits' offset
    and scale (which softmax discards) are distilled too::

        plain: T^2 sum_c KL(Bern(sigma(t_c/T)) || Bern(sigma(s_c/T)))
        norm : T^2 sum_c KL(Bern(1/2) || Bern(sigma((s_c - t_c)/T)))     (default, the code's --distill dhkd)

    ``norm`` is minimized (value 0) exactly when ``s = t``; ``plain`` too.
    ``reduction="mean"`` averages the per-sample sums over samples (the code's
    ``loss.sum() / N``). Departure from the code: it clamps the sigmoids to
    ``[1e-8, 1 - 1e-8]``, which zeroes the gradient once ``|x| > ~18.4``;
    here the exact log-sigmoid (softplus) form is used, identical inside that
    range and with a non-vanishing gradient outside it.
    """
    temperature = check_positive("temperature", temperature)
    check_choice("variant", variant, VARIANTS)
    check_reduction(reduction)
    check_pair(student_logits, teacher_logits)
    per = binary_kl_per_sample(student_logits, teacher_logits, temperature, variant)
    return reduce_loss(per, reduction).to(common_dtype(student_logits, teacher_logits))


@register(kind="loss", paper=PAPER, year=2024, arxiv=ARXIV, code=CODE,
          summary="DHKD: CE on the main head + BinaryKL(-Norm) on an auxiliary head, sharing the backbone",
          info={"reliability": {"inputs": ("x", "other", "teacher", "labels"), "ignore_index": True}})
def dhkd_loss(main_logits: Tensor, aux_logits: Tensor, teacher_logits: Tensor, target: Tensor, *,
              gamma: float = 1.0, alpha: float = 1.0, temperature: float = 2.0, variant: str = "norm",
              reduction: str = "mean", ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Dual-Head Knowledge Distillation loss (Yang et al., 2024; ACM MM 2025 version).

    Paper: "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with
    an Auxiliary Head", Penghui Yang, Chen-Chen Zong, Sheng-Jun Huang, Lei Feng,
    Bo An, arXiv:2411.08937. Authors' code: https://github.com/penghui-yang/DHKD
    (``helper/loops.py: train_distill`` with ``--distill dhkd``).

    The student has a backbone ``f`` and two heads on the same features: the
    main head ``W_1`` (used at test time) and an auxiliary head ``W_2``::

        main_logits = W_1 f(x),   aux_logits = W_2 f(x)
        L = gamma * CE(main_logits, y) + alpha * BinaryKL_T(aux_logits, teacher_logits)

    (``BinaryKL_T`` is :func:`binary_kl_loss`, ``variant="norm"`` by default.)
    The paper shows that putting the logit-level loss and CE on one linear
    classifier makes their gradients contradict in the classifier (under
    neural collapse) though not in the backbone; with two heads each head gets
    one loss's gradient and the backbone gets both. Nothing is detached: the
    auxiliary loss's gradient reaches the backbone through ``aux_logits``, the
    CE's through ``main_logits``.

    Defaults follow the code's CIFAR-100 recipe (``-r 1 -a 1 --BinaryKL_T 2``,
    BinaryKL-Norm). The code's further options are here as pieces:
    :class:`DualHeadKD` builds the linear or non-linear auxiliary head
    (``--linear``/``--nonlinear``), :func:`dhkd_aligned_backward` is its
    gradient-alignment step (``--ga``). ``teacher_logits`` should be computed
    without grad (the code uses ``torch.no_grad``); gradients do flow into it
    if it requires them.

    Choices: per sample ``gamma * ce_i + alpha * bkl_i``; ``ignore_index``
    samples are left out of both terms (the teacher term needs no label, but
    a sample without a label is usually padding). ``reduction="mean"`` is the
    mean over kept samples, equal to the code's sum of two batch means.
    ``validate=False`` skips the label-range check (one host sync).

    Example::

        >>> model = DualHeadKD(in_features=32, num_classes=10)
        >>> main, aux = model(features)
        >>> dhkd_loss(main, aux, teacher_logits, y).backward()
    """
    gamma = check_nonneg("gamma", gamma)
    alpha = check_nonneg("alpha", alpha)
    temperature = check_positive("temperature", temperature)
    check_choice("variant", variant, VARIANTS)
    check_reduction(reduction)
    check_logits_target(main_logits, target, ignore_index, name="main_logits", validate=validate)
    check_pair(aux_logits, teacher_logits, "aux_logits", "teacher_logits")
    if aux_logits.shape != main_logits.shape:
        raise ValueError(f"Invalid aux_logits: expected the shape of main_logits {tuple(main_logits.shape)}, "
                         f"got {tuple(aux_logits.shape)}")
    x, tgt, mask = prepare_logits_target(main_logits, target, ignore_index)
    ce = F.cross_entropy(x, tgt, reduction="none")
    bkl = binary_kl_per_sample(aux_logits, teacher_logits, temperature, variant)
    per = gamma * ce + alpha * bkl
    return reduce_loss(per, reduction, mask).to(common_dtype(main_logits, aux_logits, teacher_logits))


class DHKDLoss(LossModule):
    """Module twin of :func:`dhkd_loss` (DHKD, arXiv:2411.08937; see it for the math).

    ``DHKDLoss(alpha=1.0, temperature=2.0)(main_logits, aux_logits, teacher_logits, target)``.
    """

    function = dhkd_loss


class _NonLinearHead(nn.Module):
    """The code's ``models/classifier.py: NonLinearClassifier`` shape: Linear-Dropout-BN-ReLU-Linear."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 200, p: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.Dropout(p), nn.BatchNorm1d(hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register(kind="module", paper=PAPER, year=2024, arxiv=ARXIV, code=CODE,
          summary="DHKD's two classification heads on shared features (main: CE, auxiliary: BinaryKL)")
class DualHeadKD(nn.Module):
    r"""The dual classification head of DHKD (arXiv:2411.08937).

    Paper: "Dual-Head Knowledge Distillation: Enhancing Logits Utilization with
    an Auxiliary Head" (Yang et al.), code https://github.com/penghui-yang/DHKD
    (``fc``/``fc2`` in its ``models/*.py``).

    Wraps a feature -> logits ``head`` (default ``nn.Linear(in_features,
    num_classes)``) and adds an auxiliary head on the same features:
    ``aux="linear"`` (the code's ``--linear``, used on ImageNet) or
    ``"nonlinear"`` (``--nonlinear``: Linear(200)-Dropout(0.1)-BN-ReLU-Linear,
    used on CIFAR-100), or pass your own ``aux_head``. ``forward(features)``
    returns ``(main_logits, aux_logits)``; :meth:`loss` applies
    :func:`dhkd_loss` with the hyperparameters given here::

        L = gamma * CE(W_1 f, y) + alpha * BinaryKL_T(W_2 f, teacher_logits)

    At inference use ``model.head(features)`` (or the first output).

    Example::

        >>> dh = DualHeadKD(in_features=32, num_classes=10)
        >>> main, aux = dh(backbone(x))
        >>> loss = dh.loss(main, aux, teacher(x).detach(), y)
    """

    def __init__(self, head: nn.Module | None = None, *, in_features: int | None = None,
                 num_classes: int | None = None, aux: str = "linear", aux_head: nn.Module | None = None,
                 gamma: float = 1.0, alpha: float = 1.0, temperature: float = 2.0, variant: str = "norm",
                 reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__()
        if head is None or aux_head is None:
            if isinstance(head, nn.Linear):
                in_features = head.in_features if in_features is None else in_features
                num_classes = head.out_features if num_classes is None else num_classes
            if not isinstance(in_features, int) or in_features < 1:
                raise ValueError(f"Invalid in_features: {in_features!r} (accepted: a positive int, or pass "
                                 "nn.Linear heads)")
            if not isinstance(num_classes, int) or num_classes < 2:
                raise ValueError(f"Invalid num_classes: {num_classes!r} (accepted: an int >= 2)")
        check_choice("aux", aux, ("linear", "nonlinear"))
        self.head = head if head is not None else nn.Linear(in_features, num_classes)
        if aux_head is None:
            aux_head = nn.Linear(in_features, num_classes) if aux == "linear" else _NonLinearHead(in_features,
                                                                                                 num_classes)
        self.aux_head = aux_head
        self.loss_kwargs = dict(gamma=gamma, alpha=alpha, temperature=temperature, variant=variant,
                                reduction=reduction, ignore_index=ignore_index)
        # validate the hyperparameters once
        check_nonneg("gamma", gamma)
        check_nonneg("alpha", alpha)
        check_positive("temperature", temperature)
        check_choice("variant", variant, VARIANTS)
        check_reduction(reduction)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(features), self.aux_head(features)

    def loss(self, main_logits: Tensor, aux_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> Tensor:
        return dhkd_loss(main_logits, aux_logits, teacher_logits, target, **self.loss_kwargs)


def dhkd_aligned_backward(losses: Sequence[Tensor], params: Iterable[Tensor]) -> None:
    r"""DHKD's gradient-alignment step (the code's ``--ga``, ``helper/optimizer.py: OptimGradAlign``).

    With ``losses = [gamma * L_ce, alpha * L_kd]`` and gradients ``g_0, g_1, ...``
    of each loss w.r.t. all ``params`` (zeros where a loss does not reach a
    parameter), every ``g_i`` that conflicts with the CE gradient
    (``<g_i, g_0> < 0``) is projected onto the normal plane of ``g_0``
    (PCGrad against the first loss only), and ``p.grad`` is *set* (not
    accumulated) to the sum ``g_0 + sum_i g_i'``, as the reference does.
    Call it instead of ``loss.backward()``, then ``optimizer.step()``.
    No host sync: the projection uses ``torch.where``.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("Invalid params: no parameter requires grad")
    losses = list(losses)
    if not losses:
        raise ValueError("Invalid losses: expected at least one loss")
    grads = []
    for i, loss in enumerate(losses):
        gs = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
        grads.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)])
    g0 = grads[0]
    g0_sq = torch.stack([(g * g).sum() for g in g0]).sum()
    total = [g.clone() for g in g0]
    for gi in grads[1:]:
        dot = torch.stack([(a * b).sum() for a, b in zip(gi, g0)]).sum()
        coef = torch.where(dot < 0, dot / torch.where(g0_sq > 0, g0_sq, torch.ones_like(g0_sq)),
                           torch.zeros_like(dot))
        for t, a, b in zip(total, gi, g0):
            t.add_(a - coef * b)
    for p, g in zip(params, total):
        p.grad = g
