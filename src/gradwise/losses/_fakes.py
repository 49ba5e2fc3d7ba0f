"""Fake (meta) implementations of the loss kernels, for ``torch.compile``.

They give each output's shape and dtype from the inputs', as the CPU kernels
in ``losses/csrc/*.cpp`` allocate them. Registered by
:mod:`gradwise._kernels` once the library is loaded.

:data:`FAKES` names one fake per operator that the family's ``csrc/*.cpp`` define; a test checks
that the two agree, so a new kernel comes with its fake.
"""
from __future__ import annotations

import torch

_NS = "gradwise_losses"


def _check_logits(name: str, z) -> None:
    torch._check(z.dim() == 2, lambda: f"{name}: logits must be [N, C]")


def _ldr_softplus_fake(x, y, lam, margin, need_grad, row_scale):
    _check_logits("ldr_softplus", x)
    loss = x.new_empty((x.shape[0],))
    return [loss, torch.empty_like(x, memory_format=torch.contiguous_format)] if need_grad else [loss]


def _top_confidence_forward_fake(z):
    _check_logits("top_confidence_forward", z)
    n = z.shape[0]
    return [z.new_empty((n,)), z.new_empty((n,), dtype=torch.long), z.new_empty((n,))]


def _top_confidence_backward_fake(z, lse, pred, conf, g):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _stablemax_ce_forward_fake(x, target):
    _check_logits("stablemax_ce_forward", x)
    n = x.shape[0]
    return [x.new_empty((n,)), x.new_empty((n,)), x.new_empty((n,))]


def _stablemax_ce_backward_fake(x, target, s_t, rest, g):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# operator name (in torch.ops.gradwise_losses) -> its fake implementation
FAKES = {
    "ldr_softplus": _ldr_softplus_fake,
    "top_confidence_forward": _top_confidence_forward_fake,
    "top_confidence_backward": _top_confidence_backward_fake,
    "stablemax_ce_forward": _stablemax_ce_forward_fake,
    "stablemax_ce_backward": _stablemax_ce_backward_fake,
}


def register() -> None:
    """Register the fakes (called once after loading)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{_NS}::{name}")(fake)
