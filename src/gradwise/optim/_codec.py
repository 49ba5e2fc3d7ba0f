"""The state-codec hook: state stored in another form between steps, decoded around each update.

The base class decodes every state entry of a bucket before the update
(gradient transforms, ``_prepare`` and both update paths then see ordinary
float tensors of the parameter's dtype, so the fused kernels work on decoded
temporaries) and encodes them again after it (after the update transforms).
Without a codec (the default) none of this runs.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["StateCodec", "decode_states", "encode_states"]


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


def decode_states(codec: StateCodec, views: list[Tensor], states: list[dict]) -> None:
    """Replace each stored state entry (``step`` excluded) of one bucket by its decoded tensor, in place."""
    for v, st in zip(views, states):
        for k, x in st.items():
            if k != "step" and isinstance(x, (Tensor, tuple)):
                st[k] = codec.decode(k, x, v)


def encode_states(codec: StateCodec, views: list[Tensor], states: list[dict]) -> None:
    """Replace each state tensor (``step`` excluded) of one bucket by its stored form, in place."""
    for v, st in zip(views, states):
        for k, x in st.items():
            if k != "step" and isinstance(x, Tensor):
                st[k] = codec.encode(k, x, v)
