"""High-loss selection: train on the hardest samples (or mini-batches)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_int, check_real
from gradwise.registry import register

__all__ = ["select_hard_samples"]


@register(kind="sample-weighting", paper="Can we learn better with hard samples?", year=2023, arxiv="2304.03486",
          code=None, summary="keep the highest-loss samples or mini-batches (top fraction) for the update")
def select_hard_samples(per_sample_losses: Tensor, *, fraction: float = 0.5, k: int | None = None) -> Tensor:
    r"""Indices of the ``k`` largest losses (default ``k = ceil(fraction * N)``), largest first.

    Paper: Sahayam, Zakkam, Jayaraman, "Can we learn better with hard
    samples?", arXiv 2304.03486 (2023). No code was released.

    The paper scores *mini-batches*: the loss of each of the epoch's
    mini-batches is computed with a forward pass, and the network is updated
    only on the :math:`\delta` mini-batches with the highest loss (their
    hyper-parameter :math:`\delta` is the number of mini-batches kept). Pass
    the vector of mini-batch losses and ``k=delta`` to get that selection; pass
    per-sample losses of a large batch to select hard samples within it, the
    finer-grained variant. Ties are broken by ``torch.topk`` (lowest index
    first on CPU). Losses are detached: the selection passes no gradient.

    Example::

        >>> with torch.no_grad():
        ...     per = F.cross_entropy(model(xb), yb, reduction="none")
        >>> idx = select_hard_samples(per, fraction=0.25)
        >>> F.cross_entropy(model(xb[idx]), yb[idx]).backward()
    """
    if not torch.is_tensor(per_sample_losses) or not per_sample_losses.is_floating_point() \
            or per_sample_losses.dim() != 1:
        raise ValueError("Invalid per_sample_losses: expected a 1-D floating-point tensor")
    n = per_sample_losses.numel()
    if k is None:
        check_real("fraction", fraction, 0.0, 1.0, lo_open=True)
        k = max(1, math.ceil(fraction * n)) if n else 0
    else:
        check_int("k", k, 0, n)
    return torch.topk(per_sample_losses.detach(), k, sorted=True).indices
