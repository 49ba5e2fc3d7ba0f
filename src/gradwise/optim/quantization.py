r"""Block-wise dynamic 8-bit quantization: the storage format of 8-bit optimizer state.

Paper: Tim Dettmers, Mike Lewis, Sam Shleifer, Luke Zettlemoyer, "8-bit
Optimizers via Block-wise Quantization", ICLR 2022, arXiv 2110.02861.
Reference code: bitsandbytes 0.50.2 (https://github.com/TimDettmers/bitsandbytes,
now bitsandbytes-foundation/bitsandbytes): ``functional.create_dynamic_map``
and the CPU kernels behind ``functional.quantize_blockwise`` /
``dequantize_blockwise`` (``csrc/cpu_ops.cpp``). Only the abstract and
secondary summaries of the paper could be read here (its §2 was not
readable from the stored pages), so the details below follow the reference
code, which is what the tests compare with (live, bit for bit).

Block-wise quantization of a tensor ``x`` (flattened; blocks of ``B``
consecutive entries, the last one possibly shorter)::

    N_b   = max_i |x_bi|                                  (absmax, one float32 per block)
    q_bi  = the code j whose Q[j] is nearest to x_bi / N_b (8 bits)
    x'_bi = Q[q_bi] * N_b                                  (dequantization)

``Q`` is the *dynamic tree* map (:func:`dynamic_map`): 256 sorted values in
[-1, 1] made of a sign, a run of exponent digits (powers of ten from
``10^-(E-1)`` to ``10^0``) and a linear fraction that gets the bits the
exponent does not use, so it resolves small magnitudes (1e-6 and up) as well
as large ones.

How "nearest" is found follows bitsandbytes' CPU kernel, which is not an
exact nearest search: the normalized value ``x / N`` (computed as ``x * (1/N)``
in float32, clamped to [-1, 1]) is first rounded to one of 65,536 evenly
spaced points of [-1, 1] (index ``floor(fma((v + 1) / 2, 65535, 0.5))``),
and each point maps to the code nearest to it (ties to the lower code). So
values within ~1.5e-5 of a code midpoint may go to the other side, and
magnitudes under ~1.5e-5 of the block's absmax are coded as the grid point
nearest to them (e.g. an exact 0 in a block with nonzero absmax becomes code
131 of the signed map, 2.1e-5 * N, not the map's 0). A block whose absmax is
0 gets code 0 everywhere; NaN entries are ignored by the absmax and coded 0;
a block holding an infinity has absmax inf, its finite entries become the
code nearest 0 and its infinite ones code 0 (bitsandbytes does the same).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_bool, check_int

__all__ = ["dynamic_map", "quantize_blockwise", "dequantize_blockwise", "quantization_lut"]

_GRID = 65536  # the points of [-1, 1] the CPU kernel rounds a normalized value to


def dynamic_map(signed: bool = True, *, max_exponent_bits: int = 7, total_bits: int = 8) -> Tensor:
    r"""The dynamic tree quantization map: 256 sorted float32 values in [-1, 1].

    Equal, value for value, to bitsandbytes' ``create_dynamic_map(signed,
    max_exponent_bits, total_bits)`` (checked live in the tests). With ``E =
    max_exponent_bits`` and ``F = total_bits - 1 - E``, level ``e = 0..E-1``
    holds the midpoints of ``2^(e+F)`` equal steps of [0.1, 1] (``2^(e+F+1)``
    when unsigned: the sign bit becomes a fraction bit), scaled by
    ``10^(e-E+1)``, and their negatives when signed; when ``F > 0`` the top
    level gets ``2^F - 1`` more such midpoints; then 0 and 1. The signed map
    has 127 negative, 127 positive values, 0 and 1 (smallest magnitude 5.5e-7,
    most negative -0.993); the unsigned one 254 positive values, 0 and 1.

    Args:
        signed: a map for signed values (Adam's first moment) or for
            non-negative ones (its second moment).
        max_exponent_bits: ``E``, the number of decades covered (1 to
            ``total_bits - 1``; default 7).
        total_bits: bits per code (2 to 8, default 8). With fewer than 8 the
            map has ``2^total_bits`` values and is padded with zeros to 256
            entries (sorted in), as bitsandbytes does, so any uint8 indexes it.

    Example::

        code = dynamic_map()            # for signed state
        ucode = dynamic_map(False)      # for non-negative state
    """
    check_bool("signed", signed)
    total_bits = check_int("total_bits", total_bits, 2, 8)
    max_exponent_bits = check_int("max_exponent_bits", max_exponent_bits, 1, total_bits - 1)
    magnitude_bits = total_bits - 1
    spare = magnitude_bits - max_exponent_bits  # fraction bits of the lowest decade

    def decade(scale_exp: int, count: int) -> list[Tensor]:
        # midpoints of `count` equal steps of [0.1, 1], in float32 as the reference computes them
        edges = torch.linspace(0.1, 1.0, count + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        scaled = mids * (10.0 ** scale_exp)
        return [scaled, -scaled] if signed else [scaled]

    parts: list[Tensor] = []
    for e in range(max_exponent_bits):
        parts += decade(e - (max_exponent_bits - 1), 2 ** (e + spare + (0 if signed else 1)))
    if 2 ** spare - 1 > 0:
        parts += decade(0, 2 ** spare - 1)
    values = torch.cat(parts + [torch.tensor([0.0, 1.0])])
    if values.numel() != 2 ** total_bits:  # the unsigned map with spare fraction bits overflows its codes
        raise ValueError(f"Invalid max_exponent_bits: {max_exponent_bits} with total_bits={total_bits} and "
                         f"signed={signed} gives {values.numel()} values, not {2 ** total_bits} (accepted: "
                         "max_exponent_bits = total_bits - 1 for an unsigned map)")
    values = torch.cat([values, values.new_zeros(256 - values.numel())])
    return values.sort().values


_LUTS: dict[tuple, Tensor] = {}


def quantization_lut(code: Tensor) -> Tensor:
    """The 65,536-entry uint8 table from grid point to code that quantization uses (cached per map).

    Grid point ``i`` is ``-1 + 2i/65535`` (float32); its code is the number of
    code midpoints ``(Q[j] + Q[j+1]) / 2`` strictly below it, i.e. the nearest
    code with ties to the lower one, as bitsandbytes' CPU kernel builds it.
    The key is the map's values, so building it reads ``code`` on the host once.
    """
    _check_code(code)
    key = (code.device, tuple(code.detach().cpu().tolist()))
    lut = _LUTS.get(key)
    if lut is None:
        c = code.detach().float().cpu()
        mids = (c[:-1] + c[1:]) * 0.5
        points = -1.0 + (2.0 * torch.arange(_GRID, dtype=torch.float32)) / float(_GRID - 1)
        lut = torch.searchsorted(mids, points, side="left").to(torch.uint8).to(code.device)
        if len(_LUTS) >= 16:
            _LUTS.pop(next(iter(_LUTS)))
        _LUTS[key] = lut
    return lut


def _check_code(code: Tensor) -> None:
    if not isinstance(code, Tensor) or code.shape != (256,) or not code.is_floating_point():
        got = f"shape {tuple(code.shape)}, dtype {code.dtype}" if isinstance(code, Tensor) else type(code).__name__
        raise ValueError(f"Invalid code: {got} (accepted: a float tensor of 256 sorted values in [-1, 1], "
                         "e.g. dynamic_map())")


def _check_block_size(block_size) -> int:
    return check_int("block_size", block_size, 1)


def quantize_with_lut(x: Tensor, lut: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """:func:`quantize_blockwise` given the map's table (no checks; ``x`` floating, any shape)."""
    n = x.numel()
    blocks = -(-n // block_size)
    flat = x.detach().reshape(-1).float()
    if blocks * block_size != n:
        flat = torch.cat([flat, flat.new_zeros(blocks * block_size - n)])
    flat = flat.view(blocks, block_size)
    mag = flat.abs()
    absmax = torch.where(mag.isnan(), 0.0, mag).amax(dim=1)  # NaN entries do not count
    normed = (flat * (1.0 / absmax).unsqueeze(1)).clamp_(-1.0, 1.0)
    # floor(fma((v + 1) / 2, 65535, 0.5)): the product and sum are exact in float64, then one rounding
    pos = ((normed + 1.0) * 0.5).double().mul_(_GRID - 1).add_(0.5).float()
    pos = torch.where(pos.isnan() | (absmax == 0).unsqueeze(1), 0.0, pos)
    codes = lut[pos.long()]
    codes = torch.where((absmax == 0).unsqueeze(1), torch.zeros((), dtype=torch.uint8, device=x.device), codes)
    return codes.reshape(-1)[:n].reshape(x.shape), absmax


def quantize_blockwise(x: Tensor, code: Tensor | None = None, block_size: int = 256) -> tuple[Tensor, Tensor]:
    r"""Quantize ``x`` block by block: ``(codes, absmax)``.

    ``codes``: uint8 of ``x``'s shape; ``absmax``: float32 of ``ceil(x.numel()
    / block_size)`` entries, ``max |x|`` over each block of the flattened
    tensor (the last block may be shorter). Equal to bitsandbytes'
    ``quantize_blockwise(x, code, blocksize=block_size)`` on CPU, codes and
    absmax bit for bit (see the module docstring for its rounding rule).
    float16/bfloat16/float64 inputs are converted to float32 first.

    Args:
        x: a floating-point tensor (any shape, any device).
        code: the 256-value map (default: ``dynamic_map(True)``).
        block_size: entries per block (default 256; bitsandbytes' 8-bit
            optimizers use 256, its ``quantize_blockwise`` defaults to 4096).

    Example::

        codes, absmax = quantize_blockwise(m)                    # signed map
        codes, absmax = quantize_blockwise(v, dynamic_map(False))
        m2 = dequantize_blockwise(codes, absmax)
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"Invalid x: {got} (accepted: a floating-point tensor)")
    block_size = _check_block_size(block_size)
    code = dynamic_map(True) if code is None else code
    _check_code(code)
    return quantize_with_lut(x, quantization_lut(code.to(x.device)), block_size)


def dequantize_with_code(codes: Tensor, absmax: Tensor, code: Tensor, block_size: int,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`dequantize_blockwise` without checks (``code`` float32 on ``codes``' device)."""
    n = codes.numel()
    blocks = absmax.numel()
    flat = codes.reshape(-1)
    if blocks * block_size != n:
        flat = torch.cat([flat, flat.new_zeros(blocks * block_size - n)])
    vals = code[flat.long()].view(blocks, block_size) * absmax.unsqueeze(1)
    return vals.reshape(-1)[:n].reshape(codes.shape).to(dtype)


def dequantize_blockwise(codes: Tensor, absmax: Tensor, code: Tensor | None = None, block_size: int = 256,
                         *, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Undo :func:`quantize_blockwise`: ``Q[codes] * absmax`` per block, in float32, then cast to ``dtype``.

    Equal to bitsandbytes' ``dequantize_blockwise(codes, absmax=absmax,
    code=code, blocksize=block_size)`` on CPU, bit for bit. Returns a tensor
    of ``codes``' shape.

    Args:
        codes: uint8 codes (any shape).
        absmax: float32, one per block: ``ceil(codes.numel() / block_size)`` entries.
        code: the map they were made with (default: ``dynamic_map(True)``).
        block_size: as given to :func:`quantize_blockwise`.
        dtype: the floating dtype of the result (default float32).
    """
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8:
        got = codes.dtype if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"Invalid codes: {got} (accepted: a torch.uint8 tensor from quantize_blockwise)")
    block_size = _check_block_size(block_size)
    blocks = -(-codes.numel() // block_size)
    if not isinstance(absmax, Tensor) or absmax.dtype != torch.float32 or absmax.shape != (blocks,):
        got = f"shape {tuple(absmax.shape)}, dtype {absmax.dtype}" if isinstance(absmax, Tensor) else \
            type(absmax).__name__
        raise ValueError(f"Invalid absmax: {got} (accepted: float32 of shape ({blocks},), one per block of "
                         f"{block_size} codes)")
    if absmax.device != codes.device:
        raise ValueError(f"Invalid absmax: on {absmax.device} (accepted: on the codes' device, {codes.device})")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"Invalid dtype: {dtype!r} (accepted: a floating torch.dtype)")
    code = dynamic_map(True) if code is None else code
    _check_code(code)
    return dequantize_with_code(codes, absmax, code.to(device=codes.device, dtype=torch.float32), block_size, dtype)
