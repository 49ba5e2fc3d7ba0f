"""KLoM, the KL divergence of margins: how far the outputs of unlearned models are, point by point, from
those of models retrained without the forget set.

Paper: "Attribute-to-Delete: Machine Unlearning via Datamodel Matching", Georgiev, Rinberg, Park, Garg,
Ilyas, Mądry, Neel, ICLR 2025, arXiv 2410.23232 (KLoM is introduced there, its Appendix E.1). Only the
abstract of the paper was readable in the stored text (see docs/coverage_notes.md), so the definition
below is that of the authors' benchmark code, RoyRin/data-unlearning-bench at commit eb261f9
(``unlearning_bench/eval.py``: ``get_margin``, ``compute_binned_KL_div``, ``kl_from_margins``), which
``tests/unlearning/test_klom.py`` checks against golden values from running it (float64).

For a classifier's logits ``z`` on a point with label ``y`` the **margin** is
``z_y − log Σ_{k≠y} exp z_k``. Given the margins of ``M`` unlearned models and ``M'`` retrained models
(the oracles) on each of ``n`` points, KLoM of point ``i`` is the KL divergence between the two samples'
histograms::

    a = clip(unlearned[:, i], −100, 100),  b = clip(retrain[:, i], −100, 100)
    edges = linspace(min(a ∪ b), max(a ∪ b), bins + 1)          (max = min + 1 when all are equal)
    P[k] = #{a in [edges[k], edges[k+1])} / total,  Q likewise from b     (k = 0..bins−1)
    Q'[k] = max(Q[k], eps) where P[k] > 0, else Q[k]
    KLoM_i = Σ_k p_k log(p_k / q_k),  p = P / ΣP,  q = Q' / ΣQ'           (scipy.stats.entropy)

with the authors' defaults ``bins=20``, ``eps=1e-5``. Lower is better: 0 when the histograms agree.

Kept as the authors' code does it (each changes values, so each is followed):

* The bins are half-open ``[e_k, e_{k+1})`` (``np.digitize``), so the largest margin of the pair of
  samples falls past the last edge and is **counted in neither histogram** (the totals then miss it).
* ``Q`` is floored at ``eps`` only where ``P > 0`` and then renormalized with the rest of ``Q``.
* When every unlearned margin equals the largest value (so none is counted), ``P`` is 0/0 and KLoM is
  NaN, as theirs.

Departures: the histogram is computed in float64 whatever the input dtype (the authors' numpy bins take
the dtype of the margins, float32 for float32 models, which can move a margin lying on an edge); the
direction is ``KL(unlearned ‖ retrain)`` as their ``kl_from_margins(all_unlearned_margins,
all_oracle_margins)`` names it (their ``run.py`` passes the oracle margins first, i.e. the other
direction; ``klom(retrain, unlearned)`` gives that one).
"""
from __future__ import annotations

import torch

from gradwise._validate import check_int, check_positive, check_real
from gradwise.registry import register
from gradwise.unlearning._common import describe

__all__ = ["margins", "klom"]

PAPER = "Attribute-to-Delete: Machine Unlearning via Datamodel Matching"
ARXIV = "2410.23232"
CODE = "https://github.com/RoyRin/data-unlearning-bench"


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The authors' margin ``z_y − logsumexp_{k≠y} z_k`` of every point: ``logits`` ``(..., n, C)``
    (one or more models), ``labels`` ``(n,)``; returns ``(..., n)``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2 or logits.shape[-1] < 2:
        raise ValueError(f"Invalid logits: {describe(logits)} (accepted: a tensor (..., n, C) with C >= 2)")
    if not logits.is_floating_point():
        raise ValueError(f"Invalid logits: dtype {logits.dtype} (accepted: a floating-point tensor)")
    n, c = logits.shape[-2], logits.shape[-1]
    if (not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point()
            or labels.dtype == torch.bool):
        raise ValueError(f"Invalid labels: {describe(labels)} (accepted: an integer tensor of shape ({n},))")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"Invalid labels: values outside [0, {c - 1}] (accepted: class indices of the logits)")
    one_hot = torch.nn.functional.one_hot(labels.to(logits.device), c).bool().expand_as(logits)
    correct = logits.masked_fill(~one_hot, 0.0).sum(-1)
    return correct - logits.masked_fill(one_hot, float("-inf")).logsumexp(-1)



def _as_margins(name: str, value, labels) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() not in (2, 3):
        raise ValueError(f"Invalid {name}: {describe(value)} (accepted: floating-point margins (models, points), "
                         "or logits (models, points, classes) with labels)")
    if value.dim() == 3:
        if labels is None:
            raise ValueError(f"Invalid labels: None with {name} of 3 dimensions (accepted: the points' labels "
                             "when logits are given)")
        value = margins(value, labels)
    if value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(f"Invalid {name}: shape {tuple(value.shape)} (accepted: at least one model and one point)")
    if torch.isnan(value).any():
        raise ValueError(f"Invalid {name}: NaN margins (accepted: margins that are not NaN)")
    return value.detach().to(torch.float64)


@register(kind="metric", paper=PAPER, year=2025, arxiv=ARXIV, code=CODE, name="klom",
          summary="KL divergence of margins: per point, the KL divergence between the histograms of the "
                  "margins of unlearned models and of models retrained without the forget set")
def klom(unlearned_outputs: torch.Tensor, retrain_outputs: torch.Tensor, labels: torch.Tensor | None = None, *,
         bins: int = 20, eps: float = 1e-5, clip_min: float = -100.0, clip_max: float = 100.0) -> torch.Tensor:
    """KLoM of every point (arXiv 2410.23232; the authors' ``kl_from_margins``): the binned
    ``KL(unlearned ‖ retrain)`` of the margins of the unlearned models against those of the retrained
    models, one value per point (float64, ``(n,)``; lower is better).

    ``unlearned_outputs`` ``(M, n)`` and ``retrain_outputs`` ``(M', n)`` are margins, one row per model (the
    authors require ``M = M'``; any counts work here), or logits ``(M, n, C)`` with ``labels`` ``(n,)``, turned
    into margins by :func:`margins`. ``bins``, ``eps``, ``clip_min``, ``clip_max``: the authors' defaults.
    The quirks of their histogram that are kept (the largest margin is counted nowhere) are in the module
    docstring.
    """
    check_int("bins", bins, 1)
    check_positive("eps", eps)
    check_real("clip_min", clip_min)
    check_real("clip_max", clip_max)
    if not clip_min < clip_max:
        raise ValueError(f"Invalid clip_max: {clip_max} (accepted: a value above clip_min = {clip_min})")
    u = _as_margins("unlearned_outputs", unlearned_outputs, labels)
    r = _as_margins("retrain_outputs", retrain_outputs, labels)
    if u.shape[1] != r.shape[1]:
        raise ValueError(f"Invalid retrain_outputs: {r.shape[1]} points (accepted: as many points as "
                         f"unlearned_outputs, {u.shape[1]})")
    r = r.to(u.device)
    u, r = u.clamp(clip_min, clip_max), r.clamp(clip_min, clip_max)
    lo = torch.minimum(u.min(0).values, r.min(0).values)
    hi = torch.maximum(u.max(0).values, r.max(0).values)
    hi = torch.where(lo >= hi, lo + 1, hi)
    # edges as numpy's linspace builds them: start + i * step, the last one exactly the stop
    steps = torch.arange(bins + 1, dtype=torch.float64, device=u.device)
    edges = steps[None, :] * ((hi - lo) / bins)[:, None] + lo[:, None]  # (n, bins + 1)
    edges[:, -1] = hi
    p, q = _histogram(u, edges, bins), _histogram(r, edges, bins)
    p = p / p.sum(1, keepdim=True)  # 0/0 -> NaN when nothing was counted, as theirs
    q = q / q.sum(1, keepdim=True).clamp_min(1)  # theirs: zeros when nothing was counted
    q = torch.where(p > 0, q.clamp_min(eps), q)
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)  # scipy.stats.entropy normalizes both
    terms = torch.where(p > 0, p * torch.log(p / q), torch.zeros_like(p))
    return torch.where(torch.isnan(p).any(1), torch.full_like(lo, float("nan")), terms.sum(1))


def _histogram(values: torch.Tensor, edges: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts ``(n, bins)`` of each column of ``values`` ``(M, n)`` in ``[e_k, e_{k+1})`` (np.digitize's
    index ``k + 1``); values at or past the last edge are not counted."""
    idx = torch.searchsorted(edges.contiguous(), values.T.contiguous(), right=True)  # (n, M), 1-based bins
    counts = torch.zeros(edges.shape[0], bins + 2, dtype=torch.float64, device=values.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return counts[:, 1:bins + 1]
