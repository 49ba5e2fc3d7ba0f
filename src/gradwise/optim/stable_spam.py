"""Stable-SPAM: SPAM with adaptive spike clipping, adaptive gradient-norm scaling and momentum reset."""
from __future__ import annotations

import torch

from gradwise._validate import check_int, check_range
from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.registry import register

__all__ = ["StableSPAM"]


@register(kind="optimizer", paper="Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
          year=2025, arxiv="2502.17055",
          code="https://github.com/TianjinYellow/StableSPAM",
          summary="Adam after adaptive spike clipping (AdaClip) and norm scaling (AdaGN), with momentum reset",
          info={
              "test_cases": {"StableSPAM": {"kwargs": dict(lr=1e-2, reset_interval=7, beta1_schedule_steps=20)}},
              # pytorch_optimizer's "foreach" StableSPAM is still a per-tensor loop (norms, max, where)
              # but without host syncs. t_max=None: no cosine decay of beta1 (the default on both sides).
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-8, "gamma1": 0.7, "gamma2": 0.9, "theta": 0.999,
                                    "update_proj_gap": 1000, "t_max": None},
                        "peer": "StableSPAM"}})
class StableSPAM(GradwiseOptimizer):
    r"""Stable-SPAM (Huang et al., 2025, arXiv 2502.17055).

    Math, per tensor at global step t and parameter step k, with
    ``s = scale(t)`` (1, or a cosine from 1 to ``beta1_min`` over
    ``beta1_schedule_steps + 1`` steps when that is set)::

        p <- p (1 - lr wd)
        # AdaClip: EMA of the tensor's max |g|
        M <- g3 M + (1-g3) max|g|;  M^ = M / (1 - g3^k)
        g <- g * M^ / max|g|   where |g| > M^
        # AdaGN: EMAs of the tensor's L2 norm
        mu <- (g1 s) mu + (1 - g1 s) ||g||;  nu <- g2 nu + (1-g2) ||g||^2
        g <- g / ||g|| * (mu / (1-(g1 s)^k)) / (sqrt(nu / (1-g2^k)) + eps)     (if ||g|| > 0)
        # momentum reset every reset_interval steps, then Adam with b1 s:
        m <- b1 s m + (1 - b1 s) g;  v <- b2 v + (1-b2) g^2
        p <- p - lr/(1-(b1 s)^k) * m / (sqrt(v)/sqrt(1-b2^k) + eps)

    Faithful to the authors' ``stablespam.py``, including how its momentum
    reset behaves (``paper_reset=False``, default): on a reset step the update
    still uses the old moments, bias-corrected as if ``k = 1``; the state then
    gets fresh zero moments and ``k = 1``, which also restarts the bias
    correction of the AdaClip/AdaGN statistics (those are not zeroed).
    ``paper_reset=True`` follows the paper instead: ``m, v <- 0`` before the
    update of a reset step, step count running on. ``beta1_schedule_steps``
    and ``beta1_min`` are the authors' ``total_T`` and ``eta_min``; as in their
    code the cosine is not clamped (it rises again after
    ``beta1_schedule_steps + 1``). ``reset_interval`` is their
    ``update_proj_gap`` (0 disables resets); ``gamma1=-1`` means ``betas[0]``.
    Limitation (the authors' too): ``nu`` holds ``||g||^2`` in the parameter
    dtype, so in float32 a tensor's gradient norm above ~1e19 overflows it
    (``nu = inf`` then scales that gradient to 0). ``||g||`` itself is taken on
    a power-of-two downscaled gradient on the ``_foreach_`` path, so it stays
    finite up to the dtype's max; a norm beyond it makes a non-finite step,
    which ``skip_nonfinite=True`` skips (see GradwiseOptimizer).
    Departures: ``p.grad`` is not written (the authors clip it in place); the
    schedule follows each group's ``group["step"]``.

    Args: lr (1e-3), betas ((0.9, 0.999)), eps (1e-8), weight_decay (0,
    decoupled), amsgrad (False), gamma1 (0.7), gamma2 (0.9), gamma3 (0.999),
    beta1_schedule_steps (None), beta1_min (0.5), reset_interval (1000),
    paper_reset (False), grad_transforms, skip_nonfinite.

    State: ``exp_avg``, ``exp_avg_sq`` (``max_exp_avg_sq``), and 0-dim
    ``m_max_t``, ``m_norm_t``, ``v_norm_t`` (parameter dtype); ``step``.

    Example::

        opt = StableSPAM(model.parameters(), lr=1e-3, gamma1=0.7, gamma2=0.9,
                         beta1_schedule_steps=20000, reset_interval=1000)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, amsgrad: bool = False,
                 gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
                 beta1_schedule_steps: int | None = None, beta1_min: float = 0.5,
                 reset_interval: int = 1000, paper_reset: bool = False, **kwargs) -> None:
        if gamma1 == -1 and isinstance(betas, (tuple, list)) and betas:
            gamma1 = betas[0]
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        gamma1=gamma1, gamma2=gamma2, gamma3=gamma3,
                        beta1_schedule_steps=beta1_schedule_steps, beta1_min=beta1_min,
                        reset_interval=reset_interval, paper_reset=paper_reset)
        super().__init__(params, defaults, **kwargs)

    def _validate_group(self, g):
        super()._validate_group(g)
        for k in ("gamma1", "gamma2", "gamma3"):
            check_range(k, g[k], 0.0, 1.0, hi_open=True)
        if g["beta1_schedule_steps"] is not None:
            check_int("beta1_schedule_steps", g["beta1_schedule_steps"], 1)
        check_range("beta1_min", g["beta1_min"], 0.0, 1.0)
        check_int("reset_interval", g["reset_interval"], 0)

    def _begin_group(self, group):
        group["step"] = group.get("step", 0) + 1

    def _init_state(self, p, group):
        st = zeros_state(p, "exp_avg", "exp_avg_sq", *(("max_exp_avg_sq",) if group["amsgrad"] else ()))
        for name in ("m_max_t", "m_norm_t", "v_norm_t"):  # per-tensor statistics, 0-dim
            st[name] = torch.zeros((), dtype=p.dtype, device=p.device)
        return st

    @staticmethod
    def _schedule(group, states):
        """(beta1 scale s, step counts of the statistics, step counts of the moments), after this step's reset.

        The momentum reset of a reset step happens here, before either update path runs.
        """
        t, T = group["step"], group["beta1_schedule_steps"]
        s = F.cosine_anneal(1.0, group["beta1_min"], t, T + 1) if T is not None else 1.0
        k_stats = [st["step"] for st in states]  # clipping/norm statistics use the pre-reset count
        steps = list(k_stats)
        R = group["reset_interval"]
        if R and t % R == 0:
            if group["paper_reset"]:
                F.reset_moments_([st["exp_avg"] for st in states] + [st["exp_avg_sq"] for st in states])
            else:
                # authors' order: this step runs on the old moments with k = 1,
                # later steps on fresh zeros with k counting from 1
                steps = [1] * len(states)
                for st in states:
                    st["exp_avg"] = torch.zeros_like(st["exp_avg"])
                    st["exp_avg_sq"] = torch.zeros_like(st["exp_avg_sq"])
                    st["step"] = 1
        return s, k_stats, steps

    def _step_fused(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        g1, g2, g3 = group["gamma1"], group["gamma2"], group["gamma3"]
        # the moments are read after _schedule: a reset of the authors' kind leaves this step's old ones here
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        s, k_stats, steps = self._schedule(group, states)
        _fused.ops().stablespam_(params, grads, m, v, [st["max_exp_avg_sq"] for st in states] if group["amsgrad"] else [],
                                 [st["m_max_t"] for st in states], [st["m_norm_t"] for st in states],
                                 [st["v_norm_t"] for st in states], [float(k) for k in k_stats],
                                 [float(k) for k in steps], lr, b1 * s, b2, eps, g1 * s, g2, g3,
                                 1.0 - lr * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        g1, g2, g3 = group["gamma1"], group["gamma2"], group["gamma3"]
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        s, k_stats, steps = self._schedule(group, states)
        b1s = b1 * s
        vmax = [st["max_exp_avg_sq"] for st in states] if group["amsgrad"] else []
        # per-tensor AdaClip/AdaGN statistics: 0-dim tensors, updated in place
        m_max = [st["m_max_t"] for st in states]
        m_norm = [st["m_norm_t"] for st in states]
        v_norm = [st["v_norm_t"] for st in states]

        F.decoupled_decay_(params, lr, group["weight_decay"])
        # statistics updated with _foreach ops; bias corrections are Python
        # floats, as in the authors' code (no host-device copy, no sync)

        # AdaClip: entries above the bias-corrected EMA of max|g| are scaled by hat / max|g|
        gmax = torch._foreach_norm(grads, float("inf"))
        F.ema_(m_max, gmax, g3)
        hats = torch._foreach_div(m_max, F.bias_corrections(k_stats, g3))
        ratio = torch._foreach_div(hats, gmax)
        # one where per tensor: there is no _foreach compare/where, and building the mask from
        # _foreach ops would take more passes over the gradient than this does
        grads = [torch.where(g.abs() > h, g * r, g) for g, h, r in zip(grads, hats, ratio)]

        # AdaGN: g <- g / ||g|| * m_norm_hat / (sqrt(v_norm_hat) + eps), where ||g|| > 0
        # ||g|| on s*g (s a power of two, exact), divided back: the sum of squares overflows float32
        # for gradients above ~1e19, the norm itself only above the dtype's max
        down = F.downscales(grads)
        norm = torch._foreach_div(torch._foreach_norm(torch._foreach_mul(grads, list(down.unbind()))),
                                  list(down.unbind()))
        gs = g1 * s
        F.ema_(m_norm, norm, gs)
        F.ema_sq_(v_norm, norm, g2)
        den = torch._foreach_div(v_norm, F.bias_corrections(k_stats, g2))
        torch._foreach_sqrt_(den)
        torch._foreach_add_(den, eps)
        c = torch._foreach_div(m_norm, F.bias_corrections(k_stats, gs))
        torch._foreach_div_(c, den)
        n = torch.stack(norm)
        factor = torch.where(n > 0, torch.stack(c) / n, torch.ones_like(n))
        grads = torch._foreach_mul(grads, list(factor.unbind()))

        F.ema_(m, grads, b1s)
        F.ema_sq_(v, grads, b2)
        if vmax:
            torch._foreach_maximum_(vmax, v)
            v = vmax
        A.adam_step_(params, m, v, steps, lr, b1s, b2, eps)
