"""The opt-in finiteness check of ``skip_nonfinite``: one reduction per bucket, one host sync."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["finite_and_large", "all_finite", "bucket_lists", "LARGE"]


def bucket_lists(tensors: list[Tensor]) -> list[list[Tensor]]:
    """``tensors`` grouped by (device, dtype), so each ``torch._foreach_*`` call gets homogeneous lists."""
    out: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return list(out.values())


class _LargeThresholds(dict):
    # Gradients above finfo.max ** 0.25 (1.4e9 in float32 and bfloat16, 16 in float16): the regime in
    # which an update's squares and products can overflow although the gradient is finite.
    def __missing__(self, dtype):
        self[dtype] = torch.finfo(dtype).max ** 0.25
        return self[dtype]


LARGE = _LargeThresholds()
"""dtype -> ``finfo(dtype).max ** 0.25``, the gradient size above which an update may overflow."""


def finite_and_large(tensors: list[Tensor]) -> tuple[bool, bool]:
    """Whether all tensors are finite, and whether any entry exceeds ``finfo(dtype).max ** 0.25``.

    One reduction per bucket, then a single host sync: the price of the
    opt-in check, as in torch.amp.GradScaler. (Testing the max-norms with
    isfinite, not their sum, so that large finite gradients cannot overflow
    into a false alarm.)
    """
    flags = []
    for ts in bucket_lists(tensors):
        amax = torch.stack(torch._foreach_norm(ts, float("inf")))
        flags.append(torch.stack([amax.isfinite().all(), (amax > LARGE[ts[0].dtype]).any()]))
    dev = flags[0].device
    f = torch.stack([x.to(dev) for x in flags])
    finite, large = torch.stack([f[:, 0].all(), f[:, 1].any()]).tolist()  # the one host sync
    return bool(finite), bool(large)


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor is finite (one host sync)."""
    return finite_and_large(tensors)[0]
