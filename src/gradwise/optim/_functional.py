"""Multi-tensor pieces that the seed papers' optimizers share.

Each function works on lists of tensors of one device and dtype (one bucket)
with ``torch._foreach_*`` calls, and none synchronizes with the host: where a
rule depends on the data it is a ``torch.where`` (AdamP's projection) or a
clamp (SPAM's clipping), not a Python ``if``. Functions ending in ``_`` write into
their first argument; the others return new tensors and leave inputs alone
(gradients in particular are never written).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bias_corrections", "decoupled_decay_", "l2_grads", "ema_", "ema_sq_",
    "perpendicular", "perp_factors", "radial_projection", "downscales", "spike_clip", "reset_moments_", "cosine_anneal",
]


def bias_corrections(steps: list[int], beta: float) -> list[float]:
    """``1 - beta**t`` for each parameter's step ``t``."""
    return [1.0 - beta ** t for t in steps]


def decoupled_decay_(params: list[Tensor], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter): ``p <- p * (1 - lr * wd)``."""
    if weight_decay != 0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)


def l2_grads(grads: list[Tensor], params: list[Tensor], weight_decay: float) -> list[Tensor]:
    """Coupled (L2) weight decay: new gradients ``g + wd * p``."""
    if weight_decay == 0:
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


def ema_(avgs: list[Tensor], xs: list[Tensor], beta: float) -> None:
    """``a <- beta * a + (1 - beta) * x``, in the authors' operation order."""
    torch._foreach_mul_(avgs, beta)
    torch._foreach_add_(avgs, xs, alpha=1.0 - beta)


def ema_sq_(avgs: list[Tensor], xs: list[Tensor], beta: float) -> None:
    """``a <- beta * a + (1 - beta) * x * x``."""
    torch._foreach_mul_(avgs, beta)
    torch._foreach_addcmul_(avgs, xs, xs, value=1.0 - beta)


def reset_moments_(tensors: list[Tensor]) -> None:
    """Zero the given state tensors (SPAM's and Stable-SPAM's momentum reset)."""
    torch._foreach_zero_(tensors)


def downscales(tensors: list[Tensor]) -> Tensor:
    """Per tensor, the power of two ``s <= 1`` that brings its largest magnitude below 2 (1-D, one per tensor).

    Multiplying by a power of two is exact (no rounding), so a norm, dot
    product or cosine computed on ``s * t`` and divided back by ``s`` equals
    the one computed on ``t`` bit for bit, except that it cannot overflow:
    ``sum((s t)^2) <= 4 numel``. Tensors already below 2 get ``s = 1`` (no change
    at all). Non-finite tensors get ``s = 1`` (their result is non-finite anyway).
    """
    # aminmax: one read per tensor (the inf-norm of _foreach_norm is several times slower on CPU)
    lo_hi = [torch.aminmax(t) for t in tensors]
    amax = torch.maximum(torch.stack([hi for _, hi in lo_hi]), -torch.stack([lo for lo, _ in lo_hi]))
    work = amax if amax.dtype == torch.float64 else amax.float()  # frexp lacks the 16-bit dtypes
    _, e = torch.frexp(torch.where(torch.isfinite(work), work, torch.zeros_like(work)))
    # below 2 rather than 1: 1/s must be representable too (2**128 is not, in float32)
    return torch.ldexp(torch.ones_like(work), -(e - 1).clamp_min(0)).to(amax.dtype)


PERP_NOISE = 4.0
"""A perpendicular part with ``||g_perp|| <= PERP_NOISE * sqrt(numel) * u * ||g||`` (``u`` the
dtype's unit roundoff) is rounding noise: ``g`` is parallel to ``w`` to working precision."""


def perp_factors(g_norms: Tensor, perp_norms: Tensor, numels: list[int], eps: float | Tensor, unit: float,
                 renormalize: bool = True) -> Tensor:
    """The factor ⊥Grad multiplies ``g_perp = g - <w,g>/(<w,w>+eps) w`` by, per tensor.

    ``||g|| / (||g_perp|| + eps)`` (or 1 without ``renormalize``), except
    where ``g_perp`` is rounding noise, where it is 0: in exact arithmetic
    ``g_perp`` is then 0, and rescaling the noise to ``||g||`` would give an
    update of arbitrary direction and full size. This covers every one-element
    tensor (a scalar's gradient is always parallel to it) and a zero gradient;
    a zero weight keeps ``g_perp = g``. Both update paths (fused kernels and
    ``_foreach_``) call this one function, so they make the same choice.

    ``g_norms``, ``perp_norms``: 1-D, one entry per tensor; ``unit``: the
    tensors' unit roundoff (``torch.finfo(dtype).eps``).
    """
    tol = torch.tensor([PERP_NOISE * math.sqrt(n) * unit if n > 1 else math.inf for n in numels],
                       dtype=g_norms.dtype, device=g_norms.device)
    keep = perp_norms > tol * g_norms
    if renormalize:
        scale = g_norms / (perp_norms + eps)
    else:
        scale = torch.ones_like(g_norms)
    return torch.where(keep, scale, torch.zeros_like(scale))


def perpendicular(params: list[Tensor], grads: list[Tensor], eps: float = 1e-30,
                  renormalize: bool = True) -> list[Tensor]:
    """⊥Grad of "Grokking at the Edge of Numerical Stability" (arXiv 2501.04697).

    Removes from each gradient its component along its own weight, per tensor
    (flattened)::

        g_perp = g - (<w, g> / (<w, w> + eps)) * w
        g_out  = g_perp * ||g|| / (||g_perp|| + eps)      if renormalize

    The renormalization keeps the gradient's norm, as in the authors' code.
    Where ``g_perp`` is rounding noise (one-element tensors, gradients
    parallel to their weight) ``g_out`` is 0 (see :func:`perp_factors`); the
    authors rescale the noise to ``||g||``.
    """
    # Computed on s*g (s a power of two, see downscales) so that <w,g> and ||g||^2 cannot overflow
    # for gradients up to the dtype's max; the result is scaled back by 1/s in the last multiply.
    # (g_perp is linear in g, and the renormalization factor is invariant to the scale once eps is
    # scaled with it.) For gradients below 1 in magnitude s = 1: the same operations as before.
    s = downscales(grads)
    scaled = torch._foreach_mul(grads, list(s.unbind()))
    dots = [torch.vdot(w.reshape(-1), g.reshape(-1)) for w, g in zip(params, scaled)]
    sq = [torch.vdot(w.reshape(-1), w.reshape(-1)) for w in params]
    torch._foreach_add_(sq, eps)
    coef = torch._foreach_div(dots, sq)
    proj = torch._foreach_mul(params, coef)
    out = torch._foreach_sub(scaled, proj)
    g_norm = torch.stack(torch._foreach_norm(scaled))
    p_norm = torch.stack(torch._foreach_norm(out))
    factors = perp_factors(g_norm, p_norm, [g.numel() for g in grads], eps * s,  # eps scaled with g
                           torch.finfo(grads[0].dtype).eps, renormalize)
    torch._foreach_mul_(out, list(factors.unbind()))
    torch._foreach_div_(out, list(s.unbind()))  # two multiplies: factors / s alone may overflow
    return out


def radial_projection(params: list[Tensor], grads: list[Tensor], updates: list[Tensor],
                      delta: float, wd_ratio: float, eps: float) -> tuple[list[Tensor], list[Tensor | float]]:
    """AdamP/SGDP's projection of updates off the radial direction of scale-invariant weights.

    For each tensor with more than one dimension, the cosine similarity of
    gradient and weight is measured per output channel (rows of
    ``w.view(w.size(0), -1)``) and over the whole tensor. If the largest
    channel cosine is below ``delta / sqrt(fan_in)`` the weight counts as
    scale-invariant per channel and the update loses its component along each
    channel's unit weight; otherwise, if the whole-tensor cosine is below
    ``delta / sqrt(numel)``, along the unit weight of the whole tensor. A
    projected tensor's weight decay is scaled by ``wd_ratio``.

    The authors branch in Python on ``cosine.max() < threshold``; here both
    projections are computed and selected with ``torch.where``, so there is no
    host sync. Returns the new updates and, per tensor, the weight-decay factor
    (a 0-dim tensor, or 1.0 for tensors with fewer than two dimensions).
    """
    out: list[Tensor] = []
    factors: list[Tensor | float] = []
    multi = [i for i, w in enumerate(params) if w.dim() > 1 and w.numel() > 0]
    # The sums of g*g and w*g are taken on s*g (s a power of two, exact; see downscales), so that
    # gradients up to the dtype's max cannot overflow them; the cosines are invariant to the scale
    # (eps, which clamps the gradient's norm, is scaled with it). For gradients below 2, s = 1.
    # (<w_hat, u> needs no scaling: it is at most ||u|| per channel, the size of the update itself.)
    scales: dict[int, tuple[Tensor, Tensor]] = {}
    if multi:
        s = list(downscales([grads[i] for i in multi]).unbind())
        scales = dict(zip(multi, zip(torch._foreach_mul([grads[i] for i in multi], s), s)))
    for i, (w, g, u) in enumerate(zip(params, grads, updates)):
        if i not in scales:  # vectors, and empty tensors, are not projected
            out.append(u)
            factors.append(1.0)
            continue
        gs, sg = scales[i]
        n = w.size(0)
        W, G, U = w.reshape(n, -1), gs.reshape(n, -1), u.reshape(n, -1)
        fan_in = W.size(1)
        w_sq = (W * W).sum(1)
        g_sq = (G * G).sum(1)
        dot = (W * G).sum(1)
        # channel view; cosine_similarity clamps each norm at eps
        w_norm, g_norm = w_sq.sqrt(), g_sq.sqrt()
        cos_c = dot.abs() / (w_norm.clamp_min(eps) * torch.maximum(g_norm, eps * sg))
        use_c = cos_c.max() < delta / math.sqrt(fan_in)
        # layer view
        w_norm_l, g_norm_l = w_sq.sum().sqrt(), g_sq.sum().sqrt()
        cos_l = dot.sum().abs() / (w_norm_l.clamp_min(eps) * torch.maximum(g_norm_l, eps * sg))
        use_l = cos_l < delta / math.sqrt(n * fan_in)
        # unit weights per channel, or for the whole tensor, chosen by the tests above
        scale = torch.where(use_c, w_norm + eps, w_norm_l + eps)
        Wn = W / scale.unsqueeze(1)
        coef_c = (Wn * U).sum(1, keepdim=True)
        coef = torch.where(use_c, coef_c, coef_c.sum())
        projected = torch.where(use_c | use_l, U - Wn * coef, U)
        out.append(projected.view_as(u))
        factors.append(torch.where(use_c | use_l, wd_ratio, 1.0).to(w.dtype))
    return out, factors


def spike_clip(grads: list[Tensor], second_moments: list[Tensor], threshold: float) -> list[Tensor]:
    """SPAM's spike clipping: entries with ``g**2 > threshold * v`` become ``sign(g) * sqrt(threshold * v)``.

    ``v`` is the raw (not bias-corrected) second-moment EMA from the previous
    step, as in the authors' code. Where ``v == 0`` every non-zero entry counts
    as a spike and becomes 0, so callers hold clipping off for the first steps
    (SPAM's ``clip_delay``). Returns new gradients.

    The rule is an elementwise clamp of ``g`` to ``[-sqrt(threshold v),
    sqrt(threshold v)]``, done with ``_foreach`` ops (no per-tensor loop). It
    equals the authors' masked assignment except where ``g**2`` and
    ``threshold * v`` agree to the last bit, where the two results differ by
    an ulp.
    """
    limit = torch._foreach_mul(second_moments, threshold)
    torch._foreach_sqrt_(limit)
    out = torch._foreach_minimum(grads, limit)
    torch._foreach_neg_(limit)
    torch._foreach_maximum_(out, limit)
    return out


def cosine_anneal(start: float, end: float, step: int, period: int) -> float:
    """``end + (start - end) * (1 + cos(pi * step / period)) / 2`` (torch's closed-form cosine)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / period)) / 2
