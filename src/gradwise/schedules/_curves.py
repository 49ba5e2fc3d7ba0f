"""Input checks shared by the loss-curve laws (:mod:`annealing_law`, :mod:`multi_power_law`) and their CLI."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_lrs", "steps_index"]


def as_lrs(lrs: Any, name: str = "lrs") -> np.ndarray:
    """A 1-D float64 array of finite, non-negative learning rates (torch, numpy or a sequence)."""
    if isinstance(lrs, torch.Tensor):
        arr = lrs.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            arr = np.asarray(lrs, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"Invalid {name}: {lrs!r} (accepted: a 1-D sequence of finite numbers >= 0)") \
                from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"Invalid {name}: shape {tuple(arr.shape)} "
                         f"(accepted: a non-empty 1-D sequence of finite numbers >= 0)")
    return arr


def steps_index(steps: Any, n: int) -> np.ndarray:
    """1-based step numbers in [1, n] -> 0-based indices."""
    if isinstance(steps, torch.Tensor):
        steps = steps.detach().cpu().numpy()
    arr = np.asarray(steps)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) \
            or np.any(arr < 1) or np.any(arr > n):
        raise ValueError(f"Invalid steps: {steps!r} (accepted: a non-empty 1-D sequence of integer steps "
                         f"with 1 <= step <= len(lrs) = {n})")
    return arr.astype(np.int64) - 1
