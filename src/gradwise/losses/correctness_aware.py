"""Correctness-aware (CA) calibration: the loss, the per-sample temperature calibrator and its trainer.

Paper: Yuchi Liu, Lei Wang, Yuli Zou, James Zou, Liang Zheng, "Optimizing
Calibration by Gaining Aware of Prediction Correctness", arXiv 2404.13016
(2024). Authors' code: https://github.com/liuyvchi/Correctness-aware-calibration
(``src/cal_metrics/temperature_scaling_CA.py``: ``Temperature_adaptive``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise.losses._common import LossModule, check_logits_target, reduce_loss, upcast
from gradwise.registry import register

__all__ = ["correctness_aware_loss", "CorrectnessAwareLoss", "CorrectnessAwareCalibrator",
           "transformation_features", "fit_correctness_aware_calibrator"]

_PAPER = "Optimizing Calibration by Gaining Aware of Prediction Correctness"
_CODE = "https://github.com/liuyvchi/Correctness-aware-calibration"


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
        if ctx.fused:  # one read of z (losses/csrc/losses.cpp)
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


@register(kind="calibration", paper=_PAPER, year=2024, arxiv="2404.13016", code=_CODE,
          summary="correctness-aware calibration loss: squared gap between top confidence and correctness, "
                  "class-balanced over correct/wrong")
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
    temperature of :class:`CorrectnessAwareCalibrator`). When a batch is all
    correct or all wrong the code divides 0 by 0 (NaN); here the weights fall
    back to 1 (the limit of the balanced mean: the mean over the group that is
    present). Confidence is computed as :math:`\exp(-\mathrm{logsumexp}(z - \max z))`
    so it is exact and finite for logits of any size.

    Example::

        >>> cal = model_logits / temperature               # any calibrator
        >>> loss = correctness_aware_loss(cal, labels)
    """
    check_logits_target(logits, target, ignore_index, validate=validate)
    if not isinstance(balance, bool):
        raise ValueError(f"Invalid balance: {balance!r} (accepted: True or False)")
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


def transformation_features(logits: Tensor, transformed_logits: Sequence[Tensor], *, k: int = 4) -> Tensor:
    r"""The calibrator's input: how transformed views agree with the original top-``k`` classes.

    For each transformed view :math:`t` the softmax of its logits is read at
    the top-``k`` classes of the original ``logits``; the views are
    concatenated, giving ``[N, k * len(transformed_logits)]`` (the authors'
    ``torch.cat([p2topk1, p3topk1, p4topk1], -1)`` with ``k=4`` and three
    views: colour jitter, greyscale, rotation on ImageNet).
    """
    if not transformed_logits:
        raise ValueError("Invalid transformed_logits: expected at least one view")
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"Invalid k: {k!r} (accepted: 1 <= k <= {logits.shape[1]})")
    idx = logits.topk(k, dim=1).indices
    for t in transformed_logits:
        if t.shape != logits.shape:
            raise ValueError(f"Invalid transformed_logits: expected shape {tuple(logits.shape)}, "
                             f"got {tuple(t.shape)}")
    return torch.cat([t.softmax(dim=1).gather(1, idx) for t in transformed_logits], dim=1)


@register(kind="calibration", paper=_PAPER, year=2024, arxiv="2404.13016", code=_CODE,
          summary="per-sample temperature predicted from transformed-view agreement, trained with the CA loss")
class CorrectnessAwareCalibrator(nn.Module):
    r"""Per-sample temperature calibrator of the correctness-aware method.

    Paper: Liu et al., arXiv 2404.13016; code: ``Temperature_adaptive`` in
    https://github.com/liuyvchi/Correctness-aware-calibration.

    .. math:: T(f) = \mathrm{clamp}\bigl(W_2\,\mathrm{ReLU}(W_1 f + b_1) + b_2,\ t_{\min}, t_{\max}\bigr),
              \qquad \tilde z = z / T(f)

    with features :math:`f` from :func:`transformation_features`
    (``input_dim = k * views``; the code uses 12 inputs, ``feat_dim=5``,
    clamp to [0.1, 10]). The code's module also holds an unused scalar
    temperature and a correctness head whose BCE loss is computed but never
    added to the objective; both are left out here as they do not change
    training. With torch's default initialisation (the code's) the predicted
    temperature starts near 0 and is clamped to ``t_min`` for many samples,
    where the clamp passes no gradient; ``init_temperature=1.0`` (an option
    added here, not in the code) starts from the identity calibrator instead
    (last layer's weight 0, bias 1). Train it with
    :func:`fit_correctness_aware_calibrator`.

    Example::

        >>> feats = transformation_features(logits, [logits_rot, logits_grey, logits_jitter])
        >>> cal = fit_correctness_aware_calibrator(CorrectnessAwareCalibrator(feats.shape[1]),
        ...                                        logits, feats, labels)
        >>> calibrated = cal(test_logits, test_feats)
    """

    def __init__(self, input_dim: int, feat_dim: int = 5, *, t_min: float = 0.1, t_max: float = 10.0,
                 init_temperature: float | None = None) -> None:
        super().__init__()
        if input_dim < 1:
            raise ValueError(f"Invalid input_dim: {input_dim!r} (accepted: integer >= 1)")
        if feat_dim < 1:
            raise ValueError(f"Invalid feat_dim: {feat_dim!r} (accepted: integer >= 1)")
        if not 0 < t_min < t_max:
            raise ValueError(f"Invalid t_min/t_max: {t_min!r}, {t_max!r} (accepted: 0 < t_min < t_max)")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.embed = nn.Sequential(nn.Linear(input_dim, feat_dim), nn.ReLU())
        self.temperature_layer = nn.Linear(feat_dim, 1)
        if init_temperature is not None:  # start as the identity calibrator T = init_temperature everywhere
            if not t_min <= init_temperature <= t_max:
                raise ValueError(f"Invalid init_temperature: {init_temperature!r} "
                                 f"(accepted: {t_min} <= init_temperature <= {t_max})")
            with torch.no_grad():
                self.temperature_layer.weight.zero_()
                self.temperature_layer.bias.fill_(init_temperature)

    def temperature(self, features: Tensor) -> Tensor:
        """Per-sample temperatures, shape [N]."""
        return self.temperature_layer(self.embed(features)).clamp(self.t_min, self.t_max).squeeze(-1)

    def forward(self, logits: Tensor, features: Tensor) -> Tensor:
        return logits / self.temperature(features).unsqueeze(-1).to(logits.dtype)


def fit_correctness_aware_calibrator(calibrator: nn.Module, logits: Tensor, features: Tensor, target: Tensor, *,
                                     epochs: int = 10, lr: float = 1e-4, batch_size: int = 1000,
                                     balance: bool = True, generator: torch.Generator | None = None) -> nn.Module:
    """Train ``calibrator(logits, features)`` with :func:`correctness_aware_loss`; returns it in eval mode.

    Defaults are the authors' (Adam, lr 1e-4, 10 epochs, batch 1000, shuffled
    each epoch). Their ImageNet validation set gives ~50 steps an epoch; for a
    small calibration split raise ``epochs``/``lr``. The shuffling uses
    ``generator`` (``torch.randperm``) instead of a DataLoader.
    """
    check_logits_target(logits, target)
    if features.shape[0] != logits.shape[0]:
        raise ValueError(f"Invalid features: expected {logits.shape[0]} rows, got {features.shape[0]}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v < 1:
            raise ValueError(f"Invalid {name}: {v!r} (accepted: integer >= 1)")
    if not lr > 0:
        raise ValueError(f"Invalid lr: {lr!r} (accepted: lr > 0)")
    logits, features = logits.detach(), features.detach()
    opt = torch.optim.Adam(calibrator.parameters(), lr=lr)
    n = logits.shape[0]
    calibrator.train()
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                opt.zero_grad()
                loss = correctness_aware_loss(calibrator(logits[idx], features[idx]), target[idx], balance=balance,
                                              validate=False)
                loss.backward()
                opt.step()
    return calibrator.eval()
