r"""L-GreCo's rank search: per-layer PowerSGD ranks from a dynamic program over measured errors.

Given, for each layer ``l`` and candidate rank ``r`` in ``[min_rank, max_rank]``, the compression error
``E[l, r]`` (Frobenius norm of ``M_l - P Q^T``) and the message size ``S[l, r] = r (n_l + m_l)``, L-GreCo
(Alimohammadi, Markov, Frantar, Alistarh, arXiv 2210.17357) picks one rank per layer solving

.. math:: \min_{r_1..r_L} \sum_l S[l, r_l] \quad\text{s.t.}\quad \sum_l E[l, r_l] \le
          \alpha \sum_l E[l, r_0]

(``r_0``: the uniform rank the user asked for), a knapsack solved by dynamic programming over the
error discretized into ``buckets`` (10,000) steps of ``alpha sum_l E[l, r_0] / buckets``.

These functions follow the authors' released code (LGrCo/L-GreCo, ``hooks/lgreco_hook.py``, commit
13942f0; the paper's algorithm section could not be read here), step by step:

* a layer's rank is at most ``min(n, m, max_rank)``; a candidate above it costs that rank's size plus
  one (so the search never prefers it) and is left with error 0 by the power method;
* each error is rounded up to whole buckets, at least 1 and at most ``buckets``; errors above the
  target are first capped at ``target + 1``;
* ``DP[l, b]`` is the least total size of layers ``0..l`` whose bucketed errors add to less than ``b``;
  ties go to the smaller rank; the answer is the first ``b`` where ``DP[L-1, b]`` is least, traced back.

Departures, for cases the authors' code mishandles: a NaN error is replaced by the cap (their
``np.nan_to_num`` result is discarded, so NaN reaches an int cast); when the target is not a positive
finite number, or no choice meets it, :func:`lgreco_ranks` returns ``None`` (keep the current ranks),
where theirs divides by zero or reads past the table.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_positive

__all__ = ["lgreco_size_table", "lgreco_error_table", "lgreco_dp", "lgreco_ranks", "orthogonalize_"]


def orthogonalize_(matrices: Tensor, epsilon: float = 0.0) -> Tensor:
    """Orthonormalize the columns of each matrix of a batch ``[b, n, r]`` in place, as torch's PowerSGD
    does: QR (``torch.linalg.qr``) for ``r > 2``, Gram-Schmidt otherwise (and in half precision), the
    column norm plus ``epsilon`` as divisor."""
    num, rows, rank = matrices.shape
    if rank > rows:
        raise ValueError(f"Invalid matrices: shape {tuple(matrices.shape)} (accepted: [b, n, r] with r <= n)")
    if rank <= 2 or matrices.dtype in (torch.float16, torch.bfloat16):
        for i in range(rank):
            col = matrices[:, :, i:i + 1]
            if epsilon == 0:
                col /= torch.norm(col, dim=1, keepdim=True)
            else:
                col /= torch.norm(col, dim=1, keepdim=True) + epsilon
            if i + 1 < rank:
                rest = matrices[:, :, i + 1:]
                rest -= torch.sum(col * rest, dim=1, keepdim=True) * col
    else:
        torch.linalg.qr(matrices, out=(matrices, torch.empty(num, rank, rank, device=matrices.device,
                                                             dtype=matrices.dtype)))
    return matrices


def lgreco_size_table(shapes: Sequence[tuple[int, int]], min_rank: int, max_rank: int) -> np.ndarray:
    """``S[l, j]``: entries sent for layer ``l`` (an ``n x m`` matrix) at rank ``min_rank + j``:
    ``rank (n + m)`` up to ``min(n, m, max_rank)``, that cap's size plus one above it."""
    min_rank = check_int("min_rank", min_rank, 1)
    max_rank = check_int("max_rank", max_rank, min_rank)
    sizes = np.zeros((len(shapes), max_rank - min_rank + 1))
    for i, (n, m) in enumerate(shapes):
        r = min(n, m, max_rank)
        if r < min_rank:
            raise ValueError(f"Invalid shapes: layer {i} is {n}x{m}, below min_rank {min_rank} (accepted: "
                             "matrices with min(n, m) >= min_rank)")
        sizes[i, :r - min_rank + 1] = np.arange(min_rank, r + 1) * (n + m)
        sizes[i, r - min_rank + 1:] = r * (n + m) + 1
    return sizes


def lgreco_error_table(matrices: Sequence[Tensor], min_rank: int, max_rank: int, method: str = "power",
                       iters: int = 5, generator: torch.Generator | None = None) -> np.ndarray:
    r"""``E[l, j]``: the error ``||M_l - P Q^T||_F`` of layer ``l``'s matrix at rank ``min_rank + j``.

    ``method="power"`` (the authors' default): ``iters`` rounds of ``orth(Q); P = M Q; orth(P);
    Q = M^T P`` from a Gaussian ``Q`` (drawn from ``generator``). ``method="svd"``: the optimal error,
    ``sqrt(sum_{k > r} s_k^2)`` (Eckart-Young). Ranks above ``min(n, m)`` keep error 0, as in their code.
    """
    method = check_choice("method", method, ("power", "svd"))
    iters = check_int("iters", iters, 1)
    errors = np.zeros((len(matrices), max_rank - min_rank + 1))
    for i, mat in enumerate(matrices):
        n, m = mat.shape
        top = min(n, m, max_rank)
        if method == "svd":
            s2 = torch.linalg.svdvals(mat).square()
            tail = torch.flip(torch.cumsum(torch.flip(s2, (0,)), 0), (0,))  # tail[k] = sum_{j >= k} s_j^2
            for r in range(min_rank, top + 1):
                errors[i, r - min_rank] = float(tail[r].sqrt()) if r < s2.numel() else 0.0
            continue
        for r in range(min_rank, top + 1):
            q = torch.randn(m, r, generator=generator, dtype=mat.dtype).to(mat.device)
            p = torch.empty(n, r, dtype=mat.dtype, device=mat.device)
            for _ in range(iters):
                orthogonalize_(q.unsqueeze(0))
                torch.matmul(mat, q, out=p)
                orthogonalize_(p.unsqueeze(0))
                q = mat.t() @ p
            errors[i, r - min_rank] = float(torch.dist(p @ q.t(), mat))
    return errors


def lgreco_dp(errors: np.ndarray, sizes: np.ndarray, target: float, buckets: int = 10000) -> list[int] | None:
    """The column (candidate) index chosen for each layer: least total ``sizes`` with bucketed total
    error below ``buckets`` steps of ``target / buckets`` (see the module docstring); ``None`` when
    ``target`` is not a positive finite number or no choice fits."""
    errors = np.asarray(errors, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if errors.ndim != 2 or errors.shape != sizes.shape or errors.shape[0] == 0:
        raise ValueError(f"Invalid errors/sizes: shapes {errors.shape} and {sizes.shape} (accepted: equal "
                         "shapes [layers, candidates], at least one layer)")
    buckets = check_int("buckets", buckets, 1)
    if not (np.isfinite(target) and target > 0):
        return None
    cap = target + 1
    errs = np.minimum(np.where(np.isnan(errors), cap, errors), cap)
    step = target / buckets
    errs = np.minimum(np.maximum(np.ceil(errs / step), 1), buckets).astype(np.int64)
    layers, values = errs.shape
    cols = np.arange(buckets + 1)
    dp = np.full((layers, buckets + 1), np.inf)
    choice = np.full((layers, buckets + 1), -1, dtype=np.int64)
    for v in range(values):  # first layer: its error must be below the bucket count b
        better = (cols > errs[0, v]) & (sizes[0, v] < dp[0])
        dp[0, better] = sizes[0, v]
        choice[0, better] = v
    for layer in range(1, layers):
        for v in range(values):
            e = errs[layer, v]
            cand = dp[layer - 1, :buckets + 1 - e] + sizes[layer, v]
            better = cand < dp[layer, e:]
            dp[layer, e:][better] = cand[better]
            choice[layer, e:][better] = v
    b = int(np.argmin(dp[-1]))
    if not np.isfinite(dp[-1, b]):
        return None
    picked = []
    for layer in range(layers - 1, -1, -1):
        v = int(choice[layer, b])
        picked.append(v)
        b -= errs[layer, v]
    return picked[::-1]


def lgreco_ranks(errors: np.ndarray, sizes: np.ndarray, default_rank: int, min_rank: int, alpha: float = 1.0,
                 buckets: int = 10000) -> list[int] | None:
    """Ranks per layer: :func:`lgreco_dp` with target ``alpha * sum_l E[l, default_rank]``."""
    check_positive("alpha", alpha)
    col = check_int("default_rank", default_rank, min_rank, min_rank + np.shape(errors)[1] - 1) - min_rank
    target = alpha * float(np.sum(np.asarray(errors, dtype=np.float64)[:, col]))
    picked = lgreco_dp(errors, sizes, target, buckets)
    return None if picked is None else [v + min_rank for v in picked]
