"""diffGrad: Adam whose momentum is damped where the gradient stops changing."""
from __future__ import annotations

import torch

from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["DiffGrad"]


@register(kind="optimizer",
          paper="diffGrad: An Optimization Method for Convolutional Neural Networks",
          year=2019, arxiv="1909.11015",
          code="https://github.com/shivram1987/diffGrad",
          summary="Adam scaled per entry by a friction coefficient sigmoid(|g_{t-1} - g_t|)",
          info={
              "test_cases": {"DiffGrad": {"kwargs": dict(lr=1e-2, weight_decay=1e-2)}},
              # The authors' diffGrad adds L2 decay to the gradient; pytorch_optimizer defaults to
              # decoupled decay, so it is switched to coupled for the benchmark.
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-8},
                        "peer": "DiffGrad", "peer_kwargs": {"weight_decouple": False},
                        "note": "L2 (coupled) decay as in the authors' code",
                        # target (c) of docs/benchmarks.md: at most 1.3x torch Adam(foreach)
                        "max_ratio_adam": 1.3}})
class DiffGrad(GradwiseOptimizer):
    r"""diffGrad (Dubey et al., IEEE TNNLS 2020, arXiv 1909.11015).

    Math, per parameter at step t (``g_0 = 0``)::

        m_t = b1 m_{t-1} + (1 - b1) g_t
        v_t = b2 v_{t-1} + (1 - b2) g_t^2
        xi_t = 1 / (1 + exp(-|g_{t-1} - g_t|))        # friction coefficient
        p_t = p_{t-1} - lr * sqrt(1 - b2^t) / (1 - b1^t) * xi_t m_t / (sqrt(v_t) + eps)

    Faithful to the authors' bug-fixed ``diffGrad_v2.py``, in which the
    stored previous gradient is a copy (in v1 it aliased the current gradient,
    making ``xi`` a constant 0.5). Weight decay is coupled (L2), added to the
    gradient before the moments, as in the authors' code. Departure: the
    gradient with decay is a new tensor; ``p.grad`` is not written.

    Args: lr (1e-3), betas ((0.9, 0.999)), eps (1e-8), weight_decay (0, L2),
    grad_transforms, skip_nonfinite.

    State (parameter dtype): ``exp_avg``, ``exp_avg_sq``, ``previous_grad``; ``step``.

    Example::

        opt = DiffGrad(model.parameters(), lr=1e-3)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq", "previous_grad")

    @staticmethod
    def _step_sizes(group, states):
        # sqrt(1 - b2^t) moves from the denominator into the step size, as in the authors' code
        return A.folded_step_sizes(group["lr"], [s["step"] for s in states], *group["betas"])

    def _step_fused(self, group, params, grads, states):
        (b1, b2), eps = group["betas"], group["eps"]
        _fused.ops().diffgrad_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                               [s["previous_grad"] for s in states], self._step_sizes(group, states), b1, b2, eps,
                               group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        (b1, b2), eps = group["betas"], group["eps"]
        grads = F.l2_grads(grads, params, group["weight_decay"])
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        prev = [s["previous_grad"] for s in states]
        A.ema_moments_(m, v, grads, b1, b2)
        denom = A.adam_denom(v, eps)
        # friction coefficient sigmoid(|g_prev - g|) = 1 / (1 + exp(-|g_prev - g|))
        fric = torch._foreach_sub(prev, grads)
        torch._foreach_abs_(fric)
        torch._foreach_sigmoid_(fric)
        torch._foreach_copy_(prev, grads)
        torch._foreach_mul_(fric, m)
        torch._foreach_addcdiv_(params, fric, denom, self._step_sizes(group, states))
