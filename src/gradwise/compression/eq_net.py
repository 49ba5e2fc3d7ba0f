"""EQ-Net: elastic quantization layers (bit width, symmetry, granularity switchable per forward), WDR and GPG.

Paper: "EQ-Net: Elastic Quantization Neural Networks", Ke Xu, Lei Han, Ye Tian, Shangshang Yang, Xingyi Zhang,
ICCV 2023, arXiv 2308.07650 (read in full: a Markdown copy in the code index, §3.1-3.4, eq. 1-8). Authors' code:
https://github.com/xuke225/EQ-Net at commit 86b9e41 (``module/qat_layer.py`` ``QATQuantModule``,
``module/base_lsq.py`` LSQ quantizers, ``runner/criterion.py`` ``KurtosisLoss``/``SkewnessLoss``/``KLLossSoft``,
``runner/trainer.py`` ``QuantSuperNetTrainer``); ``tests/compression_tests/test_eq_net.py`` checks these against
a run of it (tests/data/eq_net_golden.pt, float64, tolerance 1e-10).

**Elastic quantization space** (§3.2). The weight is shared; each configuration has its own learnable step size
(and zero-point): weight bit width ``b`` in ``bits`` (2..8), symmetric or asymmetric, per-channel or per-tensor;
input bit width in ``act_bits``, symmetric or asymmetric, per-tensor. As the authors' LSQ quantizer computes it::

    s~ = |s| (gradient times g),  z~ = |z| (asymmetric; gradient times g),  0 (symmetric)
    x_q = round_ste(clip((x - z~) / (s~ + 1e-6), n, p)) * (s~ + 1e-6) + z~

with ``[n, p] = [-2^(b-1), 2^(b-1) - 1]`` for weights and for inputs that were not all >= 0 on the first batch,
``[0, 2^b - 1]`` for inputs that were (their ``all_positive``), and LSQ's gradient scale
``g = 1/sqrt(p numel)`` (per-tensor) or ``2/sqrt(p numel / size(1))`` (per-channel weights, their formula).
The first forward initialises every step size of every configuration from that batch (their ``scale_method=
'mse'``): the clipping range ``max * (1 - 0.01 i)`` (and ``min * (1 - 0.01 i)``) minimising the mean of
``|x_q - x|^2.4`` over ``i < 80`` (``i < 5`` for symmetric per-channel weights, as theirs).

**WDR-Loss** (eq. 4-6): ``(1/L) sum_i (skew_weight Skew[w_i]^2 + kurt_weight (Kurt[w_i] - K_T)^2)`` with
``K_T = 1.8``; the paper weighs both terms 1, the authors' configs ``skew_rate = 1.0``, ``kurt_rate = 0.015``
(pass ``kurt_weight=0.015`` for their training). Standard deviation unbiased (``torch.std``, theirs). The authors
leave out the first quantized layer; which tensors to pass is the caller's choice here.

**GPG-Loss** (eq. 7-8): with logits ordered highest-bit subnet, random subnet(s), lowest-bit subnet
(``[y_H, y_R, ..., y_L]``, the sandwich rule)::

    L_H = CE(y_H, y);  L_k = lam T^2 KL(softmax(y_{k-1}/T) || softmax(y_k/T)) + (1 - lam) CE(y_k, y)

each teacher detached, KL averaged over the batch (``batchmean``), ``lam = 0.5``, ``T = 1`` (their
``KLLossSoft``); the sum of all. The authors backpropagate each term separately before one step, which gives the
same gradient.

Departures from the authors' code, each with its reason:

* ``|z|``: their ``grad_scale`` takes the absolute value, which also forces the asymmetric zero-point (an offset
  in the float domain that can be negative at initialisation) to be non-negative in the forward; kept as the
  default to equal their runs, ``signed_zero_point=True`` uses the zero-point as stored (the paper's ``z``).
* Their parameters are created lazily inside the first forward (an optimizer built before it misses them); here
  they exist from construction and the first forward fills them (``initialized`` buffer).
* With weight quantization off, their module uses a frozen clone of the weight taken at construction; here the
  live weight.
* Their per-channel search starts from a best score of 100 and the per-tensor one from 100000 (a candidate must
  beat it to be taken); kept.
* Not here: the model-level sampling (``set_random_subnet``, first/last layers at 8 bits), CQAP and the genetic
  search (§3.5), an architecture search the project leaves out of scope.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_real, check_unit
from gradwise.registry import register

__all__ = ["ElasticQuantLinear", "ElasticQuantConv2d", "wdr_loss", "gpg_loss"]

_PAPER = "EQ-Net: Elastic Quantization Neural Networks"
_CODE = "https://github.com/xuke225/EQ-Net@86b9e41"
_EPS = 1e-6


def _check_bits(name: str, bits) -> tuple[int, ...]:
    try:
        bits = tuple(bits)
    except TypeError:
        bits = ()
    if not bits or len(set(bits)) != len(bits) or any(
            isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 8 for b in bits):
        raise ValueError(f"Invalid {name}: {bits!r} (accepted: a non-empty sequence of distinct integers in [2, 8])")
    return tuple(sorted(bits))


def _abs_scaled(x: torch.Tensor, g: float) -> torch.Tensor:
    """``|x|`` forward, gradient ``sign(x) g`` (the authors' ``grad_scale``)."""
    y = x.abs()
    return (y - y * g).detach() + y * g


def _scaled(x: torch.Tensor, g: float) -> torch.Tensor:
    return (x - x * g).detach() + x * g


def _fake_quant(x, scale, zero, lo, hi):
    v = torch.clamp((x - zero) / (scale + _EPS), lo, hi)
    return (v + (torch.round(v) - v).detach()) * (scale + _EPS) + zero


def _lp(a: torch.Tensor, b: torch.Tensor, rows: bool = False) -> torch.Tensor:
    d = (a - b).abs().pow(2.4)
    return d.mean(dim=1, keepdim=True) if rows else d.mean()


def _quant_range(x, mx, mn, lo, hi, affine):
    scale = (mx - mn) / (hi - lo)
    beta = mn - scale * lo if affine else 0.0
    return torch.round(torch.clamp((x - beta) / scale, lo, hi)) * scale + beta, scale, beta


def _search(x, lo, hi, *, affine, rows, positive=False, steps=80):
    """The authors' MSE (p = 2.4) clipping search: returns (scale, zero)."""
    if rows:
        mx = x.abs().amax(1, keepdim=True) if not affine else x.amax(1, keepdim=True)
        mn = -mx if not affine else x.amin(1, keepdim=True)
        best = torch.full_like(mx, 100.0)
        scale, zero = torch.ones_like(mx), torch.zeros_like(mx)
    else:
        mx = x.abs().max() if not affine else x.max()
        mn = (0.0 * mx if positive else -mx) if not affine else x.min()
        best, scale, zero = 100000.0, x.new_tensor(1.0), x.new_tensor(0.0)
    for i in range(steps):
        new_mx, new_mn = mx * (1.0 - (i * 0.01)), mn * (1.0 - (i * 0.01))
        xq, s, z = _quant_range(x, new_mx, new_mn, lo, hi, affine)
        score = _lp(xq, x, rows)
        if rows:
            better = score < best
            best = torch.where(better, score, best)
            scale = torch.where(better, s, scale)
            if affine:
                zero = torch.where(better, z, zero)
        elif score < best:
            best, scale = score, s
            zero = (x.new_tensor(-1e-9) if positive else z) if affine else x.new_tensor(0.0)
    return (scale.squeeze(1), zero.squeeze(1)) if rows else (scale, zero)


class _ElasticQuant:
    """Shared by :class:`ElasticQuantLinear` and :class:`ElasticQuantConv2d` (set up after the base layer)."""

    def _setup(self, bits, act_bits, signed_zero_point, factory) -> None:
        self.bits = _check_bits("bits", bits)
        self.act_bits = _check_bits("act_bits", act_bits)
        self.signed_zero_point = check_bool("signed_zero_point", signed_zero_point)
        out, nb, na = self.weight.shape[0], len(self.bits), len(self.act_bits)
        p = lambda *shape, fill=1.0: nn.Parameter(torch.full(shape, fill, **factory))  # noqa: E731
        self.w_scale_channel_sym, self.w_scale_channel_asym = p(out, nb), p(out, nb)
        self.w_zero_channel_asym = p(out, nb, fill=0.0)
        self.w_scale_tensor_sym, self.w_scale_tensor_asym, self.w_zero_tensor_asym = p(nb), p(nb), p(nb, fill=0.0)
        self.x_scale_sym, self.x_scale_asym, self.x_zero_asym = p(na), p(na), p(na, fill=0.0)
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("input_positive", torch.tensor(False))
        self.quantize_weight = self.quantize_input = True
        self.set_config(max(self.bits), max(self.act_bits))

    def set_config(self, w_bits: int, a_bits: int | None = None, *, symmetric: bool = False,
                   channel_wise: bool = True, act_symmetric: bool = True) -> None:
        """Choose the configuration of later forwards (defaults: the authors' quantizer defaults)."""
        if isinstance(w_bits, bool) or w_bits not in self.bits:
            raise ValueError(f"Invalid w_bits: {w_bits!r} (accepted: one of {self.bits})")
        a_bits = self.config["a_bits"] if a_bits is None and hasattr(self, "config") else a_bits
        if isinstance(a_bits, bool) or a_bits not in self.act_bits:
            raise ValueError(f"Invalid a_bits: {a_bits!r} (accepted: one of {self.act_bits})")
        self.config = dict(w_bits=w_bits, a_bits=a_bits, symmetric=check_bool("symmetric", symmetric),
                           channel_wise=check_bool("channel_wise", channel_wise),
                           act_symmetric=check_bool("act_symmetric", act_symmetric))

    @torch.no_grad()
    def init_quantizers_(self, x: torch.Tensor) -> None:
        """Fill every step size and zero-point from the weight and the input batch ``x`` (the authors' search)."""
        w = self.weight.detach()
        rows = w.reshape(w.shape[0], -1)
        for j, b in enumerate(self.bits):
            lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
            self.w_scale_channel_sym[:, j] = _search(rows, lo, hi, affine=False, rows=True, steps=5)[0]
            s, z = _search(rows, lo, hi, affine=True, rows=True)
            self.w_scale_channel_asym[:, j], self.w_zero_channel_asym[:, j] = s, z
            self.w_scale_tensor_sym[j] = _search(w, lo, hi, affine=False, rows=False)[0]
            s, z = _search(w, lo, hi, affine=True, rows=False)
            self.w_scale_tensor_asym[j], self.w_zero_tensor_asym[j] = s, z
        x = x.detach()
        positive = bool(x.min() >= -1e-9)
        self.input_positive.fill_(positive)
        for j, b in enumerate(self.act_bits):
            lo, hi = self._act_range(b)
            self.x_scale_sym[j] = _search(x, lo, hi, affine=False, rows=False, positive=positive)[0]
            s, z = _search(x, lo, hi, affine=True, rows=False, positive=positive)
            self.x_scale_asym[j], self.x_zero_asym[j] = s, z
        self.initialized.fill_(True)

    def _act_range(self, b: int) -> tuple[int, int]:
        return (0, 2 ** b - 1) if bool(self.input_positive) else (-(2 ** (b - 1)), 2 ** (b - 1) - 1)

    def _zero(self, z: torch.Tensor, g: float) -> torch.Tensor:
        return _scaled(z, g) if self.signed_zero_point else _abs_scaled(z, g)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight of the current configuration."""
        c, w = self.config, self.weight
        j = self.bits.index(c["w_bits"])
        lo, hi = -(2 ** (c["w_bits"] - 1)), 2 ** (c["w_bits"] - 1) - 1
        view = (-1,) + (1,) * (w.dim() - 1)
        if c["channel_wise"]:
            g = 2.0 / (hi * w.numel() / w.size(1)) ** 0.5
            scale = self.w_scale_channel_sym[:, j] if c["symmetric"] else self.w_scale_channel_asym[:, j]
            zero = None if c["symmetric"] else self.w_zero_channel_asym[:, j]
        else:
            g = 1.0 / (hi * w.numel()) ** 0.5
            scale = (self.w_scale_tensor_sym if c["symmetric"] else self.w_scale_tensor_asym)[j:j + 1]
            zero = None if c["symmetric"] else self.w_zero_tensor_asym[j:j + 1]
        scale = _abs_scaled(scale, g).view(view)
        zero = 0.0 if zero is None else self._zero(zero, g).view(view)
        return _fake_quant(w, scale, zero, lo, hi)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized input of the current configuration (per-tensor)."""
        c = self.config
        j = self.act_bits.index(c["a_bits"])
        lo, hi = self._act_range(c["a_bits"])
        g = 1.0 / (hi * x.numel()) ** 0.5
        scale = _abs_scaled((self.x_scale_sym if c["act_symmetric"] else self.x_scale_asym)[j:j + 1], g)
        zero = 0.0 if c["act_symmetric"] else self._zero(self.x_zero_asym[j:j + 1], g)
        return _fake_quant(x, scale, zero, lo, hi)

    def _quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not bool(self.initialized):
            self.init_quantizers_(x)
        w = self.quantized_weight() if self.quantize_weight else self.weight
        return (self.quantized_input(x) if self.quantize_input else x), w

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, act_bits={self.act_bits}, config={self.config}"


@register(kind="quantizer", paper=_PAPER, year=2023, arxiv="2308.07650", code=_CODE,
          summary="shared weights with learnable step sizes per bit width, symmetry and granularity (LSQ, MSE "
                  "initialisation), switchable per forward; WDR (skewness/kurtosis) and GPG (sandwich "
                  "distillation) losses")
class ElasticQuantLinear(_ElasticQuant, nn.Linear):
    """``nn.Linear`` whose weight and input are fake-quantized in the configuration :meth:`set_config` chose.

    ``bits``/``act_bits``: the elastic bit widths (default 2..8, theirs). The first forward initialises every
    configuration's step size from its batch (:meth:`init_quantizers_`). ``quantize_weight`` and
    ``quantize_input`` (attributes) turn either side off. Module docstring: the math and departures.
    arXiv 2308.07650.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8), act_bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
                 signed_zero_point: bool = False, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(bits, act_bits, signed_zero_point, dict(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return F.linear(x, w, self.bias)


class ElasticQuantConv2d(_ElasticQuant, nn.Conv2d):
    """``nn.Conv2d`` twin of :class:`ElasticQuantLinear` (per-channel means per output channel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
                 act_bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8), signed_zero_point: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        self._setup(bits, act_bits, signed_zero_point, dict(device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quantized(x)
        return self._conv_forward(x, w, self.bias)


def wdr_loss(weights: torch.Tensor | Iterable[torch.Tensor], *, kurtosis_target: float = 1.8,
             skew_weight: float = 1.0, kurt_weight: float = 1.0) -> torch.Tensor:
    """Eq. 6: mean over tensors of ``skew_weight Skew[w]^2 + kurt_weight (Kurt[w] - kurtosis_target)^2``
    (standardised with the unbiased std, as the authors). The authors' training: ``kurt_weight=0.015``."""
    kurtosis_target = check_real("kurtosis_target", kurtosis_target)
    skew_weight, kurt_weight = check_real("skew_weight", skew_weight, 0.0), check_real("kurt_weight", kurt_weight, 0.0)
    tensors = [weights] if isinstance(weights, torch.Tensor) else list(weights)
    if not tensors:
        raise ValueError("Invalid weights: empty (accepted: a tensor or a non-empty iterable of tensors)")
    terms = []
    for w in tensors:
        z = (w - w.mean()) / w.std()
        terms.append(skew_weight * z.pow(3).mean() ** 2 + kurt_weight * (z.pow(4).mean() - kurtosis_target) ** 2)
    return torch.stack(terms).mean()


def gpg_loss(logits: Sequence[torch.Tensor], target: torch.Tensor, *, lam: float = 0.5,
             temperature: float = 1.0) -> torch.Tensor:
    """Eq. 7-8: ``CE(y_H) + sum_k [lam T^2 KL(y_{k-1} || y_k) + (1 - lam) CE(y_k)]`` over ``logits`` ordered
    highest-bit, random ..., lowest-bit; each teacher ``y_{k-1}`` detached, KL ``batchmean``."""
    lam = check_unit("lam", lam)
    temperature = check_real("temperature", temperature, 0.0, lo_open=True)
    logits = list(logits)
    if len(logits) < 2 or any(z.dim() != 2 or z.shape != logits[0].shape for z in logits):
        raise ValueError("Invalid logits: need at least 2 tensors of one shape [batch, classes] "
                         "(accepted: highest-bit, random ..., lowest-bit subnet logits)")
    loss = F.cross_entropy(logits[0], target)
    for teacher, student in zip(logits[:-1], logits[1:]):
        kl = F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher.detach() / temperature, dim=1),
                      reduction="batchmean")
        loss = loss + lam * temperature ** 2 * kl + (1.0 - lam) * F.cross_entropy(student, target)
    return loss
