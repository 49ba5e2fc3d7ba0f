"""AdaPT: adaptive per-layer fixed-point precision during training.

Paper: "Adaptive Precision Training (AdaPT): A dynamic fixed point quantized training approach for DNNs",
Kummer, Sidak, Reichmann, Gansterer, arXiv 2107.13490 (2021). Authors' code:
https://github.com/lorenz0890/AdaPT at commit 980eead (``optimizers/msgd_fp.py``, the ``MSGD_FP`` optimizer,
and qtorch 0.3.0's ``fixed_point_quantize``, which it calls). Only the abstract and the opening of the
introduction were readable in the stored text of the paper (docs/coverage_notes.md), so the policy below is
the authors' code, which ``tests/compression_tests/test_adapt.py`` checks against a run of it
(tests/data/adapt_golden.pt: word/fraction lengths, lookbacks, resolutions and strategies exactly, the
quantized weights on their grid).

**Fixed point** (:func:`fixed_point_quantize`, :class:`FixedPointQuantizer`): a word of ``wl`` bits of which
``fl`` are fractional, i.e. the grid ``k * 2^-fl`` on ``[-2^(wl-fl-1), 2^(wl-fl-1) - 2^-fl]`` (``symmetric``
drops the lowest value). Rounding is qtorch's: ``round_half_even(x 2^fl + r - 1/2) 2^-fl`` with
``r ~ U[0, 1)`` (``"stochastic"``, unbiased) or ``r = 1/2`` (``"nearest"``); values outside the range are
clamped. In float32 the sum ``x 2^fl + r`` is rounded to float32 before ``- 1/2``, as in qtorch's C++.

**Policy** (:class:`AdaPTController`, one state per parameter): each step every gradient is quantized at its
layer's current ``(wl, fl)`` (stochastic) and scaled to unit norm, and the unit gradients of a weight (a
parameter with more than one dimension) are summed. Their *gradient diversity*
``gd = count / ||sum||`` (>= 1) sets the layer's *lookback*::

    lb <- ceil(m * ceil(clip(max_lb / gd, min_lb, max_lb)) + (1 - m) * lb)        (m = lookback_momentum)

and the histogram *resolution* moves one bin up when ``lb = max_lb`` and down when ``lb = min_lb`` (within
``[min_resolution, max_resolution]``). When ``count >= lb`` the layer switches precision and its sum is reset:

* push down: two bisections on the first row of the layer's (float) weight, each returning its lower end: ``fl``
  over ``[4, fl]`` (the lower end moves up to the midpoint if quantizing at the *lower end* loses information, else
  the upper end moves down to it), then ``wl`` over ``[fl, wl]`` (the same test at the midpoint). "Loses
  information" is a positive loss between ``res``-bin histograms of the weights and of their stochastic
  quantization: the authors' ``KLDivLoss(batchmean, log_target=True)`` on the two normalized histograms, both as
  given, i.e. ``sum exp(q) (q - p) / res``;
* push up: the fraction grows by ``s``: with ``l = log(gd) - 1 > 0`` (float32), ``s = min(s1, s2)``,
  ``s1 = max(ceil(1/l^2), 1)``, ``s2 = max(min(ceil(32 l^2), 32) - fl, 0)`` (``"mean"``: ``ceil((s1 + s2)/2)``,
  ``"max"``: ``max(s1, s2)``), and ``s = 1`` when ``l <= 0``; ``fl <- min(fl + s, 32)``,
  ``wl <- min(max(wl, fl) + 1, 32)``, and then ``fl <= 32 - results_buffer``, ``wl >= min(fl + results_buffer, 32)``.

One-dimensional parameters (biases) take the precision, lookback and resolution of the parameter before them.
The strategy (``"min"``/``"mean"``/``"max"``) adapts to the loss: if ``|sum of the kept losses| / avg_lb``
is at most ``|loss|`` it moves min -> mean or mean -> max, otherwise back to min (``avg_lb`` the mean
lookback, the history kept to its last ``avg_lb`` losses).

:class:`AdaPTSGD` is the authors' ``MSGD_FP``: SGD (momentum, dampening, weight decay, Nesterov) on a float
master copy with the unit-norm quantized gradients, the parameters set to the stochastic fixed-point
quantization of the master at their layer's new ``(wl, fl)`` after every step.

Departures from the authors' code, each with its reason:

* Their push-down bisection for ``fl`` evaluates the loss at the lower end ``fl_min``, not at the midpoint
  (``__push_down_fl``); kept (it is what trained their models), and said here. Their ``wl`` bisection uses
  the midpoint. Push down looks at the first row of the master weight only (``fpWeights[i][0]``); kept.
* qtorch quantizes float32 only; float64 tensors here are quantized in float64 (random numbers drawn in
  float64), the float32 path reproduces qtorch draw for draw from the same generator state.
* Their optimizer overwrites ``p.grad`` with the quantized unit gradient; here ``p.grad`` is left as it is.
  Their ``quant_grads=False`` path exits the process; here gradients are always quantized (their default).
* Their state is indexed by the position inside each param group (two groups collide); here by the position
  over all groups. A loss must be given to ``step`` (theirs reads it from the closure and fails without).
* Their input/output quantization of layers (``quant_in``/``quant_out``) is left to the model: use
  :meth:`FixedPointQuantizer.ste` with the controller's ``wl``/``fl``.
"""
from __future__ import annotations

import math

import torch

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_range, check_unit
from gradwise.registry import register

__all__ = ["fixed_point_quantize", "FixedPointQuantizer", "AdaPTController", "AdaPTSGD"]

_PAPER = "Adaptive Precision Training (AdaPT): A dynamic fixed point quantized training approach for DNNs"
_CODE = "https://github.com/lorenz0890/AdaPT@980eead"
_ROUNDINGS = ("stochastic", "nearest")
_STRATEGIES = ("min", "mean", "max")


def _check_format(wl, fl) -> tuple[int, int]:
    wl = check_int("wl", wl, 1, 64)
    fl = check_int("fl", fl, -64, 64)
    return wl, fl


def fixed_point_quantize(x: torch.Tensor, wl: int, fl: int, *, rounding: str = "stochastic", clamp: bool = True,
                         symmetric: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantizes ``x`` to ``wl``-bit fixed point with ``fl`` fractional bits (qtorch's arithmetic; see the
    module docstring). ``"stochastic"`` draws ``torch.rand`` in ``x``'s dtype from ``generator`` (default:
    torch's global generator, as qtorch). NaN stays NaN. Returns a new tensor."""
    wl, fl = _check_format(wl, fl)
    check_choice("rounding", rounding, _ROUNDINGS)
    if not x.is_floating_point():
        raise ValueError(f"Invalid x: dtype {x.dtype} (accepted: a floating-point tensor)")
    scaled = x * 2.0 ** fl
    if rounding == "stochastic":
        scaled = scaled + torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    else:
        scaled = scaled + 0.5
    out = torch.round(scaled.double() - 0.5).mul_(2.0 ** -fl).to(x.dtype)
    if clamp:
        lo = -(2.0 ** (wl - fl - 1))
        hi = -lo - 2.0 ** -fl
        if symmetric:
            lo += 2.0 ** -fl
        out = torch.where(out > hi, hi, torch.where(out < lo, lo, out))
    return out


class _FixedPointSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, quantizer, generator):
        return quantizer(x, generator=generator)

    @staticmethod
    def backward(ctx, grad_out):
        return grad_out, None, None


@register(kind="quantizer", paper=_PAPER, year=2021, arxiv="2107.13490", code=_CODE,
          summary="fixed-point (word length wl, fraction fl) quantizer with qtorch's stochastic or nearest rounding")
class FixedPointQuantizer:
    """``wl``-bit fixed point with ``fl`` fractional bits; ``q(x)`` quantizes, ``q.ste(x)`` quantizes with the
    identity as gradient (the authors' ``.data`` replacement of layer inputs and outputs). qtorch's rounding, as
    AdaPT (arXiv 2107.13490) uses it."""

    def __init__(self, wl: int = 8, fl: int = 4, *, rounding: str = "stochastic", clamp: bool = True,
                 symmetric: bool = False) -> None:
        self.wl, self.fl = _check_format(wl, fl)
        self.rounding = check_choice("rounding", rounding, _ROUNDINGS)
        self.clamp = check_bool("clamp", clamp)
        self.symmetric = check_bool("symmetric", symmetric)

    @property
    def step(self) -> float:
        return 2.0 ** -self.fl

    @property
    def range(self) -> tuple[float, float]:
        lo = -(2.0 ** (self.wl - self.fl - 1))
        return (lo + self.step if self.symmetric else lo), -lo - self.step

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return fixed_point_quantize(x, self.wl, self.fl, rounding=self.rounding, clamp=self.clamp,
                                    symmetric=self.symmetric, generator=generator)

    def ste(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return _FixedPointSTE.apply(x, self, generator)

    def __repr__(self) -> str:
        return f"FixedPointQuantizer(wl={self.wl}, fl={self.fl}, rounding={self.rounding!r})"


def _ceil_int(w) -> int:
    """The authors' ``__ceil_int``: ``int(w)`` if that is not below ``w``, else ``int(w) + 1``."""
    c = int(w)
    return c if c - float(w) >= 0 else c + 1


def _gradient_diversity(count: int, total: torch.Tensor) -> torch.Tensor:
    # count / ||sum|| as the authors' int / tensor (torch computes reciprocal(norm) * count)
    return torch.linalg.vector_norm(total).reciprocal() * count


def _kl_loss(w: torch.Tensor, w_hat: torch.Tensor, resolution: int) -> torch.Tensor:
    """The authors' ``__fpq_loss`` after quantizing: ``KLDivLoss(batchmean, log_target=True)(p, q)`` on the
    normalized ``resolution``-bin histograms of ``w`` and of ``w_hat`` (over ``w``'s range)."""
    p = torch.histc(w, resolution)
    q = torch.histc(w_hat, resolution, float(w.min()), float(w.max()))
    p, q = p / p.sum(), q / q.sum()
    return (q.exp() * (q - p)).sum() / p.shape[0]


@register(kind="quantizer", paper=_PAPER, year=2021, arxiv="2107.13490", code=_CODE,
          summary="per-layer fixed-point precision switching: KL push-down of word/fraction lengths, "
                  "gradient-diversity push-up, adaptive lookback and histogram resolution")
class AdaPTController:
    """Per-parameter fixed-point precision of AdaPT (the authors' ``MSGD_FP`` policy; module docstring).

    ``num_params`` states, each with ``wl``, ``fl`` (start ``wl``/``fl``), ``lookback`` (start
    ``min_lookback``) and ``resolution`` (start ``min_resolution``); :meth:`observe_loss` once per step, then
    :meth:`update` for each parameter in order with its (float) master weight and unit-norm quantized gradient.
    Defaults are the authors' (``MSGD_FP``'s keyword defaults; their configs use e.g. lookback 25..150,
    resolution 50..150, momentum 0.9). AdaPT, arXiv 2107.13490."""

    def __init__(self, num_params: int, *, wl: int = 8, fl: int = 4, min_lookback: int = 10,
                 max_lookback: int = 100, min_resolution: int = 1, max_resolution: int = 100,
                 results_buffer: int = 8, lookback_momentum: float = 0.33, push_up_strategy: str = "min",
                 generator: torch.Generator | None = None) -> None:
        n = check_int("num_params", num_params, 1)
        wl, fl = _check_format(wl, fl)
        self.min_lookback = check_int("min_lookback", min_lookback, 1)
        self.max_lookback = check_int("max_lookback", max_lookback, self.min_lookback)
        self.min_resolution = check_int("min_resolution", min_resolution, 1)
        self.max_resolution = check_int("max_resolution", max_resolution, self.min_resolution)
        self.results_buffer = check_int("results_buffer", results_buffer, 0, 32)
        self.lookback_momentum = check_unit("lookback_momentum", lookback_momentum)
        self.strategy = check_choice("push_up_strategy", push_up_strategy, _STRATEGIES)
        self.generator = generator
        self.wl, self.fl = [wl] * n, [fl] * n
        self.lookback, self.resolution = [self.min_lookback] * n, [self.min_resolution] * n
        self._sums: dict[int, tuple[int, torch.Tensor]] = {}
        self._losses: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.wl)

    def quantizer(self, i: int, rounding: str = "stochastic") -> FixedPointQuantizer:
        """The fixed-point format parameter ``i`` has now."""
        return FixedPointQuantizer(self.wl[i], self.fl[i], rounding=rounding)

    def quantize(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return fixed_point_quantize(x, self.wl[i], self.fl[i], generator=self.generator)

    def observe_loss(self, loss) -> str:
        """Adapts the push-up strategy to ``loss`` (the authors' ``__adapt_strategy``); returns it."""
        loss = torch.as_tensor(loss).detach()
        avg_lb = int(sum(self.lookback) / len(self.lookback))
        if len(self._losses) > avg_lb:
            avg = torch.abs(sum(self._losses) / avg_lb)
            now = torch.abs(loss)
            if avg <= now and self.strategy == "mean":
                self.strategy = "max"
            if avg <= now and self.strategy == "min":
                self.strategy = "mean"
            if avg > now:
                self.strategy = "min"
            self._losses = self._losses[-avg_lb:]
        self._losses.append(loss)
        return self.strategy

    def update(self, i: int, weight: torch.Tensor, unit_grad: torch.Tensor) -> tuple[int, int]:
        """Feeds parameter ``i``'s unit-norm quantized gradient; switches its precision when its lookback is
        reached (push down on ``weight[0]``, then push up). A 1-D parameter copies parameter ``i - 1``.
        Returns the new ``(wl, fl)``."""
        if weight.dim() <= 1:
            j = i - 1
            self.wl[i], self.fl[i], self.resolution[i], self.lookback[i] = (
                self.wl[j], self.fl[j], self.resolution[j], self.lookback[j])
            return self.wl[i], self.fl[i]
        count, total = self._sums.get(i, (0, None))
        self._sums[i] = (1, unit_grad) if total is None else (count + 1, total + unit_grad)
        count, total = self._sums[i]
        gd = _gradient_diversity(count, total)
        self.lookback[i] = self._adapt_lookback(gd, self.lookback[i])
        self.resolution[i] = self._adapt_resolution(self.lookback[i], self.resolution[i])
        if count >= self.lookback[i]:
            w, wl, res = weight[0], self.wl[i], self.resolution[i]
            # the authors evaluate the fl bisection at its lower end, not the midpoint (module docstring)
            fl = self._bisect(4, self.fl[i], lambda lo, mid: 0 < self._loss(w, wl, lo, res))
            wl = self._bisect(fl, wl, lambda lo, mid: 0 < self._loss(w, mid, fl, res))
            self.wl[i], self.fl[i] = self._push_up(gd, wl, fl)
            del self._sums[i]
        return self.wl[i], self.fl[i]

    def _adapt_lookback(self, gd: torch.Tensor, lb: int) -> int:
        if 0 < gd:
            new = _ceil_int(min(max(gd.reciprocal() * self.max_lookback, self.min_lookback), self.max_lookback))
        else:
            new = self.max_lookback
        m = self.lookback_momentum
        return _ceil_int(new * m + lb * (1.0 - m))

    def _adapt_resolution(self, lb: int, res: int) -> int:
        if lb == self.max_lookback:
            res = min(max(res + 1, self.min_resolution), self.max_resolution)
        if lb == self.min_lookback:
            res = min(max(res - 1, self.min_resolution), self.max_resolution)
        return int(res)

    def _loss(self, w, wl, fl, res) -> torch.Tensor:
        return _kl_loss(w, fixed_point_quantize(w, wl, fl, generator=self.generator), res)

    @staticmethod
    def _bisect(lo: int, hi: int, lossy) -> int:
        """The authors' push-down bisection over ``[lo, hi]``: ``lo`` moves up to the midpoint while
        ``lossy(lo, mid)`` (a positive KL loss), else ``hi`` moves down; returns ``lo``."""
        for _ in range(hi - lo):
            mid = _ceil_int((hi + lo) / 2)
            if lossy(lo, mid):
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1:
                break
        return lo

    def _push_up(self, gd: torch.Tensor, wl: int, fl: int) -> tuple[int, int]:
        s = 1
        if 0 < gd < float("inf"):
            log_gd = torch.log(torch.tensor([float(gd)], dtype=torch.float32)) - 1
            if log_gd > 0:
                sq = log_gd * log_gd
                s1 = max(_ceil_int(sq.reciprocal()), s)
                s2 = max(min(_ceil_int(sq * 32), 32) - fl, 0)
                s = min(s1, s2)
                if self.strategy == "mean":
                    s = _ceil_int(0.5 * (s1 + s2))
                elif self.strategy == "max":
                    s = max(s1, s2)
        fl = min(fl + s, 32)
        wl = min(max(wl, fl) + 1, 32)
        fl = min(fl, 32 - self.results_buffer)
        wl = max(min(fl + self.results_buffer, 32), wl)
        return wl, fl

    def state_dict(self) -> dict:
        return {"wl": list(self.wl), "fl": list(self.fl), "lookback": list(self.lookback),
                "resolution": list(self.resolution), "strategy": self.strategy,
                "sums": {i: (c, t.clone()) for i, (c, t) in self._sums.items()},
                "losses": [t.clone() for t in self._losses]}

    def load_state_dict(self, state: dict) -> None:
        n = len(self.wl)
        if any(len(state[k]) != n for k in ("wl", "fl", "lookback", "resolution")):
            raise ValueError(f"Invalid state: per-parameter lists of another length (accepted: {n} entries)")
        self.wl, self.fl = list(state["wl"]), list(state["fl"])
        self.lookback, self.resolution = list(state["lookback"]), list(state["resolution"])
        self.strategy = check_choice("strategy", state["strategy"], _STRATEGIES)
        self._sums = {int(i): (int(c), t.clone()) for i, (c, t) in state["sums"].items()}
        self._losses = [t.clone() for t in state["losses"]]


@register(kind="quantizer", paper=_PAPER, year=2021, arxiv="2107.13490", code=_CODE,
          summary="SGD on a float master copy with unit-norm fixed-point gradients; per-layer word and "
                  "fraction lengths switched by KL push-down and gradient-diversity push-up")
class AdaPTSGD(torch.optim.Optimizer):
    """The authors' ``MSGD_FP``: ``step(loss)`` quantizes each gradient at its layer's precision, scales it to
    unit norm, lets :attr:`controller` (an :class:`AdaPTController`) adapt the precision, takes an SGD step on
    the master copy and writes its stochastic fixed-point quantization back into the parameter. AdaPT,
    arXiv 2107.13490."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **controller) -> None:
        check_range("lr", lr, 0.0)
        check_nonneg("momentum", momentum)
        check_nonneg("weight_decay", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"Invalid nesterov: {nesterov!r} (accepted: with momentum > 0 and dampening = 0)")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=bool(nesterov)))
        self._params = [p for g in self.param_groups for p in g["params"]]
        if any(p.is_sparse for p in self._params):
            raise ValueError("Invalid params: sparse tensors (accepted: dense floating-point parameters)")
        self.controller = AdaPTController(len(self._params), **controller)
        self.master = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def step(self, loss=None, closure=None):
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if loss is None:
            raise ValueError("Invalid loss: None (accepted: the step's loss, for the strategy adaptation)")
        ctl = self.controller
        ctl.observe_loss(loss)
        index = {id(p): k for k, p in enumerate(self._params)}
        for group in self.param_groups:
            todo = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                i = index[id(p)]
                g = ctl.quantize(i, p.grad)
                n = torch.linalg.vector_norm(g)
                g = g / torch.where(n > 0.0, n, torch.ones_like(n))  # unit norm; a zero gradient stays zero
                ctl.update(i, self.master[i], g)
                todo.append((p, i, g))
            for p, i, d_p in todo:
                master = self.master[i]
                if group["weight_decay"] != 0:
                    d_p = d_p.add(master, alpha=group["weight_decay"])
                if group["momentum"] != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = d_p.clone()
                    else:
                        buf.mul_(group["momentum"]).add_(d_p, alpha=1 - group["dampening"])
                    d_p = d_p.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                master.add_(d_p, alpha=-group["lr"])
                p.copy_(ctl.quantize(i, master))
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["adapt"] = {"controller": self.controller.state_dict(), "master": [m.clone() for m in self.master]}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("adapt", None)
        if extra is None or len(extra["master"]) != len(self.master):
            raise ValueError("Invalid state_dict: no 'adapt' entry for these parameters (accepted: an AdaPTSGD "
                             "state_dict of the same parameters)")
        self.controller.load_state_dict(extra["controller"])
        super().load_state_dict(state_dict)
        for m, saved in zip(self.master, extra["master"]):
            m.copy_(saved)
