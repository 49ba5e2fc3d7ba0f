"""Curry-DPO's curriculum (gradwise.schedules.curry_dpo): pairs ordered easy to hard, stages, the
reference reset between stages; bad arguments and the registry record."""
from __future__ import annotations

import pytest
import torch

from gradwise.registry import get
from gradwise.schedules.curry_dpo import curry_dpo_next_reference, curry_dpo_pairs, curry_dpo_schedule



def test_curry_dpo_pairs_paper_example():
    # Figure 1 of the paper: ratings R1=5 ... R4=2; (R1, R4) is the easiest pair (gap 3)
    scores = [4.0, 5.0, 2.0, 3.5]  # best is index 1; worst index 2
    assert curry_dpo_pairs(scores) == [(1, 2), (1, 3), (1, 0)]
    assert curry_dpo_pairs(scores, criterion="rank_gap") == [(1, 2), (1, 3), (1, 0)]
    allp = curry_dpo_pairs(scores, pairing="all")
    assert len(allp) == 6 and allp[0] == (1, 2)
    gaps = [scores[c] - scores[r] for c, r in allp]
    assert gaps == sorted(gaps, reverse=True)
    # rank gap orders by positions, not rating gaps: ranks 1:0, 0:1, 3:2, 2:3
    rg = curry_dpo_pairs([10.0, 9.0, 1.0, 0.5], criterion="rank_gap", pairing="all")
    assert rg[0] == (0, 3) and {rg[1], rg[2]} == {(0, 2), (1, 3)}
    assert curry_dpo_pairs([3, 3, 1]) == [(0, 2)]  # equal ratings carry no preference


def test_curry_dpo_schedule_iterative_and_flat():
    sched = curry_dpo_schedule([[5, 3, 4, 2], [1, 2], torch.tensor([0.0, 3.0, 1.0])])
    assert sched == [[(0, 0, 3), (1, 1, 0), (2, 1, 0)], [(0, 0, 1), (2, 1, 2)], [(0, 0, 2)]]
    flat = curry_dpo_schedule([[5, 3, 4, 2], [1, 2]], iterative=False)
    # one stage, globally easy to hard (gaps 3, 2, 1, 1), stable in prompt order on ties
    assert flat == [[(0, 0, 3), (0, 0, 1), (0, 0, 2), (1, 1, 0)]]


def test_curry_dpo_next_reference_is_frozen_copy():
    policy = torch.nn.Linear(3, 2)
    ref = curry_dpo_next_reference(policy)
    assert ref is not policy and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    with torch.no_grad():
        policy.weight.add_(1.0)
    assert not torch.equal(ref.weight, policy.weight)


@pytest.mark.parametrize("call,word", [
    (lambda: curry_dpo_pairs([1.0]), "scores"),
    (lambda: curry_dpo_pairs([1.0, float("nan")]), "scores"),
    (lambda: curry_dpo_pairs([1.0, 2.0], criterion="length"), "criterion"),
    (lambda: curry_dpo_pairs([1.0, 2.0], pairing="worst"), "pairing"),
    (lambda: curry_dpo_schedule([]), "scores_per_prompt"),
    (lambda: curry_dpo_next_reference("model"), "policy"),
])
def test_bad_arguments(call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_registry_record():
    rec = get("curry_dpo_schedule")
    assert rec.kind == "preference" and rec.family == "schedules" and rec.arxiv == "2403.07230" and rec.seed
    assert rec.entry == "gradwise.schedules.curry_dpo:curry_dpo_schedule"
    assert "2403.07230" in rec.load().__doc__
