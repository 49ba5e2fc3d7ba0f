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

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradwise._validate import check_betas, check_int, check_range  # noqa: F401  (re-exported)

# Runs a function eagerly under torch.compile (a clean graph break). torch's
# lazy variant, which torch.optim uses too: torch._dynamo is imported on the
# first call, not when gradwise is imported (that import takes seconds).
eager_under_compile = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable

__all__ = ["GradwiseOptimizer", "GradTransform", "check_range", "check_int", "check_betas", "check_lr",
           "check_transforms",
           "zeros_state", "picklable_state", "eager_under_compile", "NOT_CAPTURABLE", "NOT_DIFFERENTIABLE"]

NOT_CAPTURABLE = ("gradwise's step computes per-tensor step counts, bias corrections and schedules as Python "
                  "numbers on the host, so it cannot be captured in a CUDA graph")
NOT_DIFFERENTIABLE = ("gradwise's update runs under torch.no_grad with in-place _foreach_ and fused-kernel "
                      "writes, which autograd cannot differentiate through")


def check_lr(lr: Any) -> None:
    """``lr >= 0``: a real number, or (as torch.optim accepts) a one-element real tensor."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or lr.is_complex() or not lr.is_floating_point() or lr.requires_grad:
            raise ValueError(f"Invalid lr: a tensor of shape {tuple(lr.shape)} and dtype {lr.dtype}"
                             f"{' requiring grad' if lr.requires_grad else ''} (accepted: a real number, or a "
                             "one-element floating-point tensor without grad, with 0 <= lr)")
        lr = float(lr)
    check_range("lr", lr, 0.0)


def picklable_state(opt: Optimizer, torch_state: dict[str, Any]) -> dict[str, Any]:
    """What ``__getstate__`` keeps: torch's three entries plus every attribute but the hooks.

    torch.optim's ``__getstate__`` keeps only ``defaults``, ``state`` and
    ``param_groups``; gradwise's optimizers hold more (``fused``,
    ``grad_transforms``, a wrapped optimizer, ...), without which a copy cannot
    step. Hooks are left out, as torch does (they are often unpicklable closures).
    """
    out = dict(torch_state)
    for k, v in opt.__dict__.items():
        if k not in out and not k.startswith("_optimizer_"):
            out[k] = v
    return out


def _fusable_tensor(t: Tensor) -> tuple[bool, str]:
    """Whether the fused kernels take this tensor, and why not."""
    if not (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)):
        return False, f"needs float32/float64 CPU tensors, got a {t.dtype} tensor on {t.device}"
    from gradwise.optim import _fused
    if not _fused.available():
        return False, f"the compiled kernels are unavailable ({_fused.error()})"
    return True, ""


def check_transforms(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a list or tuple of :class:`GradTransform` instances."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"Invalid grad_transforms: {value!r} (accepted: a list or tuple of GradTransform instances)")
    for t in value:
        if not isinstance(t, GradTransform):
            raise ValueError(f"Invalid grad_transforms entry: {t!r} (accepted: GradTransform instances)")


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


def _finite_and_large(tensors: list[Tensor]) -> tuple[bool, bool]:
    """Whether all tensors are finite, and whether any entry exceeds ``finfo(dtype).max ** 0.25``.

    One reduction per bucket, then a single host sync: the price of the
    opt-in check, as in torch.amp.GradScaler. (Testing the max-norms with
    isfinite, not their sum, so that large finite gradients cannot overflow
    into a false alarm.)
    """
    flags = []
    for ts in _bucket_lists(tensors):
        amax = torch.stack(torch._foreach_norm(ts, float("inf")))
        flags.append(torch.stack([amax.isfinite().all(), (amax > _LARGE[ts[0].dtype]).any()]))
    dev = flags[0].device
    f = torch.stack([x.to(dev) for x in flags])
    finite, large = torch.stack([f[:, 0].all(), f[:, 1].any()]).tolist()  # the one host sync
    return bool(finite), bool(large)


class _LargeThresholds(dict):
    # Gradients above finfo.max ** 0.25 (1.4e9 in float32 and bfloat16, 16 in float16): the regime in
    # which an update's squares and products can overflow although the gradient is finite.
    def __missing__(self, dtype):
        self[dtype] = torch.finfo(dtype).max ** 0.25
        return self[dtype]


_LARGE = _LargeThresholds()


def _all_finite(tensors: list[Tensor]) -> bool:
    return _finite_and_large(tensors)[0]


# state_dict entry naming the class that saved it; torch.optim's load_state_dict ignores it
_CLASS_KEY = "gradwise_optimizer"


def _gradwise_class(cls: type) -> str:
    """The name of the gradwise optimizer ``cls`` is or subclasses (a user's subclass of AdamP: AdamP)."""
    for c in cls.__mro__:
        if c.__module__.startswith("gradwise.optim."):
            return c.__name__
    return cls.__name__


def _bucket_lists(tensors: list[Tensor]) -> list[list[Tensor]]:
    out: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return list(out.values())


@functools.lru_cache(maxsize=None)
def _flag_names(cls: type) -> frozenset[str]:
    """The arguments of ``cls.__init__`` whose default is a bool: hyperparameters taking True or False only."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(n for n, p in sig.parameters.items() if isinstance(p.default, bool)
                     and n not in ("skip_nonfinite", "capturable", "differentiable"))


class GradwiseOptimizer(Optimizer):
    """Base class: subclasses define ``_init_state`` and ``_update``.

    Args common to every gradwise optimizer (keyword-only):
        grad_transforms: gradient transforms applied, in order, to the
            gradients before the update (e.g. ``[SpikeClip()]``).
        fused: use the fused CPU kernels (one pass over memory instead of
            8-15 ``_foreach_`` passes) for float32/float64 CPU tensors. None
            (default): when they can be built; True: require them (checked
            for every parameter before a step changes anything); False:
            always the ``torch._foreach_*`` path (also used for other dtypes
            and devices). Both paths compute the same update. A parameter
            group may carry its own ``"fused"`` (or ``"foreach"``) key, which
            overrides the optimizer's for that group.
        foreach: accepted for ``torch.optim`` compatibility. True or False
            selects the ``torch._foreach_*`` path (gradwise's reference
            implementation; there is no separate per-tensor for-loop one, and
            the result is the same math), i.e. ``fused=False``. None (default):
            decided by ``fused``. ``foreach=True`` with ``fused=True`` is an error,
            as in torch.optim.
        maximize: maximize the objective (the update uses ``-grad``), as in
            torch.optim. Stored in each parameter group.
        capturable, differentiable: accepted as False only (see
            :data:`NOT_CAPTURABLE`, :data:`NOT_DIFFERENTIABLE` for why True is refused).
        skip_nonfinite: when True, a step whose gradients hold an inf or NaN
            leaves parameters and state untouched and increments
            ``group["skipped_steps"]`` in every parameter group. Costs one host
            sync per step. So does a step whose finite gradients are so large
            (some entry above ``finfo(dtype).max ** 0.25``, e.g. 1.4e9 in
            float32) that the update itself overflows into a non-finite
            parameter: for such steps only, parameters, state and group
            entries are copied first and put back (one more host sync). When
            False (default) a non-finite gradient propagates as it would in
            ``torch.optim``.

    Drop-in behaviour shared with ``torch.optim`` (tested against torch's own
    optimizer contract in tests/test_optim_torch_contract.py):

    * ``lr`` may be a 0-dim (or one-element) tensor, read at every step, so a
      scheduler may change it in place;
    * a step where no parameter has a gradient changes nothing (step counters
      included);
    * complex parameters are stepped as ``torch.view_as_real`` of themselves
      (state kept in that real shape), unless the class refuses them
      (``_complex_refusal``) with a ValueError at construction;
    * a ``step`` held in state as a tensor (torch.optim's checkpoint format) is
      read as an integer;
    * ``copy.deepcopy`` and pickling keep every attribute (not only torch's
      ``defaults``/``state``/``param_groups``); hooks are dropped, as torch does.
    """

    # why a class refuses complex parameters (None: stepped as view_as_real, like torch.optim)
    _complex_refusal: str | None = None

    def __init__(self, params: Iterable, defaults: dict[str, Any], *,
                 grad_transforms: Sequence[GradTransform] = (), skip_nonfinite: bool = False,
                 fused: bool | None = None, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False) -> None:
        if fused is not None and not isinstance(fused, bool):
            raise ValueError(f"Invalid fused: {fused!r} (accepted: None, True or False)")
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"Invalid foreach: {foreach!r} (accepted: None, True or False)")
        if fused and foreach:
            raise ValueError("Invalid fused/foreach: fused=True and foreach=True cannot be given together "
                             "(accepted: one of them True, or neither)")
        if capturable is not False:
            raise ValueError(f"Invalid capturable: {capturable!r} (accepted: False). {NOT_CAPTURABLE}")
        if differentiable is not False:
            raise ValueError(f"Invalid differentiable: {differentiable!r} (accepted: False). {NOT_DIFFERENTIABLE}")
        if foreach is not None and fused is None:
            fused = False  # foreach (True or False) selects the torch._foreach_ path
        self.fused = fused
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (accepted: True or False)")
        check_transforms(grad_transforms)
        self.grad_transforms = tuple(grad_transforms)
        self.skip_nonfinite = skip_nonfinite
        super().__init__(params, {**defaults, "maximize": maximize})

    # -- pickling / deepcopy ----------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # torch keeps only defaults/state/param_groups, so a copy lost fused,
        # grad_transforms, skip_nonfinite, ... and could not step
        return picklable_state(self, super().__getstate__())

    # -- hooks for subclasses -------------------------------------------------
    def _validate_group(self, group: dict[str, Any]) -> None:
        """Check a parameter group's hyperparameters; raise ValueError.

        The standard ones are checked here when the optimizer has them;
        subclasses add their own after calling this.
        """
        check_lr(group["lr"])
        if "betas" in group:
            check_betas(group["betas"])
        for name in ("eps", "weight_decay"):
            if name in group:
                check_range(name, group[name], 0.0)
        if "momentum" in group:
            check_range("momentum", group["momentum"], 0.0, 1.0, hi_open=True)
        for name in _flag_names(type(self)) | {"maximize"}:
            # a truthy string or None would silently pick a branch
            if name in group and not isinstance(group[name], bool):
                raise ValueError(f"Invalid {name}: {group[name]!r} (accepted: True or False)")
        for name in ("fused", "foreach"):
            if group.get(name) is not None and not isinstance(group[name], bool):
                raise ValueError(f"Invalid {name} in a parameter group: {group[name]!r} "
                                 "(accepted: None, True or False)")
        if group.get("fused") and group.get("foreach"):
            raise ValueError("Invalid fused/foreach in a parameter group: both True (accepted: at most one True)")
        for name, why in (("capturable", NOT_CAPTURABLE), ("differentiable", NOT_DIFFERENTIABLE)):
            if group.get(name, False) is not False:
                raise ValueError(f"Invalid {name} in a parameter group: {group[name]!r} (accepted: False). {why}")

    def _fusable(self, group: dict[str, Any]) -> bool:
        """Whether the fused kernels implement this group's configuration."""
        return True

    def _fusable_note(self) -> str:
        return "see its docstring"

    def _begin_group(self, group: dict[str, Any]) -> None:
        """Called once per parameter group per (non-skipped) step, before its updates.

        Only for groups in which at least one parameter has a gradient.
        """

    def _prepare(self, items: list[tuple[dict, list[Tensor], list[Tensor], list[dict]]]) -> None:
        """Called once per step with every bucket's (group, params, grads, states), before any update."""

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """Fresh per-parameter state (without ``step``, which the base adds).

        For a complex parameter ``p`` is its ``torch.view_as_real`` view.
        """
        return {}

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]]) -> None:
        """Apply one step to a bucket (same device and dtype) of one group."""
        raise NotImplementedError

    def _group_fused(self, group: dict[str, Any]) -> bool | None:
        """The group's fused setting: its own ``fused``/``foreach`` keys, else the optimizer's."""
        fused = group.get("fused")
        if fused is None and group.get("foreach") is not None:
            fused = False
        return self.fused if fused is None else fused

    def _use_fused(self, params: list[Tensor], group: dict[str, Any] | None = None) -> bool:
        """Whether this bucket (one device and dtype) goes through the fused kernels."""
        fused = self.fused if group is None else self._group_fused(group)
        if fused is False or (group is not None and not self._fusable(group)):
            return False
        ok, why = _fusable_tensor(params[0])
        if fused and not ok:
            raise RuntimeError(f"{type(self).__name__}(fused=True): {why}")
        return ok

    # -- torch.optim.Optimizer API -------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Validate before torch appends the group, so a bad group never lands.
        probe = {k: v for k, v in param_group.items() if k != "params"}
        for k, v in self.defaults.items():
            probe.setdefault(k, v)
        self._validate_group(probe)
        if self._group_fused(probe) and not self._fusable(probe):
            raise ValueError(f"Invalid fused: True, but {type(self).__name__} has no fused kernel for "
                             f"this configuration ({self._fusable_note()}); accepted: fused=None or False")
        ps = param_group["params"]
        if not isinstance(ps, set):  # torch rejects sets itself, with its own message
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            param_group["params"] = ps
            if self._complex_refusal is not None:
                for p in ps:
                    t = p[1] if isinstance(p, tuple) else p  # named parameters come as (name, tensor)
                    if isinstance(t, Tensor) and t.is_complex():
                        raise ValueError(f"Invalid params: {type(self).__name__} does not take complex parameters "
                                         f"(got {t.dtype}; accepted: real floating-point tensors). "
                                         f"{self._complex_refusal}")
        super().add_param_group(param_group)

    # Group keys a checkpoint may lack: flags gradwise or torch added later (the current value is kept).
    _OPTIONAL_GROUP_KEYS = frozenset({"maximize", "fused", "foreach", "capturable", "differentiable"})

    def _expected_state_keys(self, p: Tensor, group: dict[str, Any]) -> set[str]:
        """The keys a stepped parameter's state holds (``step`` included).

        Found from ``_init_state`` on a meta-device copy of the parameter (no
        memory allocated); a class whose state is made elsewhere overrides this.
        """
        v = torch.view_as_real(p) if p.is_complex() else p
        meta = torch.empty_like(v, device="meta")
        keys = {"step", *self._init_state(meta, group)}
        for t in self.grad_transforms:
            keys.update(f"{t.key}.{k}" for k in t.init_state(meta))
        return keys

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError unless ``state_dict`` is one this optimizer can step from.

        Checked before anything is loaded: every saved group has this class's
        hyperparameters (extra keys, such as a scheduler's ``initial_lr`` or
        torch.optim's ``amsgrad``, are kept as torch does) with valid values,
        and every saved per-parameter state has exactly the state keys this
        optimizer makes for that parameter. So a state_dict of another
        optimizer class fails here, not at a later ``step()`` after counters
        moved; a torch.optim checkpoint of the same update (e.g. AdamW's
        ``exp_avg``/``exp_avg_sq``/``step`` for OrthoAdamW) loads.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"Invalid state_dict for {name}: got {got} (accepted: a dict with 'state' and "
                             "'param_groups', as Optimizer.state_dict() returns)")
        saved_by = state_dict.get(_CLASS_KEY)
        if saved_by is not None and saved_by != _gradwise_class(type(self)):
            name = _gradwise_class(type(self))
            raise ValueError(f"Invalid state_dict for {type(self).__name__}: it was saved by {saved_by} (expected a "
                             f"state_dict of {name}, or a torch.optim one with {name}'s hyperparameters and state keys)")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(self.param_groups):
            return  # torch's own check reports the group count
        required = set(self.defaults) - self._OPTIONAL_GROUP_KEYS
        ids: dict[int, Tensor] = {}  # saved index -> (current) parameter
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            missing = sorted(required - set(saved))
            if missing:
                raise ValueError(
                    f"Invalid state_dict for {name}: parameter group {i} lacks the hyperparameters {missing} "
                    f"(expected {name}'s {sorted(required)}; the group holds {sorted(k for k in saved if k != 'params')}"
                    "): is it another optimizer's state_dict?")
            probe = {**{k: v for k, v in group.items() if k != "params"},
                     **{k: v for k, v in saved.items() if k != "params"}}
            try:
                self._validate_group(probe)
            except ValueError as e:
                raise ValueError(f"Invalid state_dict for {name}: parameter group {i}: {e}") from None
            for idx, p in zip(saved.get("params", ()), group["params"]):
                ids[idx] = (p, probe)
        for idx, st in state_dict["state"].items():
            if idx not in ids or not st:
                continue  # torch ignores state of unknown indices; empty state is fresh
            p, group = ids[idx]
            expected = self._expected_state_keys(p, group)
            got = set(st)
            if got != expected:
                parts = []
                if expected - got:
                    parts.append(f"lacks {sorted(expected - got)}")
                if got - expected:
                    parts.append(f"has keys {name} does not use {sorted(got - expected)}")
                raise ValueError(
                    f"Invalid state_dict for {name}: the state of parameter {idx} {' and '.join(parts)} "
                    f"(expected the keys {sorted(expected)}): is it another optimizer's state_dict, or one "
                    "saved with other settings (e.g. amsgrad, momentum, grad_transforms)?")

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's ``state_dict``, plus the class that saved it (so another class refuses to load it)."""
        sd = super().state_dict()
        sd[_CLASS_KEY] = _gradwise_class(type(self))
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's ``load_state_dict``, after checking the whole state_dict (see ``_check_loadable``).

        The load-state-dict pre-hooks run first (they may rewrite the
        state_dict), then the check, then torch's load; a failing check leaves
        the optimizer as it was.
        """
        state_dict = state_dict.copy()  # shallow, as torch.optim does (the pre-hooks may edit it)
        hooks = self._optimizer_load_state_dict_pre_hooks
        for pre_hook in hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._check_loadable(state_dict)
        # the pre-hooks already ran: hide them from torch's load, which would run them again
        self._optimizer_load_state_dict_pre_hooks = type(hooks)()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
            self.__dict__.pop("_optimizer_checked", None)  # the loaded state is checked in full at the next step

    # Under torch.compile the step graph-breaks and runs eagerly: its per-tensor
    # step counters and coefficients are Python numbers, which dynamo would
    # specialize on and recompile for every step, and the fused kernels are
    # already one pass over memory. The kernels still have fake
    # implementations (gradwise.optim._fused), so they trace where called directly.
    @eager_under_compile
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the loss.

        Under ``torch.compile`` this step runs eagerly (a clean graph break),
        with the same result as without compile. Nothing is written (state,
        counters, parameters) before every check that can fail has passed.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # (group, [(key param, real view of param, real view of grad)]), only groups with gradients
        work = []
        for group in self.param_groups:
            items = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients; "
                                       "use torch.optim.SparseAdam for sparse embeddings")
                if p.numel() == 0:  # nothing to update (and some reductions, e.g. max, are undefined)
                    continue
                if p.is_complex():  # torch.optim's semantics: step the real view
                    items.append((p, torch.view_as_real(p), torch.view_as_real(p.grad)))
                else:
                    items.append((p, p, p.grad))
            if items:
                work.append((group, items))
        if not work:
            return loss  # no gradients: a no-op, as in torch.optim (step counters do not move)

        # fused=True is checked for every parameter before any math, as torch does
        for group, items in work:
            if self._group_fused(group) is True:
                for _, v, _ in items:
                    ok, why = _fusable_tensor(v)
                    if not ok:
                        raise RuntimeError(f"{type(self).__name__}(fused=True): {why}")

        # every state tensor is checked against its parameter before anything (counters included) is
        # written, so a mismatched state raises with the step untouched on both paths
        self._check_state(work)

        backup = None
        if self.skip_nonfinite:
            finite, large = _finite_and_large([g for _, items in work for _, _, g in items])
            if not finite:
                self._count_skip()
                return loss
            if large:
                # the update's own math may overflow with such gradients (a square, a product with
                # 1/eps, a momentum sum near the dtype's max): keep what the step writes, to undo it
                backup = self._backup(work)

        prepared = []
        for group, items in work:
            self._begin_group(group)
            # a tensor lr is read once per step as a number (CPU: no device sync)
            g_eff = group if not isinstance(group["lr"], Tensor) else {**group, "lr": float(group["lr"])}
            buckets: dict[tuple, list] = {}
            for it in items:
                buckets.setdefault((it[1].device, it[1].dtype), []).append(it)
            for bucket in buckets.values():
                params = [v for _, v, _ in bucket]
                grads = [g for _, _, g in bucket]
                states = []
                for (p, v, _) in bucket:
                    st = self.state[p]
                    if not st:
                        st["step"] = 0
                        st.update(self._init_state(v, group))
                        for t in self.grad_transforms:
                            st.update({f"{t.key}.{k}": x for k, x in t.init_state(v).items()})
                    # torch.optim checkpoints hold step as a 0-dim tensor: count in Python ints
                    st["step"] = int(st["step"]) + 1
                    states.append(st)
                if g_eff.get("maximize", False):
                    grads = torch._foreach_neg(grads)
                for t in self.grad_transforms:
                    grads = t.apply(params, grads, states, g_eff)
                prepared.append((g_eff, params, grads, states))
        self._prepare(prepared)
        for g_eff, params, grads, states in prepared:
            self._update(g_eff, params, grads, states)
        if backup is not None and not _all_finite([v for _, items in work for _, v, _ in items]):
            self._restore(backup)
            self._count_skip()
        return loss

    def _count_skip(self) -> None:
        for group in self.param_groups:
            group["skipped_steps"] = group.get("skipped_steps", 0) + 1

    def _backup(self, work: list) -> tuple[list, list, list]:
        """Copies of what a step may write: the parameters, their state, every group's entries."""
        params = [(v, v.clone()) for _, items in work for _, v, _ in items]
        states = [(p, {k: (x.clone() if isinstance(x, Tensor) else x) for k, x in self.state[p].items()}
                   if p in self.state else None) for _, items in work for p, _, _ in items]
        groups = [(g, dict(g)) for g in self.param_groups]
        return params, states, groups

    def _restore(self, backup: tuple[list, list, list]) -> None:
        """Put back what :meth:`_backup` copied (state made by this step is removed)."""
        params, states, groups = backup
        for v, saved in params:
            v.copy_(saved)
        for p, saved in states:
            if saved is None:
                self.state.pop(p, None)
            else:
                st = self.state[p]
                st.clear()
                st.update(saved)
        for g, saved in groups:
            g.clear()
            g.update(saved)

    def _param_index(self, p: Tensor) -> int:
        """``p``'s index in ``state_dict()["state"]`` (first appearance over the groups)."""
        seen: dict[int, int] = {}
        for g in self.param_groups:
            for q in g["params"]:
                seen.setdefault(id(q), len(seen))
        return seen.get(id(p), -1)

    def _check_state(self, work: list) -> None:
        """Raise RuntimeError unless each gradient and state tensor fits the tensor it is stepped with.

        A state tensor of more than 0 dimensions must have the (real view of
        the) parameter's shape, dtype and device; a 0-dim one (a per-tensor
        statistic such as SGD-SaI's ``gsnr``) its device. This is the check the
        fused kernels make, done here for both paths before any write, with no
        host sync.

        To keep the step cheap, a parameter is checked in full only when its
        (data pointer, shape) differs from the last check, i.e. after its
        ``.data`` was replaced (resized, ``module.half()``, ``module.to()``) or
        reshaped, and for every parameter after ``load_state_dict``. A state
        tensor replaced by hand in ``opt.state`` is not re-checked here (the
        fused kernels and torch's ops still refuse it).
        """
        seen = self.__dict__.get("_optimizer_checked")  # id(param) -> (data_ptr, shape) when last checked
        if seen is None:
            seen = self._optimizer_checked = {}  # (the _optimizer_ prefix keeps it out of pickles)
        last = seen.get
        for _, items in work:
            for p, v, g in items:
                key = (v.data_ptr(), v.shape)
                if last(id(p)) == key:
                    continue
                if g.shape != v.shape or g.dtype != v.dtype or g.device != v.device:
                    raise RuntimeError(
                        f"{type(self).__name__}.step: parameter {self._param_index(p)} has shape "
                        f"{tuple(v.shape)}, dtype {v.dtype} on {v.device} but its gradient has shape "
                        f"{tuple(g.shape)}, dtype {g.dtype} on {g.device} (accepted: the same as the parameter)")
                st = self.state.get(p)
                if not st:
                    continue
                for k, x in st.items():
                    if not isinstance(x, Tensor) or k == "step":
                        continue
                    if x.dim() == 0 and v.dim() != 0:  # a per-tensor statistic
                        ok = x.device == v.device
                    else:
                        ok = x.shape == v.shape and x.device == v.device and (
                            x.dtype == v.dtype or not x.is_floating_point())
                    if not ok:
                        raise RuntimeError(
                            f"{type(self).__name__}.step: state {k!r} of parameter {self._param_index(p)} has "
                            f"shape {tuple(x.shape)}, dtype {x.dtype} on {x.device}, but the parameter"
                            f"{' (stepped as its view_as_real)' if p.is_complex() else ''} has shape "
                            f"{tuple(v.shape)}, dtype {v.dtype} on {v.device} (accepted: state of the parameter's "
                            "shape, dtype and device; was the parameter resized, or a state_dict of other "
                            "parameters loaded?). Nothing was changed.")
                seen[id(p)] = key

    def __repr__(self) -> str:
        s = super().__repr__()
        if self.grad_transforms:
            s += f"\ngrad_transforms: {list(self.grad_transforms)}"
        return s
