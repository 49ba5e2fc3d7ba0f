"""Double Rounding: one stored highest-bit integer weight, every lower bit width derived from it; ALRS.

Paper: "Nearly Lossless Adaptive Bit Switching", Haiduo Huang et al., arXiv 2502.01199 (2025). The authors'
repository (https://github.com/haiduo/Double-Rounding) holds only a README, so this module is written from the
paper's text (read in full: the NeurIPS 2024 submission text and the later submission in the code index, whose
§3.1-3.2, eq. 1-7, Appendix A.4 eq. 10-14 and Algorithm A.2 agree).

Double Rounding (eq. 1-3, symmetric, ``z_h = 0``). With the highest width ``h``, a target width ``l`` and
``Delta = h - l``::

    W~_h = clip(round(W / s_h), -2^(h-1), 2^(h-1) - 1)          the stored integer weight (int8 for h = 8)
    W~_l = clip(round(W~_h / 2^Delta), -2^(l-1), 2^(l-1) - 1)    the second rounding, on integers only
    W^_l = W~_l * s_h * 2^Delta                                  the dequantized l-bit weight

One learnable scale ``s_h`` serves every width (the widths' scales are ``s_h 2^Delta``, the paper's "power of
two" relationship). :meth:`DoubleRoundingQuantizer.quantize_int` gives ``W~_h``; :func:`double_round` gives
``W~_l`` from it alone, so a deployed model stores only ``W~_h`` and ``s_h`` (the forward from float weights
equals the dequantized integers exactly: ``tests/compression_tests/test_double_rounding.py``).

Gradients (Appendix A.4, eq. 13): the straight-through estimator on each rounding, so autograd differentiates
the clips and the products. For ``h`` that is LSQ's ``dW^/ds = round(W/s) - W/s`` inside the range and the bound
(``-2^(h-1)`` or ``2^(h-1) - 1``) outside, and ``dW^/dW`` is 1 inside and 0 outside. For ``l < h`` the same
chain rule gives ``2^Delta W~_l - W/s_h`` inside both ranges, ``2^Delta`` times the l-bit bound where the
second clip bites, and ``2^Delta W~_l`` where only the first does.

ALRS (eq. 6-7): the learning rate of the quantization scales for width ``b`` when the batch learning rate is
``lr``, from the scales' gradients of the ``L`` layers::

    lr_b  = eta_b * (lr - (1/L) sum_i min(max_abs(clip_grad(grad s_b^i, 1.0)), 1.0))
    eta_b = 10^(-Delta/2) for even Delta = h - b,   5 * 10^(-(Delta+1)/2) for odd Delta

(8 bits 1, 6 bits 0.1, 4 bits 0.01 when h = 8.) Only the quantization scales use ``lr_b`` (Algorithm A.2:
a second optimizer for the scales, weight decay 0, stepped after each width's backward).

Our choices where the paper leaves a gap, each a keyword:

* ``rounding``: the paper's ``round`` is read as ``torch.round`` (halves to even, ``"nearest"``). The second
  rounding hits exact halves often (``W~_h / 2^Delta`` is a dyadic fraction), so the tie rule matters:
  ``"half_up"`` is the add-half-then-shift of integer hardware, ``"floor"`` the bare right shift (which a
  reviewer of the submission suspected the authors' "bit-shift" to be). All three are exact on integers.
* ``clip_grad`` in eq. 6 is read as clipping by the L2 norm to 1 (``g * min(1, 1/||g||)``, no epsilon); for
  the paper's per-layer scalar scale it is the same as clipping by value.
* Eq. 6 subtracts the clipped gradient magnitudes from ``lr`` itself; at the paper's ``lr = 5e-4`` a mean
  clipped magnitude above ``5e-4`` makes ``lr_b`` negative. :func:`alrs_lr_scale` returns eq. 6 as printed
  (negative included) and does not clamp; the caller decides.
* The scale's initial value is not given in the paper; :meth:`DoubleRoundingQuantizer.init_scale_` uses LSQ's
  ``2 mean|W| / sqrt(2^(h-1) - 1)``. No LSQ gradient scale is applied (eq. 13 has none).
* Not here: the per-width activation quantizers of eq. 4-5 (unsigned, own scale per width), HASB (§3.3) and the
  ILP search (Algorithm 2).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from gradwise._validate import check_choice, check_int, check_real
from gradwise.registry import register

__all__ = ["double_round", "DoubleRoundingQuantizer", "alrs_eta", "alrs_lr_scale"]

_PAPER = "Nearly Lossless Adaptive Bit Switching"
_CODE = "https://github.com/haiduo/Double-Rounding"
_ROUNDINGS = ("nearest", "half_up", "floor")
_MIN_BITS, _MAX_BITS = 2, 16


def _round(x: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "nearest":
        return torch.round(x)
    if rounding == "half_up":
        return torch.floor(x + 0.5)
    return torch.floor(x)


def _round_ste(x: torch.Tensor, rounding: str) -> torch.Tensor:
    return x + (_round(x, rounding) - x).detach()


def _bounds(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _check_bits(bits) -> tuple[int, ...]:
    if isinstance(bits, int) and not isinstance(bits, bool):
        bits = (bits,)
    try:
        bits = tuple(bits)
    except TypeError:
        bits = ()
    accepted = f"a non-empty sequence of distinct integers in [{_MIN_BITS}, {_MAX_BITS}]"
    if not bits or len(set(bits)) != len(bits) or any(
            isinstance(b, bool) or not isinstance(b, int) or not _MIN_BITS <= b <= _MAX_BITS for b in bits):
        raise ValueError(f"Invalid bits: {bits!r} (accepted: {accepted})")
    return tuple(sorted(bits, reverse=True))


def double_round(w_int: torch.Tensor, from_bits: int, to_bits: int, *, rounding: str = "nearest") -> torch.Tensor:
    """Eq. 2 on stored integers: ``clip(round(w_int / 2^(from_bits - to_bits)), -2^(to_bits-1), 2^(to_bits-1)-1)``.

    ``w_int`` holds ``from_bits``-bit signed integers (any dtype; an integer dtype is kept, a floating one
    stays floating). ``to_bits <= from_bits``; ``rounding`` is ``"nearest"`` (halves to even), ``"half_up"`` or
    ``"floor"``. Exact: integer arithmetic, or floating arithmetic on integers far inside the mantissa.
    """
    from_bits = check_int("from_bits", from_bits, _MIN_BITS, _MAX_BITS)
    to_bits = check_int("to_bits", to_bits, _MIN_BITS, from_bits)
    check_choice("rounding", rounding, _ROUNDINGS)
    lo, hi = _bounds(to_bits)
    if not w_int.is_floating_point():
        shift = from_bits - to_bits
        if shift == 0:
            return w_int.clamp(lo, hi)
        wide = w_int.to(torch.int64)
        if rounding == "floor":
            q = wide >> shift
        elif rounding == "half_up":
            q = (wide + (1 << (shift - 1))) >> shift
        else:
            q = torch.round(wide.to(torch.float64) / 2 ** shift).to(torch.int64)
        return q.clamp(lo, hi).to(w_int.dtype)
    return _round(w_int / 2 ** (from_bits - to_bits), rounding).clamp(lo, hi)


@register(kind="quantizer", paper=_PAPER, year=2025, arxiv="2502.01199", code=_CODE,
          summary="one stored highest-bit integer weight and one shared scale; each lower width by a second "
                  "rounding of those integers (scale times 2^(h-l)), switchable per forward; STE gradients")
class DoubleRoundingQuantizer(nn.Module):
    """Double Rounding weight quantizer over ``bits`` (default ``(8, 6, 4, 2)``) with one learnable scale.

    ``forward(w, bits=None)`` returns the dequantized weight at ``bits`` (default :attr:`active_bits`, set by
    :meth:`set_bits`; the highest width at first), eq. 1-3 with straight-through rounding. The scale starts
    uninitialised: pass ``scale=`` or call :meth:`init_scale_` (the first forward does it from its ``w``).
    :meth:`quantize_int` and :meth:`dequantize_int` are the storage path: ``W~_h`` as integers, then any
    width from them alone. Module docstring: the math, the gradient, our choices. arXiv 2502.01199.
    """

    def __init__(self, bits: Sequence[int] = (8, 6, 4, 2), *, scale: float | None = None,
                 rounding: str = "nearest", dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.high = self.bits[0]
        self.rounding = check_choice("rounding", rounding, _ROUNDINGS)
        if scale is not None:
            scale = check_real("scale", scale, 0.0, lo_open=True)
        self.scale = nn.Parameter(torch.tensor(1.0 if scale is None else scale, dtype=dtype))
        self.register_buffer("initialized", torch.tensor(scale is not None))
        self.active_bits = self.high

    def _bits(self, bits: int | None) -> int:
        if bits is None:
            return self.active_bits
        if isinstance(bits, bool) or bits not in self.bits:
            raise ValueError(f"Invalid bits: {bits!r} (accepted: one of {self.bits})")
        return bits

    def set_bits(self, bits: int) -> None:
        """Make ``bits`` (one of :attr:`bits`) the width of later forwards."""
        self.active_bits = self._bits(bits)

    @torch.no_grad()
    def init_scale_(self, w: torch.Tensor) -> None:
        """LSQ's initial scale ``2 mean|w| / sqrt(2^(h-1) - 1)`` (our choice; the paper gives none)."""
        value = 2.0 * w.detach().abs().mean() / math.sqrt(2 ** (self.high - 1) - 1)
        self.scale.copy_(value.to(self.scale.dtype))
        self.initialized.fill_(True)

    def forward(self, w: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        bits = self._bits(bits)
        if not bool(self.initialized):
            self.init_scale_(w)
        s = self.scale.to(w.dtype)
        lo, hi = _bounds(self.high)
        w_h = _round_ste(w / s, self.rounding).clamp(lo, hi)
        step = 2.0 ** (self.high - bits)
        if bits != self.high:
            lo, hi = _bounds(bits)
            w_h = _round_ste(w_h / step, self.rounding).clamp(lo, hi)
        return w_h * (s * step)

    @torch.no_grad()
    def quantize_int(self, w: torch.Tensor) -> torch.Tensor:
        """``W~_h`` (eq. 1) as integers: int8 up to 8 bits, int16 up to 16."""
        if not bool(self.initialized):
            self.init_scale_(w)
        lo, hi = _bounds(self.high)
        q = _round(w / self.scale.to(w.dtype), self.rounding).clamp(lo, hi)
        return q.to(torch.int8 if self.high <= 8 else torch.int16)

    @torch.no_grad()
    def dequantize_int(self, w_int: torch.Tensor, bits: int | None = None, *,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W^_l`` (eq. 2-3) from the stored integers ``w_int`` and the scale only."""
        bits = self._bits(bits)
        q = double_round(w_int, self.high, bits, rounding=self.rounding)
        return q.to(dtype) * (self.scale.to(dtype) * 2.0 ** (self.high - bits))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, active_bits={self.active_bits}, rounding={self.rounding!r}"


def alrs_eta(bits: int, max_bits: int = 8) -> float:
    """Eq. 7: ``10^(-Delta/2)`` for even ``Delta = max_bits - bits``, ``5 * 10^(-(Delta+1)/2)`` for odd."""
    max_bits = check_int("max_bits", max_bits, _MIN_BITS, _MAX_BITS)
    bits = check_int("bits", bits, _MIN_BITS, max_bits)
    delta = max_bits - bits
    return 10.0 ** (-delta // 2) if delta % 2 == 0 else 5.0 * 10.0 ** (-(delta + 1) // 2)


def alrs_lr_scale(lr: float, scale_grads: Iterable[torch.Tensor | None], bits: int, *, max_bits: int = 8,
                  max_norm: float = 1.0) -> float:
    """Eq. 6: the learning rate of the quantization scales for width ``bits``.

    ``scale_grads`` holds the gradient of each layer's scale for this width (``None`` entries, layers the
    backward did not reach, count as 0). Each is clipped to L2 norm ``max_norm`` (the paper's 1.0), its max
    absolute value is capped at 1.0, and the mean over layers is subtracted from ``lr`` before scaling by
    :func:`alrs_eta`. Returned as printed, negative or NaN included (module docstring).
    """
    lr = check_real("lr", lr, 0.0, finite=False)
    max_norm = check_real("max_norm", max_norm, 0.0, lo_open=True)
    eta = alrs_eta(bits, max_bits)
    grads = list(scale_grads)
    if not grads:
        raise ValueError("Invalid scale_grads: empty (accepted: one gradient (or None) per layer)")
    terms = []
    for g in grads:
        if g is None:
            terms.append(torch.zeros((), dtype=torch.float64))
            continue
        g = g.detach().to(torch.float64)
        norm = torch.linalg.vector_norm(g)
        clipped = g * torch.clamp(max_norm / norm, max=1.0) if norm > max_norm else g
        terms.append(torch.clamp(clipped.abs().max(), max=1.0) if clipped.numel() else clipped.new_zeros(()))
    mean = torch.stack(terms).mean().item()
    return eta * (lr - mean)
