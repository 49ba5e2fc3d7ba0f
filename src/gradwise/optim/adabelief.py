"""AdaBelief: Adam whose step size follows the belief in the observed gradient."""
from __future__ import annotations

import math

import torch

from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["AdaBelief"]


@register(kind="optimizer",
          paper="AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
          year=2020, arxiv="2010.07468",
          code="https://github.com/juntang-zhuang/Adabelief-Optimizer",
          summary="Adam with the second moment of (g - m): large steps when the gradient agrees with its EMA",
          info={
              "test_cases": {"AdaBelief": {"kwargs": dict(lr=1e-2, weight_decay=1e-2)},
                             "AdaBelief-amsgrad": {"kwargs": dict(lr=1e-2, rectify=False, amsgrad=True)}},
              # adabelief-pytorch 0.2.1 defaults to rectify=True; with it pytorch_optimizer leaves its
              # foreach path, so both sides are timed without rectification (same algorithm; the
              # rectified step differs only in scalar work once past the first 5 steps).
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-16, "rectify": False},
                        "peer": "AdaBelief", "peer_kwargs": {"weight_decouple": True},
                        "note": "rectify=False on both sides (authors' default is True)",
                        # target (c) of docs/benchmarks.md: at most 1.3x torch Adam(foreach)
                        "max_ratio_adam": 1.3}})
class AdaBelief(GradwiseOptimizer):
    r"""AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468).

    Math, per parameter at step t (``rectify=False``)::

        m_t = b1 m_{t-1} + (1 - b1) g_t
        s_t = b2 s_{t-1} + (1 - b2) (g_t - m_t)^2 + eps
        p_t = p_{t-1} - lr / (1 - b1^t) * m_t / (sqrt(s_t) / sqrt(1 - b2^t) + eps)

    With ``rectify=True`` (the authors' package default) the step is RAdam's
    rectified one: with ``rho_inf = 2/(1-b2) - 1`` and
    ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``, if ``rho_t >= 5``::

        r_t = sqrt((1-b2^t) (rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t)) / (1-b1^t)
        p_t = p_{t-1} - lr * r_t * m_t / (sqrt(s_t) + eps)

    and otherwise an SGD-with-momentum step ``lr / (1 - b1^t) * m_t``
    (``degenerated_to_sgd=True``) or no step.

    Faithful to ``adabelief-pytorch==0.2.1`` (the authors' package), quirks
    included: ``eps`` is added to ``s`` *in the state* every step (so it
    accumulates as ``eps / (1 - b2)``), and with ``amsgrad=True`` the
    rectified branch still divides by ``s``, not by its running maximum.
    Departures: coupled weight decay (``decoupled_weight_decay=False``) does
    not write ``wd * p`` into ``p.grad`` as the package does; float16 is not
    up-cast (state is kept in the parameter's dtype).

    Args:
        params: iterable of parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (b1, b2) (default (0.9, 0.999)).
        eps: added inside and outside the square root (default 1e-16, the
            authors' default; the paper's experiments use 1e-16 / 1e-8).
        weight_decay: decay coefficient (default 0).
        decoupled_weight_decay: AdamW-style ``p *= 1 - lr*wd`` (default True;
            the authors' ``weight_decouple``); False adds ``wd * p`` to the gradient.
        fixed_decay: decoupled decay without the lr factor, ``p *= 1 - wd``.
        amsgrad: use the running maximum of ``s`` (default False).
        rectify: RAdam rectification (default True, the package default; the
            paper's algorithm is ``rectify=False``).
        degenerated_to_sgd: in the rectified warm-up, take momentum-SGD steps
            instead of none (default True).
        grad_transforms, skip_nonfinite: see :class:`GradwiseOptimizer`.

    State (parameter dtype): ``exp_avg``, ``exp_avg_var``
    (``max_exp_avg_var`` with amsgrad), ``step`` (int).

    Example::

        opt = AdaBelief(model.parameters(), lr=1e-3, rectify=False)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, *, decoupled_weight_decay: bool = True,
                 fixed_decay: bool = False, amsgrad: bool = False, rectify: bool = True,
                 degenerated_to_sgd: bool = True, **kwargs) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, fixed_decay=fixed_decay,
                        amsgrad=amsgrad, rectify=rectify, degenerated_to_sgd=degenerated_to_sgd)
        super().__init__(params, defaults, **kwargs)

    def _init_state(self, p, group):
        names = ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if group["amsgrad"] else ())
        return zeros_state(p, *names)

    @staticmethod
    def _step_plan(group, steps, bc1):
        """Per tensor: (mode, coefficient); mode 0 adaptive, 1 rectified, 2 momentum SGD, 3 none."""
        lr, b2 = group["lr"], group["betas"][1]
        if not group["rectify"]:
            return [(0, -lr / c) for c in bc1]
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        plan = []
        for t, c1 in zip(steps, bc1):
            b2t = b2 ** t
            rho = rho_inf - 2.0 * t * b2t / (1.0 - b2t)
            if rho >= 5:
                r = math.sqrt((1 - b2t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2))
                plan.append((1, -lr * r / c1))
            elif group["degenerated_to_sgd"]:
                plan.append((2, -lr / c1))
            else:
                plan.append((3, 0.0))
        return plan

    def _step_fused(self, group, params, grads, states):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        steps = [s["step"] for s in states]
        plan = self._step_plan(group, steps, F.bias_corrections(steps, b1))
        decoupled = group["decoupled_weight_decay"]
        decay = 1.0 - (1.0 if group["fixed_decay"] else lr) * wd if decoupled else 1.0
        _fused.ops().adabelief_(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_var"] for s in states],
            [s["max_exp_avg_var"] for s in states] if group["amsgrad"] else [],
            [c for _, c in plan], A.bc2_sqrts(steps, b2),
            [md for md, _ in plan], b1, b2, eps, decay, 0.0 if decoupled else wd)

    def _step_foreach(self, group, params, grads, states):
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        if group["decoupled_weight_decay"]:
            F.decoupled_decay_(params, 1.0 if group["fixed_decay"] else lr, wd)
        else:
            grads = F.l2_grads(grads, params, wd)
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_var"] for s in states]
        steps = [s["step"] for s in states]
        F.ema_(m, grads, b1)
        resid = torch._foreach_sub(grads, m)
        F.ema_sq_(v, resid, b2)
        torch._foreach_add_(v, eps)
        del resid
        if group["amsgrad"]:
            vmax = [s["max_exp_avg_var"] for s in states]
            torch._foreach_maximum_(vmax, v)
        else:
            vmax = v

        if not group["rectify"]:
            A.adam_step_(params, m, vmax, steps, lr, b1, b2, eps)
            return

        # Rectified (RAdam) step: the branch depends only on the step count.
        plan = self._step_plan(group, steps, F.bias_corrections(steps, b1))
        adaptive = [(i, c) for i, (md, c) in enumerate(plan) if md == 1]
        plain = [(i, c) for i, (md, c) in enumerate(plan) if md == 2]
        if adaptive:
            idx = [i for i, _ in adaptive]
            denom = A.adam_denom([v[i] for i in idx], eps)
            torch._foreach_addcdiv_([params[i] for i in idx], [m[i] for i in idx], denom,
                                    [a for _, a in adaptive])
        if plain:
            torch._foreach_add_([params[i] for i, _ in plain],
                                torch._foreach_mul([m[i] for i, _ in plain], [a for _, a in plain]))
