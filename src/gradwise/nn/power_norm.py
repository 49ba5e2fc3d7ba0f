"""PowerNorm (Shen et al., 2020): batch normalization for transformers without mean subtraction, with a running
quadratic mean in the forward pass and an approximate backward pass."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from gradwise._validate import check_int, check_positive, check_unit
from gradwise.registry import register

__all__ = ["PowerNorm"]

# The authors' GroupScaling1D is built with its default eps whatever the layer's eps is.
GROUP_EPS = 1e-5


class _PowerNormFn(torch.autograd.Function):
    """Training-mode PowerNorm: group scaling, the power normalization and the affine map in one function, with
    the authors' approximate backward (group scaling differentiated exactly, as autograd does in their code).

    Updates ``running_phi`` and ``iters`` in the forward pass and ``ema_gz`` in the backward pass, in place,
    without host synchronization (the warm-up branches are ``torch.where`` on the ``iters`` tensor)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_phi, ema_gz, iters, valid, eps, afwd, abkw, warmup_iters, groups):
        t, b, c = x.shape
        n, cg = t * b, c // groups
        xg = x.reshape(n, groups, cg)
        x2 = xg * xg
        inv = torch.reciprocal(x2.mean(-1) + GROUP_EPS)                     # (n, G): 1 / second moment per token
        r = inv.sqrt()
        # sums of the scaled inputs' squares xs^2 = x^2 * inv, over the valid tokens (the batch statistic) and
        # over all tokens (for the backward pass), in one pass over x^2
        phi = running_phi.reshape(c)
        if valid is None:
            sums = torch.einsum("ngk,ng->gk", x2, inv)
            var = (sums / n).reshape(c)
            sq_all = sums.reshape(c)
        else:
            v = valid.reshape(n, 1).to(x.dtype)
            sums = torch.einsum("ngk,ngj->gjk", x2, torch.stack((inv * v, inv), -1))
            count = v.sum()
            # a batch with no valid position has no statistic: it takes running_phi's (which then stays
            # unchanged) instead of the authors' 0 / 0 = nan, which would poison running_phi for good
            var = torch.where(count > 0, sums[:, 0].reshape(c) / count.clamp(min=1), phi.to(x.dtype))
            sq_all = sums[:, 1].reshape(c)
        xs = (xg * r.unsqueeze(-1)).reshape(t, b, c)
        it = iters.to(torch.float64)  # a step count: float16/bfloat16 cannot hold 10001
        used = torch.where(it <= warmup_iters, var, phi.to(x.dtype))        # batch statistic during warm-up
        s = torch.rsqrt(used + eps)
        with torch.no_grad():
            # the authors apply the cumulative mean (before the last warm-up step) and then the EMA
            cum = torch.where(it < warmup_iters, phi * (it - 1) / it + var / it, phi)
            running_phi.copy_((afwd * cum + (1 - afwd) * var).reshape(running_phi.shape))
        y = torch.addcmul(bias, xs, s * weight)
        ctx.save_for_backward(xs, x2, inv, weight, s, torch.rsqrt(var + eps), sq_all)
        ctx.ema_gz, ctx.abkw, ctx.groups = ema_gz, abkw, groups
        return y

    @staticmethod
    @once_differentiable  # the approximate backward has no derivative of its own
    def backward(ctx, gy):
        # written to allocate few (N, C) tensors: on CPU each fresh one costs more than a read pass
        xs, x2, inv, weight, s, sv, sq_all = ctx.saved_tensors
        ema_gz, k, groups = ctx.ema_gz, 1 - ctx.abkw, ctx.groups
        t, b, c = xs.shape
        n, cg = t * b, c // groups
        gyf = gy.reshape(n, c)
        xsf = xs.reshape(n, c)
        ema = ema_gz.reshape(c).to(xs.dtype, copy=True)  # its value before this step's update
        p = gyf * xsf
        s1 = p.sum(0)                                                       # sum of gy * xs over all tokens
        grad_w = s * s1
        grad_b = gyf.sum(0)
        with torch.no_grad():
            # ema_gz += mean over all T*B positions of (g - k ema z) z, with g = gy w, z = xs s
            delta = (weight * grad_w - k * ema * s * s * sq_all) / n
            ema_gz.add_(delta.reshape(ema_gz.shape))
        # u = dL/dxs = (g - k ema z) / sqrt(var + eps) = gy a - xs cc: the batch var, also after warm-up
        a = weight * sv
        cc = k * ema * s * sv
        # m = mean over each group of u * xs, from reductions of tensors at hand
        pa = torch.matmul(p.reshape(n, groups, cg).transpose(0, 1), a.reshape(groups, cg, 1))
        x2c = torch.matmul(x2.transpose(0, 1), cc.reshape(groups, cg, 1))
        m = (pa.squeeze(-1).t() - x2c.squeeze(-1).t() * inv) / cg
        # through the group scaling xs = x r, r = (mean_g x^2 + eps)^-1/2: gx = r (u - xs m)
        gx = gyf * a
        gx.addcmul_(xsf, cc, value=-1)
        gxg = gx.view(n, groups, cg)
        gxg.addcmul_(xs.reshape(n, groups, cg), m.unsqueeze(-1), value=-1)
        gxg.mul_(inv.sqrt().unsqueeze(-1))
        gx = gx.view(t, b, c)
        return gx, grad_w, grad_b, None, None, None, None, None, None, None, None, None


class _PowerNormFusedFn(torch.autograd.Function):
    """:class:`_PowerNormFn` as two kernels (``nn/csrc/power_norm.cpp``): the forward reads ``x`` twice during
    warm-up (once after it) and the backward reads ``x`` and ``dL/dy`` once. It saves ``x`` and the per-token
    group scale instead of the scaled input and ``x^2``, and takes ``pad_mask`` (B, T) as it is."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_phi, ema_gz, iters, pad_mask, eps, afwd, abkw, warmup_iters, groups):
        y, r, stats = torch.ops.gradwise_nn.power_norm_forward(x, weight, bias, running_phi, iters, pad_mask, eps,
                                                               afwd, warmup_iters, groups)
        ctx.save_for_backward(x, r, stats, weight)
        ctx.ema_gz, ctx.abkw, ctx.groups = ema_gz, abkw, groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, r, stats, weight = ctx.saved_tensors
        gx, grad_w, grad_b = torch.ops.gradwise_nn.power_norm_backward(gy.contiguous(), x, r, stats, weight,
                                                                       ctx.ema_gz, ctx.abkw, ctx.groups)
        return gx, grad_w, grad_b, None, None, None, None, None, None, None, None, None


def _use_fused(x: Tensor, tensors: list[Tensor], iters: Tensor, pad_mask: Tensor | None) -> bool:
    """Whether the kernels take this call: CPU float32/float64, every parameter and buffer of ``x``'s dtype on
    the CPU and contiguous (the kernels check that and would raise), not while compiling (the torch path
    traces, and the compiler fuses it)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != x.dtype or not t.is_contiguous() for t in tensors):
        return False
    if iters.device.type != "cpu" or iters.dtype != torch.long or (pad_mask is not None and
                                                                    pad_mask.device.type != "cpu"):
        return False
    if torch.compiler.is_compiling():
        return False
    from gradwise._kernels import family

    return family("nn").available()


@register(kind="module", paper="PowerNorm: Rethinking Batch Normalization in Transformers", year=2020,
          arxiv="2003.07845", code="https://github.com/sIncerass/powernorm/tree/9ea6226a3203d5d6fcee07a5c6dec38ec6bc5e9f",
          aliases=("powernorm", "mask_powernorm"),
          summary="batch normalization for transformers: running quadratic mean, no centring, approximate backward")
class PowerNorm(nn.Module):
    r"""Power Normalization for (T, B, C) sequence activations, a drop-in for the norm of a transformer layer.

    Paper: Shen, Yao, Gholami, Mahoney, Keutzer, "PowerNorm: Rethinking Batch
    Normalization in Transformers", ICML 2020, arXiv:2003.07845. Authors' code:
    ``MaskPowerNorm`` in ``fairseq/modules/norms/mask_powernorm.py`` of
    https://github.com/sIncerass/powernorm @ 9ea6226; this layer computes what
    it computes (tested against golden data from it), forward and backward, in
    training and eval, across the warm-up boundary.

    Math (training step ``t``, counted by the buffer ``iters``; ``x`` of shape
    (T, B, C), ``V`` the positions that are not padding)::

        xs    = x / sqrt(mean_{c in group}(x^2) + 1e-5)      group scaling per token (group_num groups of C)
        var_c = mean_{(t,b) in V} xs_c^2                      batch quadratic mean: no mean is subtracted
        phi   = var                if t <= warmup_iters       the batch statistic during warm-up,
                running_phi        otherwise                  the running statistic after it
        z     = xs / sqrt(phi + eps),        y = weight * z + bias
        running_phi <- mean of the batch statistics so far    (only while t < warmup_iters), then always
        running_phi <- alpha_fwd running_phi + (1 - alpha_fwd) var

    Backward (the paper's approximate backpropagation; ``g = weight * dL/dy``)::

        g~      = g - (1 - alpha_bkw) * ema_gz * z
        dL/dxs  = g~ / sqrt(var + eps)                         the batch var, also after warm-up
        ema_gz <- ema_gz + mean_{all (t,b)} (g~ * z)           an accumulation, as in the authors' code
        dL/dweight = sum dL/dy * z,   dL/dbias = sum dL/dy

    and ``dL/dx`` from ``dL/dxs`` through the group scaling exactly. In eval
    mode ``y = weight * xs / sqrt(running_phi + eps) + bias`` (ordinary
    autograd). The statistics ``var`` skip padded positions (``pad_mask``);
    the ``ema_gz`` mean and the output cover every position, padding
    included, as the authors' code does.

    The paper (§3) traces BatchNorm's failure in transformers to the large
    fluctuation of batch statistics of NLP data, relaxes the zero mean and
    replaces the batch variance by a running quadratic mean whose
    dependence on the input the approximate backward accounts for (through
    ``ema_gz``). Only the abstract and the opening of §3 were readable here;
    the algorithm above is the authors' released code.

    Args:
        num_features: ``C``.
        eps: added to the quadratic mean (default 1e-5).
        alpha_fwd: EMA factor of ``running_phi`` (default 0.9).
        alpha_bkw: factor of the backward's ``ema_gz`` correction (default 0.9).
        warmup_iters: training steps that normalize with the batch statistic (default 10000).
        group_num: groups of channels for the per-token group scaling; must divide ``C`` (default 1).

    Inputs: ``x`` of shape (T, B, C), or (B, C) taken as T = 1; ``pad_mask``
    (B, T) bool, True at padding. Buffers ``running_phi`` and ``ema_gz``
    (1, C, 1, 1) and ``iters`` (1,) int64 have the authors' names and shapes,
    so their state dicts load.

    Departures from the authors' code: none in the math. The warm-up branch is
    a ``torch.where`` on ``iters`` instead of ``iters.item()`` (no host sync);
    the batch statistic is a masked sum instead of boolean indexing (no
    data-dependent shape); the three steps run in one autograd function whose
    backward differentiates the group scaling by hand (fewer passes: on CPU in
    float32/float64 two kernels, ``nn/csrc/power_norm.cpp``); the
    unused ``affine`` and ``is_encoder`` arguments are dropped. Their group
    scaling's eps is fixed at 1e-5 whatever ``eps`` is; so is ours. The torch
    path's backward keeps ``x^2`` besides the scaled input (one more activation
    than their autograd graph) so that it needs fewer passes over the data.
    A batch whose positions are all padding has no statistic: it uses
    ``running_phi`` and leaves it unchanged (theirs divides 0 by 0 and fills
    ``running_phi`` with NaN for good). The backward is not differentiable
    again (``once_differentiable``: double backward raises). Under
    ``torch.compile`` the training step runs eagerly (a graph break): it
    updates buffers inside an autograd function, which compiled graphs did
    not reproduce; eval mode compiles.

    Speed (``benchmarks/layer_step.py``, T=128, B=32, C=256, forward +
    backward, one CPU thread): on CPU in float32/float64 the forward and the
    backward are one kernel each (the forward reads ``x`` twice during
    warm-up, once after; the backward reads ``x`` and ``dL/dy`` once), about
    0.90x ``nn.BatchNorm1d`` on the same tokens (0.93x with ``pad_mask``)
    (target 1.3x). Elsewhere and with ``GRADWISE_FUSED=0`` the torch ops run
    (2.35x BatchNorm1d on CPU). The kernels save ``x`` and
    the per-token group scale rather than the scaled input and ``x^2``.

    Example::

        >>> norm = PowerNorm(256, warmup_iters=4000)
        >>> y = norm(x, pad_mask=pad)       # x: (T, B, 256), pad: (B, T) True at padding
    """

    def __init__(self, num_features: int, eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
                 warmup_iters: int = 10000, group_num: int = 1) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, lo=1)
        self.eps = check_positive("eps", eps)
        self.alpha_fwd = check_unit("alpha_fwd", alpha_fwd)
        self.alpha_bkw = check_unit("alpha_bkw", alpha_bkw)
        self.warmup_iters = check_int("warmup_iters", warmup_iters, lo=0)
        self.group_num = check_int("group_num", group_num, lo=1)
        if num_features % group_num:
            raise ValueError(f"Invalid group_num: {group_num} (accepted: a divisor of num_features={num_features})")
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_phi", torch.ones(1, num_features, 1, 1))
        self.register_buffer("ema_gz", torch.zeros(1, num_features, 1, 1))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
                f"warmup_iters={self.warmup_iters}, group_num={self.group_num}")

    def _train_step(self, x: Tensor, pad_mask: Tensor | None) -> Tensor:
        self.iters.add_(1)
        if _use_fused(x, [self.weight, self.bias, self.running_phi, self.ema_gz], self.iters, pad_mask):
            pad = None if pad_mask is None else pad_mask.contiguous()
            return _PowerNormFusedFn.apply(x.contiguous(), self.weight, self.bias, self.running_phi, self.ema_gz,
                                           self.iters, pad, self.eps, self.alpha_fwd, self.alpha_bkw,
                                           self.warmup_iters, self.group_num)
        valid = None if pad_mask is None else ~pad_mask.t()
        return _PowerNormFn.apply(x, self.weight, self.bias, self.running_phi, self.ema_gz, self.iters, valid,
                                  self.eps, self.alpha_fwd, self.alpha_bkw, self.warmup_iters, self.group_num)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        two_d = x.dim() == 2
        if x.dim() not in (2, 3) or x.shape[-1] != self.num_features:
            raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: (T, B, {self.num_features}) or "
                             f"(B, {self.num_features}))")
        if x.dtype != self.weight.dtype:
            raise ValueError(f"Invalid x: dtype {x.dtype} (accepted: the layer's dtype, {self.weight.dtype}; convert "
                             "the layer with .to(dtype))")
        if two_d:
            x = x.unsqueeze(0)
        t, b, c = x.shape
        if t * b == 0:
            raise ValueError(f"Invalid x: shape {tuple(x.shape)} has no positions (accepted: T >= 1 and B >= 1)")
        if pad_mask is not None and (pad_mask.dtype != torch.bool or pad_mask.shape != (b, t)):
            raise ValueError(f"Invalid pad_mask: {pad_mask.dtype} of shape {tuple(pad_mask.shape)} (accepted: "
                             f"torch.bool of shape (B, T) = ({b}, {t}), True at padding)")
        if self.training and torch.compiler.is_compiling():
            # Eager under torch.compile: the step updates buffers inside an autograd function (running_phi in
            # its forward, ema_gz in its backward), which compiled graphs did not reproduce (wrong weight grads
            # and ema_gz past warm-up); a graph break keeps it exact. (Wrapped here, not as a decorator: that
            # would import torch._dynamo, 2 s, with gradwise.nn.)
            y = torch.compiler.disable(self._train_step)(x, pad_mask)
        elif self.training:
            y = self._train_step(x, pad_mask)
        elif _use_fused(x, [self.weight, self.bias, self.running_phi, self.ema_gz], self.iters, pad_mask) and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad or
                                                         self.bias.requires_grad)):
            # eval without autograd (inference): one kernel pass; with autograd the torch ops below differentiate
            y = torch.ops.gradwise_nn.power_norm_eval(x.contiguous(), self.weight, self.bias, self.running_phi,
                                                      self.eps, self.group_num)
        else:
            g = self.group_num
            xg = x.reshape(t, b, g, c // g)
            xs = (xg * torch.rsqrt((xg * xg).mean(-1, keepdim=True) + GROUP_EPS)).reshape(t, b, c)
            scale = torch.rsqrt(self.running_phi.reshape(c) + self.eps) * self.weight
            y = torch.addcmul(self.bias, xs, scale)
        return y.squeeze(0) if two_d else y
