"""SGD-SaI: SGD with momentum and a per-tensor learning-rate scale fixed at initialization."""
from __future__ import annotations

import torch

from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.registry import register

__all__ = ["SGDSaI"]


@register(kind="optimizer",
          paper="No More Adam: Learning Rate Scaling at Initialization is All You Need",
          year=2024, arxiv="2412.11768",
          code="https://github.com/AnonymousAlethiometer/SGD_SaI",
          summary="Momentum SGD, each tensor's lr scaled once by its gradient signal-to-noise ratio at step 1",
          info={
              "test_cases": {"SGDSaI": {"kwargs": dict(lr=1e-3)}},
              # The gradient SNR is computed once, on the first step (in warm-up).
              "bench": {"kwargs": {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01, "eps": 1e-8},
                        "peer": "SGDSaI", "peer_kwargs": {"weight_decouple": True}}})
class SGDSaI(GradwiseOptimizer):
    r"""SGD-SaI (Xu et al., 2024, arXiv 2412.11768).

    Math: on a parameter's first step its gradient signal-to-noise ratio is
    measured and frozen::

        gsnr = ||g_1||_2 / (std(g_1) + eps)        # std unbiased; NaN (1 element) -> 0

    then every step::

        b_1 = g_1;  b_t = momentum * b_{t-1} + (1 - momentum) g_t
        p_t = p_{t-1} * (1 - lr * wd) - lr * gsnr * b_t

    Faithful to the authors' ``sgd_sai.py`` (v1.0.3), including the quirk that
    a one-element tensor gets ``gsnr = |g| / eps`` (which overflows for a
    large ``|g|``: ``skip_nonfinite=True`` skips such a step). The norm and
    std are taken on the gradient scaled by a power of two (exact), so they
    do not overflow for gradients up to the dtype's max. Departures, all in cases
    where the authors' code fails or misbehaves: ``momentum=0`` is plain SGD
    (the reference raises an error); a parameter whose first gradient arrives
    after the optimizer's first step gets its own gsnr then (the reference
    measures all parameters on the optimizer's first step only, and fails
    later for one that had no gradient then); a closure is evaluated once per
    step (the reference evaluates it twice on the first step).

    Effective learning rate against SGD: each tensor moves by ``lr * gsnr``
    times its momentum buffer, and for a gradient whose entries have mean
    near 0 (the usual case) ``||g|| ~ sqrt(numel) * std(g)``, so ``gsnr ~
    sqrt(numel)``: a 512x512 weight steps with about 512 times ``lr``. So
    ``lr`` is not SGD's learning rate; the authors' default 1e-2 suits
    their models, and a problem where SGD is stable near its largest
    learning rate can diverge with SGD-SaI at the same ``lr``.

    ``normalize_gsnr=True`` follows the paper's Algorithm 1 instead of the
    released code: each gsnr is divided by the largest gsnr over all the
    optimizer's tensors measured on that first step, so the largest scale is
    exactly ``lr`` and every other tensor steps with less (the released code,
    and the default here, do not normalize; the two differ by one constant
    factor of the learning rate). A parameter whose first gradient comes on
    a later step is divided by the largest gsnr seen so far (``gsnr_max`` in
    every parameter group), or gets scale 1 if it beats it. Finding the
    maximum reads one number on the host, once, on the first step.

    Args: lr (1e-2), momentum (0.9), eps (1e-8), weight_decay (1e-2,
    decoupled), normalize_gsnr (False), grad_transforms, skip_nonfinite.

    State: ``gsnr`` (0-dim, parameter dtype; normalized when
    ``normalize_gsnr``), ``momentum_buffer`` (when momentum > 0), ``step``.

    Example::

        opt = SGDSaI(model.parameters(), lr=1e-2, weight_decay=1e-2)
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, normalize_gsnr: bool = False, **kwargs) -> None:
        if not isinstance(normalize_gsnr, bool):
            raise ValueError(f"Invalid normalize_gsnr: {normalize_gsnr!r} (accepted: True or False)")
        self.normalize_gsnr = normalize_gsnr
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay), **kwargs)

    def _expected_state_keys(self, p, group):
        # gsnr and the buffer are made on a parameter's first step (_prepare), not by _init_state
        keys = super()._expected_state_keys(p, group) | {"gsnr"}
        return keys | {"momentum_buffer"} if group["momentum"] != 0 else keys

    def _prepare(self, items):
        # gsnr is measured on a parameter's first step, over every bucket at once so that
        # normalize_gsnr can divide by the maximum over all tensors before any update
        fresh = []
        for group, params, grads, states in items:
            for g, st in zip(grads, states):
                if "gsnr" not in st:
                    # on s*g (s a power of two, exact): ||g|| and std(g) square g, which overflows for
                    # gradients above ~1e19 in float32; the ratio is the same with eps scaled alike
                    sc = F.downscales([g])[0]
                    gs = g * sc
                    sigma = gs.std().nan_to_num() if g.numel() > 1 else torch.zeros((), dtype=g.dtype, device=g.device)
                    st["gsnr"] = gs.norm() / (sigma + group["eps"] * sc)
                    if group["momentum"] != 0:
                        st["momentum_buffer"] = g.clone(memory_format=torch.preserve_format)
                    fresh.append(st)
        if self.normalize_gsnr and fresh:
            seen = max((g["gsnr_max"] for g in self.param_groups if "gsnr_max" in g), default=0.0)
            top = max(seen, max(float(st["gsnr"]) for st in fresh))  # one host read, on first steps only
            for st in fresh:
                if top > 0:
                    st["gsnr"] = st["gsnr"] / top
            for g in self.param_groups:
                g["gsnr_max"] = top

    def _step_fused(self, group, params, grads, states):
        lr, mom = group["lr"], group["momentum"]
        # CPU tensors only on this path: reading the 0-dim gsnr is not a device sync
        _fused.ops().sgdsai_(params, grads, [st["momentum_buffer"] for st in states] if mom != 0 else [],
                             [-lr * float(st["gsnr"]) for st in states],
                             [int(st["step"] == 1) for st in states], mom, 1.0 - lr * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        lr, mom = group["lr"], group["momentum"]
        F.decoupled_decay_(params, lr, group["weight_decay"])
        if mom != 0:
            fresh = [st["step"] == 1 for st in states]
            old = [i for i, f in enumerate(fresh) if not f]
            if old:
                F.ema_([states[i]["momentum_buffer"] for i in old], [grads[i] for i in old], mom)
            bufs = [st["momentum_buffer"] for st in states]
        else:
            bufs = grads
        scale = torch._foreach_mul([st["gsnr"] for st in states], -lr)
        torch._foreach_addcmul_(params, bufs, scale)
