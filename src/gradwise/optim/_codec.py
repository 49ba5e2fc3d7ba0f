"""The state-codec hook: state stored in another form between steps, decoded around each update.

The base class decodes every state entry of a bucket before the update
(gradient transforms, ``_prepare`` and both update paths then see ordinary
float tensors of the parameter's dtype, so the fused kernels work on decoded
temporaries) and encodes them again after it (after the update transforms).
Without a codec (the default) none of this runs.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["StateCodec", "decode_states", "encode_states", "split_by", "reencode_loaded"]


class StateCodec:
    """How an optimizer stores its per-parameter state between steps.

    Subclasses implement:

    * ``encode(name, x, param) -> stored``: called after every update on each
      state entry ``name`` (``step`` excluded) whose value is a tensor, ``x``
      in the parameter's dtype. Returns what is kept in ``optimizer.state``:
      a tensor, or a tuple of tensors (e.g. 8-bit codes and one absmax per
      block), or ``x`` itself to keep an entry as it is (e.g. small tensors, or
      0-dim per-tensor statistics).
    * ``decode(name, stored, param) -> Tensor``: the inverse, called before
      every update; returns a new float tensor of ``param``'s dtype and
      shape (or, for an entry kept as it is, ``stored`` itself).
    * ``fits(name, stored, param) -> bool``: whether ``stored`` is a form this
      codec makes for ``param`` (checked before a step writes anything, in
      place of the dtype check the uncoded state gets).

    ``name`` identifies the codec in a ``state_dict``; one saved with a codec
    loads only into an optimizer with the same codec (its stored forms are
    not float tensors in general).
    """

    name: str = "StateCodec"

    def encode(self, name: str, x: Tensor, param: Tensor) -> Any:
        raise NotImplementedError

    def decode(self, name: str, stored: Any, param: Tensor) -> Tensor:
        raise NotImplementedError

    def fits(self, name: str, stored: Any, param: Tensor) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def decode_states(codec: StateCodec, views: list[Tensor], states: list[dict], stored: list[bool] | None = None) -> None:
    """Replace each stored state entry (``step`` excluded) of one bucket by its decoded tensor, in place.

    ``stored``: per parameter, whether its state stays in stored form instead, for a fused kernel that
    reads it so (``GradwiseOptimizer._takes_stored_state``); a fresh state (the codec's input) is encoded.
    """
    for i, (v, st) in enumerate(zip(views, states)):
        keep = stored is not None and stored[i]
        for k, x in st.items():
            if k == "step":
                continue
            if keep:
                if isinstance(x, Tensor):
                    st[k] = codec.encode(k, x, v)
            elif isinstance(x, (Tensor, tuple)):
                st[k] = codec.decode(k, x, v)


def split_by(flags: list[bool], *lists: list) -> tuple[list[list], list[list]]:
    """``lists`` cut in two by ``flags``: the entries where it is true, and the others."""
    return ([[x for x, f in zip(xs, flags) if f] for xs in lists],
            [[x for x, f in zip(xs, flags) if not f] for xs in lists])


def encode_states(codec: StateCodec, views: list[Tensor], states: list[dict]) -> None:
    """Replace each state tensor (``step`` excluded) of one bucket by its stored form, in place."""
    for v, st in zip(views, states):
        for k, x in st.items():
            if k != "step" and isinstance(x, Tensor):
                st[k] = codec.encode(k, x, v)


def reencode_loaded(codec: StateCodec, state: dict, state_dict: dict[str, Any], ids: dict) -> None:
    """After torch's ``load_state_dict``: each saved stored form kept as saved (on its parameter's device),
    anything else (which torch's load cast to the parameter's dtype) encoded. ``ids``: index -> (param, ...)."""
    def to_device(x, device):
        return x.to(device=device, copy=True) if isinstance(x, Tensor) else tuple(to_device(y, device) for y in x)
    for idx, saved in state_dict["state"].items():
        if idx not in ids or ids[idx][0] not in state:
            continue
        p = ids[idx][0]
        v = torch.view_as_real(p) if p.is_complex() else p
        st = state[p]
        for k, x in saved.items():
            if k == "step" or not isinstance(x, (Tensor, tuple)):
                continue
            orig = to_device(x, v.device)
            st[k] = orig if codec.fits(k, orig, v) else codec.encode(k, st[k], v)
