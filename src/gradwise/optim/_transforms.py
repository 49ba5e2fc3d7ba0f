"""Transforms an optimizer runs around its update: on gradients before it, on the update after it.

:class:`GradTransform` sees the gradients of one bucket (one group, one
device and dtype) before the update and returns new ones;
:class:`UpdateTransform` sees the update ``delta = p_new - p_old`` after the
optimizer computed it and returns the one to apply. Both keep per-parameter
state in the optimizer's state (keys ``key + "."``), so ``state_dict`` saves it.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["GradTransform", "UpdateTransform", "check_transforms"]


class _Transform:
    key: str = "transform"

    def init_state(self, p: Tensor) -> dict[str, Any]:
        """Fresh per-parameter state (stored under ``key + "." + name``); none by default."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class GradTransform(_Transform):
    """A gradient transform run in front of an optimizer's update.

    Subclasses implement ``apply`` on lists of tensors (one bucket of one
    parameter group, all on one device and dtype) and return the new
    gradients, never writing into the given ones. Per-parameter state lives in
    the optimizer's state dicts under keys prefixed with ``key + "."`` so that
    ``state_dict`` saves it; ``init_state`` creates it.
    """

    def apply(self, params: list[Tensor], grads: list[Tensor], states: list[dict], group: dict) -> list[Tensor]:
        raise NotImplementedError


class UpdateTransform(_Transform):
    """A transform of the parameter update, run after an optimizer's update.

    ``apply(params, updates, states, group)`` receives, for one bucket, the
    parameters *before* the step (``params``, not to be written) and the
    update the optimizer made, ``updates[i] = p_new - p_old``: everything the
    step changed, weight decay and the learning rate included. It returns the
    updates to apply instead (new tensors, or the given ones); the base then
    sets ``p = p_old + update``. States and group are as for
    :class:`GradTransform` (``step`` already advanced, hyperparameters of
    the group).
    """

    def apply(self, params: list[Tensor], updates: list[Tensor], states: list[dict], group: dict) -> list[Tensor]:
        raise NotImplementedError


def check_transforms(value: Any, name: str = "grad_transforms", cls: type = GradTransform) -> None:
    """Raise ``ValueError`` unless ``value`` is a list or tuple of ``cls`` instances."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a list or tuple of {cls.__name__} instances)")
    for t in value:
        if not isinstance(t, cls):
            raise ValueError(f"Invalid {name} entry: {t!r} (accepted: {cls.__name__} instances)")
