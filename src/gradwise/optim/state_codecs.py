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

:class:`Blockwise8bitStateCodec` stores it in 8 bits per entry plus one
float32 per block (the 8-bit optimizers of Dettmers et al., arXiv
2110.02861); every optimizer takes it as ``state_bits=8``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradwise._validate import check_int
from gradwise.optim._codec import StateCodec
from gradwise.registry import register
from gradwise.optim.quantization import dequantize_with_code, dynamic_map, quantization_lut, quantize_with_lut

__all__ = ["StateCodec", "BFloat16StateCodec", "Float16StateCodec", "Blockwise8bitStateCodec",
           "STATE_BITS_ATTR", "keep_32bit_state", "codec_for_state_bits"]

# A parameter attribute: ``p.gradwise_state_bits = 32`` keeps p's state unquantized under any codec here
STATE_BITS_ATTR = "gradwise_state_bits"


class _CastCodec(StateCodec):
    dtype: torch.dtype

    def _stored(self, x: Tensor, param: Tensor) -> bool:
        # parameter-shaped float state wider than the storage dtype; 0-dim statistics are kept as they are
        return (x.is_floating_point() and x.shape == param.shape and param.dim() > 0
                and torch.finfo(x.dtype).bits > torch.finfo(self.dtype).bits and not _kept_32bit(param))

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


def keep_32bit_state(*params: Tensor) -> None:
    """Mark parameters whose state a state codec leaves in the parameter's dtype (e.g. embeddings).

    Sets ``p.gradwise_state_bits = 32`` (:data:`STATE_BITS_ATTR`), which
    every codec in this module honours: gradwise's counterpart of
    bitsandbytes' ``GlobalOptimManager.override_config(p, "optim_bits", 32)``,
    as a property of the parameter rather than of a global registry keyed by
    ``id(p)``. ``gradwise.nn.StableEmbedding`` marks its weight so. (A complex
    parameter is stepped as its ``view_as_real``, which carries no attribute:
    the mark has no effect on complex parameters.)
    """
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"Invalid params: {type(p).__name__} (accepted: tensors / parameters)")
        setattr(p, STATE_BITS_ATTR, 32)


def _kept_32bit(param: Tensor) -> bool:
    return getattr(param, STATE_BITS_ATTR, None) == 32


# State that is never negative, stored with the unsigned map: Adam's second moments (and their amsgrad
# maxima), AdaBelief's centred variance. Matched on the last dotted part, so a transform's copy
# (``spike.exp_avg_sq``) counts too.
NONNEGATIVE_STATE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "exp_avg_var", "max_exp_avg_var"})


@register(kind="training-helper", paper="8-bit Optimizers via Block-wise Quantization", year=2022,
          arxiv="2110.02861", code="https://github.com/TimDettmers/bitsandbytes",
          summary="8-bit block-wise dynamic quantized optimizer state for every optimizer (state_bits=8)")
class Blockwise8bitStateCodec(StateCodec):
    r"""Parameter-shaped state in 8 bits: block-wise dynamic quantization (bitsandbytes' 8-bit optimizers).

    Paper: Dettmers, Lewis, Shleifer, Zettlemoyer, "8-bit Optimizers via
    Block-wise Quantization", ICLR 2022, arXiv 2110.02861. Reference code:
    bitsandbytes 0.50.2 (``bnb.optim.Optimizer2State`` with
    ``optim_bits=8``, its CPU kernel ``optimizer_update_8bit_blockwise``).

    A state tensor ``s`` of a parameter with at least ``min_8bit_size``
    entries is stored as ``(codes, absmax) = quantize_blockwise(s, Q,
    block_size)`` (uint8 codes of the parameter's shape and one float32
    ``max |s|`` per block of ``block_size`` entries), and decoded before each
    update as ``Q[codes] * absmax`` (:mod:`gradwise.optim.quantization`).
    ``Q`` is the signed dynamic map for signed state (first moments,
    momentum) and the unsigned one for state named in ``unsigned`` (default:
    second moments ``exp_avg_sq``, ``max_exp_avg_sq``, AdaBelief's
    ``exp_avg_var``, ``max_exp_avg_var``), as bitsandbytes uses ``dynamic``
    for ``state1`` and ``udynamic`` for ``state2``. The update itself runs in
    the parameter's dtype on the decoded state, and the new absmax of each
    block is taken from the updated state when it is encoded again: for
    Adam this is bitsandbytes' CPU 8-bit step (dequantize, 32-bit update,
    quantize), so ``AdamW(..., state_bits=8)`` follows
    ``bnb.optim.AdamW8bit`` (tests/optim/test_state_bits.py). On AdamW's
    fused path the three happen in one kernel that reads and writes the
    stored form directly (see :class:`~gradwise.optim.AdamW`).

    Kept as they are (parameter dtype): state of parameters with fewer than
    ``min_8bit_size`` entries (bitsandbytes' ``min_8bit_size=4096``: their
    state is a small share of the memory, and 8 bits hurt them most), 0-dim
    per-tensor statistics, state whose shape is not the parameter's, and all
    state of parameters marked by :func:`keep_32bit_state`.

    Memory per 8-bit state entry: 1 byte + 4 bytes per block, i.e. 1.016
    bytes at ``block_size=256`` against 4 in float32 (0.254x).

    Departures: bitsandbytes fixes the block size of its 8-bit optimizers
    at 256; here it is an argument (the paper used 2048). Percentile
    clipping, ``max_unorm`` and paged state (bitsandbytes options, off by
    default) are not offered. The 32-bit path for small tensors is gradwise's
    own update (bitsandbytes' adds ``eps * sqrt(1 - b2^t)`` inside the
    square root's sum, equal up to rounding).

    Args:
        block_size: entries per quantization block (default 256).
        min_8bit_size: parameters with fewer entries keep float state (default 4096).
        unsigned: names of non-negative state, stored with the unsigned map.

    Example::

        opt = AdamW(model.parameters(), lr=1e-3, state_bits=8)      # the same as:
        opt = AdamW(model.parameters(), lr=1e-3, state_codec=Blockwise8bitStateCodec())
    """

    def __init__(self, block_size: int = 256, min_8bit_size: int = 4096,
                 unsigned: frozenset[str] | set[str] | tuple[str, ...] = NONNEGATIVE_STATE) -> None:
        self.block_size = check_int("block_size", block_size, 1)
        self.min_8bit_size = check_int("min_8bit_size", min_8bit_size, 0)
        if isinstance(unsigned, str) or not all(isinstance(u, str) for u in unsigned):
            raise ValueError(f"Invalid unsigned: {unsigned!r} (accepted: a set of state names)")
        self.unsigned = frozenset(unsigned)
        self._maps: dict[tuple, tuple[Tensor, Tensor]] = {}  # (signed, device) -> (map, its table)

    @property
    def name(self) -> str:  # the block size is part of the stored form (the absmax count)
        return f"Blockwise8bitStateCodec(block_size={self.block_size})"

    def __repr__(self) -> str:
        return (f"Blockwise8bitStateCodec(block_size={self.block_size}, min_8bit_size={self.min_8bit_size}, "
                f"unsigned={sorted(self.unsigned)})")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_maps"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._maps = {}

    def signed(self, name: str) -> bool:
        """Whether state ``name`` uses the signed map."""
        return name.rsplit(".", 1)[-1] not in self.unsigned and name not in self.unsigned

    def qmap(self, name: str, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(map, its quantization table)`` for state ``name`` on ``device``, made once per device."""
        key = (self.signed(name), device)
        got = self._maps.get(key)
        if got is None:
            code = dynamic_map(key[0]).to(device)
            got = self._maps[key] = (code, quantization_lut(code))
        return got

    def quantized(self, x: Tensor, param: Tensor) -> bool:
        """Whether state ``x`` of ``param`` is stored in 8 bits."""
        return (x.shape == param.shape and param.dim() > 0 and param.numel() >= self.min_8bit_size
                and x.is_floating_point() and not _kept_32bit(param))

    def blocks(self, param: Tensor) -> int:
        return -(-param.numel() // self.block_size)

    def encode(self, name: str, x: Any, param: Tensor) -> Any:
        if not isinstance(x, Tensor) or not self.quantized(x, param):
            return x
        _, lut = self.qmap(name, x.device)
        return quantize_with_lut(x, lut, self.block_size)

    def decode(self, name: str, stored: Any, param: Tensor) -> Tensor:
        if not isinstance(stored, tuple):
            return stored
        codes, absmax = stored
        code, _ = self.qmap(name, codes.device)
        return dequantize_with_code(codes, absmax, code, self.block_size, param.dtype)

    def fits(self, name: str, stored: Any, param: Tensor) -> bool:
        if not (isinstance(stored, tuple) and len(stored) == 2 and all(isinstance(t, Tensor) for t in stored)):
            return False
        codes, absmax = stored
        return (codes.dtype == torch.uint8 and codes.shape == param.shape and codes.device == param.device
                and absmax.dtype == torch.float32 and absmax.shape == (self.blocks(param),)
                and absmax.device == param.device)


def codec_for_state_bits(state_bits: Any, block_size: Any = None) -> StateCodec | None:
    """The codec that ``state_bits`` (and ``block_size``) of an optimizer stand for.

    ``None`` or 32: none (state in the parameter's dtype); 16:
    :class:`BFloat16StateCodec`; 8: ``Blockwise8bitStateCodec(block_size)``
    (``block_size`` default 256, accepted only with ``state_bits=8``).
    """
    if state_bits is None or (state_bits in (32, 16) and not isinstance(state_bits, bool)):
        if block_size is not None:
            raise ValueError(f"Invalid block_size: {block_size!r} (accepted: only with state_bits=8, the "
                             "block size of 8-bit state)")
        return BFloat16StateCodec() if state_bits == 16 else None
    if state_bits == 8 and not isinstance(state_bits, bool):
        return Blockwise8bitStateCodec(256 if block_size is None else block_size)
    raise ValueError(f"Invalid state_bits: {state_bits!r} (accepted: None or 32 (state in the parameter's dtype), "
                     "16 (bfloat16) or 8 (block-wise 8-bit))")
