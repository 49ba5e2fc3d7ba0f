"""Input checks shared by the loss-curve laws (:mod:`annealing_law`, :mod:`multi_power_law`) and their CLI."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["as_lrs", "steps_index", "read_curves"]


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


def read_curves(curves: Any, prepare: Callable[[Any, Any, str], tuple[Any, np.ndarray]]
                ) -> list[tuple[Any, np.ndarray]]:
    """Check ``fit``'s curves: one ``(lrs, steps, losses)`` tuple or a non-empty list of them.

    ``prepare(lrs, steps, name)`` turns a curve's schedule into what the law keeps and an array shaped like
    its measured steps; returns ``[(prepared, losses as float64), ...]``. Raises ``ValueError`` naming the
    curve and what is accepted (losses finite and > 0: the laws are fitted on log losses).
    """
    if isinstance(curves, tuple) and len(curves) == 3 and not isinstance(curves[0], tuple):
        curves = [curves]
    if not isinstance(curves, (list, tuple)) or len(curves) == 0:
        raise ValueError(f"Invalid curves: {type(curves).__name__} (accepted: a (lrs, steps, losses) "
                         f"tuple or a non-empty list of them)")
    out = []
    for k, curve in enumerate(curves):
        if not isinstance(curve, (tuple, list)) or len(curve) != 3:
            raise ValueError(f"Invalid curves[{k}]: {type(curve).__name__} (accepted: a (lrs, steps, "
                             f"losses) tuple)")
        lrs, steps, losses = curve
        if steps is None:
            raise ValueError(f"Invalid curves[{k}] steps: None (accepted: the 1-based steps of losses)")
        prepared, shaped = prepare(lrs, steps, f"curves[{k}] lrs")
        y = losses.detach().cpu().double().numpy() if isinstance(losses, torch.Tensor) \
            else np.asarray(losses, dtype=np.float64)
        if y.shape != shaped.shape:
            raise ValueError(f"Invalid curves[{k}] losses: shape {tuple(y.shape)} (accepted: one loss "
                             f"per step, shape {tuple(shaped.shape)})")
        if not np.all(np.isfinite(y)) or np.any(y <= 0):
            raise ValueError(f"Invalid curves[{k}] losses: min {np.min(y)!r} (accepted: finite losses > 0; "
                             f"the fit works on log losses)")
        out.append((prepared, y))
    return out
