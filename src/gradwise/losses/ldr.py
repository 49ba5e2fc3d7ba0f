"""Label-distributionally robust losses (Zhu, Ying & Yang, 2023): LDR-KL and
its adaptive variant ALDR-KL with a per-instance temperature.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_positive, check_real
from gradwise.losses._common import LossModule, check_logits_target, check_reduction, reduce_loss, prepare_logits_target
from gradwise.registry import register

__all__ = ["ldr_loss", "LDRLoss", "aldr_loss", "ALDRLoss"]

PAPER = ("Label Distributionally Robust Losses for Multi-class Classification: Consistency, Robustness and "
         "Adaptivity")
NORMALIZE = ("softplus", "l1", "none")


def _normalize(x: Tensor, normalize: str) -> Tensor:
    """The authors' score normalization: scores divided by their row mean (of softplus, or of |h|)."""
    if normalize == "none":
        return x
    s = F.softplus(x) if normalize == "softplus" else x
    den = (s if normalize == "softplus" else s.abs()).mean(1, keepdim=True)
    return s / den.clamp_min(torch.finfo(s.dtype).tiny)


def _margin_diff(s: Tensor, tgt: Tensor, margin: float) -> Tensor:
    """``margin * (1 - e_y) + s - s_y``: the margin-shifted score differences."""
    d = s - s.gather(1, tgt[:, None]) + margin
    return d.scatter(1, tgt[:, None], 0.0)


def _ldr_kl(d: Tensor, lam: Tensor | float) -> Tensor:
    """``lam * log( (1/K) sum_k exp(d_k / lam) )`` per row; ``lam`` a float or an [N] tensor."""
    k = d.shape[1]
    if torch.is_tensor(lam):
        lam = lam[:, None]
        return (torch.logsumexp(d / lam, dim=1) - math.log(k)) * lam[:, 0]
    return (torch.logsumexp(d / lam, dim=1) - math.log(k)) * lam


class _LDRSoftplus(torch.autograd.Function):
    """LDR-KL on ``s = softplus(h) / mean_k softplus(h)_k`` with an analytic backward.

    With ``u_k = (s_k + c [k != y]) / lam`` the loss is
    ``lam * logsumexp(u) - s_y - lam log K``; its gradient w.r.t. ``s`` is
    ``q - e_y`` (``q = softmax(u)``), and through the mean normalization and the
    softplus ``dL/dh_j = (q_j - [j = y] - sum_k (q_k - [k = y]) s_k / K) / m * sigmoid(h_j)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, tgt: Tensor, lam: float, margin: float) -> Tensor:
        k = x.shape[1]
        sp = F.softplus(x)
        m = sp.mean(1, keepdim=True).clamp_min_(torch.finfo(x.dtype).tiny)
        u = sp.div_(m)                                   # s, in place of sp
        s_y = u.gather(1, tgt[:, None])
        u.add_(margin).div_(lam)                          # (s + c) / lam
        u.scatter_(1, tgt[:, None], s_y / lam)            # no margin on the target class
        lse = torch.logsumexp(u, dim=1, keepdim=True)
        ctx.save_for_backward(x, tgt, u, lse, m)
        ctx.lam, ctx.margin = lam, margin
        return (lam * (lse - math.log(k)) - s_y).squeeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x, tgt, u, lse, m = ctx.saved_tensors
        lam, margin, k = ctx.lam, ctx.margin, x.shape[1]
        q = torch.exp(u - lse)                           # softmax(u)
        # sum_k (q_k - e_y) s_k with s_k = lam u_k - c [k != y]
        qs = (q * u).sum(1, keepdim=True) * lam - margin * (1.0 - q.gather(1, tgt[:, None]))
        s_y = lam * u.gather(1, tgt[:, None])
        dot = qs - s_y
        q.sub_(dot / k)
        q.scatter_add_(1, tgt[:, None], torch.full_like(s_y, -1.0))
        q.mul_(torch.sigmoid(x)).mul_(g[:, None] / m)
        return q, None, None, None


class _LDRSoftplusFused(torch.autograd.Function):
    """:class:`_LDRSoftplus` computed by the fused CPU kernel (``losses/csrc/ldr.cpp``), per-row losses.

    Same math and gradient. When the logits need a gradient, the kernel writes
    ``dloss_i/dx_i`` during the forward, while each row is in cache (it depends
    only on row scalars known there), so backward is one multiply by the
    upstream gradient: one read of the logits in all, and per logit two
    ``exp`` and a division instead of 7 transcendental evaluations (in
    float32 the kernel's own ``log1p`` and ``exp`` polynomials: softplus and
    sigmoid within 3 ulp, exp within 1.1 ulp, measured on dense grids). The
    price is one saved [N, C] tensor, as ``F.cross_entropy`` saves its
    log-softmax. Not twice differentiable (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, tgt: Tensor, lam: float, margin: float, keep: Tensor | None = None) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        out = torch.ops.gradwise_losses.ldr_softplus(x, tgt, lam, margin, need_grad, keep)
        if need_grad:
            ctx.save_for_backward(out[1])
        return out[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        (dx,) = ctx.saved_tensors
        return dx * g[:, None], None, None, None, None


class _LDRSoftplusFusedReduced(torch.autograd.Function):
    """The fused kernel with the reduction inside: ``sum_i w_i loss_i`` (``w``: the mean's or sum's weights,
    0 for ignored rows).

    The kernel scales gradient row ``i`` by ``w_i``, so the gradient of the reduced loss is ready after the
    forward. It is kept on ``ctx`` (not as a saved tensor) and handed over at the first backward, multiplied
    in place by the upstream gradient when that is not 1: autograd can take it as ``x.grad`` without a copy,
    and the backward costs no pass over [N, C]. A second backward through a retained graph recomputes it,
    which is why the logits are kept until backward: two [N, C] tensors live between forward and backward
    (``F.cross_entropy`` keeps one, its log-softmax; for a leaf ``x`` that is alive anyway the cost is the
    same). Not twice differentiable (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, tgt: Tensor, lam: float, margin: float, w: Tensor) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        out = torch.ops.gradwise_losses.ldr_softplus(x, tgt, lam, margin, need_grad, w)
        if need_grad:
            ctx.dx = out[1]
            ctx.lam, ctx.margin = lam, margin
            ctx.save_for_backward(x, tgt, w)  # for a second backward; keeps the logits until backward
        return (out[0] * w).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        dx = ctx.__dict__.pop("dx", None)  # dict.pop is atomic: two threads never share the tensor
        if dx is None:  # backward again through a retained graph
            x, tgt, w = ctx.saved_tensors
            dx = torch.ops.gradwise_losses.ldr_softplus(x, tgt, ctx.lam, ctx.margin, True, w)[1]
        if float(g) != 1.0:  # a CPU scalar: no device sync
            dx.mul_(g)
        return dx, None, None, None, None


def _use_fused(x: Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.compiler.is_compiling():  # traced as torch ops, which the compiler fuses itself
        return False
    from gradwise._kernels import family

    return family("losses").available()


@register(kind="loss", paper=PAPER, year=2023, arxiv="2112.14869", code="https://github.com/Optimization-AI/ICML2023_LDR",
          summary="LDR-KL: lam * log mean_k exp((margin*(1-e_y) + s_k - s_y)/lam) on normalized scores",
          info={"reliability": {"ignore_index": True}})
def ldr_loss(logits: Tensor, target: Tensor, *, lam: float = 10.0, margin: float = 0.1, normalize: str = "softplus",
             reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    r"""Label-distributionally robust loss with KL regularization (LDR-KL), Zhu, Ying & Yang (2023).

    Paper: "Label Distributionally Robust Losses for Multi-class Classification:
    Consistency, Robustness and Adaptivity", Dixian Zhu, Yiming Ying, Tianbao
    Yang, ICML 2023, arXiv:2112.14869. Authors' code:
    https://github.com/Optimization-AI/ICML2023_LDR (``loss.py``: ``LDRLoss_V1``,
    ``ALDRLoss_V1``; LibAUC's history up to 2.0.1 has no LDR loss). Golden
    values in ``tests/data/ldr_golden.pt`` come from running that ``loss.py``
    (``tools/golden/make_ldr_golden.py``).

    Math (scores ``s`` over ``K`` classes, label ``y``, margin ``c``, ``lam > 0``)::

        LDR-KL(s, y) = max_{p in simplex} sum_k p_k (c (1 - [k=y]) + s_k - s_y) - lam KL(p || 1/K)
                     = lam * log( (1/K) sum_k exp( (c (1 - [k=y]) + s_k - s_y) / lam ) )

    ``lam -> 0`` gives the Crammer-Singer hinge ``max_k (c[k!=y] + s_k - s_y)``;
    ``lam -> inf`` gives the Weston-Watkins-like average ``mean_k (...)``; with
    ``c = 0``, ``lam = 1`` and raw scores it is cross-entropy minus ``log K``.

    Score normalization (authors' code, not in the paper's definition):
    ``normalize="softplus"`` (default, as ``LDRLoss_V1``) uses
    ``s = softplus(h) / mean_k softplus(h)_k``; ``"l1"`` uses
    ``s = h / mean_k |h_k|`` (``ALDRLoss_V1`` without softplus); ``"none"`` uses
    the raw logits (the paper's formula). Defaults ``lam=10``, ``margin=0.1``
    are what the authors' ``experiment.py`` runs (``--margin 0.1``, the
    ``Lambda`` grid reduced to ``[10]``); the class ``LDRLoss_V1`` itself
    defaults to ``threshold=2.0, Lambda=1.0``. On CPU float32/float64 the
    softplus form runs as a fused kernel that reads the logits once and
    computes the gradient during the forward, reduction included (it keeps the
    gradient, and with ``reduction="mean"``/``"sum"`` the logits, until the
    backward); elsewhere as torch ops with the same analytic backward. Departure: the normalizing mean is
    clamped to the smallest positive float, so an all-zero row gives a finite
    loss instead of NaN. Half-precision inputs are computed in float32.
    Precision: the loss is ``lam * logsumexp(...) - lam log K - s_y``, a
    difference of terms of size ``lam``, so its float32 error grows with
    ``lam`` on every path: about 6e-4 relative at ``lam = 1e3`` and 7e-3 at
    ``1e4`` (random logits; the default is 10). Use float64 for very large
    ``lam``.

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> ldr_loss(logits, y, lam=1.0).backward()
    """
    lam = check_positive("lam", lam)
    margin = check_real("margin", margin)
    check_choice("normalize", normalize, NORMALIZE)
    check_reduction(reduction)
    check_logits_target(logits, target, ignore_index)
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    fused = normalize == "softplus" and _use_fused(x)
    # reduced inside the kernel (rows weighted by the reduction); with every target ignored the mean is
    # reduce_loss's NaN, so that case takes the per-row path (CPU tensors: the check is no device sync)
    if fused and reduction != "none" and x.shape[0] and (mask is None or bool(mask.any())):
        if mask is None:
            w = torch.full((x.shape[0],), 1.0 / x.shape[0] if reduction == "mean" else 1.0, dtype=x.dtype)
        else:
            w = mask.to(x.dtype)
            if reduction == "mean":
                w = w / w.sum()
        return _LDRSoftplusFusedReduced.apply(x, tgt, lam, margin, w).to(logits.dtype)
    if normalize == "softplus":
        per = (_LDRSoftplusFused.apply(x, tgt, lam, margin, None if mask is None else mask.to(x.dtype)) if fused
               else _LDRSoftplus.apply(x, tgt, lam, margin))
    else:
        per = _ldr_kl(_margin_diff(_normalize(x, normalize), tgt, margin), lam)
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class LDRLoss(LossModule):
    """Module twin of :func:`ldr_loss` (arXiv:2112.14869; see it for the math).

    ``LDRLoss(lam=10.0, margin=0.1)(logits, target)``.
    """

    function = ldr_loss


@register(kind="loss", paper=PAPER, year=2023, arxiv="2112.14869", code="https://github.com/Optimization-AI/ICML2023_LDR",
          summary="ALDR-KL: LDR-KL with a per-instance temperature lambda updated from the KL of the prediction",
          info={"reliability": {"ignore_index": True, "expected": {
              "neg_inf_other_class": ("nan", "its default normalization divides the logits by their L1 norm, which a "
                                             "-inf logit makes inf/inf")}}})
def aldr_loss(logits: Tensor, target: Tensor, lambdas: Tensor | None = None, *, lam: float = 10.0,
              alpha: float = 2.0, margin: float = 0.1, softplus: bool = False, reduction: str = "mean", ignore_index: int = -100,
              return_lambdas: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    r"""Adaptive label-distributionally robust loss (ALDR-KL), Zhu, Ying & Yang (2023).

    Paper: "Label Distributionally Robust Losses for Multi-class Classification:
    Consistency, Robustness and Adaptivity", ICML 2023, arXiv:2112.14869.
    Authors' code: ``ALDRLoss_V1`` in their loss file (see :func:`ldr_loss`);
    golden values in ``tests/data/ldr_golden.pt``.

    Each training instance ``i`` keeps its own temperature ``lambda_i``
    (``lambdas``: this batch's values from the previous visit; ``None`` = first
    visit, all ``lam``). With ``lam0 = lam``, ``K`` classes and scores
    ``s = h / mean_k |h_k|`` (``softplus=True``: of ``softplus(h)``), one call::

        q      = normalize_l1( softmax(s / lambda_i) + 1e-5 )
        lambda_i' = lam0 - lam0 * KL(q || 1/K) / (alpha log K)      # closed-form max over lambda
        loss_i = lambda_i' * log( (1/K) sum_k exp((c[k!=y] + s_k - s_y) / lambda_i') )
                 - alpha log K / (2 lam0) * (lambda_i' - lam0)^2

    ``lambda_i'`` is detached (no gradient flows through it), as in the code;
    confident predictions (large KL) get a small temperature (close to the
    hinge), uncertain ones a large one (close to the robust average).

    Returns the reduced loss, or ``(loss, new_lambdas)`` with
    ``return_lambdas=True`` (store them for the next visit; :class:`ALDRLoss`
    does this for you). Defaults ``lam=10, alpha=2, margin=0.1,
    softplus=False`` are what the authors' ``experiment.py`` and
    ``run_demo_ALDR.sh`` run (``softplus=True`` there for CIFAR-100 only); the
    class ``ALDRLoss_V1`` itself defaults to ``threshold=1, Lambda=1, alpha=1``. Departures: the normalizing mean is clamped to the smallest
    positive float, and ``lambda_i'`` to at least ``1e-6 * lam0`` (with
    ``alpha = 1`` and a near one-hot prediction it can round to 0 in float32,
    which would divide by zero). Half-precision inputs are computed in float32.

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> loss, lambdas = aldr_loss(logits, y, return_lambdas=True)
        >>> loss.backward()
    """
    lam0 = check_positive("lam", lam)
    alpha = check_positive("alpha", alpha)
    margin = check_real("margin", margin)
    check_reduction(reduction)
    check_logits_target(logits, target, ignore_index)
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    n, k = x.shape
    if lambdas is None:
        lambdas = torch.full((n,), lam0, dtype=x.dtype, device=x.device)
    else:
        if not torch.is_tensor(lambdas) or not lambdas.is_floating_point() or lambdas.shape != (n,):
            raise ValueError(f"Invalid lambdas: expected a floating-point tensor of shape [{n}]")
        lambdas = lambdas.to(x.dtype)
    s = _normalize(x, "softplus" if softplus else "l1")
    logk = math.log(k) if k > 1 else 1.0
    with torch.no_grad():
        q = torch.softmax(s / lambdas[:, None], dim=1) + 1e-5
        q = q / q.sum(1, keepdim=True)
        kl = (q * torch.log(k * q)).sum(1)
        new = (lam0 - lam0 * kl / (alpha * logk)).clamp_min(1e-6 * lam0)
    extra = -0.5 * alpha * logk / lam0 * (new - lam0).square()
    per = _ldr_kl(_margin_diff(s, tgt, margin), new) + extra
    out = reduce_loss(per, reduction, mask).to(logits.dtype)
    if return_lambdas:
        if mask is not None:
            new = torch.where(mask, new, lambdas)
        return out, new
    return out


class ALDRLoss(LossModule):
    """Module twin of :func:`aldr_loss` (arXiv:2112.14869), keeping every instance's temperature.

    ``crit = ALDRLoss(num_samples, lam=10.0, alpha=2.0)``; ``crit(logits, target, index)``
    where ``index`` [N] holds the dataset indices of the batch. The
    temperatures live in the buffer ``crit.lambdas`` (saved in ``state_dict``).
    """

    function = aldr_loss
    #: the module always asks :func:`aldr_loss` for the new temperatures (it stores them)
    excluded_arguments = ("return_lambdas",)

    def __init__(self, num_samples: int, *, lam: float = 10.0, alpha: float = 2.0, margin: float = 0.1,
                 softplus: bool = False, reduction: str = "mean", ignore_index: int = -100) -> None:
        """``num_samples``: the dataset size (one temperature per instance, all starting at ``lam``);
        the keyword arguments are :func:`aldr_loss`'s, with its defaults."""
        check_int("num_samples", num_samples, lo=1)
        super().__init__(lam=lam, alpha=alpha, margin=margin, softplus=softplus, reduction=reduction,
                         ignore_index=ignore_index)
        lam0 = check_positive("lam", lam)
        self.register_buffer("lambdas", torch.full((num_samples,), lam0))

    def forward(self, logits: Tensor, target: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        index = index.long()
        loss, new = aldr_loss(logits, target, self.lambdas[index], return_lambdas=True, **self.kwargs)
        self.lambdas[index] = new.detach().to(self.lambdas.dtype)
        return loss
