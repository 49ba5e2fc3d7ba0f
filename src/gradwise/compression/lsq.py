r"""LSQ: a uniform quantizer whose step size is learned with the task loss (learned step size quantization).

Paper: "Learned Step Size Quantization", Steven K. Esser, Jeffrey L. McKinstry, Deepika Bablani, Rathinakumar
Appuswamy, Dharmendra S. Modha, ICLR 2020, arXiv 1902.08153. The authors (IBM) released no code; the maintained
re-implementation zhutmost/lsq-net@1f644e9 (``quan/quantizer/lsq.py``, ``LsqQuan``) is what the golden data
(tests/data/lsq_golden.pt) were made with. Here it is the quantizer GAQAT (seed 201) trains, not a seed method
itself, so its record says ``seed=False``.

Sources read (2026-12-08, corpus ``pages``): the stored copies of the paper (groundai, an ICLR 2020 text dump)
gave only the abstract and introduction; the quantizer's step-size gradient and its gradient scale were read
from a textbook chapter that restates the paper (its eq. 2.10, "Step Size Gradient Scale"), and the
quantizer, the bounds and the initialisation from lsq-net's code and README (which says its weight
initialisation is the paper's).

With ``Q_N``, ``Q_P`` the number of negative and positive levels (``b`` bits: signed ``Q_N = 2^(b-1)``,
``Q_P = 2^(b-1) - 1``; signed symmetric ``Q_N = Q_P = 2^(b-1) - 1``; unsigned ``Q_N = 0``, ``Q_P = 2^b - 1``)
and the step size ``s > 0``::

    v_bar = clip(round(v / s), -Q_N, Q_P)             (the integer code)
    v_hat = v_bar * s                                  (what the network uses)

Gradients (the straight-through estimator through ``round``; everything else differentiated as written)::

    d v_hat / d v = 1   if -Q_N < v/s < Q_P,  else 0
    d v_hat / d s = round(v/s) - v/s   if -Q_N < v/s < Q_P
                    -Q_N               if v/s <= -Q_N
                    Q_P                if v/s >= Q_P

and the step size's gradient is multiplied by the gradient scale ``g = 1 / sqrt(N Q_P)`` (``N`` the number of
weights of the layer for a weight quantizer, of features for an activation quantizer), so that step sizes
and weights see updates of comparable relative size. The step size starts at ``2 mean|v| / sqrt(Q_P)``
(:meth:`LSQQuantizer.init_from`).

Departures and choices, each with its reason:

* ``N`` defaults to ``x.numel()``, as lsq-net (for an activation quantizer that counts the batch too; pass
  ``grad_scale`` to use the paper's per-example feature count).
* At exactly ``v/s = -Q_N`` or ``v/s = Q_P`` the formulas above (the paper's, with ``<=``/``>=``) give
  ``d/ds = -Q_N`` or ``Q_P`` and ``d/dv = 0``; lsq-net's ``torch.clamp`` passes the gradient on the closed
  interval, so there it gives ``d/ds = 0`` and ``d/dv = 1``. The golden data record both; the rest agrees
  to 1e-10 in float64.
* ``round`` is ``torch.round`` (halves to even), as lsq-net.
* Per-channel step sizes (not in the paper; lsq-net's ``per_channel``) are one per index of dim 0, with the
  same ``g`` as per-tensor (lsq-net's choice).
* NaN in ``v`` or ``s`` propagates to the output and to both gradients (``d/dv`` is 1 there, never zeroed).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gradwise._validate import check_bool, check_int, check_positive
from gradwise.registry import register

__all__ = ["lsq_bounds", "lsq_quantize", "LSQQuantizer"]

_PAPER = "Learned Step Size Quantization"


def lsq_bounds(bits: int, *, signed: bool = True, symmetric: bool = False) -> tuple[int, int]:
    """``(Q_N, Q_P)``: the codes run from ``-Q_N`` to ``Q_P`` (see the module docstring)."""
    signed = check_bool("signed", signed)
    symmetric = check_bool("symmetric", symmetric)
    if symmetric and not signed:
        raise ValueError("Invalid symmetric: True with signed=False (accepted: symmetric only for signed codes)")
    bits = check_int("bits", bits, 2 if signed else 1, 16)
    if not signed:
        return 0, 2 ** bits - 1
    q_p = 2 ** (bits - 1) - 1
    return (q_p if symmetric else q_p + 1), q_p


class _LSQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, q_n: float, q_p: float, g: float):
        ctx.save_for_backward(x, step)
        ctx.bounds = (q_n, q_p, g)
        return torch.clamp(torch.round(x / step), -q_n, q_p) * step

    @staticmethod
    def backward(ctx, grad):
        x, step = ctx.saved_tensors
        q_n, q_p, g = ctx.bounds
        u = x / step
        inside = ~((u <= -q_n) | (u >= q_p))  # NaN counts as inside: it reaches both gradients
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.where(inside, grad, torch.zeros_like(grad))
        if ctx.needs_input_grad[1]:
            d_s = torch.where(inside, torch.round(u) - u, torch.clamp(u, -q_n, q_p))
            grad_s = (grad * d_s).sum_to_size(step.shape) * g
        return grad_x, grad_s, None, None, None


def _check_step(x: torch.Tensor, step) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"Invalid x: {type(x).__name__} (accepted: a floating-point tensor)")
    s = step if isinstance(step, torch.Tensor) else torch.tensor(check_positive("step", step), dtype=x.dtype)
    if not s.is_floating_point():
        raise ValueError(f"Invalid step: dtype {s.dtype} (accepted: a floating-point tensor)")
    try:
        shape = torch.broadcast_shapes(s.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"Invalid step: shape {tuple(s.shape)} (accepted: a shape that broadcasts to x's "
                         f"{tuple(x.shape)} without enlarging it)")
    if s.device.type == "cpu":
        if bool((s <= 0).any()):
            raise ValueError("Invalid step: entries <= 0 (accepted: step sizes > 0)")
    else:  # a learned step is checked every forward: no host sync on an accelerator
        torch._assert_async((s > 0).all(), "Invalid step: entries <= 0 (accepted: step sizes > 0)")
    return s


@register(kind="quantizer", paper=_PAPER, year=2020, arxiv="1902.08153", code=None, seed=False,
          summary="uniform fake quantization whose step size learns from the task loss through the "
                  "straight-through estimator, with the step gradient scaled by 1/sqrt(N Q_P)")
def lsq_quantize(x: torch.Tensor, step, *, bits: int = 4, signed: bool = True, symmetric: bool = False,
                 grad_scale: float | None = None) -> torch.Tensor:
    """LSQ fake quantization ``clip(round(x / step), -Q_N, Q_P) * step`` (Esser et al., ICLR 2020, arXiv
    1902.08153), with the paper's gradients to ``x`` and ``step`` (module docstring).

    ``step``: a positive number or a tensor broadcastable to ``x`` (per tensor or per channel);
    ``grad_scale``: the factor on the step's gradient, ``None`` for ``1 / sqrt(x.numel() * Q_P)``.
    """
    q_n, q_p = lsq_bounds(bits, signed=signed, symmetric=symmetric)
    s = _check_step(x, step)
    g = 1.0 / math.sqrt(x.numel() * q_p) if grad_scale is None else check_positive("grad_scale", grad_scale)
    return _LSQ.apply(x, s, float(q_n), float(q_p), g)


class LSQQuantizer(nn.Module):
    """A learned-step-size quantizer (:func:`lsq_quantize`) holding its step size as a parameter.

    ``per_channel``: one step per index of dim 0 (set by :meth:`init_from`); ``step``: the initial step
    (per-tensor) before :meth:`init_from`, which sets the paper's ``2 mean|v| / sqrt(Q_P)``.
    ``grad_scale``: as :func:`lsq_quantize`.
    """

    def __init__(self, bits: int = 4, *, signed: bool = True, symmetric: bool = False, per_channel: bool = False,
                 step: float = 1.0, grad_scale: float | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.q_n, self.q_p = lsq_bounds(bits, signed=signed, symmetric=symmetric)
        self.bits, self.signed, self.symmetric = bits, signed, symmetric
        self.per_channel = check_bool("per_channel", per_channel)
        self.grad_scale = None if grad_scale is None else check_positive("grad_scale", grad_scale)
        self.step = nn.Parameter(torch.full((1,), check_positive("step", step), device=device, dtype=dtype))

    @torch.no_grad()
    def init_from(self, v: torch.Tensor) -> None:
        """Sets the step to ``2 mean|v| / sqrt(Q_P)`` (per channel: the mean over all dims but 0). The step is
        written in place when its shape is unchanged; otherwise (the first per-channel call) it becomes a new
        parameter, so call this before building the optimizer."""
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.numel() == 0:
            raise ValueError("Invalid v: not a non-empty floating-point tensor (accepted: the weights, or a first "
                             "batch of activations)")
        if self.per_channel:
            if v.dim() < 1:
                raise ValueError("Invalid v: 0-d with per_channel=True (accepted: a tensor with a channel dim 0)")
            m = v.abs().mean(dim=tuple(range(1, v.dim())), keepdim=True) if v.dim() > 1 else v.abs()
        else:
            m = v.abs().mean().reshape(1)
        s = m * 2.0 / math.sqrt(self.q_p)
        if not bool((s > 0).all()):
            raise ValueError("Invalid v: a (channel) mean |v| of 0 gives a zero step (accepted: nonzero values)")
        if s.shape == self.step.shape:
            self.step.copy_(s)
        else:
            self.step = nn.Parameter(s.to(self.step.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(x, self.step, bits=self.bits, signed=self.signed, symmetric=self.symmetric,
                            grad_scale=self.grad_scale)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, symmetric={self.symmetric}, "
                f"per_channel={self.per_channel}, step_shape={tuple(self.step.shape)}")
