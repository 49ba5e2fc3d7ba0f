"""The optimizers' fused CPU kernels (``optim/csrc/*.cpp``, ``torch.ops.gradwise_fused``).

Built at install into ``gradwise/optim/_C*.so`` and loaded on first use; see
:mod:`gradwise._kernels` for when they compile at run time instead, and the
fallback to the ``torch._foreach_*`` path. ``GRADWISE_FUSED=0`` disables them.
Their fake implementations for ``torch.compile`` are in
:mod:`gradwise.optim._fakes`.
"""
from __future__ import annotations

from gradwise._kernels import family

_FAMILY = family("optim")


def load(verbose: bool = False) -> bool:
    """Load (once) the optimizer kernels; return whether they are usable."""
    return _FAMILY.load()


def available() -> bool:
    return _FAMILY.load()


def error() -> str | None:
    """Why the kernels are unavailable, if they are."""
    return _FAMILY.error()


def ops():
    return _FAMILY.ops()
