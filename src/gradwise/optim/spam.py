"""SPAM: Adam with spike clipping, periodic momentum reset and a warm-up after each reset."""
from __future__ import annotations

import torch

from gradwise._validate import check_int, check_range
from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.optim._transforms import GradTransform
from gradwise.registry import register

__all__ = ["SPAM", "SpikeClip"]

_PAPER = "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training"
_CODE = "https://github.com/TianjinYellow/SPAM-Optimizer"


def spam_warmup_scale(t: int, reset_interval: int, warmup_steps: int) -> float:
    """The step-size scale of SPAM at 1-based step ``t``.

    1 until the first reset; at a reset step (``t % reset_interval == 0``) it
    restarts at 0.01 and follows ``1 - 0.99 (1 + cos(pi j / (W + 1))) / 2``
    for ``j = t % reset_interval < W``, then is exactly 1 (the authors'
    ``CosineDecay(0.99, W)``).
    """
    if t < reset_interval:
        return 1.0
    j = t % reset_interval
    return 1.0 - F.cosine_anneal(0.99, 0.0, j, warmup_steps + 1) if j < warmup_steps else 1.0


@register(kind="optimizer", paper=_PAPER, year=2025, arxiv="2501.06842", code=_CODE,
          summary="Adam with spike clipping, momentum reset every reset_interval steps and cosine warm-up",
          info={
              # small reset intervals so that save/load crosses a reset
              "test_cases": {"SPAM": {"kwargs": dict(lr=1e-2, reset_interval=7, warmup_steps=3, clip_delay=2,
                                                     spike_threshold=50)}},
              # grad_accu_steps=1 (default 20) so spike clipping runs in every timed step instead of
              # starting after the benchmark is over. density=1.0 (dense update, the only kind gradwise
              # computes): pytorch_optimizer, like the authors' code, still keeps an all-True boolean
              # mask for every 2-D tensor and gathers/scatters through it.
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-6, "threshold": 5000, "grad_accu_steps": 1,
                                    "update_proj_gap": 500, "warmup_epoch": 50},
                        "peer": "SPAM", "peer_kwargs": {"density": 1.0},
                        "note": "clip delay 1 (default 20) so spike clipping runs in timed steps; peer density=1.0"}})
class SPAM(GradwiseOptimizer):
    r"""SPAM (Huang et al., ICLR 2025, arXiv 2501.06842).

    Math, at 1-based step t with ``T = reset_interval``::

        if t % T == 0:                 m, v <- 0            # momentum reset (step count runs on)
        if t >= D and t % T >= D:      # spike clipping, D = clip_delay
            g <- sign(g) sqrt(theta v)  where g^2 > theta v  # v: raw EMA of the previous step
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        p <- p - s_t * lr sqrt(1-b2^k)/(1-b1^k) * m / (sqrt(v) + eps)
        p <- p - lr * wd * p

    where ``k`` is the parameter's step count (not restarted by resets) and
    ``s_t`` the post-reset cosine warm-up of :func:`spam_warmup_scale`.

    Faithful to the authors' ``galore_torch/SPAM.py`` (class ``AdamW``; dense
    case, no GaLore projection). Argument names: ``spike_threshold`` is the
    authors' ``threshold``, ``reset_interval`` their ``DeltaT``,
    ``clip_delay`` their ``grad_accu_steps``, ``warmup_steps`` theirs.
    Departures: the clipped gradient is a new tensor (the authors write it
    into ``p.grad``); the reset/warm-up schedule follows each group's step
    counter ``group["step"]`` (theirs is global; identical unless groups are
    added mid-run).

    Args: lr (1e-3), betas ((0.9, 0.999)), eps (1e-6), weight_decay (0),
    correct_bias (True), warmup_steps (150), spike_threshold (5000; 0 turns
    clipping off), reset_interval (500), clip_delay (20), grad_transforms,
    skip_nonfinite.

    State: ``exp_avg``, ``exp_avg_sq`` (parameter dtype), ``step``; the group
    holds ``step`` for the schedule.

    Example::

        opt = SPAM(model.parameters(), lr=1e-3, reset_interval=500, spike_threshold=5000)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, *, correct_bias: bool = True,
                 warmup_steps: int = 150, spike_threshold: float = 5000.0, reset_interval: int = 500,
                 clip_delay: int = 20, **kwargs) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
                        warmup_steps=warmup_steps, spike_threshold=spike_threshold,
                        reset_interval=reset_interval, clip_delay=clip_delay)
        super().__init__(params, defaults, **kwargs)

    def _validate_group(self, g):
        super()._validate_group(g)
        check_range("spike_threshold", g["spike_threshold"], 0.0)
        check_int("warmup_steps", g["warmup_steps"], 0)
        check_int("reset_interval", g["reset_interval"], 1)
        check_int("clip_delay", g["clip_delay"], 0)

    def _begin_group(self, group):
        group["step"] = group.get("step", 0) + 1

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq")

    @staticmethod
    def _schedule(group, states):
        """(step sizes per tensor, reset now, clip now) at the group's step."""
        lr, (b1, b2) = group["lr"], group["betas"]
        t, T, D = group["step"], group["reset_interval"], group["clip_delay"]
        scale = spam_warmup_scale(t, T, group["warmup_steps"])
        if group["correct_bias"]:
            sizes = A.folded_step_sizes(lr, [s["step"] for s in states], b1, b2, scale)
        else:
            sizes = [-lr * scale] * len(states)
        return sizes, t % T == 0, group["spike_threshold"] != 0 and t >= D and t % T >= D

    def _step_fused(self, group, params, grads, states):
        (b1, b2), theta = group["betas"], group["spike_threshold"]
        sizes, reset, clip = self._schedule(group, states)
        _fused.ops().spam_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], sizes,
                           b1, b2, group["eps"], theta if clip else 0.0, reset, 1.0 - group["lr"] * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        (b1, b2), eps = group["betas"], group["eps"]
        m = [s["exp_avg"] for s in states]
        v = [s["exp_avg_sq"] for s in states]
        sizes, reset, clip = self._schedule(group, states)
        if reset:
            F.reset_moments_(m + v)
        if clip:
            grads = F.spike_clip(grads, v, group["spike_threshold"])
        A.ema_moments_(m, v, grads, b1, b2)
        torch._foreach_addcdiv_(params, m, A.adam_denom(v, eps), sizes)
        F.decoupled_decay_(params, group["lr"], group["weight_decay"])


@register(kind="grad-transform", paper=_PAPER, year=2025, arxiv="2501.06842", code=_CODE,
          summary="SPAM's spike clipping as a transform in front of any gradwise optimizer")
class SpikeClip(GradTransform):
    r"""SPAM's spike clipping (Huang et al., 2025, arXiv 2501.06842), in front of any gradwise optimizer.

    Keeps its own second-moment EMA ``v <- b2 v + (1-b2) g_clipped^2`` (the
    one SPAM's Adam keeps) and, from a parameter's step ``clip_delay`` on,
    replaces entries with ``g^2 > threshold * v`` by ``sign(g) sqrt(threshold v)``.

    Example (SPAM's clipping in front of AdaBelief)::

        opt = AdaBelief(model.parameters(), grad_transforms=[SpikeClip(threshold=5000)])
    """

    key = "spike"

    def __init__(self, threshold: float = 5000.0, beta2: float = 0.999, clip_delay: int = 20) -> None:
        check_range("threshold", threshold, 0.0, lo_open=True)
        check_range("beta2", beta2, 0.0, 1.0, hi_open=True)
        check_int("clip_delay", clip_delay, 1)
        self.threshold, self.beta2, self.clip_delay = threshold, beta2, clip_delay

    def init_state(self, p):
        return zeros_state(p, "exp_avg_sq")

    def apply(self, params, grads, states, group):
        v = [s["spike.exp_avg_sq"] for s in states]
        ready = [i for i, s in enumerate(states) if s["step"] >= self.clip_delay]
        if ready:
            clipped = F.spike_clip([grads[i] for i in ready], [v[i] for i in ready], self.threshold)
            grads = list(grads)
            for i, g in zip(ready, clipped):
                grads[i] = g
        F.ema_sq_(v, grads, self.beta2)
        return grads
