"""Correctness-aware (CA) calibration: the per-sample temperature calibrator, its input features and its trainer.

Paper: Yuchi Liu, Lei Wang, Yuli Zou, James Zou, Liang Zheng, "Optimizing
Calibration by Gaining Aware of Prediction Correctness", arXiv 2404.13016
(2024). Authors' code: https://github.com/liuyvchi/Correctness-aware-calibration
(``src/cal_metrics/temperature_scaling_CA.py``: ``Temperature_adaptive``).
The loss that trains the calibrator is :func:`gradwise.losses.correctness_aware_loss`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_positive
from gradwise.losses._common import check_logits_target
from gradwise.losses.correctness_aware import CODE, PAPER, correctness_aware_loss
from gradwise.registry import register

__all__ = ["CorrectnessAwareCalibrator", "transformation_features", "fit_correctness_aware_calibrator"]


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
    check_int("k", k, 1, logits.shape[1])
    idx = logits.topk(k, dim=1).indices
    for t in transformed_logits:
        if t.shape != logits.shape:
            raise ValueError(f"Invalid transformed_logits: expected shape {tuple(logits.shape)}, "
                             f"got {tuple(t.shape)}")
    return torch.cat([t.softmax(dim=1).gather(1, idx) for t in transformed_logits], dim=1)


@register(kind="calibration", paper=PAPER, year=2024, arxiv="2404.13016", code=CODE,
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
        check_int("input_dim", input_dim, lo=1)
        check_int("feat_dim", feat_dim, lo=1)
        if not (check_positive("t_min", t_min) < check_positive("t_max", t_max)):
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
    check_int("epochs", epochs, lo=1)
    check_int("batch_size", batch_size, lo=1)
    check_positive("lr", lr)
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
