"""Decoupled softmax loss for multi-label data (Gupta et al., 2024, DEXML)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.losses._common import LossModule, check_reduction, reduce_loss, upcast
from gradwise.registry import register

__all__ = ["decoupled_softmax_loss", "DecoupledSoftmaxLoss"]


@register(kind="loss", paper="Dual-Encoders for Extreme Multi-Label Classification", year=2024, arxiv="2310.10636",
          code="https://github.com/nilesh2797/DEXML",
          summary="Each positive label's softmax over itself and all negatives, averaged over positives",
          info={"reliability": {"labels": "multi_hot", "expected": {
              "label_float": ("finite", "an integer (or bool) multi-hot target is accepted")}}})
def decoupled_softmax_loss(logits: Tensor, targets: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Decoupled softmax loss of DEXML (Gupta et al., 2024).

    Paper: "Dual-Encoders for Extreme Multi-Label Classification", Nilesh Gupta,
    Devvrit Khatri, Ankit S. Rawat, Srinadh Bhojanapalli, Prateek Jain,
    Inderjit S. Dhillon, ICLR 2024, arXiv:2310.10636. Authors' code:
    https://github.com/nilesh2797/DEXML (``losses.py``, ``loss_criterion:
    decoupled-softmax``).

    Math (scores ``s`` [N, L], positives ``P_i = {l : targets[i, l] > 0}``,
    negatives ``N_i`` = the rest)::

        loss_i = -(1/|P_i|) sum_{l in P_i} log( e^{s_il} / (e^{s_il} + sum_{j in N_i} e^{s_ij}) )

    Unlike the softmax (InfoNCE) loss over all labels, the other positives
    are removed from each positive's denominator, so positives do not compete
    with each other. With one positive per row it is cross-entropy.

    Choices, following the authors' code: the per-row average over positives
    (their ``/ num_pos``), and ``reduction="mean"`` divides by the number of
    rows, rows without positives contributing 0 (their ``/ sim.shape[0]``).
    Departures: negatives exclude positives exactly (``-inf``) where the code
    writes ``-100`` into their scores; the code's default config samples one
    positive per row per step (``loss_sample: True``), whose expectation is this
    deterministic average (with uniform target weights); its optional
    per-label weights (``loss_weighted``) and the score temperature belong
    to the model side and are not part of this function. ``targets`` is a
    multi-hot tensor of the shape of ``logits`` (bool, int or float, values
    0 or 1 only: any other value raises ``ValueError``, one host sync). Computed with two log-sum-exps over [N, L] (no loop over
    positives); half-precision inputs in float32.

    Example::

        >>> logits = torch.randn(4, 6, requires_grad=True)
        >>> targets = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1], [0] * 6])
        >>> decoupled_softmax_loss(logits, targets).backward()
    """
    check_reduction(reduction)
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError("Invalid logits: expected a floating-point tensor of shape [N, L]")
    if not torch.is_tensor(targets) or targets.shape != logits.shape:
        raise ValueError(f"Invalid targets: expected a multi-hot tensor of shape {tuple(logits.shape)}, got "
                         f"{tuple(targets.shape) if torch.is_tensor(targets) else type(targets).__name__}")
    if targets.is_complex() or (targets.numel() and not bool(((targets == 0) | (targets == 1)).all())):
        # any other value (2, -1, a soft 0.7) would be silently read as positive or negative
        raise ValueError("Invalid targets: expected a multi-hot tensor of 0s and 1s (bool, int or float); got "
                         "other values")
    x = upcast(logits)
    pos = targets > 0
    neg_inf = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
    lse_neg = torch.logsumexp(torch.where(pos, neg_inf, x), dim=1, keepdim=True)   # [N, 1], -inf if no negatives
    # -log(e^s / (e^s + e^lse_neg)) = softplus(lse_neg - s) = logaddexp(0, lse_neg - s)
    per_label = torch.logaddexp(torch.zeros((), dtype=x.dtype, device=x.device), lse_neg - x)
    per_label = torch.where(pos, per_label, torch.zeros((), dtype=x.dtype, device=x.device))
    num_pos = pos.sum(1)
    per = per_label.sum(1) / num_pos.clamp_min(1).to(x.dtype)
    return reduce_loss(per, reduction).to(logits.dtype)


class DecoupledSoftmaxLoss(LossModule):
    """Module twin of :func:`decoupled_softmax_loss` (arXiv:2310.10636; see it for the math).

    ``DecoupledSoftmaxLoss()(logits, targets_multi_hot)``.
    """

    function = decoupled_softmax_loss
