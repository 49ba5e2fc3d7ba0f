r"""Curry-DPO: a curriculum of preference pairs built from ranked responses, easy to hard.

Data preparation and the reference-model schedule only: no objective (each stage trains with
:func:`~gradwise.preference.dpo_loss`), so it lives with the schedules. It moved here from
``gradwise.preference.curry_dpo``, which still works with a ``DeprecationWarning``.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from gradwise.registry import register

__all__ = ["curry_dpo_pairs", "curry_dpo_schedule", "curry_dpo_next_reference"]

_CRITERIA = ("score_gap", "rank_gap")
_PAIRINGS = ("best", "all")


def _as_scores(scores, name="scores") -> list[float]:
    if torch.is_tensor(scores):
        if scores.dim() != 1:
            raise ValueError(f"Invalid {name}: expected a 1-D tensor of response scores, got shape "
                             f"{tuple(scores.shape)}")
        vals = [float(v) for v in scores.detach().cpu().tolist()]
    elif isinstance(scores, Sequence) and not isinstance(scores, (str, bytes)):
        vals = []
        for v in scores:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"Invalid {name}: expected numbers, got {type(v).__name__}")
            vals.append(float(v))
    else:
        raise ValueError(f"Invalid {name}: expected a sequence or 1-D tensor of numbers, got {type(scores).__name__}")
    if len(vals) < 2:
        raise ValueError(f"Invalid {name}: need at least 2 responses, got {len(vals)}")
    if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        raise ValueError(f"Invalid {name}: scores must be finite")
    return vals


def curry_dpo_pairs(scores, *, criterion: str = "score_gap", pairing: str = "best") -> list[tuple[int, int]]:
    """Preference pairs ``(chosen, rejected)`` (response indices) for one prompt, ordered easy to hard.

    scores: quality ratings of the prompt's responses (higher is better), a sequence or 1-D tensor.
    criterion: ``"score_gap"`` orders by the rating difference (largest first, the paper's
        UltraFeedback/GPT-4-rating setting); ``"rank_gap"`` by the difference in rank positions
        (for data that only ranks responses).
    pairing: ``"best"`` pairs the top-rated response with every other one (K-1 pairs, the paper's
        main setting: (R1, R4), (R1, R3), (R1, R2)); ``"all"`` uses every pair with distinct ratings.

    Pairs whose ratings are equal carry no preference and are skipped. Ties in the criterion are
    broken by the other criterion, then by the chosen's rank, then by index (deterministic). With
    several top-rated responses, the one that appears first is the anchor of ``"best"``.
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"Invalid criterion: {criterion!r} (accepted: 'score_gap', 'rank_gap')")
    if pairing not in _PAIRINGS:
        raise ValueError(f"Invalid pairing: {pairing!r} (accepted: 'best', 'all')")
    s = _as_scores(scores)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))  # rank 0 = best
    rank = {i: r for r, i in enumerate(order)}
    if pairing == "best":
        anchors = order[:1]
    else:
        anchors = order
    pairs = [(c, r) for c in anchors for r in range(len(s)) if s[c] > s[r]]

    def key(p):
        gap, rgap = s[p[0]] - s[p[1]], rank[p[1]] - rank[p[0]]
        first, second = (gap, rgap) if criterion == "score_gap" else (rgap, gap)
        return (-first, -second, rank[p[0]], p[1])

    return sorted(pairs, key=key)


@register(kind="preference", paper="Curry-DPO: Enhancing Alignment using Curriculum Learning & Ranked Preferences",
          year=2024, arxiv="2403.07230", code=None,
          summary="Curry-DPO: ranked responses -> preference pairs ordered easy to hard (rating gap), trained in "
                  "stages, each stage's reference = previous stage's policy")
def curry_dpo_schedule(scores_per_prompt: Sequence, *, criterion: str = "score_gap", pairing: str = "best",
                       iterative: bool = True) -> list[list[tuple[int, int, int]]]:
    r"""Curry-DPO's curriculum: stages of ``(prompt, chosen, rejected)`` triples, easiest stage first.

    Paper: Pattnaik, Maheshwary, Ogueji, Yadav & Madhusudhan, "Curry-DPO: Enhancing Alignment using
    Curriculum Learning & Ranked Preferences", 2024 (EMNLP Findings), arXiv:2403.07230. No code was
    released (only the preference pairs, ServiceNow-AI/Curriculum_DPO_preferences).

    Method. Each prompt has K >= 2 responses with quality ratings. :func:`curry_dpo_pairs` turns
    them into preference pairs and orders them from *easy* (large rating gap, e.g. best vs worst)
    to *hard* (small gap, best vs second best). Training is plain DPO (:func:`dpo_loss`) on:

    * ``iterative=True`` (the paper's best variant, "Iterative Curry-DPO"): stage k holds the k-th
      easiest pair of every prompt (prompts with fewer pairs drop out of later stages). Stage 1 uses
      the SFT model as reference; **before stage k > 1 the reference is reset to the policy at the
      end of stage k - 1** (:func:`curry_dpo_next_reference`), and training continues from that
      policy.
    * ``iterative=False`` ("non-iterative"): one stage holding all pairs of all prompts, sorted
      globally easy to hard (stable in prompt order within equal difficulty), with a fixed reference
      and no shuffling across the curriculum.

    Choices where the paper is open: pairs with equal ratings are skipped; ties in difficulty are
    broken deterministically (see :func:`curry_dpo_pairs`); within a stage the caller may shuffle.

    Sources: checked against the paper's Figure 1 and method description as restated by the liner.com
    review, themoonlight.io review and papers.lunadong.com summary of arXiv 2403.07230 (responses ranked by
    rating, R1 best; pairs (R1, R4), (R1, R3), (R1, R2), the chosen always the top-rated; ordered by rating
    difference, largest = easiest first; the model of iteration i is the reference of iteration i + 1).
    The paper's own sections beyond the abstract (its other ordering criteria, the non-iterative variant)
    could not be read; ``rank_gap``, ``pairing="all"`` and the exact global sorting of ``iterative=False``
    are ours.

    Example::

        >>> curry_dpo_schedule([[5, 3, 4, 2]])   # R1=0 best, then 2, 1, 3
        [[(0, 0, 3)], [(0, 0, 1)], [(0, 0, 2)]]
    """
    if isinstance(iterative, bool) is False:
        raise ValueError(f"Invalid iterative: {iterative!r} (accepted: True or False)")
    if torch.is_tensor(scores_per_prompt):
        if scores_per_prompt.dim() != 2:
            raise ValueError(f"Invalid scores_per_prompt: expected [P, K] scores, got shape "
                             f"{tuple(scores_per_prompt.shape)}")
        scores_per_prompt = list(scores_per_prompt)
    if not isinstance(scores_per_prompt, Sequence) or isinstance(scores_per_prompt, (str, bytes)) \
            or len(scores_per_prompt) == 0:
        raise ValueError("Invalid scores_per_prompt: expected a non-empty sequence of per-prompt score lists")
    per_prompt = [curry_dpo_pairs(s, criterion=criterion, pairing=pairing) for s in scores_per_prompt]
    if iterative:
        n_stages = max(len(p) for p in per_prompt)
        return [[(j, *p[k]) for j, p in enumerate(per_prompt) if k < len(p)] for k in range(n_stages)]
    flat = []
    for j, (s, pairs) in enumerate(zip(scores_per_prompt, per_prompt)):
        v = _as_scores(s)
        order = sorted(range(len(v)), key=lambda i: (-v[i], i))
        rank = {i: r for r, i in enumerate(order)}
        for c, r in pairs:
            gap, rgap = v[c] - v[r], rank[r] - rank[c]
            flat.append(((gap, rgap) if criterion == "score_gap" else (rgap, gap), j, c, r))
    flat.sort(key=lambda e: (-e[0][0], -e[0][1]))
    return [[(j, c, r) for _, j, c, r in flat]]


def curry_dpo_next_reference(policy: nn.Module) -> nn.Module:
    """The reference model for the next Curry-DPO stage: a frozen copy of the current policy (eval mode)."""
    if not isinstance(policy, nn.Module):
        raise ValueError(f"Invalid policy: expected a torch.nn.Module, got {type(policy).__name__}")
    ref = copy.deepcopy(policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
