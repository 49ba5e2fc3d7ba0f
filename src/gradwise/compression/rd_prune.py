"""Layer-adaptive magnitude pruning by dynamic programming over per-layer rate-distortion curves.

Paper: "Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural Networks", Xu, Wang,
Geng, Lin, Wu, Li, Lin, ICCV 2023, arXiv 2308.10438. Authors' code: https://github.com/Akimoto-Cris/RD_PRUNE
at commit 5bf7b7e (``tools/algo.py`` ``pruning``/``dp_pruning``, ``tools/pruners.py`` ``gen_rd_curves`` and
the LAMP / global / uniform / ERK baselines). Only the title page, abstract and introduction of the paper
were readable in the stored text (ar5iv 2308.10438, searched 2026-12-08), so the recurrence below is the
one of the authors' code, which ``tests/compression_tests/test_rd_prune.py`` checks against a run of it
(tests/data/rd_prune_golden.pt).

Additivity (the paper's key observation): the output distortion of pruning several layers at once is close
to the sum of the distortions of pruning each alone, so with ``D_l(a)`` the distortion
``mean((f(x) - f_l,a(x))^2)`` of pruning a fraction ``a`` of layer ``l``'s smallest-magnitude weights
(:func:`rd_curves`) the allocation is the knapsack

    minimise  sum_l D_l(a_l)   subject to   sum_l n_l (1 - a_l) <= (1 - s) N,   a_l in the amount grid

solved exactly (on the grid) by dynamic programming over the number of surviving weights
(:func:`allocate_sparsity_dp`), linear in the number of weights. :func:`prune_by_magnitude_` applies the
amounts.

The authors' recurrence, reproduced (layers sorted by size, ``k_l(a) = trunc(n_l (1 - a))`` survivors,
``T = trunc((1 - s) N)``, columns ``c = 0 .. T-1``)::

    dp[0, c] = D_0(a*)   a* = the grid amount whose 1 - a is closest to c / n_0 (first on ties)
    dp[l, c] = min_{a : k_l(a) < c, a >= prev_l}  D_l(a) + dp[l-1, c - k_l(a)]           c >= 1
    dp[l, c] = dp[l, M_l - 1]   for c >= M_l = min(n_0 + .. + n_l, T)
    dp[l, 0] = D_l(1)           (a = 1 prunes the whole layer)

and the backtrack from ``c = T`` takes ``g[l, max(c - 1, 0)]`` then ``c -= k_l(a_l)``.

Departures from the authors' code, each with its reason:

* They fill the table in pieces of 4096 columns that skip every column ``4096 j`` (``start = 1 + 4096 j``,
  ``end = 4096 (j + 1)``), leaving it ``inf`` with index 0; here every column is computed. The golden
  cases keep ``T <= 4096``, where the two agree.
* Their table is float32 (``torch.ones`` in the default dtype); here it is in ``rd_dist``'s dtype (pass
  float64 for an exact knapsack on close curves).
* ``dp[l, 0]`` adds ``dp[l-1, 0]`` only for ``l > 1`` (their ``if n > 1``); the column is never read by the
  recurrence, only its choice (the full prune) by the backtrack, so the returned amounts do not depend on it.
* Their curves prune ``trunc(a n)`` weights (``torch.topk`` of the smallest ``|w|``) while their final
  pruning calls ``torch.nn.utils.prune.l1_unstructured`` (``round(a n)``); both rules are kept, as they are:
  :func:`rd_curves` truncates, :func:`prune_by_magnitude_` rounds.
* Their lookup ``dp[n-1, c - k]`` is evaluated for masked-out choices too, whose index is then below
  ``-T`` whenever a layer has more than ``T + 1`` weights: on CPU their ``dp_pruning`` raises IndexError
  there (e.g. sizes 300/1200/150/800/2000 at sparsity 0.8). Here only the allowed choices are read.
* As theirs, the first (smallest) layer takes the amount closest to the budget left, not the largest that
  fits, so the result can exceed ``T`` surviving weights by less than one grid step of the smallest layer;
  kept (the golden data depend on it).
* Their layer sort is ``np.argsort`` (stable for fewer than 17 layers); here a stable sort always.
* The authors' iterative loop (prune, retrain, recompute curves, ``prev`` = the last allocation) and the
  FLOPs-budget variant are the caller's loop; ``prev`` is the lower bound their iterations pass.

The baselines of ``tools/pruners.py`` (amounts only; pruning with :func:`prune_by_magnitude_` or
``torch.nn.utils.prune``): :func:`uniform_amounts`, :func:`global_magnitude_amounts`, :func:`lamp_amounts`
(Lee et al. 2021) and :func:`erk_amounts` (Evci et al. 2020, their ERK with the sum of the weight's dims).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gradwise._validate import check_real
from gradwise.registry import register

__all__ = ["rd_curves", "allocate_sparsity_dp", "prune_by_magnitude_", "uniform_amounts",
           "global_magnitude_amounts", "lamp_amounts", "erk_amounts"]

_PAPER = "Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural Networks"
_CODE = "https://github.com/Akimoto-Cris/RD_PRUNE@5bf7b7e"


def _check_sparsity(target_sparsity) -> float:
    s = check_real("target_sparsity", target_sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {s}")
    return s


def _check_amounts(amounts, name: str = "amounts") -> list[float]:
    out = [float(a) for a in amounts]
    for a in out:
        if not 0.0 <= a <= 1.0:  # NaN fails too
            raise ValueError(f"{name} must lie in [0, 1], got {a}")
    return out


def _magnitude_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """1 except at the ``k`` smallest ``|w|`` (ties broken by ``torch.topk``)."""
    mask = torch.ones_like(w)
    if k > 0:
        idx = torch.topk(w.detach().abs().reshape(-1), k, largest=False, sorted=False).indices
        mask.view(-1)[idx] = 0
    return mask


@torch.no_grad()
def rd_curves(model: nn.Module, layers: Sequence[nn.Module], calib_x: torch.Tensor,
              amounts: Sequence[float]) -> torch.Tensor:
    """Per-layer rate-distortion curves ``D[l, j] = mean((model(x) - model_{l, amounts[j]}(x))^2)``.

    ``model_{l,a}`` zeroes the ``trunc(a * numel)`` smallest-magnitude weights of ``layers[l].weight`` only
    (``a >= 1`` zeroes all of them), as the authors' ``gen_rd_curves``. The model runs in eval mode (its mode
    and every weight are restored). Returns a ``[len(layers), len(amounts)]`` tensor in the output's dtype.
    """
    amounts = _check_amounts(amounts)
    if not amounts:
        raise ValueError("amounts must be non-empty")
    if not layers:
        raise ValueError("layers must be non-empty")
    was_training = model.training
    model.eval()
    try:
        y = model(calib_x)
        out = torch.empty(len(layers), len(amounts), dtype=y.dtype, device=y.device)
        for li, layer in enumerate(layers):
            w = layer.weight
            saved = w.detach().clone()
            try:
                for j, a in enumerate(amounts):
                    k = w.numel() if a >= 1.0 else int(a * w.numel())
                    w.data.mul_(_magnitude_mask(saved, k))
                    out[li, j] = (y - model(calib_x)).pow(2).mean()
                    w.data.copy_(saved)
            finally:
                w.data.copy_(saved)
    finally:
        model.train(was_training)
    return out


def _as_grid(amounts, n_layers: int, n_points: int) -> torch.Tensor:
    a = torch.as_tensor(amounts, dtype=torch.float64)
    if a.dim() == 1:
        a = a.expand(n_layers, -1)
    if a.shape != (n_layers, n_points):
        raise ValueError(f"amounts must have shape [{n_points}] or [{n_layers}, {n_points}] to match rd_dist, "
                         f"got {list(a.shape)}")
    _check_amounts(a.reshape(-1).tolist())
    return a


@register(kind="pruning", paper=_PAPER, year=2023, arxiv="2308.10438", code=_CODE,
          summary="layer-wise sparsities minimising the sum of per-layer output distortions under a "
                  "weight budget, by dynamic programming over the surviving-weight count")
def allocate_sparsity_dp(rd_dist, amounts, nweights: Sequence[int], target_sparsity: float,
                         prev=None) -> torch.Tensor:
    """Per-layer pruning amounts from the RD-curve knapsack (the authors' ``dp_pruning``).

    ``rd_dist``: ``[L, A]`` distortions (a list of equal-length curves is accepted); ``amounts``: the ``A``
    pruned fractions the curves were measured at (or ``[L, A]``), including 1.0; ``nweights``: ``L`` layer
    sizes; ``target_sparsity`` in ``[0, 1)``; ``prev``: optional ``L`` lower bounds on each layer's amount.
    Returns the chosen amounts (float64, ``[L]``, layer order as given). Cost ``O(L * A * T)`` with
    ``T = (1 - s) * sum(nweights)``; memory ``O(L * T)``. arXiv 2308.10438.
    """
    s = _check_sparsity(target_sparsity)
    if isinstance(rd_dist, (list, tuple)):
        lens = {len(c) for c in rd_dist}
        if len(lens) > 1:
            raise ValueError(f"rd_dist curves must all have the same length, got lengths {sorted(lens)}")
        rd_dist = torch.stack([torch.as_tensor(c) for c in rd_dist]) if rd_dist else torch.empty(0, 0)
    d = torch.as_tensor(rd_dist)
    if d.dim() != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"rd_dist must be a non-empty [layers, amounts] table, got shape {list(d.shape)}")
    if not d.is_floating_point():
        d = d.double()
    n_layers, n_points = d.shape
    phi = _as_grid(amounts, n_layers, n_points)
    nw = [int(n) for n in nweights]
    if len(nw) != n_layers or any(n <= 0 for n in nw):
        raise ValueError(f"nweights must be {n_layers} positive layer sizes, got {list(nweights)}")
    if not bool((phi == 1.0).any(dim=1).all()):
        raise ValueError("amounts must include 1.0 (the full prune) for every layer")
    if prev is None:
        lower = torch.zeros(n_layers, dtype=torch.float64)
    else:
        lower = torch.as_tensor(_check_amounts(prev, "prev"), dtype=torch.float64)
        if lower.numel() != n_layers:
            raise ValueError(f"prev must have {n_layers} entries, got {lower.numel()}")

    order = sorted(range(n_layers), key=lambda i: nw[i])  # stable
    total = sum(nw)
    T = int((1 - s) * total)
    cols = torch.arange(T)
    g = torch.zeros(n_layers, max(T, 1), dtype=torch.long)
    dp_prev = None
    cum = 0
    for pos, li in enumerate(order):
        n = nw[li]
        cum += n
        dist, ph = d[li], phi[li]
        keep = (n * (1 - ph)).long()  # trunc, as their .long()
        full = int((ph == 1.0).nonzero()[0])
        M = min(cum, T)
        dp = torch.full((max(T, 1),), float("inf"), dtype=d.dtype)
        gi = g[pos]
        dp[0] = dist[full]  # no budget left: the full prune (also T = 0)
        gi[0] = full
        if pos == 0:
            if M > 1:
                c = cols[1:M].to(torch.float64) / n
                gi[1:M] = ((1 - ph)[None, :] - c[:, None]).abs().argmin(dim=1)
                dp[1:M] = dist[gi[1:M]]
        elif M > 1:
            best = torch.full((M - 1,), float("inf"), dtype=d.dtype)
            arg = torch.zeros(M - 1, dtype=torch.long)
            for j in range(n_points):
                if not bool(ph[j] >= lower[li]):
                    continue
                kj = int(keep[j])
                lo = max(1, math.floor(n * (1 - float(ph[j]))) + 1)  # columns c > n (1 - a)
                if lo >= M:
                    continue
                cand = dp_prev[lo - kj:M - kj] + dist[j]
                b, r = best[lo - 1:], arg[lo - 1:]
                better = (cand < b) | (cand.isnan() & ~b.isnan())
                b.copy_(torch.where(better, cand, b))
                r.masked_fill_(better, j)
            dp[1:M] = best
            gi[1:M] = arg
        if 0 < M < T:
            dp[M:] = dp[M - 1]
            gi[M:] = gi[M - 1]
        dp_prev = dp

    out = torch.empty(n_layers, dtype=torch.float64)
    surv = T
    for pos in range(n_layers - 1, -1, -1):
        li = order[pos]
        a = phi[li, int(g[pos, max(0, surv - 1)])]
        out[li] = a
        surv = max(0, surv - int((1 - float(a)) * nw[li]))
    return out


@torch.no_grad()
def prune_by_magnitude_(layers: Sequence[nn.Module], amounts: Sequence[float]) -> list[torch.Tensor]:
    """Zero, in place, the ``round(a * numel)`` smallest-magnitude weights of each layer (the rule of
    ``torch.nn.utils.prune.l1_unstructured``, which the authors' final pruning calls). Returns the masks."""
    amounts = _check_amounts(amounts)
    if len(amounts) != len(layers):
        raise ValueError(f"amounts must have one entry per layer ({len(layers)}), got {len(amounts)}")
    masks = []
    for layer, a in zip(layers, amounts):
        w = layer.weight
        mask = _magnitude_mask(w, round(a * w.numel()))
        w.data.mul_(mask)
        masks.append(mask)
    return masks


def _weights(layers_or_weights) -> list[torch.Tensor]:
    ws = [getattr(x, "weight", x).detach() for x in layers_or_weights]
    if not ws:
        raise ValueError("layers must be non-empty")
    return ws


def uniform_amounts(layers, target_sparsity: float) -> torch.Tensor:
    """The same amount in every layer (the authors' ``unif``)."""
    s = _check_sparsity(target_sparsity)
    return torch.full((len(_weights(layers)),), s, dtype=torch.float64)


def _amounts_from_scores(scores: list[torch.Tensor], unmasked: torch.Tensor, s: float) -> torch.Tensor:
    n_surv = int(round(float(unmasked.sum()) * (1.0 - s)))
    flat = torch.cat([x.reshape(-1) for x in scores])
    if n_surv <= 0:
        return torch.ones(len(scores), dtype=torch.float64)
    thr = torch.topk(flat, n_surv).values[-1]
    return torch.stack([1.0 - (x >= thr).sum().double() / u for x, u in zip(scores, unmasked)])


def global_magnitude_amounts(layers, target_sparsity: float) -> torch.Tensor:
    """Per-layer amounts of pruning the ``round(s * total)`` smallest ``|w|`` over all layers together
    (the authors' ``glob``: ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``; ties at
    the threshold broken by ``torch.topk``)."""
    s = _check_sparsity(target_sparsity)
    ws = _weights(layers)
    flat = torch.cat([w.abs().reshape(-1) for w in ws])
    k = round(s * flat.numel())
    pruned = torch.zeros(flat.numel(), dtype=torch.float64)
    if k > 0:
        pruned[torch.topk(flat, k, largest=False).indices] = 1.0
    sizes = [w.numel() for w in ws]
    return torch.stack([c.sum() / c.numel() for c in pruned.split(sizes)])


def _lamp_scores(w: torch.Tensor) -> torch.Tensor:
    sq = w.double().pow(2).reshape(-1)
    srt, idx = sq.sort()
    tail = srt.flip(0).cumsum(0).flip(0)  # sum of the scores >= each one (in sorted order)
    out = torch.empty_like(sq)
    out[idx] = srt / tail
    return out.view_as(w)


def lamp_amounts(layers, target_sparsity: float) -> torch.Tensor:
    """LAMP (Lee et al., ICLR 2021) amounts: score ``w_u^2 / sum_{v >= u} w_v^2`` within each layer (sorted
    ascending), one global threshold keeping ``round((1 - s) * nonzeros)`` (the authors' ``lamp``)."""
    s = _check_sparsity(target_sparsity)
    ws = _weights(layers)
    unmasked = torch.tensor([float(w.count_nonzero()) for w in ws], dtype=torch.float64)
    return _amounts_from_scores([_lamp_scores(w) for w in ws], unmasked, s)


def erk_amounts(layers, target_sparsity: float) -> torch.Tensor:
    """Erdos-Renyi-kernel amounts as the authors' ``erk``: survivors proportional to the sum of the weight's
    dims (``out + in (+ kh + kw)``), layers whose share exceeds their size kept dense, repeatedly."""
    s = _check_sparsity(target_sparsity)
    ws = _weights(layers)
    unmasked = torch.tensor([float(w.count_nonzero()) for w in ws], dtype=torch.float64)
    ers = torch.tensor([float(sum(w.shape)) for w in ws], dtype=torch.float64)
    dense = torch.zeros(len(ws), dtype=torch.bool)
    total = (1.0 - s) * float(unmasked.sum())
    while True:
        left = total - float(unmasked[dense].sum())
        e = torch.where(dense, 0.0, ers)
        surv = torch.round(left * e / e.sum())
        ratio = torch.where(dense, -math.inf, surv / unmasked)
        worst = int(ratio.argmax())
        if not bool(ratio[worst] > 1.0):
            break
        dense[worst] = True
    return torch.where(dense, 0.0, 1.0 - surv / unmasked)
