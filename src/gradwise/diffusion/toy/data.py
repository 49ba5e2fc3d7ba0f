"""Toy data for the diffusion family: a 2-D Gaussian mixture on a circle and scikit-learn's 8x8 digits.

Both are tiny, made on the CPU and need no download (``load_digits`` ships inside scikit-learn).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from gradwise._validate import check_choice, check_int, check_positive

__all__ = ["mixture_2d", "mixture_2d_centers", "mixture_2d_weights", "digits_8x8", "DIGITS_TEST_FRACTION",
           "DIGITS_SPLIT_SEED"]

# The digits split: stratified, a quarter held out, fixed by this seed (the same split as the arena's
# digits task, gradwise.arena.tasks.digits, so a digits classifier never saw the test images).
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


def mixture_2d_centers(modes: int = 8, radius: float = 2.0, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[modes, 2]`` centres of :func:`mixture_2d`: ``radius * (cos 2 pi k / modes, sin 2 pi k / modes)``."""
    check_int("modes", modes, 1)
    check_positive("radius", radius)
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    return (radius * torch.stack([angle.cos(), angle.sin()], dim=1)).to(dtype)


def mixture_2d_weights(weights, modes: int) -> torch.Tensor:
    """The mixture weights as a float64 ``[modes]`` tensor summing to 1 (uniform for ``None``).

    Raises ValueError naming ``weights`` unless it has ``modes`` finite entries, none negative, some positive.
    """
    if weights is None:
        return torch.full((modes,), 1.0 / modes, dtype=torch.float64)
    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if w.shape != (modes,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"Invalid weights: {weights!r} (accepted: {modes} finite non-negative numbers, "
                         "not all zero, one per mode)")
    return w / w.sum()


def mixture_2d(n: int, *, modes: int = 8, weights=None, radius: float = 2.0, std: float = 0.05,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples of a mixture of ``modes`` isotropic Gaussians (standard deviation ``std``) whose means sit
    evenly on a circle of ``radius`` (:func:`mixture_2d_centers`), mode ``k`` drawn with probability
    ``weights[k]`` (normalised; uniform by default).

    Returns ``(x [n, 2] float32, y [n] int64)``, ``y`` the mode of each sample. Draws from ``generator``
    (torch's global generator if None): the mode of every sample first, then the Gaussian noise.
    """
    check_int("n", n, 1)
    check_int("modes", modes, 1)
    check_positive("radius", radius)
    check_positive("std", std)
    w = mixture_2d_weights(weights, modes)
    y = torch.multinomial(w, n, replacement=True, generator=generator)
    noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x = mixture_2d_centers(modes, radius, dtype=torch.float64)[y] + std * noise
    return x.float(), y


@lru_cache(maxsize=1)
def _digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION, stratify=y,
                                              random_state=DIGITS_SPLIT_SEED)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te), "all": (x, y)}


def digits_8x8(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as images: ``(x [n, 1, 8, 8] float32 in [-1, 1], y [n] int64)``.

    Pixels (0..16) map linearly to [-1, 1]. ``split``: ``"train"`` (1,347 images) or ``"test"`` (450): a
    stratified split holding out ``DIGITS_TEST_FRACTION`` with ``random_state=DIGITS_SPLIT_SEED`` (the split
    of the arena's digits task); ``"all"`` (1,797) is both. Each call returns fresh tensors.
    """
    check_choice("split", split, ("train", "test", "all"))
    x, y = _digits_split()[split]
    images = torch.from_numpy(x.astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)
    return images, torch.from_numpy(y.astype(np.int64))
