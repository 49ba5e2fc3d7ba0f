"""AdamW: Adam with decoupled weight decay, the baseline every paper here compares to."""
from __future__ import annotations

import torch

from gradwise._validate import check_range
from gradwise.optim import _adam as A
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim._state import zeros_state
from gradwise.optim.state_codecs import Blockwise8bitStateCodec
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
    and devices take the ``_foreach_`` path.

    With ``state_bits=8`` the fused path runs gradwise's own kernel
    (``torch.ops.gradwise_fused.adamw_8bit_``, ``optim/csrc/adamw8bit.cpp``)
    on each parameter with 8-bit state: per block it dequantizes both
    moments from their codes and absmax, applies the ``_foreach_`` path's
    update in its rounding (torch's lerp and addcmul fuse a multiply-add on
    AVX2/AVX-512 CPUs, so does the kernel), writes the parameter and
    quantizes the moments back (:mod:`gradwise.optim.quantization`'s rule).
    From the same state it gives the ``_foreach_`` path's codes and absmax
    bit for bit; parameters can differ in the last bit, as torch's CPU sqrt
    is not always correctly rounded and the kernel's is. About 12x faster
    than decode, update, encode on one thread (``benchmarks/state_bits.py``).
    Without the compiled kernels, with gradient or update transforms, or
    with ``fused=False``, the state is decoded, updated and encoded instead.

    With the gradwise extras
    (``grad_transforms``, ``update_transforms``, ``state_codec``,
    ``skip_nonfinite``), this is the plain baseline to compare a method with.

    Args:
        params: iterable of parameters or parameter groups.
        lr: learning rate (default 1e-3).
        betas: (b1, b2) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled decay coefficient (default 1e-2).
        amsgrad: use the running maximum of ``v`` (default False).
        independent_weight_decay: decay independent of the learning rate's
            size, scaled only by the schedule (default False: torch's rule); see below.
        peak_lr: the ``eta`` of independent decay (default None: the group's
            ``lr`` when the group is added, before any scheduler has changed it).
        maximize, fused, foreach, grad_transforms, update_transforms,
        state_codec, skip_nonfinite: see :class:`GradwiseOptimizer`.

    Independent weight decay (``independent_weight_decay=True``): Wortsman
    et al., "Small-scale proxies for large-scale Transformer training
    instabilities", 2023, arXiv:2309.14322, §3.2.2, after Loshchilov &
    Hutter's recommendation. With ``Delta`` the Adam update, ``eta`` the peak
    learning rate and ``s_t = lr_t / eta`` the schedule's factor at step t,
    torch's (and optax's) rule decays by ``s_t * eta * lambda``, so a larger
    learning rate also decays more; independent decay removes ``eta``::

        default:      p <- p - s_t * eta * (Delta + lambda p)
        independent:  p <- p - s_t * eta * Delta - s_t * lambda p

    i.e. the step above with ``wd = lambda / eta`` (how the authors' NanoDO,
    https://github.com/google-deepmind/nanodo commit 10aefde,
    ``optimizer.py``, implements its ``independent_weight_decay``: it passes
    ``weight_decay / peak_learning_rate`` to ``optax.adamw``). Both paths
    (``_foreach_`` and torch's fused kernel) get that ``wd``, so they stay
    the same computation. ``eta`` is ``peak_lr`` (per group), by default the
    group's ``lr`` when the optimizer (or ``add_param_group``) receives it:
    pass ``peak_lr`` when a scheduler changes ``lr`` before that (e.g.
    ``OneCycleLR``, which starts below its peak). ``lambda`` is
    ``weight_decay``, so values are on the paper's scale (around 1e-4), not
    torch's (1e-2, times ``lr``): the default ``weight_decay=1e-2`` with
    independent decay shrinks weights by 1% a step at the peak.

    Example::

        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        opt = AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4, independent_weight_decay=True)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 independent_weight_decay: bool = False, peak_lr: float | None = None, **kwargs) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      independent_weight_decay=independent_weight_decay, peak_lr=peak_lr),
                         **kwargs)

    # torch.optim.AdamW's state_dicts lack these: they load as torch's rule
    _OPTIONAL_GROUP_KEYS = GradwiseOptimizer._OPTIONAL_GROUP_KEYS | {"independent_weight_decay", "peak_lr"}

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("independent_weight_decay", False)
            group.setdefault("peak_lr", None)

    def _validate_group(self, group):
        super()._validate_group(group)
        if group.get("peak_lr") is not None:
            check_range("peak_lr", group["peak_lr"], 0.0, lo_open=True)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("independent_weight_decay") and group.get("peak_lr") is None:
            group["peak_lr"] = float(group["lr"])  # eta: the lr as given, before any scheduler

    @staticmethod
    def _decay(group) -> float:
        """The coefficient the step multiplies by ``lr``: ``lambda``, or ``lambda / eta`` for independent decay."""
        wd = group["weight_decay"]
        if not group.get("independent_weight_decay", False):
            return wd
        peak = group.get("peak_lr")
        return wd / (peak if peak is not None else group.get("initial_lr", group["lr"]))

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
        # torch's kernel reads (never writes) each step count from a float32 tensor, already advanced as
        # here: one tensor per distinct count, not one per parameter per step
        by_count: dict[float, torch.Tensor] = {}
        for count in {float(s["step"]) for s in states}:
            by_count[count] = torch.tensor(count, dtype=torch.float32)
        steps = [by_count[float(s["step"])] for s in states]
        torch._fused_adamw_(*work, steps, amsgrad=amsgrad, lr=group["lr"], beta1=b1, beta2=b2,
                            weight_decay=self._decay(group), eps=group["eps"], maximize=False,
                            grad_scale=None, found_inf=None)  # maximize: the base negated the gradients
        for i in odd:
            for ts, ws in zip(lists, work):
                if ts and ws[i] is not ts[i] and ts is not grads:
                    ts[i].copy_(ws[i])

    # 8-bit state (state_bits=8) on the fused path: gradwise's adamw_8bit_ kernel reads the codes and absmax,
    # updates and writes them back block by block, instead of decode -> torch's kernel -> encode (3 passes
    # and two float copies of each moment)
    def _takes_stored_state(self, group, param, state):
        codec = self.state_codec
        if not (isinstance(codec, Blockwise8bitStateCodec) and _fused.available()):
            return False
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")
        for k in keys:
            x = state.get(k)
            if not (isinstance(x, tuple) or (isinstance(x, torch.Tensor) and codec.quantized(x, param))):
                return False
        # the kernel's maps: the codec's signed one for exp_avg, unsigned for the second moments
        return codec.signed("exp_avg") and not codec.signed("exp_avg_sq") and (
            not group["amsgrad"] or not codec.signed("max_exp_avg_sq"))

    def _step_fused_stored(self, group, params, grads, states):
        codec = self.state_codec
        (b1, b2), amsgrad = group["betas"], group["amsgrad"]
        smap, slut = codec.qmap("exp_avg", params[0].device)
        umap, ulut = codec.qmap("exp_avg_sq", params[0].device)
        steps = [s["step"] for s in states]
        wd = self._decay(group)

        def q8(key):
            return [s[key][0] for s in states], [s[key][1] for s in states]
        vmax = q8("max_exp_avg_sq") if amsgrad else ([], [])
        # p * (1 - lr wd) only with decay, as adamw_foreach_ (p * 1.0 is p)
        _fused.ops().adamw_8bit_(params, grads, *q8("exp_avg"), *q8("exp_avg_sq"), *vmax, smap, slut, umap, ulut,
                                 A.step_sizes(group["lr"], steps, b1), A.bc2_sqrts(steps, b2), b1, b2,
                                 group["eps"], 1.0 - group["lr"] * wd if wd != 0 else 1.0, codec.block_size)

    def _step_foreach(self, group, params, grads, states):
        A.adamw_foreach_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                         [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],
                         [s["step"] for s in states], group["lr"], *group["betas"], group["eps"],
                         self._decay(group))
