"""Correctness-aware (CA) calibration loss; the per-sample temperature calibrator it trains and the
trainer are in :mod:`gradwise.calibration.correctness_aware`.

Paper: Yuchi Liu, Lei Wang, Yuli Zou, James Zou, Liang Zheng, "Optimizing
Calibration by Gaining Aware of Prediction Correctness", arXiv 2404.13016
(2024). Authors' code: https://github.com/liuyvchi/Correctness-aware-calibration
(``src/cal_metrics/temperature_scaling_CA.py``: ``Temperature_adaptive``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._deprecation import moved_names
from gradwise._validate import check_bool
from gradwise.losses._common import LossModule, check_logits_target, reduce_loss, upcast
from gradwise.losses._moved import MOVED
from gradwise.registry import register

__all__ = ["correctness_aware_loss", "CorrectnessAwareLoss"]

PAPER = "Optimizing Calibration by Gaining Aware of Prediction Correctness"
CODE = "https://github.com/liuyvchi/Correctness-aware-calibration"

# names that moved to other families (issue 9): the old path still serves them, with a DeprecationWarning
__getattr__ = moved_names(__name__, MOVED["correctness_aware"])


class _TopConfidence(torch.autograd.Function):
    """Top-label softmax probability ``max_k softmax(z)_k`` and its argmax, with a one-pass backward.

    ``d p_hat / d z_k = p_hat ([k = argmax] - softmax(z)_k)``: the backward
    forms the softmax once and scatters the argmax term, instead of autograd
    going through ``max``, a subtraction and ``logsumexp`` (2.5x fewer passes
    over the [N, C] logits).
    """

    @staticmethod
    def forward(ctx, z):
        ctx.fused = _use_fused(z)
        if ctx.fused:  # one read of z (losses/csrc/correctness_aware.cpp)
            conf, pred, lse = torch.ops.gradwise_losses.top_confidence_forward(z)
        else:
            top, pred = z.max(dim=1)
            lse = torch.logsumexp(z, dim=1)
            conf = torch.exp(top - lse)
        ctx.save_for_backward(z, lse, pred, conf)
        ctx.mark_non_differentiable(pred)
        return conf, pred

    @staticmethod
    def backward(ctx, g_conf, _g_pred):
        z, lse, pred, conf = ctx.saved_tensors
        if ctx.fused:
            return torch.ops.gradwise_losses.top_confidence_backward(z, lse, pred, conf, g_conf)
        coef = (g_conf * conf).unsqueeze(1)
        grad = torch.exp(z - lse.unsqueeze(1)).mul_(-coef)
        grad.scatter_add_(1, pred.unsqueeze(1), coef)
        return grad


def _use_fused(z: Tensor) -> bool:
    if z.device.type != "cpu" or z.dtype not in (torch.float32, torch.float64) or z.shape[1] == 0:
        return False
    if torch.compiler.is_compiling():  # traced as torch ops, which the compiler fuses itself
        return False
    from gradwise._kernels import family

    return family("losses").available()


@register(kind="calibration", paper=PAPER, year=2024, arxiv="2404.13016", code=CODE,
          summary="correctness-aware calibration loss: squared gap between top confidence and correctness, "
                  "class-balanced over correct/wrong",
          info={"reliability": {"ignore_index": True}})
def correctness_aware_loss(logits: Tensor, target: Tensor, *, balance: bool = True, reduction: str = "mean",
                           ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Correctness-aware (CA) loss for training a post-hoc calibrator.

    Paper: Liu, Wang, Zou, Zou, Zheng, "Optimizing Calibration by Gaining Aware
    of Prediction Correctness", arXiv 2404.13016 (2024).
    Code: https://github.com/liuyvchi/Correctness-aware-calibration.

    ``logits`` are the *calibrated* logits (the calibrator's output). With
    top-label confidence :math:`\hat p_i = \max_k \mathrm{softmax}(z_i)_k` and
    correctness :math:`c_i = [\arg\max_k z_{ik} = y_i]`, each sample costs

    .. math:: \ell_i = (\hat p_i - c_i)^2,

    i.e. confidence is pushed up on correct and down on wrong predictions.
    With ``balance=True`` (the authors' code) the two groups are weighted by
    :math:`w_i = 1-a` for correct and :math:`w_i = a` for wrong samples
    (:math:`a` = batch accuracy) and the loss is :math:`\sum_i w_i\ell_i /
    \sum_i w_i`, which equals :math:`\tfrac12(\text{mean over correct} +
    \text{mean over wrong})`. Here the weights are normalised to mean 1 over
    the kept samples, :math:`w_i = N/(2N_c)` or :math:`N/(2N_w)`, so
    ``reduction="none"`` returns :math:`w_i\ell_i`, ``"mean"`` its mean (the
    code's value) and ``"sum"`` its sum. ``balance=False`` gives the plain
    mean of :math:`\ell_i`.

    Choices and departures: the code takes :math:`c_i` from the uncalibrated
    logits; this function takes it from ``logits`` -- identical for any
    accuracy-preserving calibrator (temperature scaling, the per-sample
    temperature of :class:`~gradwise.calibration.CorrectnessAwareCalibrator`). When a batch is all
    correct or all wrong the code divides 0 by 0 (NaN); here the weights fall
    back to 1 (the limit of the balanced mean: the mean over the group that is
    present). Confidence is computed as :math:`\exp(-\mathrm{logsumexp}(z - \max z))`
    so it is exact and finite for logits of any size.

    Example::

        >>> cal = model_logits / temperature               # any calibrator
        >>> loss = correctness_aware_loss(cal, labels)
    """
    check_logits_target(logits, target, ignore_index, validate=validate)
    check_bool("balance", balance)
    z = upcast(logits)
    conf, pred = _TopConfidence.apply(z)
    keep = target != ignore_index
    correct = (pred == target) & keep
    per = (conf - correct.to(z.dtype)).square()
    if balance:
        n = keep.sum().to(z.dtype)
        n_c = correct.sum().to(z.dtype)
        n_w = n - n_c
        one = torch.ones((), dtype=z.dtype, device=z.device)
        w_c = torch.where(n_w > 0, n / (2 * n_c.clamp_min(1)), one)
        w_w = torch.where(n_c > 0, n / (2 * n_w.clamp_min(1)), one)
        per = per * torch.where(correct, w_c, w_w)
    return reduce_loss(per, reduction, keep).to(logits.dtype)


class CorrectnessAwareLoss(LossModule):
    """Module twin of :func:`correctness_aware_loss` (same keyword arguments)."""

    function = correctness_aware_loss
