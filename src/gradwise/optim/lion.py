"""Lion, and the Lion-K family it belongs to."""
from __future__ import annotations

import torch

from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["Lion"]


@register(kind="optimizer", paper="Symbolic Discovery of Optimization Algorithms", year=2023,
          arxiv="2302.06675",
          code="https://github.com/google/automl/tree/master/lion",
          summary="Sign of an interpolated momentum: one state tensor, uniform-magnitude updates",
          info={
              "test_cases": {"Lion": {"kwargs": dict(lr=1e-3, weight_decay=0.1)}},
              "bench": {"kwargs": {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.01},
                        "peer": "Lion", "peer_kwargs": {"weight_decouple": True}}})
class Lion(GradwiseOptimizer):
    r"""Lion, EvoLved Sign Momentum (Chen et al., NeurIPS 2023, arXiv 2302.06675).

    Math (the paper's Program 1)::

        p <- p * (1 - lr * wd)
        p <- p - lr * sign(b1 m + (1 - b1) g)
        m <- b2 m + (1 - b2) g

    Faithful to ``lion-pytorch==0.2.5``, which is the paper's program. Lion
    needs a learning rate 3-10x smaller than AdamW's and a weight decay
    3-10x larger for the same effective decay.

    Args: lr (1e-4), betas ((0.9, 0.99)), weight_decay (0, decoupled),
    grad_transforms, skip_nonfinite.

    State: ``exp_avg`` (parameter dtype), ``step``.

    Example::

        opt = Lion(model.parameters(), lr=1e-4, weight_decay=1.0)
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, **kwargs) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay), **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg")

    def _direction(self, group, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update direction from the interpolated momentum (in place allowed)."""
        torch._foreach_sign_(x)
        return x

    def _step_fused(self, group, params, grads, states):
        lr, (b1, b2) = group["lr"], group["betas"]
        _fused.ops().lion_(params, grads, [s["exp_avg"] for s in states], lr, b1, b2,
                           1.0 - lr * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        lr, (b1, b2) = group["lr"], group["betas"]
        m = [s["exp_avg"] for s in states]
        F.decoupled_decay_(params, lr, group["weight_decay"])
        x = torch._foreach_mul(m, b1)
        torch._foreach_add_(x, grads, alpha=1.0 - b1)
        torch._foreach_add_(params, self._direction(group, x), alpha=-lr)
        F.ema_(m, grads, b2)
