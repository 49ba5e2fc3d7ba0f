"""⊥Grad (perpendicular gradients) and ⊥AdamW, from "Grokking at the Edge of Numerical Stability"."""
from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

from gradwise._validate import check_range
from gradwise.optim import _adam as A
from gradwise.optim import _functional as F
from gradwise.optim import _fused
from gradwise.optim._base import GradwiseOptimizer, eager_under_compile
from gradwise.optim._state import picklable_state, zeros_state
from gradwise.optim._transforms import GradTransform, check_transforms
from gradwise.registry import register

__all__ = ["PerpendicularGrad", "OrthoGrad", "OrthoAdamW"]

_PAPER = "Grokking at the Edge of Numerical Stability"
_CODE = "https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability"


@register(kind="grad-transform", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="Removes the gradient's component along its weight, keeping its norm (⊥Grad)")
class PerpendicularGrad(GradTransform):
    r"""⊥Grad as a gradient transform for any gradwise optimizer (Prieto et al., 2025, arXiv 2501.04697).

    Per tensor, flattened: ``g_perp = g - <w,g>/(<w,w> + eps) w``, rescaled to
    ``||g||`` (see :func:`gradwise.optim._functional.perpendicular`). Stops the
    naive loss minimization (growth of the weights along their own direction)
    that the paper shows drives softmax collapse and delays grokking.

    Where the perpendicular part is rounding noise (always for one-element
    tensors, whose gradient is parallel to them; and for any gradient
    parallel to its weight to working precision) the result is 0, what the
    formula gives in exact arithmetic; the authors' code rescales that noise
    to ``|g|``, an update of arbitrary sign (see
    :func:`gradwise.optim._functional.perp_factors`). Both of
    :class:`OrthoAdamW`'s update paths apply the same rule.

    Example::

        opt = Lion(model.parameters(), lr=1e-4, grad_transforms=[PerpendicularGrad()])
    """

    key = "perp"

    def __init__(self, eps: float = 1e-30, renormalize: bool = True) -> None:
        check_range("eps", eps, 0.0)
        if not isinstance(renormalize, bool):
            raise ValueError(f"Invalid renormalize: {renormalize!r} (accepted: True or False)")
        self.eps = eps
        self.renormalize = renormalize

    def apply(self, params, grads, states, group):
        return F.perpendicular(params, grads, self.eps, self.renormalize)


def _unhooked_step(opt: Optimizer) -> Callable:
    """``opt.step`` without torch's hook wrapper (global and ``opt``'s own step hooks).

    torch wraps every Optimizer class's ``step`` so that it runs the global
    step hooks; the wrapper's step already ran them once for this step.
    """
    fn = type(opt).step
    if getattr(fn, "hooked", False):
        fn = getattr(fn, "__wrapped__", fn)
    return functools.partial(fn, opt)


def _accepts(cls: type, name: str) -> bool:
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return True
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


@register(kind="optimizer-wrapper", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="Wraps any torch optimizer: gradients made perpendicular to the weights before its step",
          info={
              # the wrapper's cases name the base optimizer they wrap
              "test_cases": {"OrthoGrad": {"kwargs": dict(base_optimizer_cls=torch.optim.AdamW, lr=1e-2)}}})
class OrthoGrad(Optimizer):
    r"""⊥Grad in front of any ``torch.optim.Optimizer`` (Prieto et al., 2025, arXiv 2501.04697).

    Same signature as the authors' wrapper: ``OrthoGrad(params,
    base_optimizer_cls, **base_optimizer_args)``; every other keyword argument
    (``eps`` included) goes to the base optimizer. Before each base step every
    ``p.grad`` is replaced, in place (the base optimizer reads ``p.grad``), by
    ``g - <w,g>/(<w,w> + perp_eps) w`` rescaled to the norm of ``g`` (0 where
    that perpendicular part is rounding noise, see
    :func:`gradwise.optim._functional.perp_factors`), then by the
    ``grad_transforms`` in order.

    Args:
        params: parameters or parameter groups.
        base_optimizer_cls: the optimizer stepped on the projected gradients
            (default ``torch.optim.SGD``).
        perp_eps: the projection's eps (default 1e-30, the authors' constant).
        grad_transforms: gradwise gradient transforms (e.g. ``[SpikeClip()]``)
            run after the projection; their state is kept by the wrapper and
            saved in ``state_dict()["grad_transforms_state"]``.
        **base_optimizer_args: the base optimizer's arguments.

    Deprecated: ``eps`` used to be the projection's eps and shadowed the base
    optimizer's ``eps``. It now goes to the base optimizer; where the base
    takes no ``eps`` (e.g. SGD) it is still read as ``perp_eps``, with a
    ``FutureWarning``.

    It behaves as one ``Optimizer``: ``param_groups`` and ``state`` are the base
    optimizer's (LR schedulers work on the wrapper); step pre/post hooks
    (global ones included) fire once per step, state_dict and
    load_state_dict hooks registered on the wrapper run; hooks registered on
    ``base_optimizer`` directly do not run for its step. ``copy.deepcopy`` and
    pickling keep the base optimizer. Complex parameters are projected on their
    ``view_as_real`` views (the real inner product), as torch.optim treats them.

    Departure from the authors' code: a closure is evaluated *before* the
    projection; the authors pass it to the base step, which recomputes the
    gradients and so silently discards the projection.

    Example::

        opt = OrthoGrad(model.parameters(), torch.optim.SGD, lr=1e-2, momentum=0.8)
    """

    def __init__(self, params, base_optimizer_cls: type[Optimizer] = torch.optim.SGD, *,
                 perp_eps: float | None = None, grad_transforms: Sequence[GradTransform] = (),
                 **base_optimizer_args: Any) -> None:
        if not (isinstance(base_optimizer_cls, type) and issubclass(base_optimizer_cls, Optimizer)):
            raise ValueError(f"Invalid base_optimizer_cls: {base_optimizer_cls!r} "
                             "(accepted: a torch.optim.Optimizer subclass)")
        if "eps" in base_optimizer_args and not _accepts(base_optimizer_cls, "eps"):
            eps = base_optimizer_args.pop("eps")
            warnings.warn(f"OrthoGrad(eps=...) is deprecated as the projection's eps ({base_optimizer_cls.__name__} "
                          "takes no eps, so it is read as perp_eps): write perp_eps=...", FutureWarning, stacklevel=2)
            if perp_eps is None:
                perp_eps = eps
        perp_eps = 1e-30 if perp_eps is None else perp_eps
        check_range("perp_eps", perp_eps, 0.0)
        check_transforms(grad_transforms)
        self.transform = PerpendicularGrad(eps=perp_eps)
        self.grad_transforms = tuple(grad_transforms)
        # per-parameter state of the grad_transforms (kept apart: the base optimizer
        # initializes its own state when it finds a parameter's state empty)
        self.transform_state: dict[torch.Tensor, dict[str, Any]] = {}
        super().__init__(params, {})
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_optimizer_args)
        # one source of truth for groups and state: the base optimizer's
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults = self.base_optimizer.defaults

    def __getstate__(self) -> dict[str, Any]:
        # torch keeps only defaults/state/param_groups: keep the base optimizer and transforms too
        return picklable_state(self, super().__getstate__())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "base_optimizer" not in self.__dict__:  # during __init__, before the base exists
            return super().add_param_group(param_group)
        self.base_optimizer.add_param_group(param_group)

    @eager_under_compile  # graph-breaks cleanly under torch.compile, as GradwiseOptimizer.step
    @torch.no_grad()
    def step(self, closure=None):
        """Project the gradients (then run ``grad_transforms``), then step the base optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None and p.numel() > 0]
            buckets: dict[tuple, list] = {}
            for p in ps:
                v = torch.view_as_real(p) if p.is_complex() else p
                buckets.setdefault((v.device, v.dtype), []).append((p, v))
            for bucket in buckets.values():
                views = [v for _, v in bucket]
                grads = [torch.view_as_real(p.grad) if p.is_complex() else p.grad for p, _ in bucket]
                new = self.transform.apply(views, grads, [], group)
                if self.grad_transforms:
                    states = []
                    for p, v in bucket:
                        st = self.transform_state.setdefault(p, {})
                        if not st:
                            st["step"] = 0
                            for t in self.grad_transforms:
                                st.update({f"{t.key}.{k}": x for k, x in t.init_state(v).items()})
                        st["step"] += 1
                        states.append(st)
                    for t in self.grad_transforms:
                        new = t.apply(views, new, states, group)
                torch._foreach_copy_(grads, new)
        _unhooked_step(self.base_optimizer)()
        return loss

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state_dict (plus ``grad_transforms_state``), under this wrapper's hooks."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.base_optimizer.state_dict()
        if self.grad_transforms:
            index = {}
            for p in (p for g in self.param_groups for p in g["params"]):
                index.setdefault(id(p), len(index))
            sd["grad_transforms_state"] = {index[id(p)]: dict(st) for p, st in self.transform_state.items()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer, under this wrapper's load_state_dict hooks.

        A state_dict without ``grad_transforms_state`` (e.g. saved without
        transforms) starts the transforms' state afresh.
        """
        state_dict = state_dict.copy()  # shallow, as torch.optim (the pre hooks may edit it)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = state_dict.pop("grad_transforms_state", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.transform_state = {}
        if saved and self.grad_transforms:
            params = []
            for p in (p for g in self.param_groups for p in g["params"]):
                if all(p is not q for q in params):
                    params.append(p)
            for i, st in saved.items():
                p = params[int(i)]
                v = torch.view_as_real(p) if p.is_complex() else p
                self.transform_state[p] = {k: (x.to(device=v.device, dtype=v.dtype)
                                               if isinstance(x, torch.Tensor) and k != "step" else
                                               int(x) if k == "step" else x) for k, x in st.items()}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def zero_grad(self, set_to_none: bool = True):
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def __repr__(self):
        extra = f", grad_transforms={list(self.grad_transforms)}" if self.grad_transforms else ""
        return f"OrthoGrad({self.base_optimizer!r}{extra})"


@register(kind="optimizer", paper=_PAPER, year=2025, arxiv="2501.04697", code=_CODE,
          summary="AdamW on perpendicular gradients (⊥AdamW): grokking without weight growth",
          info={
              "test_cases": {"OrthoAdamW": {"kwargs": dict(lr=1e-2, weight_decay=1e-2)}},
              "bench": {"kwargs": {"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.01, "eps": 1e-8},
                        "peer": "OrthoGrad(AdamW)",
                        "peer_paths": {"foreach": {"inner": "foreach"}, "fused": {"inner": "fused"}},
                        "note": "peer is pytorch_optimizer OrthoGrad(foreach=True) around torch AdamW"}})
class OrthoAdamW(GradwiseOptimizer):
    r"""⊥AdamW (Prieto et al., 2025, arXiv 2501.04697): AdamW fed ⊥Grad gradients.

    Math: ``g <- perp(w, g)`` (see :class:`PerpendicularGrad`), then
    ``torch.optim.AdamW``'s step::

        p <- p * (1 - lr * wd)
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        p <- p - lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    Faithful to what the authors' experiment script runs with
    ``--orthogonal_gradients --optimizer AdamW``: their ``OrthoGrad`` wrapper
    around ``torch.optim.AdamW`` built with only ``lr`` and ``weight_decay``
    (their ``beta2``/``adam_epsilon`` options do not reach the wrapped
    optimizer), i.e. torch's default betas and eps. Default ``weight_decay``
    is the script's 0, not AdamW's 1e-2: the method replaces decay as the
    guard against weight growth.

    Args: lr (1e-3), betas ((0.9, 0.999)), eps (1e-8), weight_decay (0),
    perp_eps (1e-30, the projection's eps), grad_transforms (run after ⊥Grad),
    skip_nonfinite. One-element tensors (and gradients parallel to their
    weight) get a zero ⊥ gradient on both paths (see :class:`PerpendicularGrad`),
    so they only decay.

    State: ``exp_avg``, ``exp_avg_sq`` (parameter dtype), ``step``.

    Example::

        opt = OrthoAdamW(model.parameters(), lr=1e-3)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, perp_eps: float = 1e-30,
                 grad_transforms=(), **kwargs) -> None:
        check_range("perp_eps", perp_eps, 0.0)
        check_transforms(grad_transforms)  # before the transforms are spliced behind the projection
        self._perp = PerpendicularGrad(perp_eps)
        # without further transforms the projection is done inside the update (fused when possible)
        self._inline_perp = not grad_transforms
        transforms = () if self._inline_perp else (self._perp, *grad_transforms)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay),
                         grad_transforms=transforms, **kwargs)

    def _init_state(self, p, group):
        return zeros_state(p, "exp_avg", "exp_avg_sq")

    def _perp_factors_fused(self, params, grads):
        """The projection coefficients and factors of ⊥Grad, from the fused ``perp_stats`` sums."""
        e = self._perp.eps
        stats = _fused.ops().perp_stats(params, grads, [])
        s, sg = None, grads
        if not bool(stats.isfinite().all()):  # CPU tensor: no device sync
            # perp_stats sums w*g and g*g in the parameter dtype, which overflows for large
            # gradients: redo the sums on s*g (s a power of two, exact; see F.downscales)
            s = F.downscales(grads).double()
            sg = torch._foreach_mul(grads, list(s.to(grads[0].dtype).unbind()))
            stats = _fused.ops().perp_stats(params, sg, [])
        wg, ww, gg = stats.unbind(1)
        pc_s = wg / (ww + e)  # the projection coefficient of the gradient handed to perp_stats
        orth = _fused.ops().perp_stats(params, sg, pc_s.tolist())[:, 0]
        pc = (pc_s if s is None else pc_s / s).tolist()  # CPU path: no device sync
        # the same rule as the _foreach_ path (one-element tensors, rounding-noise g_perp -> 0)
        pk = F.perp_factors(gg.sqrt(), orth.sqrt(), [p.numel() for p in params], e if s is None else e * s,
                            torch.finfo(params[0].dtype).eps).tolist()
        return pc, pk

    def _step_fused(self, group, params, grads, states):
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        steps = [s["step"] for s in states]
        pc, pk = self._perp_factors_fused(params, grads) if self._inline_perp else ([], [])
        _fused.ops().adamw_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                            A.step_sizes(lr, steps, b1), A.bc2_sqrts(steps, b2), pc, pk, b1, b2, eps,
                            1.0 - lr * group["weight_decay"])

    def _step_foreach(self, group, params, grads, states):
        if self._inline_perp:
            grads = self._perp.apply(params, grads, states, group)
        A.adamw_foreach_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                         [s["step"] for s in states], group["lr"], *group["betas"], group["eps"], group["weight_decay"])
