"""Fake (meta) implementations of the optimizer kernels, for ``torch.compile``.

Under fake tensors an operator must say what it returns without touching
memory. The in-place update kernels return nothing (their mutations are
declared in the schemas, ``Tensor(a!)[]``), so their fakes only check what the
real kernels check; ``perp_stats`` returns one float64 row of three sums per
tensor. Registered by :mod:`gradwise._kernels` once the library is loaded.

:data:`FAKES` names one fake per operator that the family's ``csrc/*.cpp`` define; a test checks
that the two agree, so a new kernel comes with its fake.
"""
from __future__ import annotations

import torch

_NS = "gradwise_fused"
_UPDATES = ("adabelief_", "adamw_", "diffgrad_", "lion_", "spam_", "stablespam_", "sgdsai_", "radial_")


def _check_pairs(name: str, p, g) -> None:
    torch._check(len(p) == len(g), lambda: f"{name}: tensor lists differ in length")
    for a, b in zip(p, g):
        torch._check(a.numel() == b.numel(), lambda: f"{name}: gradient sizes differ from parameter sizes")
        torch._check(a.dtype == b.dtype, lambda: f"{name}: gradient dtype differs from parameter dtype")


def _update_fake(name: str):
    def fake(*args, **kwargs):
        tensors = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
        if len(tensors) >= 2:
            _check_pairs(name, tensors[0], tensors[1])
        return None
    return fake


def _adamw_8bit_fake(p, g, m_codes, m_absmax, v_codes, v_absmax, vmax_codes, vmax_absmax, *rest):
    # the kernel's checks of the 8-bit state: uint8 codes shaped like each parameter, float32 absmax with
    # one entry per block (block_size is the last argument); max_exp_avg_sq only with amsgrad
    _check_pairs("adamw_8bit_", p, g)
    block_size = rest[-1]
    for codes, absmax in ((m_codes, m_absmax), (v_codes, v_absmax), (vmax_codes, vmax_absmax)):
        if codes is vmax_codes and not vmax_codes and not vmax_absmax:
            continue
        torch._check(len(codes) == len(p) and len(absmax) == len(p),
                     lambda: "adamw_8bit_: state lists differ in length from the parameters")
        for x, c, a in zip(p, codes, absmax):
            torch._check(c.dtype == torch.uint8 and c.shape == x.shape,
                         lambda: "adamw_8bit_: codes must be uint8 of the parameter's shape")
            torch._check(a.dtype == torch.float32 and a.numel() == -(-x.numel() // block_size),
                         lambda: "adamw_8bit_: absmax must be float32, one entry per block")
    return None


def _perp_stats_fake(w, g, c):
    _check_pairs("perp_stats", w, g)
    return w[0].new_empty((len(w), 3), dtype=torch.float64) if w else torch.empty((0, 3), dtype=torch.float64)


# operator name (in torch.ops.gradwise_fused) -> its fake implementation
FAKES = {**{name: _update_fake(name) for name in _UPDATES}, "perp_stats": _perp_stats_fake,
         "adamw_8bit_": _adamw_8bit_fake}


def register() -> None:
    """Register the fakes (idempotent per process: called once after loading)."""
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{_NS}::{name}")(fake)
