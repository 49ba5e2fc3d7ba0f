"""AdamP and SGDP: momentum optimizers that stop inflating scale-invariant weights."""
from __future__ import annotations

import torch

from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise._validate import check_range
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["AdamP", "SGDP"]

_PAPER = "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights"
_CODE = "https://github.com/clovaai/AdamP"


_NO_COMPLEX = ("Its radial projection depends on the tensor's dimensions (1-D tensors are not projected, "
               "others per output channel), which view_as_real changes: a complex vector would become a "
               "matrix and be projected. Pass torch.view_as_real(p) explicitly if that is what you want.")


def _check_projection(g):
    check_range("eps", g["eps"], 0.0)
    check_range("weight_decay", g["weight_decay"], 0.0)
    check_range("delta", g["delta"], 0.0)
    check_range("wd_ratio", g["wd_ratio"], 0.0)


def _decay_projected_(params, factors, lr_wd):
    """``p *= 1 - lr*wd*factor``; factor is a 0-dim tensor for projected-candidate tensors, else 1.0."""
    if lr_wd == 0:
        return
    plain = [p for p, f in zip(params, factors) if isinstance(f, float)]
    if plain:
        torch._foreach_mul_(plain, 1.0 - lr_wd)
    multi = [(p, f) for p, f in zip(params, factors) if not isinstance(f, float)]
    if multi:
        # the factors of one bucket share device and dtype: one op for all of them
        decay = torch.stack([f for _, f in multi]).mul_(-lr_wd).add_(1.0)
        torch._foreach_mul_([p for p, _ in multi], list(decay.unbind()))


@register(kind="optimizer", paper=_PAPER, year=2021, arxiv="2006.08217", code=_CODE,
          summary="Adam with the radial component removed from updates of scale-invariant weights",
          info={
              "test_cases": {"AdamP": {"kwargs": dict(lr=1e-2, weight_decay=1e-2, nesterov=True)}},
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-8, "delta": 0.1, "wd_ratio": 0.1, "nesterov": False},
                        "peer": "AdamP", "peer_kwargs": {"weight_decouple": True}}})
class AdamP(GradwiseOptimizer):
    r"""AdamP (Heo et al., ICLR 2021, arXiv 2006.08217).

    Math: Adam's update ``u = m_hat / (sqrt(v_hat) + eps)`` (or Nesterov's
    ``(b1 m + (1-b1) g)`` in place of ``m``), then for every tensor with more
    than one dimension the radial projection of
    :func:`gradwise.optim._functional.radial_projection`: when the weight looks
    scale-invariant (cosine of gradient and weight below
    ``delta / sqrt(dim)``), ``u <- u - <w_hat, u> w_hat`` and weight decay is
    scaled by ``wd_ratio``. Then ``p *= 1 - lr * wd * ratio`` and
    ``p -= lr / (1 - b1^t) * u``.

    Faithful to ``adamp==0.3.0`` (the authors'); the data-dependent choice of
    projection is made with ``torch.where`` instead of a host-side ``if``.

    Args:
        lr (1e-3), betas ((0.9, 0.999)), eps (1e-8), weight_decay (0,
        decoupled), delta (0.1: cosine threshold), wd_ratio (0.1: decay
        factor for projected weights), nesterov (False),
        grad_transforms, skip_nonfinite (see GradwiseOptimizer).

    Complex parameters are refused (ValueError at construction): the
    projection depends on the tensor's dimensions, which ``view_as_real`` changes.

    State: ``exp_avg``, ``exp_avg_sq`` (parameter dtype), ``step``.

    Example::

        opt = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
    """

    _complex_refusal = _NO_COMPLEX

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1,
                 wd_ratio: float = 0.1, nesterov: bool = False, **kwargs) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta,
                        wd_ratio=wd_ratio, nesterov=nesterov)
        super().__init__(params, defaults, **kwargs)

    def _validate_group(self, g):
        super()._validate_group(g)
        _check_projection(g)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq")

    def _step_fused(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        steps = [s["step"] for s in states]
        _fused.ops().radial_(0, params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                             A.step_sizes(lr, steps, b1), A.bc2_sqrts(steps, b2), b1, b2, eps, 0.0,
                             group["nesterov"], group["delta"], group["wd_ratio"], lr * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        A.ema_moments_(m, v, grads, b1, b2)
        denom = A.adam_denom(v, eps, A.bc2_sqrts(steps, b2))
        if group["nesterov"]:
            num = torch._foreach_mul(m, b1)
            torch._foreach_add_(num, grads, alpha=1.0 - b1)
        else:
            num = m
        upd = torch._foreach_div(num, denom)
        upd, factors = F.radial_projection(params, grads, upd, group["delta"], group["wd_ratio"], eps)
        _decay_projected_(params, factors, lr * group["weight_decay"])
        torch._foreach_mul_(upd, A.step_sizes(lr, steps, b1))
        torch._foreach_add_(params, upd)


@register(kind="optimizer", paper=_PAPER, year=2021, arxiv="2006.08217", code=_CODE,
          summary="SGD with momentum and AdamP's projection for scale-invariant weights",
          info={
              "test_cases": {"SGDP": {"kwargs": dict(lr=1e-2, momentum=0.9, weight_decay=1e-2)}},
              "bench": {"kwargs": {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01,
                                    "eps": 1e-8, "delta": 0.1, "wd_ratio": 0.1, "nesterov": False},
                        "peer": "SGDP", "peer_kwargs": {"weight_decouple": True}}})
class SGDP(GradwiseOptimizer):
    r"""SGDP (Heo et al., ICLR 2021, arXiv 2006.08217).

    Math: ``b <- momentum * b + (1 - dampening) g``; ``u = g + momentum * b``
    with ``nesterov`` else ``u = b``; AdamP's radial projection of ``u`` (see
    :class:`AdamP`); ``p *= 1 - lr * wd * ratio / (1 - momentum)``;
    ``p -= lr * u``.

    Faithful to ``adamp==0.3.0``: the momentum buffer starts at zero (so the
    first step is ``(1 - dampening) g``, unlike torch.optim.SGD which copies
    the first gradient), decay is divided by ``1 - momentum``, and without
    Nesterov the projection is applied to the momentum buffer itself (the
    update *is* the buffer there, projected in place). The
    authors' ``lr`` has no default; here it is 1e-3.

    Args:
        lr (1e-3), momentum (0), dampening (0), weight_decay (0), nesterov
        (False), eps (1e-8), delta (0.1), wd_ratio (0.1),
        grad_transforms, skip_nonfinite.

    Complex parameters are refused, as in :class:`AdamP`.

    State: ``momentum`` (parameter dtype), ``step``.

    Example::

        opt = SGDP(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    """

    _complex_refusal = _NO_COMPLEX

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, eps: float = 1e-8,
                 delta: float = 0.1, wd_ratio: float = 0.1, **kwargs) -> None:
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, eps=eps, delta=delta, wd_ratio=wd_ratio)
        super().__init__(params, defaults, **kwargs)

    def _validate_group(self, g):
        super()._validate_group(g)
        check_range("dampening", g["dampening"], 0.0, 1.0)
        _check_projection(g)

    def _init_state(self, p, group):
        return zeros_state(p, "momentum")

    def _step_fused(self, group, params, grads, states):
        lr, mom, n = group["lr"], group["momentum"], len(params)
        _fused.ops().radial_(1, params, grads, [s["momentum"] for s in states], [], [-lr] * n, [1.0] * n, mom,
                             0.0, group["eps"], group["dampening"], group["nesterov"], group["delta"],
                             group["wd_ratio"], lr * group["weight_decay"] / (1.0 - mom))

    def _step_foreach(self, group, params, grads, states):
        lr, mom = group["lr"], group["momentum"]
        buf = [s["momentum"] for s in states]
        torch._foreach_mul_(buf, mom)
        torch._foreach_add_(buf, grads, alpha=1.0 - group["dampening"])
        upd = torch._foreach_add(grads, buf, alpha=mom) if group["nesterov"] else buf
        upd, factors = F.radial_projection(params, grads, upd, group["delta"], group["wd_ratio"], group["eps"])
        if not group["nesterov"]:
            # the authors project the buffer itself in place when the update is the buffer
            changed = [(b, u) for b, u in zip(buf, upd) if u is not b]
            if changed:
                torch._foreach_copy_([b for b, _ in changed], [u for _, u in changed])
        _decay_projected_(params, factors, lr * group["weight_decay"] / (1.0 - mom))
        torch._foreach_add_(params, upd, alpha=-lr)
