"""Per-parameter state: creation, the transactional checks around a step, and checkpoint checks.

A step writes nothing before every check that can fail has passed
(:func:`check_step_state`); with ``skip_nonfinite`` a step whose large
gradients may overflow keeps a copy of what it writes (:func:`backup`) to
put back (:func:`restore`); ``load_state_dict`` refuses a state_dict another
class (or other settings) saved before anything is loaded (:func:`check_loadable`).
Functions take the optimizer as their first argument.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["zeros_state", "picklable_state", "CLASS_KEY", "CODEC_KEY", "gradwise_class", "param_index",
           "check_step_state", "check_loadable", "backup", "restore"]

# state_dict entries naming the class that saved it and its state codec; torch.optim's load ignores them
CLASS_KEY = "gradwise_optimizer"
CODEC_KEY = "gradwise_state_codec"


def zeros_state(p: Tensor, *names: str) -> dict[str, Tensor]:
    """Zero-initialized state tensors shaped, typed and laid out like ``p``."""
    return {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n in names}


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


def gradwise_class(cls: type) -> str:
    """The name of the gradwise optimizer ``cls`` is or subclasses (a user's subclass of AdamP: AdamP)."""
    for c in cls.__mro__:
        if c.__module__.startswith("gradwise.optim."):
            return c.__name__
    return cls.__name__


def param_index(opt: Optimizer, p: Tensor) -> int:
    """``p``'s index in ``state_dict()["state"]`` (first appearance over the groups)."""
    seen: dict[int, int] = {}
    for g in opt.param_groups:
        for q in g["params"]:
            seen.setdefault(id(q), len(seen))
    return seen.get(id(p), -1)


def _fits(x: Tensor, v: Tensor) -> bool:
    if x.dim() == 0 and v.dim() != 0:  # a per-tensor statistic
        return x.device == v.device
    return x.shape == v.shape and x.device == v.device and (x.dtype == v.dtype or not x.is_floating_point())


def check_step_state(opt: Any, work: list) -> None:
    """Raise RuntimeError unless each gradient and state tensor fits the tensor it is stepped with.

    ``work``: ``[(group, [(param, real view, real view of grad), ...]), ...]``.
    A state tensor of more than 0 dimensions must have the (real view of
    the) parameter's shape, dtype and device; a 0-dim one (a per-tensor
    statistic such as SGD-SaI's ``gsnr``) its device; a tensor the optimizer's
    state codec stores, what the codec accepts (``StateCodec.fits``). This is
    the check the fused kernels make, done here for both paths before any
    write, with no host sync.

    To keep the step cheap, a parameter is checked in full only when its
    (data pointer, shape) differs from the last check, i.e. after its
    ``.data`` was replaced (resized, ``module.half()``, ``module.to()``) or
    reshaped, and for every parameter after ``load_state_dict``. A state
    tensor replaced by hand in ``opt.state`` is not re-checked here (the
    fused kernels and torch's ops still refuse it).
    """
    name = type(opt).__name__
    codec = getattr(opt, "state_codec", None)
    seen = opt.__dict__.get("_optimizer_checked")  # id(param) -> (data_ptr, shape) when last checked
    if seen is None:
        seen = opt._optimizer_checked = {}  # (the _optimizer_ prefix keeps it out of pickles)
    last = seen.get
    for _, items in work:
        for p, v, g in items:
            key = (v.data_ptr(), v.shape)
            if last(id(p)) == key:
                continue
            if g.shape != v.shape or g.dtype != v.dtype or g.device != v.device:
                raise RuntimeError(
                    f"{name}.step: parameter {param_index(opt, p)} has shape "
                    f"{tuple(v.shape)}, dtype {v.dtype} on {v.device} but its gradient has shape "
                    f"{tuple(g.shape)}, dtype {g.dtype} on {g.device} (accepted: the same as the parameter)")
            st = opt.state.get(p)
            if not st:
                continue
            for k, x in st.items():
                if k == "step":
                    continue
                if codec is not None and not (isinstance(x, Tensor) and _fits(x, v)):
                    ok = codec.fits(k, x, v)
                elif not isinstance(x, Tensor):
                    continue
                else:
                    ok = _fits(x, v)
                if not ok:
                    desc = (f"shape {tuple(x.shape)}, dtype {x.dtype} on {x.device}" if isinstance(x, Tensor)
                            else f"a {type(x).__name__}")
                    raise RuntimeError(
                        f"{name}.step: state {k!r} of parameter {param_index(opt, p)} has "
                        f"{desc}, but the parameter"
                        f"{' (stepped as its view_as_real)' if p.is_complex() else ''} has shape "
                        f"{tuple(v.shape)}, dtype {v.dtype} on {v.device} (accepted: state of the parameter's "
                        "shape, dtype and device; was the parameter resized, or a state_dict of other "
                        "parameters loaded?). Nothing was changed.")
            seen[id(p)] = key


def backup(opt: Optimizer, work: list) -> tuple[list, list, list]:
    """Copies of what a step may write: the parameters, their state, every group's entries."""
    def copy(x):
        if isinstance(x, Tensor):
            return x.clone()
        return tuple(copy(y) for y in x) if isinstance(x, tuple) else x
    params = [(v, v.clone()) for _, items in work for _, v, _ in items]
    states = [(p, {k: copy(x) for k, x in opt.state[p].items()} if p in opt.state else None)
              for _, items in work for p, _, _ in items]
    groups = [(g, dict(g)) for g in opt.param_groups]
    return params, states, groups


def restore(opt: Optimizer, saved_copy: tuple[list, list, list]) -> None:
    """Put back what :func:`backup` copied (state made by this step is removed)."""
    params, states, groups = saved_copy
    for v, saved in params:
        v.copy_(saved)
    for p, saved in states:
        if saved is None:
            opt.state.pop(p, None)
        else:
            st = opt.state[p]
            st.clear()
            st.update(saved)
    for g, saved in groups:
        g.clear()
        g.update(saved)


def check_loadable(opt: Any, state_dict: dict[str, Any]) -> dict[Any, tuple[Tensor, dict]]:
    """Raise ValueError unless ``state_dict`` is one ``opt`` can step from.

    Checked before anything is loaded: every saved group has this class's
    hyperparameters (extra keys, such as a scheduler's ``initial_lr`` or
    torch.optim's ``amsgrad``, are kept as torch does) with valid values,
    every saved per-parameter state has exactly the state keys this
    optimizer makes for that parameter, and the state was saved with the
    same state codec (or none). So a state_dict of another optimizer class
    fails here, not at a later ``step()`` after counters moved; a torch.optim
    checkpoint of the same update (e.g. AdamW's ``exp_avg``/``exp_avg_sq``/
    ``step`` for OrthoAdamW) loads. Returns saved index -> (parameter, group).
    """
    name = type(opt).__name__
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        got = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"Invalid state_dict for {name}: got {got} (accepted: a dict with 'state' and "
                         "'param_groups', as Optimizer.state_dict() returns)")
    saved_by = state_dict.get(CLASS_KEY)
    if saved_by is not None and saved_by != gradwise_class(type(opt)):
        own = gradwise_class(type(opt))
        raise ValueError(f"Invalid state_dict for {name}: it was saved by {saved_by} (expected a "
                         f"state_dict of {own}, or a torch.optim one with {own}'s hyperparameters and state keys)")
    codec = getattr(opt, "state_codec", None)
    saved_codec, own_codec = state_dict.get(CODEC_KEY), (codec.name if codec is not None else None)
    if saved_codec is not None and saved_codec != own_codec:
        # a stored form is only readable by its codec (8-bit codes are not a float tensor to cast)
        build = saved_codec if saved_codec.endswith(")") else f"{saved_codec}()"
        hint = " or state_bits=8 with that block_size" if saved_codec.startswith("Blockwise8bitStateCodec") else ""
        own = own_codec if own_codec is not None else "None (state in the parameter's dtype)"
        raise ValueError(f"Invalid state_dict for {name}: its state is stored by the state codec {saved_codec}, "
                         f"this optimizer's is {own} (accepted: build the optimizer with "
                         f"state_codec={build}{hint} to load it; a state_dict saved without a codec loads "
                         "into any)")
    ids: dict[Any, tuple[Tensor, dict]] = {}  # saved index -> (current) parameter, group
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(opt.param_groups):
        return ids  # torch's own check reports the group count
    required = set(opt.defaults) - opt._OPTIONAL_GROUP_KEYS
    for i, (group, saved) in enumerate(zip(opt.param_groups, saved_groups)):
        missing = sorted(required - set(saved))
        if missing:
            raise ValueError(
                f"Invalid state_dict for {name}: parameter group {i} lacks the hyperparameters {missing} "
                f"(expected {name}'s {sorted(required)}; the group holds {sorted(k for k in saved if k != 'params')}"
                "): is it another optimizer's state_dict?")
        probe = {**{k: v for k, v in group.items() if k != "params"},
                 **{k: v for k, v in saved.items() if k != "params"}}
        try:
            opt._validate_group(probe)
        except ValueError as e:
            raise ValueError(f"Invalid state_dict for {name}: parameter group {i}: {e}") from None
        for idx, p in zip(saved.get("params", ()), group["params"]):
            ids[idx] = (p, probe)
    for idx, st in state_dict["state"].items():
        if idx not in ids or not st:
            continue  # torch ignores state of unknown indices; empty state is fresh
        p, group = ids[idx]
        expected = opt._expected_state_keys(p, group)
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
    return ids
