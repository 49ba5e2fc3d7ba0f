"""ReSTE: the rectified straight-through estimator for binary neural networks.

Paper: "Estimator Meets Equilibrium Perspective: A Rectified Straight Through Estimator for Binary Neural
Networks Training", Wu, Zheng, Liu, Zheng, ICCV 2023, arXiv 2308.06689. Authors' code:
https://github.com/DravenALG/ReSTE at commit 0d3c36a (``model/binary_module/binarized_modules.py``,
``main.py``, ``utils/tools.py``). Only the title page and abstract of the paper were readable in the stored
text, so the formulas below are those of the authors' code, which ``tests/compression/test_reste.py``
checks against a run of it (tests/data/reste_golden.pt, float64, tolerance 1e-10).

Forward: ``sign(x)`` (``sign(0) = 0``). The estimator is the power function ``f_o(x) = sign(x)|x|^(1/o)``
(o = 1 is the identity, i.e. STE; a larger o is closer to sign). Its derivative replaces sign's in the
backward pass, rectified near 0 and cut beyond ``t``::

    d sign(x)/dx  :=  interval^(1/o) / interval          |x| <= interval   (the secant of f_o over [0, interval])
                      (1/o) |x|^((1-o)/o)                 interval < |x| <= t
                      0                                   |x| > t

with ``t = 1.5`` and ``interval = 0.1`` (hard-coded by the authors). ``o`` grows over training from 1 to
``o_end`` (:func:`reste_o_schedule`, the authors' ``ReSTE(epoch)``)::

    o(e) = 1 + (1 - cos(pi/2 * e/E)) (o_end - 1)

:class:`BinaryConv2d` / :class:`BinaryLinear` binarize the weight as ``sign(W) * mean|W|`` (one scale for
the whole tensor; the gradient flows through the scale as well) and, unless ``binarize_activations=False``
(the authors' ``--a32``), the input with the same estimator. ``estimator="ste"`` is the clipped identity
(gradient 1 on ``|x| <= 1``, 0 beyond), the BinaryConnect STE the authors compare with.

The paper's two indicators (the authors' ``get_fitting_error`` and ``get_stability_var``):

    estimating error   sum over layers of || f_o(w) - sign(w) ||_2             (:func:`reste_estimating_error`)
    gradient stability sum over layers of var(|g|)  (unbiased variance)        (:func:`reste_gradient_stability`)

The authors evaluate the estimating error at ``o_end`` (not at the current o) on the weights of every
binarized conv but the first; which tensors to pass is the caller's choice here.

Departures from the authors' code, each with its reason:

* Their ``Binary`` (STE) class crashes on its first backward (``input = ctx.saved_tensors`` keeps the
  tuple); ``"ste"`` here is what it was written to compute, the clipped identity.
* They hold ``o`` and ``t`` as float32 tensors and compute the exponent ``(1 - o)/o`` in float32; here
  they are Python floats (double), so float32 gradients can differ from theirs in the last bits.
  The schedule (their ``torch.tensor(epoch / epochs)`` in the default dtype, float32) is computed in
  double here; the golden data were made with float64 as their default dtype.
* ``torch.sign`` (theirs) maps NaN to 0; here the forward keeps NaN. Their masks all miss a NaN input,
  which zeroes its gradient; here it takes the power branch (NaN for o != 1, the incoming gradient at
  o = 1), and a NaN incoming gradient stays NaN.
* ``interval`` is an argument (theirs is the constant 0.1, the default here); one ``o``/``t`` serves
  weights and activations (theirs are two copies, ``o``/``o_a``, always set equal).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_int, check_positive, check_real
from gradwise.registry import register

__all__ = ["reste_sign", "ste_sign", "reste_o_schedule", "BinaryConv2d", "BinaryLinear",
           "reste_estimating_error", "reste_gradient_stability", "set_reste_o"]

_PAPER = ("Estimator Meets Equilibrium Perspective: A Rectified Straight Through Estimator for Binary "
          "Neural Networks Training")
_CODE = "https://github.com/DravenALG/ReSTE@0d3c36a"
_ESTIMATORS = ("reste", "ste")


def _scalar(name: str, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return check_positive(name, value)


def _check_reste(o, t, interval) -> tuple[float, float, float]:
    o, t, interval = _scalar("o", o), _scalar("t", t), _scalar("interval", interval)
    if t <= interval:
        raise ValueError(f"Invalid t: {t!r} (accepted: t > interval = {interval!r})")
    return o, t, interval


def _sign(x: torch.Tensor) -> torch.Tensor:
    """torch.sign, except that NaN stays NaN (torch.sign(NaN) is 0). On CPU the NaN pass runs only when a
    read-only sum says there may be one (the sum is NaN); elsewhere it always runs (no host sync)."""
    s = torch.sign(x)
    if not x.is_cpu or torch.isnan(x.sum()):
        s = torch.where(torch.isnan(x), x, s)
    return s


class _ReSTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, o, t, interval):
        ctx.save_for_backward(x)
        ctx.params = (o, t, interval)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        o, t, interval = ctx.params
        a = x.abs()
        # (1/o) a^((1-o)/o) as exp(((1-o)/o) log a - log o), on a clamped below at interval and times o
        # there (which gives interval^(1/o)/interval), times 0 beyond t. torch.pow with a general exponent
        # is not vectorized on CPU; exp/log are, and arithmetic masks are cheaper than masked_fill/where.
        # Agrees with the direct formula to ~1e-16 relative in float64; NaN in x stays NaN.
        grad = a.clamp(min=interval).log_().mul_((1.0 - o) / o)
        if o != 1.0:
            grad.sub_(math.log(o))
        grad.exp_()
        if o != 1.0:
            grad.mul_((a <= interval).to(grad.dtype).mul_(o - 1.0).add_(1.0))
        grad.mul_(a <= t)
        return grad.mul_(grad_out), None, None, None


class _STESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _sign(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return torch.where(x.abs() > 1, 0.0, grad_out)


@register(kind="quantizer", paper=_PAPER, year=2023, arxiv="2308.06689", code=_CODE,
          summary="sign forward; backward the derivative of the power function sign(x)|x|^(1/o) "
                  "(o from 1 to o_end over training), constant near 0 and cut beyond t")
def reste_sign(x: torch.Tensor, o: float, *, t: float = 1.5, interval: float = 0.1) -> torch.Tensor:
    """``sign(x)`` forward (``sign(0) = 0``); backward ReSTE's rectified gradient::

        interval^(1/o) / interval on |x| <= interval;  (1/o)|x|^((1-o)/o) on interval < |x| <= t;  0 beyond t

    ``o > 0`` (1 is the clipped STE with a rectified centre), ``t > interval > 0``. arXiv 2308.06689.
    """
    o, t, interval = _check_reste(o, t, interval)
    return _ReSTESign.apply(x, o, t, interval)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` forward; backward the clipped identity (gradient 1 on ``|x| <= 1``, 0 beyond)."""
    return _STESign.apply(x)


def reste_o_schedule(epoch: int, epochs: int, *, o_end: float = 3.0) -> float:
    """``o`` at ``epoch`` of ``epochs``: ``1 + (1 - cos(pi/2 * epoch/epochs)) (o_end - 1)`` (1 at epoch 0)."""
    epochs = check_int("epochs", epochs, 1)
    epoch = check_int("epoch", epoch, 0, epochs)
    o_end = check_positive("o_end", o_end)
    return 1.0 + (1.0 - math.cos(math.pi * 0.5 * epoch / epochs)) * (o_end - 1.0)


class _Binary:
    """What BinaryConv2d and BinaryLinear share: the estimator, its o and t, and the binarization."""

    def _setup(self, estimator: str, binarize_activations: bool, o: float, t: float, interval: float) -> None:
        if estimator not in _ESTIMATORS:
            raise ValueError(f"Invalid estimator: {estimator!r} (accepted: {_ESTIMATORS})")
        self.estimator = estimator
        self.binarize_activations = bool(binarize_activations)
        self.o, self.t, self.interval = _check_reste(o, t, interval)

    def set_o(self, o: float) -> None:
        self.o = _check_reste(o, self.t, self.interval)[0]

    def _sign(self, x: torch.Tensor) -> torch.Tensor:
        if self.estimator == "ste":
            return _STESign.apply(x)
        return _ReSTESign.apply(x, self.o, self.t, self.interval)

    def _binarized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight
        bw = self._sign(w) * w.abs().mean()
        return (self._sign(x) if self.binarize_activations else x), bw

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, estimator={self.estimator!r}, "
                f"binarize_activations={self.binarize_activations}, o={self.o:g}, t={self.t:g}")


class BinaryConv2d(_Binary, nn.Conv2d):
    """A conv whose weight is ``sign(W) * mean|W|`` and whose input is ``sign(x)`` (unless
    ``binarize_activations=False``), trained through ``estimator`` (``"reste"`` or ``"ste"``).
    Set ``o`` each epoch with :meth:`set_o` or :func:`set_reste_o` (:func:`reste_o_schedule`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, *, estimator: str = "reste", binarize_activations: bool = True,
                 o: float = 1.0, t: float = 1.5, interval: float = 0.1, device=None, dtype=None) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           device=device, dtype=dtype)
        self._setup(estimator, binarize_activations, o, t, interval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bx, bw = self._binarized(x)
        return self._conv_forward(bx, bw, self.bias)


class BinaryLinear(_Binary, nn.Linear):
    """The linear twin of :class:`BinaryConv2d`: ``sign(x) @ (sign(W) mean|W|)^T + b``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, estimator: str = "reste",
                 binarize_activations: bool = True, o: float = 1.0, t: float = 1.5, interval: float = 0.1,
                 device=None, dtype=None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(estimator, binarize_activations, o, t, interval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bx, bw = self._binarized(x)
        return F.linear(bx, bw, self.bias)


def set_reste_o(model: nn.Module, o: float) -> int:
    """Sets ``o`` on every BinaryConv2d/BinaryLinear in ``model`` (the authors' per-epoch loop); returns
    how many modules it set."""
    mods = [m for m in model.modules() if isinstance(m, _Binary)]
    for m in mods:
        m.set_o(o)
    return len(mods)


def _tensors(tensors) -> list[torch.Tensor]:
    return [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)


def reste_estimating_error(tensors: torch.Tensor | Iterable[torch.Tensor], o: float) -> torch.Tensor:
    """Sum over ``tensors`` of ``|| sign(w)|w|^(1/o) - sign(w) ||_2`` (the paper's estimating error;
    the authors pass each binarized weight and ``o = o_end``)."""
    o = _scalar("o", o)
    total = torch.zeros(())
    for w in _tensors(tensors):
        w = w.detach().reshape(-1)
        total = total + torch.linalg.vector_norm(torch.sign(w) * w.abs().pow(1.0 / o) - torch.sign(w))
    return total


def reste_gradient_stability(grads: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum over ``grads`` of the (unbiased) variance of ``|g|`` (the paper's gradient-stability indicator:
    larger means less stable)."""
    total = torch.zeros(())
    for g in _tensors(grads):
        total = total + torch.var(g.detach().reshape(-1).abs())
    return total
