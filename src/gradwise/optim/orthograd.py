"""⊥Grad (perpendicular gradients) and ⊥AdamW, from "Grokking at the Edge of Numerical Stability"."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradTransform, GradwiseOptimizer, _bucket_lists, check_range, zeros_state
from gradwise.registry import register

_PAPER = "Grokking at the Edge of Numerical Stability"
_CODE = "https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability"


@register(kind="grad-transform", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="Removes the gradient's component along its weight, keeping its norm (⊥Grad)")
class PerpendicularGrad(GradTransform):
    r"""⊥Grad as a gradient transform for any gradwise optimizer (Prieto et al., 2025, arXiv 2501.04697).

    Per tensor, flattened: ``g_perp = g - <w,g>/(<w,w> + eps) w``, rescaled to
    ``||g||`` (see :func:`gradwise.optim._functional.perpendicular`). Stops the
    naive loss minimization (growth of the weights along their own direction)
    that the paper shows drives softmax collapse and delays grokking.

    As in the authors' code every tensor is projected, including
    one-element ones, whose perpendicular part is rounding noise rescaled to
    ``|g|`` (an update of arbitrary sign): leave scalars out of the parameter
    list, or in a group of their own with a plain optimizer, if that matters.

    Example::

        opt = Lion(model.parameters(), lr=1e-4, grad_transforms=[PerpendicularGrad()])
    """

    key = "perp"

    def __init__(self, eps: float = 1e-30, renormalize: bool = True) -> None:
        check_range("eps", eps, 0.0)
        self.eps = eps
        self.renormalize = renormalize

    def apply(self, params, grads, states, group):
        return F.perpendicular(params, grads, self.eps, self.renormalize)


@register(kind="optimizer-wrapper", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="Wraps any torch optimizer: gradients made perpendicular to the weights before its step")
class OrthoGrad(Optimizer):
    r"""⊥Grad in front of any ``torch.optim.Optimizer`` (Prieto et al., 2025, arXiv 2501.04697).

    Same signature as the authors' wrapper: ``OrthoGrad(params,
    base_optimizer_cls, **base_optimizer_args)``. Before each base step every
    ``p.grad`` is replaced, in place (the base optimizer reads ``p.grad``), by
    ``g - <w,g>/(<w,w> + 1e-30) w`` rescaled to the norm of ``g``.

    Departure from the authors' code: a closure is evaluated *before* the
    projection; the authors pass it to the base step, which recomputes the
    gradients and so silently discards the projection.

    ``state_dict``/``load_state_dict`` are the base optimizer's; ``param_groups``
    are shared with it, so LR schedulers work on the wrapper.

    Example::

        opt = OrthoGrad(model.parameters(), torch.optim.SGD, lr=1e-2, momentum=0.8)
    """

    def __init__(self, params, base_optimizer_cls: type[Optimizer] = torch.optim.SGD,
                 eps: float = 1e-30, **base_optimizer_args: Any) -> None:
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise ValueError(f"Invalid base_optimizer_cls: {base_optimizer_cls!r} "
                             "(accepted: a torch.optim.Optimizer subclass)")
        self.transform = PerpendicularGrad(eps=eps)
        super().__init__(params, {})
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_optimizer_args)
        # one source of truth for groups and state: the base optimizer's
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for ps in _bucket_lists(params):
                new = self.transform.apply(ps, [p.grad for p in ps], [], group)
                torch._foreach_copy_([p.grad for p in ps], new)
        self.base_optimizer.step()
        return loss

    def state_dict(self):
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def zero_grad(self, set_to_none: bool = True):
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self):
        return f"OrthoGrad({self.base_optimizer!r})"


@register(kind="optimizer", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="AdamW on perpendicular gradients (⊥AdamW): grokking without weight growth")
class OrthoAdamW(GradwiseOptimizer):
    r"""⊥AdamW (Prieto et al., 2025, arXiv 2501.04697): AdamW fed ⊥Grad gradients.

    Math: ``g <- perp(w, g)`` (see :class:`PerpendicularGrad`), then
    ``torch.optim.AdamW``'s step::

        p <- p * (1 - lr * wd)
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    Faithful to what the authors' experiment script runs with
    ``--orthogonal_gradients --optimizer AdamW``: their ``OrthoGrad`` wrapper
    around ``torch.optim.AdamW`` built with only ``lr`` and ``weight_decay``
    (their ``beta2``/``adam_epsilon`` options do not reach the wrapped
    optimizer), i.e. torch's default betas and eps. Default ``weight_decay``
    is the script's 0, not AdamW's 1e-2: the method replaces decay as the
    guard against weight growth.

    Args: lr (1e-3), betas ((0.9, 0.999)), eps (1e-8), weight_decay (0),
    perp_eps (1e-30), grad_transforms (run after ⊥Grad), skip_nonfinite.

    State: ``exp_avg``, ``exp_avg_sq`` (parameter dtype), ``step``.

    Example::

        opt = OrthoAdamW(model.parameters(), lr=1e-3)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, perp_eps: float = 1e-30,
                 grad_transforms=(), **kwargs) -> None:
        self._perp = PerpendicularGrad(perp_eps)
        # without further transforms the projection is done inside the update (fused when possible)
        self._inline_perp = not grad_transforms
        transforms = () if self._inline_perp else (self._perp, *grad_transforms)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         grad_transforms=transforms, **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq")

    def _update(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        bc2_sqrt = [math.sqrt(c) for c in F.bias_corrections(steps, b2)]
        coef = [-lr / c for c in F.bias_corrections(steps, b1)]
        decay = 1.0 - lr * group["weight_decay"]
        if self._use_fused(params):
            pc, pk = [], []
            if self._inline_perp:
                e = self._perp.eps
                wg, ww, gg = _fused.ops().perp_stats(params, grads, []).unbind(1)
                pc = (wg / (ww + e)).tolist()  # CPU path: no device sync
                orth = _fused.ops().perp_stats(params, grads, pc)[:, 0]
                pk = (gg.sqrt() / (orth.sqrt() + e)).tolist()
            _fused.ops().adamw_(params, grads, m, v, coef, bc2_sqrt, pc, pk, b1, b2, eps, decay)
            return
        if self._inline_perp:
            grads = self._perp.apply(params, grads, states, group)
        F.decoupled_decay_(params, lr, group["weight_decay"])
        torch._foreach_lerp_(m, grads, 1.0 - b1)
        F.ema_sq_(v, grads, b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, m, denom, coef)
