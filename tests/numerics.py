"""Comparisons against stored data that was made on another machine.

PyTorch picks its vectorized CPU kernels per machine (AVX-512, AVX2 or the
default path, see ``ATEN_CPU_CAPABILITY``), and they may round differently in
the last bit. So a result is never compared bit for bit with a file written on
another CPU: it must agree within a few units in the last place (ulps) of its
dtype. Bit-exact checks stay where both sides run in one process (fused vs
foreach paths, resumed vs uninterrupted runs).
"""
from __future__ import annotations

import torch

__all__ = ["assert_close_to_stored", "ULPS"]

# Enough for a few differently-rounded operations in a chain; far below any
# algorithmic difference (those show up at 1e-4 or more in float32).
ULPS = 8


def assert_close_to_stored(actual: torch.Tensor, expected: torch.Tensor, ulps: int = ULPS) -> None:
    """``actual`` equals stored ``expected`` within ``ulps`` units in the last place.

    The tolerance is relative per element, plus ``ulps`` ulps of the largest
    stored magnitude, since a sum's rounding error scales with its terms, not
    with a result that cancels to near zero.
    """
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != stored {expected.dtype}"
    eps = torch.finfo(expected.dtype).eps if expected.dtype.is_floating_point else 0.0
    scale = float(expected.detach().abs().max()) if expected.numel() and eps else 0.0
    torch.testing.assert_close(actual, expected, rtol=ulps * eps, atol=ulps * eps * scale)
