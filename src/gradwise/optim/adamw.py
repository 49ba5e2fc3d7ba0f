"""AdamW: Adam with decoupled weight decay, the baseline every paper here compares to."""
from __future__ import annotations

import torch

from gradwise.optim import _adam as A
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["AdamW"]


@register(kind="optimizer", paper="Decoupled Weight Decay Regularization", year=2019, arxiv="1711.05101",
          code="https://github.com/loshchil/AdamW-and-SGDW", seed=False,
          summary="Adam with weight decay decoupled from the gradient: torch.optim.AdamW's math, in gradwise",
          info={
              "test_cases": {"AdamW": {"kwargs": dict(lr=1e-2, weight_decay=1e-2)},
                             "AdamW-amsgrad": {"kwargs": dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)}},
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-8},
                        "peer": "torch.optim.AdamW",
                        "peer_paths": {"foreach": {"foreach": True}, "fused": {"fused": True}},
                        "note": "peer is torch.optim.AdamW itself"}})
class AdamW(GradwiseOptimizer):
    r"""AdamW (Loshchilov & Hutter, ICLR 2019, arXiv 1711.05101).

    Math, per parameter at step t::

        p <- p * (1 - lr * wd)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        v_max <- max(v_max, v)                                   (amsgrad only; then v_max below)
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    torch.optim.AdamW's math, defaults and state (``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``), so the two load each other's
    ``state_dict``. The ``_foreach_`` path runs torch's ``_multi_tensor_adam``
    operations in its order and is bit-identical to
    ``torch.optim.AdamW(foreach=True)``; the fused path calls torch's own
    ``torch._fused_adamw_`` kernel (what ``torch.optim.AdamW(fused=True)``
    runs on CPU; gradwise has no AdamW kernel of its own, and torch's is
    already one pass over memory), bit-identical to it on contiguous
    tensors (a non-contiguous one, which torch's CPU kernel steps wrongly,
    is stepped through a contiguous copy, with the same numbers). It takes
    float32/float64 CPU tensors here, as gradwise's kernels do; other dtypes
    and devices take the ``_foreach_`` path. With the gradwise extras
    (``grad_transforms``, ``update_transforms``, ``state_codec``,
    ``skip_nonfinite``), this is the plain baseline to compare a method with.

    Args:
        params: iterable of parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (b1, b2) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled decay coefficient (default 1e-2).
        amsgrad: use the running maximum of ``v`` (default False).
        maximize, fused, foreach, grad_transforms, update_transforms,
        state_codec, skip_nonfinite: see :class:`GradwiseOptimizer`.

    Example::

        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, **kwargs) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
                         **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if group["amsgrad"] else ()))

    def _fused_eligible(self, t):
        # torch's fused AdamW kernel, built into torch: no gradwise kernel needed
        if not (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)):
            return False, f"needs float32/float64 CPU tensors, got a {t.dtype} tensor on {t.device}"
        return True, ""

    def _step_fused(self, group, params, grads, states):
        (b1, b2), amsgrad = group["betas"], group["amsgrad"]
        lists = [params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                 [s["max_exp_avg_sq"] for s in states] if amsgrad else []]
        # torch's CPU kernel (torch 2.13) steps a non-contiguous tensor wrongly (torch.optim.AdamW(fused=True)
        # goes uphill on a strided parameter): such tensors go through contiguous copies, written back after
        odd = [i for i in range(len(params)) if not all(ts[i].is_contiguous() for ts in lists if ts)]
        work = [list(ts) for ts in lists]
        for i in odd:
            for ts in work:
                if ts:
                    ts[i] = ts[i].contiguous()
        # torch's kernel reads each step count from a float32 tensor (already advanced, as here)
        steps = [torch.tensor(float(s["step"]), dtype=torch.float32) for s in states]
        torch._fused_adamw_(*work, steps, amsgrad=amsgrad, lr=group["lr"], beta1=b1, beta2=b2,
                            weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                            grad_scale=None, found_inf=None)  # maximize: the base negated the gradients
        for i in odd:
            for ts, ws in zip(lists, work):
                if ts and ws[i] is not ts[i] and ts is not grads:
                    ts[i].copy_(ws[i])

    def _step_foreach(self, group, params, grads, states):
        A.adamw_foreach_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                         [s["step"] for s in states], group["lr"], *group["betas"], group["eps"],
                         group["weight_decay"])
