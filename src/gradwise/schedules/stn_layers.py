r"""Self-Tuning Networks' best-response layers: ``HyperLinear``, ``HyperConv2d`` and per-example dropout.

Paper: Matthew MacKay, Paul Vicol, Jon Lorraine, David Duvenaud, Roger Grosse, "Self-Tuning Networks: Bilevel
Optimization of Hyperparameters using Structured Best-Response Functions", ICLR 2019, arXiv 1903.03088.
Authors' code: github.com/asteroidhouse/self-tuning-networks, commit 3c4204993343b09a413588e063ebcf0cff3d64fd
(``cnn/hypermodels/hyperlinear.py``, ``cnn/hypermodels/hyperconv2d.py``, ``cnn/util/dropout.py``).

The layers approximate the best-response ``w*(lambda)`` of a layer's weights to the hyperparameters ``lambda``
by an elementary weight plus a hyperparameter-gated one: each output unit ``j`` gets

    y_j = a * (W_elem x + b_elem)_j + (H lambda)_j (W_hyper x)_j + (H lambda)_{out+j} b_hyper_j

with ``H`` an ``[2 * out, num_hparams]`` matrix without bias (the authors' ``htensor_to_scalars``), ``a`` a
learned scalar (``elem_scalar``, 1 at start) and ``lambda`` the *unconstrained* hyperparameters of each example
(``hnet_tensor``, one row per example). This is what the authors' layers compute; the scalar ``a`` is theirs
(the paper's text, as far as we could read it, does not show it). Only the opening of the paper (abstract and
introduction) could be read in the search corpus, so the formula above is taken from the authors' code, which
the golden data (``tests/data/stn_golden.pt``) checks in float64 (relative tolerance 1e-10).

Initialisation as theirs: elementary and hyper weights and biases uniform in ``+-1/sqrt(fan_in)`` (``fan_in =
in_features``, or ``in_channels * k * k``), ``H`` normal with std 0.01, ``a = 1``; the random draws come in the
same order as theirs, so a seeded layer starts with their weights. The parameter names are theirs too, so their
state dicts load unchanged.

Departures: (1) ``hnet_tensor`` may also be one row ``[num_hparams]`` shared by the whole batch, and
``HyperLinear`` accepts inputs ``[B, *, in_features]`` (theirs: ``[B, in_features]`` only); (2) ``HyperConv2d``
takes ``(in_channels, out_channels, kernel_size, num_hparams, stride=1, padding=0, bias=True)`` (theirs has
``padding`` before ``num_hparams`` and no default); (3) the forward is out of place (theirs updates in place,
which has the same values).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_int

__all__ = ["HyperLinear", "HyperConv2d", "per_example_dropout"]


def _check_hnet(hnet_tensor: Tensor | None, batch: int, num_hparams: int, dtype: torch.dtype) -> None:
    if hnet_tensor is None:
        return
    if not isinstance(hnet_tensor, Tensor):
        raise TypeError(f"Invalid hnet_tensor: {type(hnet_tensor).__name__} (accepted: a tensor [B, num_hparams] "
                        "or [num_hparams], or None)")
    ok_shape = (hnet_tensor.dim() == 1 and hnet_tensor.shape[0] == num_hparams) or \
        (hnet_tensor.dim() == 2 and tuple(hnet_tensor.shape) == (batch, num_hparams))
    if not ok_shape:
        raise ValueError(f"Invalid hnet_tensor: shape {tuple(hnet_tensor.shape)} (accepted: [{batch}, "
                         f"{num_hparams}] for this batch, or [{num_hparams}])")
    if hnet_tensor.dtype != dtype:
        raise TypeError(f"Invalid hnet_tensor: dtype {hnet_tensor.dtype} (accepted: the layer's dtype {dtype})")


def _gates(layer: nn.Module, hnet_tensor: Tensor, out: int) -> tuple[Tensor, Tensor]:
    """The weight and bias gates ``(H lambda)[:out]`` and ``(H lambda)[out:]``, ``[B, out]`` or ``[out]``."""
    scalars = layer.htensor_to_scalars(hnet_tensor)
    return scalars[..., :out], scalars[..., out:]


class HyperLinear(nn.Module):
    r"""Self-Tuning Networks' linear layer: ``y = a (W_elem x + b_elem) + (H lambda)[:out] * (W_hyper x)
    + (H lambda)[out:] * b_hyper``.

    ``forward(input, hnet_tensor)``: ``input [B, *, in_features]``; ``hnet_tensor`` the unconstrained
    hyperparameters, ``[B, num_hparams]`` (one row per example, as the perturbed hyperparameters of
    :class:`gradwise.schedules.StnHyperparameters` come) or ``[num_hparams]`` (shared), or ``None`` (the
    elementary part alone, as the authors' layer allows). Parameters (the authors' names): ``elem_weight``,
    ``hnet_weight`` ``[out, in]``, ``elem_bias``, ``hnet_bias`` ``[out]`` (absent when ``bias=False``),
    ``htensor_to_scalars`` (``nn.Linear(num_hparams, 2 * out, bias=False)``) and ``elem_scalar`` ``[1]``; all are
    elementary parameters, trained on the training loss. MacKay et al., Self-Tuning Networks, ICLR 2019, arXiv
    1903.03088; computes what the authors' ``HyperLinear`` computes (github.com/asteroidhouse/self-tuning-networks
    @3c42049, checked in float64 against it). See the module docstring for the initialisation and departures.

    Example::

        layer = HyperLinear(64, 32, num_hparams=1)
        y = layer(x, hnet_tensor)          # x [B, 64], hnet_tensor [B, 1]
    """

    def __init__(self, in_features: int, out_features: int, num_hparams: int, bias: bool = True, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, lo=1)
        self.out_features = check_int("out_features", out_features, lo=1)
        self.num_hparams = check_int("num_hparams", num_hparams, lo=1)
        check_bool("bias", bias)
        kw = {"device": device, "dtype": dtype}
        self.elem_weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.hnet_weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        if bias:
            self.elem_bias = nn.Parameter(torch.empty(out_features, **kw))
            self.hnet_bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("elem_bias", None)
            self.register_parameter("hnet_bias", None)
        # built here, as theirs, so that its default initialisation draws from the generator in the same order
        self.htensor_to_scalars = nn.Linear(num_hparams, 2 * out_features, bias=False, **kw)
        self.elem_scalar = nn.Parameter(torch.ones(1, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: uniform ``+-1/sqrt(in_features)``; ``H`` normal with std 0.01."""
        _init(self, self.in_features)

    def forward(self, input: Tensor, hnet_tensor: Tensor | None) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"Invalid input: {type(input).__name__} (accepted: a tensor [B, *, in_features])")
        if input.dim() < 2 or input.shape[-1] != self.in_features:
            raise ValueError(f"Invalid input: shape {tuple(input.shape)} (accepted: [B, *, {self.in_features}])")
        _check_hnet(hnet_tensor, input.shape[0], self.num_hparams, self.elem_weight.dtype)
        output = F.linear(input, self.elem_weight, self.elem_bias) * self.elem_scalar
        if hnet_tensor is None:
            return output
        wgate, bgate = _gates(self, hnet_tensor, self.out_features)
        if hnet_tensor.dim() == 2 and input.dim() > 2:  # per-example gates over the middle dimensions
            shape = (input.shape[0],) + (1,) * (input.dim() - 2) + (self.out_features,)
            wgate, bgate = wgate.reshape(shape), bgate.reshape(shape)
        hnet_out = wgate * F.linear(input, self.hnet_weight)
        if self.hnet_bias is not None:
            hnet_out = hnet_out + bgate * self.hnet_bias
        return output + hnet_out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"num_hparams={self.num_hparams}, bias={self.elem_bias is not None}")


class HyperConv2d(nn.Module):
    r"""Self-Tuning Networks' convolution: ``y = a conv(x, W_elem, b_elem) + g_w * conv(x, W_hyper) + g_b * b_hyper``.

    The gates ``[g_w, g_b] = H lambda`` (``H``: ``htensor_to_scalars``, ``nn.Linear(num_hparams,
    2 * out_channels, bias=False)``) scale each output channel, per example. ``forward(input, hnet_tensor)``:
    ``input [B, C, H, W]``, ``hnet_tensor [B, num_hparams]``, ``[num_hparams]`` or ``None``. ``kernel_size``:
    an int (square kernels, as theirs). Initialisation: uniform ``+-1/sqrt(in_channels * k * k)``, ``H`` normal
    with std 0.01. MacKay et al., Self-Tuning Networks, arXiv 1903.03088; computes what the authors'
    ``HyperConv2d`` computes (github.com/asteroidhouse/self-tuning-networks@3c42049, checked in float64).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_hparams: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, lo=1)
        self.out_channels = check_int("out_channels", out_channels, lo=1)
        self.kernel_size = check_int("kernel_size", kernel_size, lo=1)
        self.num_hparams = check_int("num_hparams", num_hparams, lo=1)
        self.stride = check_int("stride", stride, lo=1)
        self.padding = check_int("padding", padding, lo=0)
        check_bool("bias", bias)
        kw = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.elem_weight = nn.Parameter(torch.empty(shape, **kw))
        self.hnet_weight = nn.Parameter(torch.empty(shape, **kw))
        if bias:
            self.elem_bias = nn.Parameter(torch.empty(out_channels, **kw))
            self.hnet_bias = nn.Parameter(torch.empty(out_channels, **kw))
        else:
            self.register_parameter("elem_bias", None)
            self.register_parameter("hnet_bias", None)
        self.htensor_to_scalars = nn.Linear(num_hparams, 2 * out_channels, bias=False, **kw)
        self.elem_scalar = nn.Parameter(torch.ones(1, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: uniform ``+-1/sqrt(in_channels * k * k)``; ``H`` normal, std 0.01."""
        _init(self, self.in_channels * self.kernel_size * self.kernel_size)

    def forward(self, input: Tensor, hnet_tensor: Tensor | None) -> Tensor:
        if not isinstance(input, Tensor):
            raise TypeError(f"Invalid input: {type(input).__name__} (accepted: a tensor [B, C, H, W])")
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"Invalid input: shape {tuple(input.shape)} (accepted: [B, {self.in_channels}, H, W])")
        _check_hnet(hnet_tensor, input.shape[0], self.num_hparams, self.elem_weight.dtype)
        conv = dict(stride=self.stride, padding=self.padding)
        output = F.conv2d(input, self.elem_weight, self.elem_bias, **conv) * self.elem_scalar
        if hnet_tensor is None:
            return output
        wgate, bgate = _gates(self, hnet_tensor, self.out_channels)
        hnet_out = F.conv2d(input, self.hnet_weight, **conv) * wgate[..., None, None]
        if self.hnet_bias is not None:
            hnet_out = hnet_out + (bgate * self.hnet_bias)[..., None, None]
        return output + hnet_out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_hparams={self.num_hparams}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.elem_bias is not None}")


def _init(layer: nn.Module, fan_in: int) -> None:
    stdv = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.elem_weight.uniform_(-stdv, stdv)
        layer.hnet_weight.uniform_(-stdv, stdv)
        if layer.elem_bias is not None:
            layer.elem_bias.uniform_(-stdv, stdv)
            layer.hnet_bias.uniform_(-stdv, stdv)
        layer.htensor_to_scalars.weight.normal_(std=0.01)
        layer.elem_scalar.fill_(1.0)


def per_example_dropout(x: Tensor, probs: Tensor | float, training: bool = True, *, channelwise: bool = False,
                        generator: torch.Generator | None = None) -> Tensor:
    r"""Dropout with one rate per example (the authors' ``dropout`` / ``dropout_2d``): ``x * m / (1 - p_b)``.

    ``probs``: ``[B]`` rates (one per example, as the perturbed hyperparameters give; treated as constants, no
    gradient flows to them) or one float (plain ``F.dropout``). ``channelwise=True``: one mask entry per channel
    of ``x [B, C, H, W]`` (their ``dropout_2d``); otherwise one per element. Identity when not ``training``. The
    masks are ``bernoulli(1 - p)`` drawn over ``[B, features]`` (or ``[B, C]``) as theirs are, so with the same
    seed the same units drop. Self-Tuning Networks, MacKay et al., arXiv 1903.03088.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"Invalid x: {type(x).__name__} (accepted: a tensor whose first dimension is the batch)")
    check_bool("training", training)
    if not training:
        return x
    if not isinstance(probs, Tensor):
        if isinstance(probs, bool) or not isinstance(probs, (int, float)) or not 0.0 <= probs < 1.0:
            raise ValueError(f"Invalid probs: {probs!r} (accepted: a tensor [B] of rates in [0, 1), or a float "
                             "in [0, 1))")
        return F.dropout2d(x, probs, True) if channelwise else F.dropout(x, probs, True)
    if probs.dim() != 1 or x.dim() < 1 or probs.shape[0] != x.shape[0]:
        raise ValueError(f"Invalid probs: shape {tuple(probs.shape)} (accepted: [B] with B = x.shape[0] = "
                         f"{x.shape[0] if x.dim() else None})")
    if channelwise and x.dim() != 4:
        raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: [B, C, H, W] with channelwise=True)")
    keep = (1 - probs.detach()).to(x.dtype)
    width = x.shape[1] if channelwise else x[0].numel()
    keep = keep.unsqueeze(1).expand(x.shape[0], width).contiguous()
    mask = torch.bernoulli(keep, generator=generator) / keep
    if channelwise:
        return x * mask[:, :, None, None]
    return (x.reshape(x.shape[0], -1) * mask).reshape(x.shape)
