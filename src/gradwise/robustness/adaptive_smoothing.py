r"""Adaptive smoothing: mix the output probabilities of a standard (accurate) and a robust classifier, with a
per-input mixing weight from a small mixing network.

Paper: Bai, Anderson, Kim, Sojoudi, "Improving the Accuracy-Robustness Trade-Off of Classifiers via Adaptive
Smoothing", arXiv:2301.12554 (2023; SIAM J. Math. Data Sci. 2024). Authors' code: github.com/Bai-YT/AdaptiveSmoothing
@ 51f0198 (``models/comp_model.py`` ``CompositeModel``, ``adaptive_smoothing/losses.py`` ``CompLoss``).

**Math.** With a standard classifier :math:`g` and a robust classifier :math:`h` (logits, scaled by ``std_scale`` and
``rob_scale``), the mixed classifier outputs the log of the mixture of their softmax probabilities

.. math:: \log f(x) = \log\big((1-\alpha)\,\mathrm{softmax}(s_g\, g(x)) + \alpha\,\mathrm{softmax}(s_h\, h(x))\big),

computed here as a two-term ``logsumexp`` of :math:`\log(1-\alpha) + \log\mathrm{softmax}(s_g g)` and
:math:`\log\alpha + \log\mathrm{softmax}(s_h h)` (:func:`mix_log_probs`). Adaptive smoothing makes :math:`\alpha`
depend on the input (:class:`AdaptiveSmoothing`, the authors' ``CompositeModel.forward``): the mixing network gives
:math:`\gamma(x)`; in training mode :math:`\gamma` is clamped to ``mean ± train_clamp · std`` of the batch (constants,
unbiased std, as their ``.item()`` values), then normalised by a ``BatchNorm1d(1, affine=False,
momentum=bn_momentum)`` (batch statistics in training, running ones in eval), then
:math:`\gamma \leftarrow \gamma\cdot` ``gamma_scale`` :math:`+` ``gamma_bias`` and
:math:`\alpha = \sigma(\gamma)`; in eval mode :math:`\alpha \leftarrow \alpha\cdot` ``alpha_scale`` :math:`+`
``alpha_bias`` (the range of :math:`\alpha` at test time is [alpha_bias, alpha_bias + alpha_scale]). Without a mixing
network :math:`\alpha = \sigma(` ``gamma`` :math:`)` is fixed (``gamma = -inf``: the standard model alone,
``+inf``: the robust one alone; the unused model is not run).

The mixing network is trained with their composite loss (:func:`adaptive_smoothing_loss`, ``CompLoss``) on clean
inputs (``is_adv = 0``: small :math:`\alpha` is right) and on inputs attacked through the whole mixture (``is_adv =
1``), :math:`c_{BCE}\,\mathrm{BCE}(\gamma, \text{is\_adv}) + c_{CE}\,\mathrm{CE}(\log f, y)
+ c_{prod}\,\mathrm{BCE}\cdot\mathrm{CE}`, each sample weighted (their ``scale``: 2 for clean, 1 for attacked
inputs in the CIFAR-10 config), mean
over the batch. Their trainer uses ``gamma_scale, gamma_bias = (2, 0.4)`` while training and ``(3, 20)`` in eval (set
the attributes between phases as their ``set_gamma_scale_bias`` does).

Departures from the authors' code, and why:

* **Interface of the mixing network.** Theirs reads the base models' intermediate feature maps (ResNet blocks,
  ``MixingNetV3``/``V4``). Here ``mixing_net(x, std_logits, rob_logits) -> gamma [B] or [B, 1]`` sees the input and both
  models' (unscaled) logits, so any pair of classifiers works without hooks; a network that wants features can
  compute them from ``x`` or hold references to the base models. The graph is kept (their ``policy_graph=True``, the
  setting of all their configs), so attacks differentiate through the mixing network too.
* **Log-probabilities computed with logsumexp** instead of their ``log((1-α) softmax + α softmax)``: the same to
  rounding where their probabilities do not underflow, finite where they do (float32 probabilities below ~1e-38).
  In eval mode :math:`\log\alpha` and :math:`\log(1-\alpha)` are formed from ``logsigmoid`` pieces, exact for
  saturated :math:`\gamma`.
* **Always log-probabilities.** Their single-model short cuts (fixed ``gamma = ±inf``, ``alpha_scale = alpha_bias =
  0``, ``alpha_bias = 1``) return that model's scaled *logits*; here they return its log-softmax (same argmax and the
  same cross-entropy). Their short cuts on ``alpha_scale``/``alpha_bias`` also fire in training mode and in the
  fixed-``gamma`` mode; here the alpha range applies in eval mode with a mixing network only, as in their main path.
* **alpha_scale = 0 with a mixing network**: their forward uses :math:`\alpha` = ``alpha_bias`` and then fails (it
  returns an unset ``gammas``); here eval mode gives :math:`\alpha` = ``alpha_bias`` and returns the network's
  :math:`\gamma`.
* ``gamma`` is used as given: their ``__init__`` sets the configured ``gamma`` and then overwrites it with ``-inf``
  (so their fixed-gamma model is the standard model until ``set_gamma_value`` is called).
* No ``scale_alpha`` switch (theirs lets eval run without the alpha range), no autocast, no image resizing for the
  standard model, no ``.cuda()`` of the mixing net (move the module yourself).

The base models stay in eval mode (``train()`` only switches the mixing network and the BatchNorm); freeze their
parameters yourself (their code asserts ``requires_grad == False``).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_real
from gradwise.registry import register

__all__ = ["mix_log_probs", "AdaptiveSmoothing", "adaptive_smoothing_loss"]

PAPER = "Improving the Accuracy-Robustness Trade-Off of Classifiers via Adaptive Smoothing"
CODE = "https://github.com/Bai-YT/AdaptiveSmoothing/tree/51f0198"
ARXIV = "2301.12554"


def _check_logits(std_logits, rob_logits) -> None:
    for name, t in (("std_logits", std_logits), ("rob_logits", rob_logits)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 2:
            raise ValueError(f"Invalid {name}: {getattr(t, 'shape', type(t).__name__)} (accepted: a floating-point "
                             f"tensor [B, C])")
    if std_logits.shape != rob_logits.shape:
        raise ValueError(f"Invalid rob_logits: shape {tuple(rob_logits.shape)} != std_logits' "
                         f"{tuple(std_logits.shape)} (accepted: the same [B, C])")


def _mix(log_p: Tensor, log_q: Tensor, log_w_std: Tensor, log_w_rob: Tensor) -> Tensor:
    """log(exp(log_w_std) p + exp(log_w_rob) q) per row; log weights [B, 1] or 0-dim."""
    return torch.logsumexp(torch.stack(torch.broadcast_tensors(log_w_std + log_p, log_w_rob + log_q)), dim=0)


def _log_weights(alpha: Tensor) -> tuple[Tensor, Tensor]:
    """log(1 - alpha), log(alpha), exact -inf / 0 at alpha = 0 or 1 without NaN gradients there; NaN stays NaN."""
    inside = (alpha > 0) & (alpha < 1)
    safe = torch.where(inside, alpha, torch.full_like(alpha, 0.5))
    zero, minf = torch.zeros_like(alpha), torch.full_like(alpha, -math.inf)
    nan_keep = alpha * 0  # NaN where alpha is NaN, else 0
    log_rob = torch.where(inside, torch.log(safe), torch.where(alpha >= 1, zero, minf)) + nan_keep
    log_std = torch.where(inside, torch.log1p(-safe), torch.where(alpha <= 0, zero, minf)) + nan_keep
    return log_std, log_rob


def _check_scale(name: str, value) -> float:
    return check_real(name, value, lo=0.0, lo_open=True)


@register(kind="robustness", paper=PAPER, year=2023, arxiv=ARXIV, code=CODE,
          summary="log((1-a) softmax(std) + a softmax(rob)) with logsumexp: the mixed classifier's log-probs.")
def mix_log_probs(std_logits: Tensor, rob_logits: Tensor, alpha: float | Tensor, *, std_scale: float = 1.0,
                  rob_scale: float = 1.0) -> Tensor:
    """Log-probabilities of the mixed classifier (Bai et al., arXiv:2301.12554).

    :math:`\\log((1-\\alpha)\\,\\mathrm{softmax}(s_g g) + \\alpha\\,\\mathrm{softmax}(s_h h))` [B, C] for logits
    ``std_logits`` (:math:`g`) and ``rob_logits`` (:math:`h`) [B, C], computed with ``logsumexp``. ``alpha`` in
    [0, 1]: a number or a tensor of shape [], [B] or [B, 1] (one weight per row; checked on the host, one sync).
    ``alpha = 0`` gives ``log_softmax(std_scale * std_logits)`` exactly, ``1`` the robust model's. NaN propagates."""
    _check_logits(std_logits, rob_logits)
    s_g, s_h = _check_scale("std_scale", std_scale), _check_scale("rob_scale", rob_scale)
    log_p = torch.log_softmax(std_logits * s_g, dim=1)
    log_q = torch.log_softmax(rob_logits * s_h, dim=1)
    if isinstance(alpha, Tensor):
        b = std_logits.shape[0]
        if not alpha.is_floating_point() or alpha.shape not in ((), (b,), (b, 1)):
            raise ValueError(f"Invalid alpha: tensor of shape {tuple(alpha.shape)} (accepted: a floating-point "
                             f"tensor [], [{b}] or [{b}, 1] with values in [0, 1])")
        if bool(((alpha < 0) | (alpha > 1)).any()):
            raise ValueError("Invalid alpha: values outside [0, 1] (accepted: mixing weights in [0, 1])")
        a = alpha.reshape(-1, 1) if alpha.dim() else alpha
        log_std, log_rob = _log_weights(a.to(log_p.dtype))
    else:
        a = check_real("alpha", alpha, lo=0.0, hi=1.0)
        log_std = log_p.new_tensor(math.log1p(-a) if a < 1 else -math.inf)
        log_rob = log_p.new_tensor(math.log(a) if a > 0 else -math.inf)
    return _mix(log_p, log_q, log_std, log_rob)


@register(kind="robustness", paper=PAPER, year=2023, arxiv=ARXIV, code=CODE,
          summary="Standard + robust classifier mixed per input by a mixing network (clamp, BN, sigmoid); "
                  "returns (log_probs, gammas).")
class AdaptiveSmoothing(nn.Module):
    """Adaptive smoothing (Bai et al., arXiv:2301.12554), the authors' ``CompositeModel``.

    ``forward(x) -> (log_probs [B, C], gammas [B])``. ``std_model`` and ``rob_model`` map ``x`` to logits [B, C];
    ``mixing_net(x, std_logits, rob_logits)`` gives :math:`\\gamma` [B] or [B, 1] (``None``: fixed
    :math:`\\alpha = \\sigma(` ``gamma`` :math:`)`). Training mode clamps :math:`\\gamma` to
    ``mean ± train_clamp·std`` (``None``: no clamp), then BatchNorm (``affine=False``, ``momentum=bn_momentum``),
    then ``gamma_scale·γ +
    gamma_bias``; :math:`\\alpha = \\sigma(\\gamma)`; eval mode maps :math:`\\alpha` to
    ``alpha_scale·α + alpha_bias``.
    The returned ``gammas`` are the values after BatchNorm, scale and bias (what :func:`adaptive_smoothing_loss`
    takes; their ``CompositeModel`` returns the same), or ``gamma`` repeated without a mixing network.

    ``gamma_scale``, ``gamma_bias``, ``alpha_scale``, ``alpha_bias``, ``std_scale``, ``rob_scale`` are attributes
    checked on assignment (their trainer changes the gamma pair between training and evaluation). See the module
    docstring for the math and every departure from the authors' code."""

    def __init__(self, std_model: nn.Module | Callable[[Tensor], Tensor],
                 rob_model: nn.Module | Callable[[Tensor], Tensor],
                 mixing_net: nn.Module | Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, *,
                 gamma: float = 2.0, gamma_scale: float = 1.0, gamma_bias: float = 0.0, alpha_scale: float = 1.0,
                 alpha_bias: float = 0.0, std_scale: float = 1.0, rob_scale: float = 1.0,
                 bn_momentum: float = 0.01, train_clamp: float | None = 0.6):
        for name, m in (("std_model", std_model), ("rob_model", rob_model)):
            if not callable(m):
                raise ValueError(f"Invalid {name}: {type(m).__name__} (accepted: a module or callable x -> logits)")
        if mixing_net is not None and not callable(mixing_net):
            raise ValueError(f"Invalid mixing_net: {type(mixing_net).__name__} (accepted: None or a callable "
                             f"(x, std_logits, rob_logits) -> gamma [B] or [B, 1])")
        g = check_real("gamma", gamma, finite=False)
        check_real("bn_momentum", bn_momentum, lo=0.0, hi=1.0, lo_open=True)
        clamp = None if train_clamp is None else check_real("train_clamp", train_clamp, lo=0.0, lo_open=True)
        _check_alpha_range(alpha_scale, alpha_bias)
        _check_scale("std_scale", std_scale)
        _check_scale("rob_scale", rob_scale)
        super().__init__()
        self.std_model, self.rob_model, self.mixing_net = std_model, rob_model, mixing_net
        self.gamma, self.train_clamp = g, clamp
        self.bn = nn.BatchNorm1d(1, affine=False, momentum=bn_momentum)
        self.gamma_scale, self.gamma_bias = gamma_scale, gamma_bias
        self._alpha_scale, self._alpha_bias = float(alpha_scale), float(alpha_bias)
        self.std_scale, self.rob_scale = std_scale, rob_scale
        self.train(True)

    def __setattr__(self, name, value):
        if name in ("gamma_scale", "gamma_bias"):
            value = check_real(name, value)
        elif name in ("std_scale", "rob_scale"):
            value = _check_scale(name, value)
        elif name in ("alpha_scale", "alpha_bias"):
            s, b = (value, self._alpha_bias) if name == "alpha_scale" else (self._alpha_scale, value)
            _check_alpha_range(s, b)
            name, value = "_" + name, float(value)
        super().__setattr__(name, value)

    @property
    def alpha_scale(self) -> float:
        return self._alpha_scale

    @property
    def alpha_bias(self) -> float:
        return self._alpha_bias

    def set_alpha_range(self, alpha_scale: float, alpha_bias: float) -> None:
        """Set both ends of the eval-time alpha range at once ([alpha_bias, alpha_bias + alpha_scale])."""
        _check_alpha_range(alpha_scale, alpha_bias)
        self._alpha_scale, self._alpha_bias = float(alpha_scale), float(alpha_bias)

    def train(self, mode: bool = True) -> AdaptiveSmoothing:
        super().train(mode)
        for m in (self.std_model, self.rob_model):  # the base models stay in eval mode (theirs)
            if isinstance(m, nn.Module):
                m.eval()
        return self

    def _gammas(self, x: Tensor, std_logits: Tensor, rob_logits: Tensor) -> Tensor:
        b = std_logits.shape[0]
        raw = self.mixing_net(x, std_logits, rob_logits)
        if not isinstance(raw, Tensor) or raw.shape not in ((b,), (b, 1)):
            raise ValueError(f"Invalid mixing_net output: {getattr(raw, 'shape', type(raw).__name__)} (accepted: "
                             f"a tensor [{b}] or [{b}, 1])")
        g = raw.reshape(b, 1).to(std_logits.dtype)
        if self.training and self.train_clamp is not None:
            with torch.no_grad():
                mean, std = g.mean(), g.std()
            g = torch.clamp(g, min=(-self.train_clamp) * std + mean, max=self.train_clamp * std + mean)
        return self.bn(g) * self.gamma_scale + self.gamma_bias

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mixing_net is None and math.isinf(self.gamma):  # one model only (their short cut)
            rob = self.gamma > 0
            logits = (self.rob_model if rob else self.std_model)(x)
            out = torch.log_softmax(logits * (self.rob_scale if rob else self.std_scale), dim=1)
            return out, out.new_full((out.shape[0],), self.gamma)
        std_logits, rob_logits = self.std_model(x), self.rob_model(x)
        _check_logits(std_logits, rob_logits)
        log_p = torch.log_softmax(std_logits * self.std_scale, dim=1)
        log_q = torch.log_softmax(rob_logits * self.rob_scale, dim=1)
        if self.mixing_net is None:
            g = log_p.new_tensor(self.gamma)
            out = _mix(log_p, log_q, F.logsigmoid(-g), F.logsigmoid(g))
            return out, g.expand(out.shape[0])
        g = self._gammas(x, std_logits, rob_logits)
        log_rob, log_std = F.logsigmoid(g), F.logsigmoid(-g)  # log(alpha), log(1 - alpha)
        if not self.training:  # alpha <- s alpha + b, in log space
            s, b = self._alpha_scale, self._alpha_bias
            if s == 0.0:
                log_rob, log_std = g.new_tensor(math.log(b) if b > 0 else -math.inf), g.new_tensor(math.log1p(-b))
            else:
                rest = 1.0 - s - b  # 1 - alpha' = rest + s (1 - alpha)
                log_rob = torch.logaddexp(log_rob + math.log(s), g.new_tensor(math.log(b) if b > 0 else -math.inf))
                log_std = torch.logaddexp(log_std + math.log(s),
                                          g.new_tensor(math.log(rest) if rest > 0 else -math.inf))
        return _mix(log_p, log_q, log_std, log_rob), g.reshape(-1)


def _check_alpha_range(alpha_scale, alpha_bias) -> None:
    s = check_real("alpha_scale", alpha_scale, lo=0.0)
    b = check_real("alpha_bias", alpha_bias, lo=0.0)
    if s + b > 1.0:
        raise ValueError(f"Invalid alpha_scale + alpha_bias: {s:g} + {b:g} > 1 (accepted: alpha_scale, alpha_bias "
                         f">= 0 with alpha_scale + alpha_bias <= 1: the alpha range [bias, bias + scale] in [0, 1])")


@register(kind="robustness", paper=PAPER, year=2023, arxiv=ARXIV, code=CODE,
          summary="The mixing network's composite loss: c_bce BCE(gamma, is_adv) + c_ce CE + c_prod BCE*CE.")
def adaptive_smoothing_loss(log_probs: Tensor, target: Tensor, gamma: Tensor, is_adv: Tensor | float, *,
                            bce: float = 1.0, ce: float = 0.5, prod: float = 0.1,
                            weight: Tensor | float | None = None) -> Tensor:
    """The authors' ``CompLoss`` (Bai et al., arXiv:2301.12554), mean over the batch.

    Per sample: ``bce·B + ce·C + prod·B·C`` with ``B = BCEWithLogits(gamma, is_adv)`` and ``C =
    cross_entropy(log_probs, target)`` (``log_probs`` [B, C] from :class:`AdaptiveSmoothing`; cross-entropy
    re-normalises as theirs does, a no-op on log-probabilities), times ``weight`` (their ``scale``: a number or [B];
    ``None`` = 1). ``gamma`` [B] are the mixing logits the model returned; ``is_adv`` [B] (or a number) is 1 where the
    robust model should win (attacked inputs), 0 where the standard one should (clean inputs). Defaults: their
    CIFAR-10 config (bce 1, ce 0.5, prod 0.1)."""
    if not isinstance(log_probs, Tensor) or not log_probs.is_floating_point() or log_probs.dim() != 2:
        raise ValueError(f"Invalid log_probs: {getattr(log_probs, 'shape', type(log_probs).__name__)} (accepted: a "
                         f"floating-point tensor [B, C])")
    b = log_probs.shape[0]
    if not isinstance(target, Tensor) or target.shape != (b,):
        raise ValueError(f"Invalid target: {getattr(target, 'shape', type(target).__name__)} (accepted: class "
                         f"indices [{b}])")
    if not isinstance(gamma, Tensor) or not gamma.is_floating_point() or gamma.shape != (b,):
        raise ValueError(f"Invalid gamma: {getattr(gamma, 'shape', type(gamma).__name__)} (accepted: a "
                         f"floating-point tensor [{b}], the gammas AdaptiveSmoothing returned)")
    if isinstance(is_adv, Tensor):
        if is_adv.shape not in ((), (b,)):
            raise ValueError(f"Invalid is_adv: shape {tuple(is_adv.shape)} (accepted: a number or a tensor [{b}] "
                             f"of 0/1 labels)")
        sup = is_adv.to(gamma.dtype).expand(b)
    else:
        sup = gamma.new_full((b,), check_real("is_adv", is_adv, lo=0.0, hi=1.0))
    c_bce, c_ce, c_prod = (check_real(n, v) for n, v in (("bce", bce), ("ce", ce), ("prod", prod)))
    if isinstance(weight, Tensor):
        if weight.shape not in ((), (b,)):
            raise ValueError(f"Invalid weight: shape {tuple(weight.shape)} (accepted: None, a number or a tensor "
                             f"[{b}])")
    elif weight is not None:
        weight = check_real("weight", weight)
    ce_loss = F.cross_entropy(log_probs, target, reduction="none")
    bce_loss = F.binary_cross_entropy_with_logits(gamma, sup, reduction="none")
    loss = c_bce * bce_loss + c_ce * ce_loss + c_prod * bce_loss * ce_loss
    if weight is not None:
        loss = loss * weight
    return loss.mean()
