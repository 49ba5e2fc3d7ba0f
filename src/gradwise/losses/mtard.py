"""MTARD (Zhao et al., 2023): a student distilled from a clean teacher on
natural examples and from a robust teacher on adversarial examples, with the
two losses' weights rebalanced every step from their relative progress.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_nonneg, check_real, check_unit
from gradwise.losses._common import NAN_FOR_INF_STUDENT_LOGPROB, check_reduction, reduce_loss, upcast
from gradwise.losses._distill import check_pair, common_dtype
from gradwise.registry import register

__all__ = ["mtard_kl", "MTARDBalancer", "MTARDLoss", "mtard_adversarial_examples"]

PAPER = "Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher Adversarial Distillation"
CODE = "https://github.com/zhaoshiji123/MTARD"


def mtard_kl(student_logits: Tensor, teacher_logits: Tensor, *, eps: float = 1e-5, reduction: str = "mean") -> Tensor:
    r"""MTARD's distillation term, as its code computes it (``kl_loss`` in ``mtard_resnet18_cifar10.py``).

    ``p^t = softmax(t)`` (teacher detached), ``log p^s = log_softmax(s)``, per sample::

        l_i = (1/C) sum_c [ p^t_c log(p^t_c + eps) - p^t_c log p^s_c ]

    i.e. ``KL(p^t || p^s) / C`` up to the ``eps`` inside the teacher's log
    (the code's ``1e-5``; ``eps=0`` gives the exact KL / C). ``reduction="mean"``
    is the code's ``torch.mean`` over the [N, C] matrix. No temperature (T = 1).
    """
    check_nonneg("eps", eps)
    check_reduction(reduction)
    check_pair(student_logits, teacher_logits)
    log_ps = F.log_softmax(upcast(student_logits), dim=1)
    log_pt = F.log_softmax(upcast(teacher_logits.detach()), dim=1)
    pt = log_pt.exp()
    own = torch.log(pt + eps) if eps > 0 else log_pt
    per = (pt * own - pt * log_ps).mean(dim=1)
    return reduce_loss(per, reduction).to(common_dtype(student_logits, teacher_logits))


class MTARDBalancer(nn.Module):
    r"""MTARD's adaptive weights for the natural and adversarial losses (state only, no parameters).

    The code's update (``mtard_resnet18_cifar10.py``, every step, before the backward)::

        r_adv = (L_adv / L_adv^init) ** beta,   r_nat = (L_nat / L_nat^init) ** beta
        w_nat <- w_nat - lr * (w_nat - r_nat / (r_adv + r_nat))
        w_adv  = 1 - w_nat

    ``L^init`` are the losses of the first update; ``w_nat`` starts at 1/2.
    The loss whose relative decrease lags gets more weight. ``lr`` is the
    code's ``weight_learn_rate`` (0.025, divided by 10 with the model's learning
    rate; set ``balancer.lr`` yourself), ``beta`` its ``bert`` (1).

    The state lives in buffers (``state_dict`` round-trips); the update uses
    tensor ops only (no host sync).
    """

    def __init__(self, *, lr: float = 0.025, beta: float = 1.0, init_weight_nat: float = 0.5) -> None:
        super().__init__()
        check_nonneg("lr", lr)
        check_nonneg("beta", beta)
        check_unit("init_weight_nat", init_weight_nat)
        self.lr = float(lr)
        self.beta = float(beta)
        self.register_buffer("weight_nat", torch.tensor(float(init_weight_nat), dtype=torch.float64))
        self.register_buffer("init_nat", torch.tensor(math.nan, dtype=torch.float64))
        self.register_buffer("init_adv", torch.tensor(math.nan, dtype=torch.float64))

    @property
    def weight_adv(self) -> Tensor:
        return 1.0 - self.weight_nat

    @torch.no_grad()
    def update(self, loss_adv: Tensor, loss_nat: Tensor) -> tuple[Tensor, Tensor]:
        """Record the step's losses, update the weights, return ``(w_adv, w_nat)`` (float64 scalars)."""
        la = torch.as_tensor(loss_adv).detach().to(self.weight_nat.device, torch.float64)
        ln = torch.as_tensor(loss_nat).detach().to(self.weight_nat.device, torch.float64)
        self.init_adv.copy_(torch.where(torch.isnan(self.init_adv), la, self.init_adv))
        self.init_nat.copy_(torch.where(torch.isnan(self.init_nat), ln, self.init_nat))
        r_adv = (la / self.init_adv) ** self.beta
        r_nat = (ln / self.init_nat) ** self.beta
        self.weight_nat.sub_(self.lr * (self.weight_nat - r_nat / (r_adv + r_nat)))
        return self.weight_adv, self.weight_nat.clone()

    def extra_repr(self) -> str:
        return f"lr={self.lr}, beta={self.beta}"


@register(kind="loss", paper=PAPER, year=2023, arxiv="2306.16170", code=CODE,
          summary="MTARD: clean-teacher KD on natural + robust-teacher KD on adversarial inputs, adaptively balanced",
          info={"reliability": {"inputs": ("x", "teacher", "x", "teacher"), "labels": "none",
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_STUDENT_LOGPROB)}}})
class MTARDLoss(nn.Module):
    r"""Multi-teacher adversarial robustness distillation loss with its weight balancer.

    Paper: "Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher
    Adversarial Distillation", Shiji Zhao, Xizhe Wang, Xingxing Wei,
    arXiv:2306.16170 (2023). Authors' code: https://github.com/zhaoshiji123/MTARD
    (``mtard/mtard_resnet18_cifar10.py``, ``mtard_loss.py``).

    Math, per training step (student ``S``, clean teacher ``T_nat``, robust
    teacher ``T_adv``, ``x'`` a PGD example of ``x`` against the student's CE,
    see :func:`mtard_adversarial_examples`)::

        L_adv = KL(T_adv(x') || S(x')) / C,    L_nat = KL(T_nat(x) || S(x)) / C     (:func:`mtard_kl`)
        (w_adv, w_nat) <- MTARDBalancer.update(L_adv, L_nat)
        L = w_adv * L_adv + w_nat * L_nat

    The weights are updated from the current step's losses before they are
    combined, as in the code, and act as constants (no gradient). Calling the
    module in eval mode (``.eval()``) combines with the current weights
    without updating them.

    Departures: the code tracks the weights as Python floats with ``.item()``;
    here they are float64 buffers (same values; ``state_dict`` holds them).

    Example::

        >>> crit = MTARDLoss()
        >>> x_adv = mtard_adversarial_examples(student, x, y)
        >>> loss = crit(student(x_adv), robust_teacher(x_adv), student(x), clean_teacher(x))
    """

    def __init__(self, *, lr: float = 0.025, beta: float = 1.0, init_weight_nat: float = 0.5, eps: float = 1e-5,
                 reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.balancer = MTARDBalancer(lr=lr, beta=beta, init_weight_nat=init_weight_nat)
        self.eps = eps
        self.reduction = reduction
        mtard_kl(torch.zeros(1, 2), torch.zeros(1, 2), eps=eps)  # validates eps

    def forward(self, student_adv_logits: Tensor, teacher_adv_logits: Tensor, student_nat_logits: Tensor,
                teacher_nat_logits: Tensor) -> Tensor:
        per_adv = mtard_kl(student_adv_logits, teacher_adv_logits, eps=self.eps, reduction="none")
        per_nat = mtard_kl(student_nat_logits, teacher_nat_logits, eps=self.eps, reduction="none")
        if self.training:  # the weights follow the batch means (the code's losses), whatever the reduction
            w_adv, w_nat = self.balancer.update(per_adv.detach().mean(), per_nat.detach().mean())
        else:
            w_adv, w_nat = self.balancer.weight_adv, self.balancer.weight_nat
        l_adv, l_nat = reduce_loss(per_adv, self.reduction), reduce_loss(per_nat, self.reduction)
        return w_adv.to(l_adv.dtype) * l_adv + w_nat.to(l_nat.dtype) * l_nat


def mtard_adversarial_examples(student: nn.Module, x: Tensor, y: Tensor, *, epsilon: float = 8 / 255,
                               step_size: float = 2 / 255, steps: int = 10,
                               clamp: tuple[float, float] | None = (0.0, 1.0), start_noise: float = 0.001,
                               random_start: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """MTARD's inner maximization (``mtard_inner_loss_ce``): l_inf PGD on the student's CE, student in eval mode.

    Uses :func:`gradwise.losses.pgd_attack`. As the authors' code (and its
    training script's ``epsilon=8/255``, ``step_size=2/255``, 10 steps), the
    attack starts from ``x + start_noise * N(0, 1)`` (``start_noise=0.001``;
    the start is neither projected nor clamped), then each step takes
    ``step_size * sign(grad)``, projects onto the ball around ``x`` and clamps
    to [0, 1]. ``generator`` draws the start noise; ``random_start=True``
    (with ``start_noise=0``) gives a uniform start in the ball instead. The
    student's train/eval mode is restored afterwards. Pass ``clamp=None`` for
    data not in [0, 1] (e.g. standardized features).
    """
    from gradwise.losses.adversarial import pgd_attack

    check_real("start_noise", start_noise, 0.0, finite=False)
    if start_noise > 0 and random_start:
        raise ValueError("Invalid random_start: True together with start_noise > 0 (pick one start; set "
                         "start_noise=0 for a uniform start in the ball)")
    start = None
    if start_noise > 0:
        start = start_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    was_training = student.training
    student.eval()
    try:
        return pgd_attack(student, x, y, eps=epsilon, alpha=step_size, steps=steps, norm="linf",
                          loss_fn=lambda out, t: F.cross_entropy(out, t), random_start=random_start, clamp=clamp,
                          generator=generator, start=start)
    finally:
        student.train(was_training)
