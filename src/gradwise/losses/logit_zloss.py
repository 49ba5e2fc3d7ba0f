"""The output-logit z-loss of PaLM (Chowdhery et al., 2022), as studied by Wortsman et al. (2023): ``coef *
log^2 Z`` per token. Not the 2016 Z-loss of de Brébisson & Vincent (:func:`gradwise.losses.z_loss`), a
different loss of a different paper that shares the name.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_nonneg
from gradwise.losses._common import LossModule, reduce_loss, upcast
from gradwise.registry import register

__all__ = ["output_logit_z_loss", "OutputLogitZLoss"]

PAPER = "Small-scale proxies for large-scale Transformer training instabilities"


@register(kind="loss", paper=PAPER, year=2023, arxiv="2309.14322", code=None,
          summary="auxiliary coef * logsumexp(logits)^2 per token (PaLM's z-loss) against output-logit divergence",
          aliases=("palm_z_loss",),
          info={"reliability": {"inputs": ("x",), "labels": "none", "expected": {
              "bf16_extremes": ("nan", "log Z of bfloat16 logits near max/64 is ~5e36 and its square overflows "
                                       "float32 (inf), a true value no float format here holds")}}})
def output_logit_z_loss(logits: Tensor, mask: Tensor | None = None, *, coef: float = 1e-4,
                        reduction: str = "mean") -> Tensor:
    r"""Output-logit z-loss: ``coef * (log Z)^2`` per token, ``log Z = logsumexp`` of the token's logits.

    Paper: Wortsman et al., "Small-scale proxies for large-scale Transformer
    training instabilities", 2023, arXiv:2309.14322, §3.1.2 ("Output logit
    divergence"), which takes it from PaLM (Chowdhery et al., 2022,
    arXiv:2204.02311, §5 "Training setup", "Loss function"). No official code
    for either paper; the closest released code is t5x's
    ``losses.cross_entropy_with_logits`` (https://github.com/google-research/t5x),
    read (not run) here: per token ``loss = -sum(targets * log_softmax) +
    z_loss * log_z^2`` with ``log_z = logsumexp(logits)``, reduced with the
    cross-entropy afterwards; the tests transcribe it.

    **Not** :func:`gradwise.losses.z_loss`, the 2016 "Z-loss" of de Brébisson
    & Vincent (arXiv:1604.08859), a standalone classification loss on
    z-normalized logits. This one is an *auxiliary* term added to the usual
    cross-entropy of a language model.

    Math (logits ``y`` of one token over the vocabulary, ``p_i = e^{y_i} / Z``)::

        Z = sum_i exp(y_i),    L_z = coef * (log Z)^2        (coef = 1e-4 in both papers)

    It pulls ``log Z`` towards 0, i.e. keeps the logits close to
    log-probabilities; Wortsman et al. show it removes the late-training
    divergence of the output logits at high learning rates. The training
    objective is ``cross_entropy + output_logit_z_loss`` (add it yourself):
    PaLM adds it to the per-token loss ("an auxiliary loss of
    z_loss = 10^-4 · log^2 Z"), so with the usual token mean it is the mean
    over tokens, ``reduction="mean"`` here.

    Args:
        logits: ``[..., V]`` floating logits; every leading index is a token.
        mask: optional bool tensor of the leading shape, True for tokens that
            count (padding False); ``"mean"`` then divides by the number of kept
            tokens and ``"none"`` gives 0 for the others.
        coef: the coefficient (>= 0; default 1e-4).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-token, the leading shape).

    Half-precision logits are computed in float32 and the result cast back.

    Example::

        >>> logits = torch.randn(2, 5, 11, requires_grad=True)
        >>> target = torch.randint(0, 11, (2, 5))
        >>> loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten()) + output_logit_z_loss(logits)
    """
    check_nonneg("coef", coef)
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: expected a floating-point tensor of shape [..., V], got "
                         f"{type(logits).__name__ if not torch.is_tensor(logits) else logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"Invalid logits: expected shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    if mask is not None:
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            raise ValueError(f"Invalid mask: expected a bool tensor, got "
                             f"{type(mask).__name__ if not torch.is_tensor(mask) else mask.dtype}")
        if mask.shape != logits.shape[:-1]:
            raise ValueError(f"Invalid mask: expected shape {tuple(logits.shape[:-1])} (the leading shape of "
                             f"logits), got {tuple(mask.shape)}")
    log_z = torch.logsumexp(upcast(logits), dim=-1)
    per = coef * log_z.square()
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class OutputLogitZLoss(LossModule):
    """Module twin of :func:`output_logit_z_loss` (PaLM's z-loss as in arXiv:2309.14322; not :class:`ZLoss`,
    the 2016 loss of arXiv:1604.08859). ``OutputLogitZLoss(coef=1e-4)(logits, mask=None)``."""

    function = output_logit_z_loss
