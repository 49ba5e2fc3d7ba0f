"""The base class every gradwise optimizer shares.

It owns what the update rules have in common, so each method's module holds
only its math, in two hooks per bucket (one group, one device and dtype):
``_step_foreach`` (``torch._foreach_*`` ops) and ``_step_fused`` (the fused
CPU kernels), as torch.optim's ``_multi_tensor_adam`` and ``_fused_adam``.
The base chooses between them from ``fused``/``foreach`` (the optimizer's or
the group's), the class's ``_fusable(group)`` and the tensors' eligibility.
Around the update it does, in this order:

* collecting the parameters that have gradients, rejecting sparse gradients;
* the checks that can fail (``fused=True`` eligibility, state shapes, see
  :mod:`gradwise.optim._state`), before anything is written;
* the opt-in skip of steps whose gradient is not finite (``skip_nonfinite``,
  with a backup for steps whose large gradients may overflow the update);
* bucketing tensors by (device, dtype) so each ``torch._foreach_*`` call gets
  homogeneous lists; lazily creating per-parameter state and advancing ``step``;
* decoding the state (``state_codec``), then ``maximize``, the gradient
  transforms, the update, the update transforms, encoding the state again
  (or one fused kernel on the stored form: ``_step_fused_stored``, e.g. AdamW's 8-bit state).

Gradients are never modified in place: ``p.grad`` after ``step()`` is what
autograd wrote, as with ``torch.optim``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradwise._validate import check_betas, check_int, check_range  # noqa: F401  (re-exported)
from gradwise.optim import _fused
from gradwise.optim import _state as S
from gradwise.optim._codec import StateCodec, decode_states, encode_states, reencode_loaded, split_by
from gradwise.optim._finite import all_finite, finite_and_large
from gradwise.optim._state import picklable_state, zeros_state  # noqa: F401  (re-exported)
from gradwise.optim._transforms import GradTransform, UpdateTransform, check_transforms
from gradwise.optim.state_codecs import codec_for_state_bits
from gradwise.optim._validation import (NOT_CAPTURABLE, NOT_DIFFERENTIABLE, check_lr,  # noqa: F401
                                        check_path_flags, check_standard_group, flag_names)

# Runs a function eagerly under torch.compile (a clean graph break). torch's
# lazy variant, which torch.optim uses too: torch._dynamo is imported on the
# first call, not when gradwise is imported (that import takes seconds).
eager_under_compile = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable

__all__ = ["GradwiseOptimizer", "GradTransform", "UpdateTransform", "check_range", "check_int", "check_betas",
           "check_lr", "check_transforms", "zeros_state", "picklable_state", "eager_under_compile",
           "NOT_CAPTURABLE", "NOT_DIFFERENTIABLE", "gradwise_kernel_eligible"]


def gradwise_kernel_eligible(t: Tensor) -> tuple[bool, str]:
    """Whether gradwise's fused optimizer kernels take this tensor, and why not."""
    if not (t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)):
        return False, f"needs float32/float64 CPU tensors, got a {t.dtype} tensor on {t.device}"
    if not _fused.available():
        return False, f"the compiled kernels are unavailable ({_fused.error()})"
    return True, ""


class GradwiseOptimizer(Optimizer):
    """Base class: subclasses define ``_init_state``, ``_step_foreach`` and ``_step_fused``.

    Args common to every gradwise optimizer (keyword-only):
        grad_transforms: gradient transforms applied, in order, to the
            gradients before the update (e.g. ``[SpikeClip()]``).
        update_transforms: update transforms applied, in order, after the
            update to ``delta = p_new - p_old`` (e.g. ``[UpdateClip(1e-3)]``);
            the parameter becomes ``p_old + delta'`` (see :class:`UpdateTransform`).
        state_codec: a :class:`~gradwise.optim.state_codecs.StateCodec` that
            stores the state between steps (e.g. ``BFloat16StateCodec()``):
            decoded before each update, encoded after it, on both paths.
            None (default): state in the parameter's dtype, no extra work.
        state_bits: shorthand for the codec: 8 is
            ``state_codec=Blockwise8bitStateCodec(block_size)`` (8-bit
            block-wise state as bitsandbytes' 8-bit optimizers, for
            parameters of 4096 entries or more), 16 is
            ``BFloat16StateCodec()``, 32 or None (default) no codec. Not
            together with ``state_codec``.
        block_size: the block size of ``state_bits=8`` (default 256).
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
    optimizer contract in tests/optim/test_contract.py):

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
                 grad_transforms: Sequence[GradTransform] = (), update_transforms: Sequence[UpdateTransform] = (),
                 state_codec: StateCodec | None = None, state_bits: int | None = None,
                 block_size: int | None = None, skip_nonfinite: bool = False,
                 fused: bool | None = None, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False) -> None:
        check_path_flags(fused, foreach, capturable, differentiable)
        if foreach is not None and fused is None:
            fused = False  # foreach (True or False) selects the torch._foreach_ path
        self.fused = fused
        if not isinstance(skip_nonfinite, bool):
            raise ValueError(f"Invalid skip_nonfinite: {skip_nonfinite!r} (accepted: True or False)")
        check_transforms(grad_transforms)
        check_transforms(update_transforms, "update_transforms", UpdateTransform)
        if state_codec is not None and not isinstance(state_codec, StateCodec):
            raise ValueError(f"Invalid state_codec: {state_codec!r} (accepted: None or a StateCodec instance, "
                             "e.g. gradwise.optim.BFloat16StateCodec())")
        if state_bits is not None and state_codec is not None:
            raise ValueError(f"Invalid state_bits: {state_bits!r} together with state_codec={state_codec!r} "
                             "(accepted: one of the two; state_bits=8 is state_codec=Blockwise8bitStateCodec())")
        if state_codec is None:
            state_codec = codec_for_state_bits(state_bits, block_size)
        elif block_size is not None:
            raise ValueError(f"Invalid block_size: {block_size!r} (accepted: only with state_bits=8; give the "
                             "block size to the codec instead)")
        self.grad_transforms = tuple(grad_transforms)
        self.update_transforms = tuple(update_transforms)
        self.state_codec = state_codec
        self.skip_nonfinite = skip_nonfinite
        super().__init__(params, {**defaults, "maximize": maximize})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # pickles made before update_transforms/state_codec existed (torch's load_state_dict calls this too,
        # with state and param_groups only: what is already set stays)
        self.__dict__.setdefault("update_transforms", ())
        self.__dict__.setdefault("state_codec", None)

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
        check_standard_group(group, flag_names(type(self)))

    def _fusable(self, group: dict[str, Any]) -> bool:
        """Whether the fused kernels implement this group's configuration."""
        return True

    def _fusable_note(self) -> str:
        return "see its docstring"

    def _fused_eligible(self, t: Tensor) -> tuple[bool, str]:
        """Whether this class's fused path takes tensors like ``t`` (gradwise's kernels by default), and why not."""
        return gradwise_kernel_eligible(t)

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

    def _step_foreach(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                      states: list[dict[str, Any]]) -> None:
        """One step of a bucket (same device and dtype) of one group, with ``torch._foreach_*`` ops.

        ``group``: the group's hyperparameters (``lr`` a number); ``grads``:
        after ``maximize`` and the gradient transforms, never to be written;
        ``states``: the decoded state, ``step`` already advanced.
        """
        raise NotImplementedError

    def _step_fused(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    states: list[dict[str, Any]]) -> None:
        """The same step as :meth:`_step_foreach` through the fused kernels (same arguments).

        Called only where :meth:`_fusable` holds for the group and
        :meth:`_fused_eligible` for the bucket's tensors.
        """
        raise NotImplementedError

    def _takes_stored_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> bool:
        """Whether :meth:`_step_fused_stored` steps ``param`` with its state left in the codec's stored form
        (asked on the fused path, without transforms, before decoding; a fresh state holds the codec's input)."""
        return False

    def _step_fused_stored(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                           states: list[dict[str, Any]]) -> None:
        """One fused step (decode, update, encode in one kernel) of state that :meth:`_takes_stored_state` took."""
        raise NotImplementedError

    def _stored_split(self, group: dict[str, Any], params: list[Tensor], states: list[dict]) -> list[bool] | None:
        """Per parameter of a bucket, whether :meth:`_takes_stored_state` holds; None where it holds for none."""
        if (self.grad_transforms or self.update_transforms or not self._use_fused(params, group)
                or type(self)._takes_stored_state is GradwiseOptimizer._takes_stored_state):
            return None
        direct = [self._takes_stored_state(group, v, st) for v, st in zip(params, states)]
        return direct if any(direct) else None

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                states: list[dict[str, Any]], stored: list[bool] | None = None) -> None:
        """One step of a bucket: the fused hook where it goes through it, else the foreach one; parameters
        flagged in ``stored`` (state in stored form) through :meth:`_step_fused_stored`."""
        if stored is not None:
            direct, (params, grads, states) = split_by(stored, params, grads, states)
            self._step_fused_stored(group, *direct)
            if not params:
                return
        if self._use_fused(params, group):
            self._step_fused(group, params, grads, states)
        else:
            self._step_foreach(group, params, grads, states)

    def _group_fused(self, group: dict[str, Any]) -> bool | None:
        """The group's fused setting: its own ``fused``/``foreach`` keys, else the optimizer's."""
        fused = group.get("fused")
        if fused is None and group.get("foreach") is not None:
            fused = False
        return self.fused if fused is None else fused

    def _use_fused(self, params: list[Tensor], group: dict[str, Any] | None = None) -> bool:
        """Whether this bucket (one device and dtype) goes through the fused path."""
        fused = self.fused if group is None else self._group_fused(group)
        if fused is False or (group is not None and not self._fusable(group)):
            return False
        ok, why = self._fused_eligible(params[0])
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
        for t in self.grad_transforms + self.update_transforms:
            keys.update(f"{t.key}.{k}" for k in t.init_state(meta))
        return keys

    def _check_loadable(self, state_dict: dict[str, Any]) -> dict:
        """Raise ValueError unless ``state_dict`` is one this optimizer can step from (see ``_state.check_loadable``)."""
        return S.check_loadable(self, state_dict)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's ``state_dict``, plus the class that saved it (so another class refuses to load it).

        With a state codec the state is saved in its stored form, and the
        codec's name with it.
        """
        sd = super().state_dict()
        sd[S.CLASS_KEY] = S.gradwise_class(type(self))
        if self.state_codec is not None:
            sd[S.CODEC_KEY] = self.state_codec.name
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's ``load_state_dict``, after checking the whole state_dict (see ``_check_loadable``).

        The load-state-dict pre-hooks run first (they may rewrite the
        state_dict), then the check, then torch's load; a failing check leaves
        the optimizer as it was. With a state codec, stored forms are kept as
        saved (torch's load would cast them to the parameter's dtype) and
        state saved without a codec is encoded.
        """
        state_dict = state_dict.copy()  # shallow, as torch.optim does (the pre-hooks may edit it)
        hooks = self._optimizer_load_state_dict_pre_hooks
        for pre_hook in hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        ids = self._check_loadable(state_dict)
        # the pre-hooks already ran: hide them from torch's load, which would run them again
        self._optimizer_load_state_dict_pre_hooks = type(hooks)()
        try:
            super().load_state_dict(state_dict)
        finally:
            self._optimizer_load_state_dict_pre_hooks = hooks
            self.__dict__.pop("_optimizer_checked", None)  # the loaded state is checked in full at the next step
        if self.state_codec is not None:
            reencode_loaded(self.state_codec, self.state, state_dict, ids)

    # Under torch.compile the step graph-breaks and runs eagerly: its per-tensor
    # step counters and coefficients are Python numbers, which dynamo would
    # specialize on and recompile for every step, and the fused kernels are
    # already one pass over memory. The kernels still have fake
    # implementations (gradwise.optim._fakes), so they trace where called directly.
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

        work = self._collect()  # (group, [(key param, real view of param, real view of grad)])
        if not work:
            return loss  # no gradients: a no-op, as in torch.optim (step counters do not move)

        # fused=True is checked for every parameter before any math, as torch does
        for group, items in work:
            if self._group_fused(group) is True:
                for _, v, _ in items:
                    ok, why = self._fused_eligible(v)
                    if not ok:
                        raise RuntimeError(f"{type(self).__name__}(fused=True): {why}")

        # every state tensor is checked against its parameter before anything (counters included) is
        # written, so a mismatched state raises with the step untouched on both paths
        S.check_step_state(self, work)

        saved = None
        if self.skip_nonfinite:
            finite, large = finite_and_large([g for _, items in work for _, _, g in items])
            if not finite:
                self._count_skip()
                return loss
            if large:
                # the update's own math may overflow with such gradients (a square, a product with
                # 1/eps, a momentum sum near the dtype's max): keep what the step writes, to undo it
                saved = S.backup(self, work)

        prepared = [self._prepare_bucket(group, g_eff, bucket)
                    for group, items in work for g_eff, bucket in self._buckets(group, items)]
        self._prepare([b[:4] for b in prepared])
        for g_eff, params, grads, states, _, stored in prepared:
            self._update(g_eff, params, grads, states, stored)  # (stored forms pass encode_states untouched)
        for g_eff, params, _, states, old, _ in prepared:
            if old is not None:
                self._apply_update_transforms(g_eff, params, states, old)
            if self.state_codec is not None:
                encode_states(self.state_codec, params, states)
        if saved is not None and not all_finite([v for _, items in work for _, v, _ in items]):
            S.restore(self, saved)
            self._count_skip()
        return loss

    def _collect(self) -> list:
        """The groups with gradients: ``[(group, [(param, real view, real view of grad), ...]), ...]``."""
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
        return work

    def _buckets(self, group: dict[str, Any], items: list) -> list:
        """``group``'s items by (device, dtype), with the group as the update sees it (``lr`` a number)."""
        self._begin_group(group)
        # a tensor lr is read once per step as a number (CPU: no device sync)
        g_eff = group if not isinstance(group["lr"], Tensor) else {**group, "lr": float(group["lr"])}
        buckets: dict[tuple, list] = {}
        for it in items:
            buckets.setdefault((it[1].device, it[1].dtype), []).append(it)
        return [(g_eff, b) for b in buckets.values()]

    def _prepare_bucket(self, group: dict[str, Any], g_eff: dict[str, Any], bucket: list) -> tuple:
        """State made or advanced and decoded, gradients negated (maximize) and transformed, for one bucket."""
        params = [v for _, v, _ in bucket]
        grads = [g for _, _, g in bucket]
        states = []
        for (p, v, _) in bucket:
            st = self.state[p]
            if not st:
                st["step"] = 0
                st.update(self._init_state(v, group))
                for t in self.grad_transforms + self.update_transforms:
                    st.update({f"{t.key}.{k}": x for k, x in t.init_state(v).items()})
            # torch.optim checkpoints hold step as a 0-dim tensor: count in Python ints
            st["step"] = int(st["step"]) + 1
            states.append(st)
        stored = None
        if self.state_codec is not None:  # state a fused kernel reads in stored form is left so
            stored = self._stored_split(g_eff, params, states)
            decode_states(self.state_codec, params, states, stored)
        if g_eff.get("maximize", False):
            grads = torch._foreach_neg(grads)
        for t in self.grad_transforms:
            grads = t.apply(params, grads, states, g_eff)
        old = [p.clone() for p in params] if self.update_transforms else None
        return g_eff, params, grads, states, old, stored

    def _apply_update_transforms(self, group: dict[str, Any], params: list[Tensor], states: list[dict],
                                 old: list[Tensor]) -> None:
        """``p <- p_old + T(p_new - p_old)`` through every update transform, in order."""
        updates = torch._foreach_sub(params, old)
        for t in self.update_transforms:
            updates = t.apply(old, updates, states, group)
        torch._foreach_add_(old, updates)
        torch._foreach_copy_(params, old)

    def _count_skip(self) -> None:
        for group in self.param_groups:
            group["skipped_steps"] = group.get("skipped_steps", 0) + 1

    def __repr__(self) -> str:
        s = super().__repr__()
        if self.grad_transforms:
            s += f"\ngrad_transforms: {list(self.grad_transforms)}"
        if self.update_transforms:
            s += f"\nupdate_transforms: {list(self.update_transforms)}"
        if self.state_codec is not None:
            s += f"\nstate_codec: {self.state_codec!r}"
        return s
