"""Update clipping after the optimizer's step: Adafactor's RMS clipping, for any gradwise optimizer."""
from __future__ import annotations

import math

import torch

from gradwise._validate import check_range
from gradwise.optim._transforms import UpdateTransform

__all__ = ["UpdateClip"]


class UpdateClip(UpdateTransform):
    r"""Clip each tensor's update to a root-mean-square of at most ``max_rms`` (Adafactor's update clipping).

    After the optimizer's update, per tensor (flattened)::

        delta <- delta / max(1, RMS(delta) / max_rms),   RMS(delta) = ||delta||_2 / sqrt(numel)

    the rule of Adafactor (Shazeer & Stern, ICML 2018, arXiv 1804.04235,
    section 6), which clips the unscaled update ``U`` with threshold ``d``
    before the learning rate multiplies it. This transform sees ``delta =
    p_new - p_old``, the whole change of the step (learning rate and weight
    decay included), so ``max_rms`` is in parameter units: Adafactor's ``d``
    corresponds to ``max_rms = lr * d``. An update within the bound is
    scaled by exactly 1. No host sync: the factor is a tensor.

    Args:
        max_rms: the largest RMS of a tensor's update (> 0).

    Example::

        opt = AdamW(model.parameters(), lr=1e-3, update_transforms=[UpdateClip(max_rms=1e-3)])
    """

    key = "update_clip"

    def __init__(self, max_rms: float = 1e-3) -> None:
        check_range("max_rms", max_rms, 0.0, lo_open=True)
        self.max_rms = max_rms

    def apply(self, params, updates, states, group):
        norms = torch.stack(torch._foreach_norm(updates))
        rms = norms / torch.tensor([math.sqrt(u.numel()) for u in updates], dtype=norms.dtype, device=norms.device)
        factor = 1.0 / torch.clamp_min(rms / self.max_rms, 1.0)
        return torch._foreach_mul(updates, list(factor.unbind()))
