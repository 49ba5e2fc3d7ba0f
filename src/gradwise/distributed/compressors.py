"""Gradient compressors for the DDP communication hooks, each reporting the bytes one worker sends.

A compressor here is a small object with two jobs: turn one worker's flat gradient into the message it
sends (``encode`` / ``decode``), and say how many bytes that message has (``message_bytes``). The hooks
in :mod:`gradwise.distributed.hooks` do the communication. "Bytes sent per step" is always the size of
one worker's message (payload only, summed over the step's buckets), the number papers report; what a
collective puts on the wire (a ring all-gather forwards each message ``world_size - 1`` times) is the
transport's business and is not counted.

* :class:`NoCompression`: the dense gradient, summed by ``all_reduce`` (plain DDP's message).
* :class:`TopK`: the ``k`` largest-magnitude entries, sent as values and int32 indices and gathered with
  ``all_gather``; ``k = max(1, floor(ratio * numel))`` of each bucket (``per="bucket"``) or of each
  parameter's gradient (``per="tensor"``).
* PowerSGD rank ``r``: torch's own hook (``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``)
  does the work (see :func:`gradwise.distributed.hooks.powersgd_hook`); :func:`powersgd_message_numel`
  counts its message (``P`` and ``Q`` of each compressed matrix, the other tensors dense) with the rule
  torch's hook uses to decide which tensors to compress.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_real

__all__ = ["NoCompression", "TopK", "topk_compress", "topk_decompress", "powersgd_message_numel",
           "powersgd_should_compress"]

_INDEX_DTYPE = torch.int32
_INDEX_BYTES = 4


class NoCompression:
    """The identity: each worker sends its dense gradient (``numel * element_size`` bytes)."""

    name = "none"

    def message_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return int(numel) * torch.empty((), dtype=dtype).element_size()

    def __repr__(self) -> str:
        return "NoCompression()"


def topk_compress(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` entries of the flat tensor ``x`` largest in magnitude: ``(values, indices)``, indices as
    int32, in ``torch.topk``'s order (descending magnitude; ties by torch's rule)."""
    flat = x.reshape(-1)
    k = check_int("k", k, 1, flat.numel())
    idx = torch.topk(flat.abs(), k, sorted=True).indices
    return flat[idx], idx.to(_INDEX_DTYPE)


def topk_decompress(values: Tensor, indices: Tensor, numel: int) -> Tensor:
    """The dense flat tensor of length ``numel`` holding ``values`` at ``indices`` (repeated indices add)."""
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    return out.index_add_(0, indices.reshape(-1).long(), values.reshape(-1))


class TopK:
    """Top-K sparsification: keep the ``k = max(1, floor(ratio * n))`` entries of largest magnitude.

    ``per="bucket"`` picks them over a DDP bucket's flat gradient, ``per="tensor"`` within each
    parameter's gradient. One worker's message is ``k`` values (the gradient's dtype) and ``k`` int32
    indices: ``k * (element_size + 4)`` bytes.
    """

    name = "topk"

    def __init__(self, ratio: float = 0.01, per: str = "bucket"):
        self.ratio = check_real("ratio", ratio, 0.0, 1.0, lo_open=True)
        self.per = check_choice("per", per, ("bucket", "tensor"))

    def k(self, numel: int) -> int:
        """How many entries a tensor of ``numel`` entries keeps."""
        return max(1, min(int(numel), math.floor(self.ratio * numel)))

    def sizes(self, numels: Sequence[int]) -> list[int]:
        """The ``k`` of each segment of a bucket whose parameters have ``numels`` entries."""
        return [self.k(sum(numels))] if self.per == "bucket" else [self.k(n) for n in numels]

    def encode(self, flat: Tensor, numels: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Values and (bucket-flat) indices of a bucket whose parameters have ``numels`` entries."""
        if self.per == "bucket":
            return topk_compress(flat, self.k(flat.numel()))
        vals, idxs, start = [], [], 0
        for n in numels:
            v, i = topk_compress(flat[start:start + n], self.k(n))
            vals.append(v)
            idxs.append(i + start)
            start += n
        return torch.cat(vals), torch.cat(idxs)

    def message_bytes(self, numels: Sequence[int], dtype: torch.dtype) -> int:
        k = sum(self.sizes(numels))
        return k * (torch.empty((), dtype=dtype).element_size() + _INDEX_BYTES)

    def __repr__(self) -> str:
        return f"TopK(ratio={self.ratio}, per={self.per!r})"


def powersgd_should_compress(n: int, m: int, rank: int, min_compression_rate: float) -> bool:
    """Whether PowerSGD compresses an ``n x m`` matrix at ``rank``: ``(n + m) r * rate < n m`` with
    ``r = min(n, m, rank)`` (torch's and the L-GreCo authors' rule)."""
    r = min(n, m, rank)
    return (n + m) * r * min_compression_rate < n * m


def powersgd_message_numel(shapes: Sequence[Sequence[int]], ranks: int | Sequence[int],
                           min_compression_rate: float = 2.0) -> int:
    """Entries one worker sends for a bucket under PowerSGD: ``(n + m) min(n, m, r)`` for each gradient
    viewed as ``n = shape[0]`` rows by ``m = numel / n`` columns that is worth compressing
    (:func:`powersgd_should_compress`), ``n m`` for the others. ``ranks``: one rank, or one per tensor."""
    per = [ranks] * len(shapes) if isinstance(ranks, int) else list(ranks)
    if len(per) != len(shapes):
        raise ValueError(f"Invalid ranks: {len(per)} ranks for {len(shapes)} tensors (accepted: one per tensor)")
    total = 0
    for shape, r in zip(shapes, per):
        numel = math.prod(shape)
        n = shape[0] if len(shape) else 1
        m = numel // n if n else 0
        total += (n + m) * min(n, m, r) if powersgd_should_compress(n, m, r, min_compression_rate) else numel
    return total
