"""The base class every gradwise optimizer shares.

It owns what the update rules have in common, so each method's module holds
only its math:

* collecting the parameters that have gradients, rejecting sparse gradients;
* bucketing tensors by (device, dtype) so each ``torch._foreach_*`` call gets
  homogeneous lists;
* lazily creating per-parameter state and advancing its ``step`` counter;
* running the optional gradient transforms (spike clipping, ⊥Grad, ...) in
  front of the update, with their state kept in the optimizer's state so
  ``state_dict`` round-trips it;
* the opt-in skip of steps whose gradient is not finite;
* argument validation with messages that name the argument and its range.

Gradients are never modified in place: ``p.grad`` after ``step()`` is what
autograd wrote, as with ``torch.optim``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["GradwiseOptimizer", "GradTransform", "check_range", "check_int", "check_betas", "zeros_state"]


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise ``ValueError`` unless ``lo <= value <= hi`` (bounds optional, optionally open)."""
    lo_s = "" if lo is None else (f"{lo} < " if lo_open else f"{lo} <= ")
    hi_s = "" if hi is None else (f" < {hi}" if hi_open else f" <= {hi}")
    accepted = f"{lo_s}{name}{hi_s}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a real number with {accepted})")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        raise ValueError(f"Invalid {name}: {value} (accepted: {accepted})")


def check_int(name: str, value: Any, lo: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer (not a bool) ``>= lo``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"Invalid {name}: {value!r} (accepted: an integer >= {lo})")


def check_betas(betas: Any, n: int = 2, name: str = "betas") -> None:
    """Each beta must lie in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise ValueError(f"Invalid {name}: {betas!r} (accepted: a tuple of {n} floats in [0, 1))")
    for i, b in enumerate(betas):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, hi_open=True)


def zeros_state(p: Tensor, *names: str) -> dict[str, Tensor]:
    """Zero-initialized state tensors shaped, typed and laid out like ``p``."""
    return {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in names}


class GradTransform:
    """A gradient transform run in front of an optimizer's update.

    Subclasses implement ``apply`` on lists of tensors (one bucket of one
    parameter group, all on one device and dtype) and return the new
    gradients, never writing into the given ones. Per-parameter state lives in
    the optimizer's state dicts under keys prefixed with ``key + "."`` so that
    ``state_dict`` saves it; ``init_state`` creates it.
    """

    key: str = "transform"

    def init_state(self, p: Tensor) -> dict[str, Any]:
        return {}

    def apply(self, params: list[Tensor], grads: list[Tensor], states: list[dict], group: dict) -> list[Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _all_finite(tensors: list[Tensor]) -> bool:
    # One reduction per bucket, then a single host sync: the price of the
    # opt-in check, as in torch.amp.GradScaler. (Testing the max-norms with
    # isfinite, not their sum, so that large finite gradients cannot overflow
    # into a false alarm.)
    flags = [torch.stack(torch._foreach_norm(ts, float("inf"))).isfinite().all()
             for ts in _bucket_lists(tensors)]
    dev = flags[0].device
    return bool(torch.stack([f.to(dev) for f in flags]).all())


def _bucket_lists(tensors: list[Tensor]) -> list[list[Tensor]]:
    out: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return list(out.values())


class GradwiseOptimizer(Optimizer):
    """Base class: subclasses define ``_init_state`` and ``_update``.

    Args common to every gradwise optimizer (keyword-only):
        grad_transforms: gradient transforms applied, in order, to the
            gradients before the update (e.g. ``[SpikeClip()]``).
        fused: use the fused CPU kernels (one pass over memory instead of
            8-15 ``_foreach_`` passes) for float32/float64 CPU tensors. None
            (default): when they can be built; True: require them; False:
            always the ``torch._foreach_*`` path (also used for other dtypes
            and devices). Both paths compute the same update.
        skip_nonfinite: when True, a step whose gradients hold an inf or NaN
            leaves parameters and state untouched and increments
            ``group["skipped_steps"]`` in every parameter group. Costs one host
            sync per step. When False (default) a non-finite gradient
            propagates as it would in ``torch.optim``.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any], *,
                 grad_transforms: Sequence[GradTransform] = (), skip_nonfinite: bool = False,
                 fused: bool | None = None) -> None:
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"Invalid fused: {fused!r} (accepted: None, True or False)")
        self.fused = fused
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (accepted: True or False)")
        for t in grad_transforms:
            if not isinstance(t, GradTransform):
                raise ValueError(f"Invalid grad_transforms entry: {t!r} (accepted: GradTransform instances)")
        self.grad_transforms = tuple(grad_transforms)
        self.skip_nonfinite = skip_nonfinite
        super().__init__(params, defaults)

    # -- hooks for subclasses -------------------------------------------------
    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a parameter group's hyperparameters; raise ValueError.

        The standard ones are checked here when the optimizer has them;
        subclasses add their own after calling this.
        """
        check_range("lr", group["lr"], 0.0)
        if "betas" in group:
            check_betas(group["betas"])
        for name in ("eps", "weight_decay"):
            if name in group:
                check_range(name, group[name], 0.0)
        if "momentum" in group:
            check_range("momentum", group["momentum"], 0.0, 1.0, hi_open=True)

    def _begin_group(self, group: dict[str, Any]) -> None:
        """Called once per parameter group per (non-skipped) step, before its updates."""

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """Fresh per-parameter state (without ``step``, which the base adds)."""
        return {}

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        """Apply one step to a bucket (same device and dtype) of one group."""
        raise NotImplementedError

    def _use_fused(self, params: list[Tensor]) -> bool:
        """Whether this bucket goes through the fused kernels."""
        if self.fused is False:
            return False
        p = params[0]
        ok = p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64)
        if ok:
            from gradwise.optim import _fused
            ok = _fused.available()
        if self.fused and not ok:
            from gradwise.optim import _fused
            raise RuntimeError(f"{type(self).__name__}(fused=True) needs float32/float64 CPU tensors and the "
                               f"compiled kernels (got {p.dtype} on {p.device}; {_fused.error() or 'kernels built'})")
        return ok

    # -- torch.optim.Optimizer API -------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Validate before torch appends the group, so a bad group never lands.
        probe = {k: v for k, v in param_group.items() if k != "params"}
        for k, v in self.defaults.items():
            probe.setdefault(k, v)
        self._validate_group(probe)
        super().add_param_group(param_group)

    # Under torch.compile the step graph-breaks and runs eagerly: its per-tensor
    # step counters and coefficients are Python numbers, which dynamo would
    # specialize on and recompile for every step, and the fused kernels are
    # already one pass over memory. The kernels still have fake
    # implementations (gradwise.optim._fused), so they trace where called directly.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss.

        Under ``torch.compile`` this step runs eagerly (a clean graph break),
        with the same result as without compile.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        work = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use torch.optim.SparseAdam for sparse embeddings")
            # empty tensors have nothing to update (and some reductions, e.g. max, are undefined on them)
            work.append((group, [p for p in params if p.numel() > 0]))

        if self.skip_nonfinite:
            grads = [p.grad for _, ps in work for p in ps]
            if grads and not _all_finite(grads):
                for group in self.param_groups:
                    group["skipped_steps"] = group.get("skipped_steps", 0) + 1
                return loss

        for group, params in work:
            self._begin_group(group)
            for bucket in _bucket_lists(params):
                states = []
                for p in bucket:
                    st = self.state[p]
                    if not st:
                        st["step"] = 0
                        st.update(self._init_state(p, group))
                        for t in self.grad_transforms:
                            st.update({f"{t.key}.{k}": v for k, v in t.init_state(p).items()})
                    st["step"] += 1
                    states.append(st)
                grads = [p.grad for p in bucket]
                for t in self.grad_transforms:
                    grads = t.apply(bucket, grads, states, group)
                self._update(group, bucket, grads, states)
        return loss

    def __repr__(self) -> str:
        s = super().__repr__()
        if self.grad_transforms:
            s += f"\ngrad_transforms: {list(self.grad_transforms)}"
        return s
