r"""CPL: contrastive preference learning on per-step log-probabilities of behaviour segments."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["cpl_loss"]


def _segment_score(logps: Tensor, mask: Tensor | None, alpha: float, discount: float) -> Tensor:
    t = logps.shape[-1]
    x = logps if mask is None else logps * mask.to(logps.dtype)
    if discount != 1.0:
        x = x * torch.pow(torch.full((t,), discount, dtype=logps.dtype, device=logps.device),
                          torch.arange(t, device=logps.device, dtype=logps.dtype))
    return alpha * x.sum(dim=-1)


@register(kind="preference", paper="Contrastive Prefence Learning: Learning from Human Feedback without RL",
          year=2023, arxiv="2310.13639", code="https://github.com/jhejna/cpl",
          summary="CPL: logistic contrast of discounted sums of alpha * log pi over two segments, conservative bias "
                  "lambda on the dispreferred one")
def cpl_loss(chosen_logps: Tensor, rejected_logps: Tensor, *, alpha: float = 0.1, bias: float = 0.5,
             discount: float = 1.0, chosen_mask: Tensor | None = None, rejected_mask: Tensor | None = None,
             label: Tensor | None = None) -> Tensor:
    r"""Contrastive Preference Learning loss per segment pair.

    Paper: Hejna, Rafailov, Sikchi, Finn, Niekum, Knox & Sadigh, "Contrastive Preference Learning:
    Learning from Human Feedback without RL", 2023 (ICLR 2024), arXiv:2310.13639 (arXiv's title has
    the typo "Prefence"). Authors' code: https://github.com/jhejna/cpl (``research/algs/cpl.py``,
    ``biased_bce_with_logits``).

    Under the regret (optimal advantage) preference model with the max-entropy identity
    :math:`A^*(s, a) = \alpha \log\pi^*(a|s)`, each segment :math:`\sigma = (s_t, a_t)_{t<T}` scores
    :math:`S(\sigma) = \sum_t \gamma^t \alpha \log\pi_\theta(a_t|s_t)` and the conservative loss
    (Eq. 5, bias :math:`\lambda \in (0, 1]`) is

    .. math::

        \ell = -\log\frac{e^{S(\sigma^+)}}{e^{S(\sigma^+)} + e^{\lambda S(\sigma^-)}}
             = \operatorname{softplus}\bigl(\lambda S(\sigma^-) - S(\sigma^+)\bigr).

    With a soft ``label`` p (probability that the "chosen" segment is preferred; the authors' data
    gives 0.5 on ties) the loss is :math:`p\,\ell(\sigma^c \succ \sigma^r) + (1-p)\,\ell(\sigma^r
    \succ \sigma^c)`, as in the authors' code.

    Choices: ``alpha`` (temperature) and ``bias`` default to the authors' CPL configs (0.1 and 0.5;
    their CPL+BC configs use bias 1.0, i.e. no conservatism). The authors' code sums
    :math:`\alpha\log\pi` without the paper's :math:`\gamma^t`; ``discount=1.0`` (default) follows
    the code, other values give the paper's discounted sum. Masks (1 = real step) drop padded steps;
    the authors use fixed-length segments. The BC term of CPL+BC (``bc_coeff * -mean(log pi)``) is
    left to the caller. Checked against golden values from the authors' ``biased_bce_with_logits``.

    Args:
        chosen_logps, rejected_logps: per-step log-probs :math:`\log\pi_\theta(a_t|s_t)`, shape [B, T].
        alpha: temperature (> 0). bias: lambda in (0, 1]. discount: gamma in (0, 1].
        chosen_mask, rejected_mask: optional [B, T] masks. label: optional [B] preference
            probabilities for the chosen segment (default 1).

    Returns the per-pair loss, shape [B] (the authors take the mean).

    Example::

        >>> c, r = torch.full((1, 4), -1.0), torch.full((1, 4), -3.0)
        >>> cpl_loss(c, r, alpha=0.1, bias=0.5)
        tensor([0.5981])
    """
    alpha = check_positive("alpha", alpha)
    bias = check_positive("bias", bias)
    if bias > 1.0:
        raise ValueError(f"Invalid bias: {bias!r} (accepted: a number in (0, 1])")
    discount = check_positive("discount", discount)
    if discount > 1.0:
        raise ValueError(f"Invalid discount: {discount!r} (accepted: a number in (0, 1])")
    shape = check_logps(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    if len(shape) != 2:
        raise ValueError(f"Invalid chosen_logps: expected per-step log-probs of shape [B, T], got {tuple(shape)}")
    for name, m in (("chosen_mask", chosen_mask), ("rejected_mask", rejected_mask)):
        if m is not None and (not torch.is_tensor(m) or m.shape != shape):
            got = tuple(m.shape) if torch.is_tensor(m) else type(m).__name__
            raise ValueError(f"Invalid {name}: expected a tensor of shape {tuple(shape)}, got {got}")
    s_c = _segment_score(chosen_logps, chosen_mask, alpha, discount)
    s_r = _segment_score(rejected_logps, rejected_mask, alpha, discount)
    loss_c = F.softplus(bias * s_r - s_c)
    if label is None:
        return loss_c
    if not torch.is_tensor(label) or label.shape != shape[:1]:
        got = tuple(label.shape) if torch.is_tensor(label) else type(label).__name__
        raise ValueError(f"Invalid label: expected a tensor of probabilities of shape {tuple(shape[:1])}, got {got}")
    p = label.to(chosen_logps.dtype)
    return p * loss_c + (1.0 - p) * F.softplus(bias * s_c - s_r)
