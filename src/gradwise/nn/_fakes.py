"""Fake (meta) implementations of the nn layers' kernels, for ``torch.compile``.

They give each output's shape and dtype from the inputs', as the CPU kernels in ``nn/csrc/*.cpp`` allocate
them, and check what those check that fake tensors know (shapes, dtypes). The in-place updates of the
buffers (``running_phi``, ``ema_gz``) are declared in the schemas (``Tensor(a!)``), so the fakes leave them.
Registered by :mod:`gradwise._kernels` once the library is loaded.

:data:`FAKES` names one fake per operator that the family's ``csrc/*.cpp`` define; a test checks that the two
agree, so a new kernel comes with its fake.
"""
from __future__ import annotations

import torch

_NS = "gradwise_nn"


def _check_x(name: str, x, groups: int, *channel_tensors) -> None:
    torch._check(x.dim() == 3, lambda: f"{name}: x must be (T, B, C)")
    torch._check(x.dtype in (torch.float32, torch.float64), lambda: f"{name}: x must be float32 or float64")
    c = x.shape[2]
    torch._check(groups >= 1 and c % groups == 0, lambda: f"{name}: groups = {groups} must divide C")
    for t in channel_tensors:
        torch._check(t.numel() == c, lambda: f"{name}: per-channel tensors must have C elements")
        torch._check(t.dtype == x.dtype, lambda: f"{name}: per-channel tensors must have x's dtype")


def _power_norm_forward_fake(x, weight, bias, running_phi, iters, pad_mask, eps, alpha_fwd, warmup_iters, groups):
    _check_x("power_norm_forward", x, groups, weight, bias, running_phi)
    t, b, c = x.shape
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((t * b, groups)),
            x.new_empty((3, c)))


def _power_norm_backward_fake(grad_y, x, r, stats, weight, ema_gz, alpha_bkw, groups):
    _check_x("power_norm_backward", x, groups, weight, ema_gz)
    torch._check(grad_y.shape == x.shape, lambda: "power_norm_backward: grad_y must have x's shape")
    c = x.shape[2]
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((c,)), x.new_empty((c,))


def _power_norm_eval_fake(x, weight, bias, running_phi, eps, groups):
    _check_x("power_norm_eval", x, groups, weight, bias, running_phi)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# operator name (in torch.ops.gradwise_nn) -> its fake implementation
FAKES = {
    "power_norm_forward": _power_norm_forward_fake,
    "power_norm_backward": _power_norm_backward_fake,
    "power_norm_eval": _power_norm_eval_fake,
}


def register() -> None:
    """Register the fakes (called once after loading)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{_NS}::{name}")(fake)
