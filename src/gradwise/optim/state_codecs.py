"""State codecs: optimizer state kept in a smaller form between steps (``state_codec=`` of any optimizer).

The hook is :class:`StateCodec` (see :mod:`gradwise.optim._codec`): the base
class decodes the state before the update and encodes it after, for every
gradwise optimizer and on both update paths. The codecs here store the
parameter-shaped state in 16 bits and compute in the parameter's dtype::

    opt = AdaBelief(model.parameters(), state_codec=BFloat16StateCodec())

Half the state memory of float32, at the price of rounding the moments to 8
(bfloat16) or 11 (float16) significant bits after every step. Per-tensor
0-dim statistics (SGD-SaI's ``gsnr``, Stable-SPAM's norm EMAs) stay in the
parameter's dtype. Prefer bfloat16: float16's range (max 65504) overflows a
second moment of gradients above ~256.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradwise.optim._codec import StateCodec

__all__ = ["StateCodec", "BFloat16StateCodec", "Float16StateCodec"]


class _CastCodec(StateCodec):
    dtype: torch.dtype

    def _stored(self, x: Tensor, param: Tensor) -> bool:
        # parameter-shaped float state wider than the storage dtype; 0-dim statistics are kept as they are
        return (x.is_floating_point() and x.shape == param.shape and param.dim() > 0
                and torch.finfo(x.dtype).bits > torch.finfo(self.dtype).bits)

    def encode(self, name: str, x: Tensor, param: Tensor) -> Any:
        return x.to(self.dtype) if self._stored(x, param) else x

    def decode(self, name: str, stored: Any, param: Tensor) -> Tensor:
        if isinstance(stored, Tensor) and stored.dtype == self.dtype and stored.dtype != param.dtype:
            return stored.to(param.dtype)
        return stored

    def fits(self, name: str, stored: Any, param: Tensor) -> bool:
        return (isinstance(stored, Tensor) and stored.dtype == self.dtype and stored.shape == param.shape
                and stored.device == param.device)


class BFloat16StateCodec(_CastCodec):
    """Parameter-shaped state stored in bfloat16 (float32's range, 8 significant bits)."""

    name = "BFloat16StateCodec"
    dtype = torch.bfloat16


class Float16StateCodec(_CastCodec):
    """Parameter-shaped state stored in float16 (11 significant bits; range up to 65504)."""

    name = "Float16StateCodec"
    dtype = torch.float16
