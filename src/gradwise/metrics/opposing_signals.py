"""Opposing signals (Rosenfeld & Risteski, 2024): the training samples whose loss changes most from one
step to the next, split into the group whose loss rises and the group whose loss falls."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_int
from gradwise.metrics.callback import TrainingCallback
from gradwise.registry import register

__all__ = ["OpposingGroups", "OpposingSignalTracker", "opposing_signal_groups"]


class OpposingGroups(NamedTuple):
    """Indices of the ``rising`` and ``falling`` groups (largest change first), and every sample's ``delta``."""
    rising: Tensor
    falling: Tensor
    delta: Tensor


@register(kind="metric", paper="Outliers with Opposing Signals Have an Outsized Effect on Neural Network Optimization",
          year=2024, arxiv="2311.04163", code=None,
          summary="the samples whose loss rises / falls most between two steps (opposing-signal outlier groups)")
def opposing_signal_groups(loss_before: Tensor, loss_after: Tensor, k: int = 20) -> OpposingGroups:
    r"""The two opposing groups of a training step: the ``k`` samples whose loss rose most and the ``k`` whose
    loss fell most, from per-sample losses before and after the step.

    Paper: Rosenfeld & Risteski, "Outliers with Opposing Signals Have an Outsized Effect on Neural Network
    Optimization", ICLR 2024, arXiv:2311.04163. Paired groups of outliers with strong opposing signals
    (a large feature, e.g. a sky background, pulling the output towards different classes in each group)
    dominate the gradient; as the network sharpens, their losses oscillate, one group's loss rising while
    the other's falls, until the total loss spikes. The groups are found from the change of each sample's
    loss across steps:

    .. math:: \Delta_i = \ell_i(\theta_{t+1}) - \ell_i(\theta_t), \qquad
              \text{rising} = \operatorname{top}_k \{\Delta_i > 0\}, \quad
              \text{falling} = \operatorname{top}_k \{-\Delta_i > 0\}.

    No code was released, and we could not read the paper's full text (only its abstract and reviews), so
    the exact selection rule and their ``k`` are not checked: ``k=20`` and the split by sign of the change
    are gradwise's choice following the abstract ("their loss ... oscillating between high on one group and
    then the other"). A group holds fewer than ``k`` samples when fewer changed in that direction.
    """
    k = check_int("k", k, 1)
    for name, x in (("loss_before", loss_before), ("loss_after", loss_after)):
        if not torch.is_tensor(x) or x.dim() != 1 or not x.is_floating_point():
            raise ValueError(f"Invalid {name}: (accepted: a 1-D float tensor of per-sample losses)")
    if loss_before.shape != loss_after.shape:
        raise ValueError(f"Invalid loss_after: shape {tuple(loss_after.shape)} vs {tuple(loss_before.shape)} "
                         "(accepted: the same samples as loss_before)")
    delta = loss_after - loss_before
    groups = []
    for signed in (delta, -delta):
        values, idx = signed.topk(min(k, signed.numel()))
        groups.append(idx[values > 0])
    return OpposingGroups(groups[0], groups[1], delta)


def _per_sample_ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target, reduction="none")


class OpposingSignalTracker(TrainingCallback):
    """Track per-sample losses on a fixed probe set and record the opposing groups between measurements.

    Every ``every`` steps ``on_step(step, model=model)`` computes ``loss_fn(model(inputs), targets)`` per
    sample (default: cross-entropy, ``reduction="none"``), in eval mode under ``no_grad`` (training modes
    restored), and from the second measurement on records ``(step, {"rising": [...], "falling": [...],
    "max_abs_change": x})`` (:func:`opposing_signal_groups`). ``losses`` stacks every measurement
    [measurements, N]; ``counts`` [2, N] how often each sample was in the rising / falling group, so samples
    that keep switching between the groups (the paper's oscillation) stand out.
    """

    def __init__(self, inputs: Tensor, targets: Tensor, *, k: int = 20, every: int = 1,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> None:
        super().__init__(every)
        self.k = check_int("k", k, 1)
        if not torch.is_tensor(inputs) or not torch.is_tensor(targets) or inputs.shape[0] != targets.shape[0]:
            raise ValueError("Invalid targets: (accepted: tensors inputs and targets with the same first dimension)")
        if inputs.dim() == 0 or inputs.shape[0] == 0:
            raise ValueError(f"Invalid inputs: shape {tuple(inputs.shape)} (accepted: a probe set of at least one "
                             "sample, [N, ...] with N >= 1)")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (accepted: None or a callable (output, target) -> "
                             "per-sample losses)")
        self.inputs, self.targets = inputs, targets
        self.loss_fn = loss_fn or _per_sample_ce
        self._losses: list[Tensor] = []
        self.counts = torch.zeros(2, inputs.shape[0], dtype=torch.long)

    @property
    def losses(self) -> Tensor:
        return torch.stack(self._losses) if self._losses else torch.empty(0, self.inputs.shape[0])

    def measure(self, model: nn.Module) -> Tensor:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        modes = [(m, m.training) for m in model.modules()]
        try:
            model.eval()
            with torch.no_grad():
                losses = self.loss_fn(model(self.inputs), self.targets)
        finally:
            for m, mode in modes:
                m.train(mode)
        if losses.shape != (self.inputs.shape[0],):
            raise ValueError(f"Invalid loss_fn: returned shape {tuple(losses.shape)} (accepted: one loss per sample, "
                             f"[{self.inputs.shape[0]}])")
        return losses.detach().float().cpu()

    def on_step(self, step: int, *, model=None, loss=None, **ctx) -> None:
        if not self.due(step):
            return
        losses = self.measure(model)
        if self._losses:
            g = opposing_signal_groups(self._losses[-1], losses, self.k)
            self.counts[0, g.rising] += 1
            self.counts[1, g.falling] += 1
            self.record(step, {"rising": g.rising.tolist(), "falling": g.falling.tolist(),
                               "max_abs_change": float(g.delta.abs().max())})
        self._losses.append(losses)
