"""IGW (SquareCB's action distribution): the equation, batching, bad input, and Vowpal Wabbit's --squarecb
probabilities (tests/data/squarecb_golden.json, made by tools/golden/make_squarecb_golden.py)."""
import json
from pathlib import Path

import pytest
import torch

from gradwise.bandits import igw_probabilities, squarecb_gamma

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "squarecb_golden.json"


def test_equation_for_rewards_and_losses():
    y = torch.tensor([0.2, 0.9, 0.5, 0.9], dtype=torch.float64)
    p = igw_probabilities(y, 4.0)
    # greedy = first max (index 1); others 1 / (K + gamma * gap)
    expect = torch.tensor([1 / (4 + 4 * 0.7), 0.0, 1 / (4 + 4 * 0.4), 1 / 4], dtype=torch.float64)
    expect[1] = 1 - expect.sum()
    torch.testing.assert_close(p, expect, rtol=1e-12, atol=0)
    torch.testing.assert_close(igw_probabilities(-y, 4.0, rewards=False), expect, rtol=1e-12, atol=0)
    # gamma = 0: uniform; large gamma: nearly greedy; mu > K leaves more on the greedy action
    torch.testing.assert_close(igw_probabilities(y, 0.0), torch.full((4,), 0.25, dtype=torch.float64))
    assert igw_probabilities(y, 1e9)[1] > 1 - 1e-6 - 0.25  # the tied action keeps 1/K
    assert igw_probabilities(y, 4.0, mu=8.0)[1] > p[1]


def test_batched_rows_with_per_row_gamma_match_single_rows():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(5, 7, generator=g, dtype=torch.float64)
    gam = torch.tensor([0.0, 1.0, 10.0, 100.0, 3.5], dtype=torch.float64)
    p = igw_probabilities(y, gam)
    assert p.shape == (5, 7) and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=torch.float64))
    for i in range(5):
        torch.testing.assert_close(p[i], igw_probabilities(y[i], float(gam[i])), rtol=1e-14, atol=0)


@pytest.mark.parametrize("kw,match", [
    (dict(gamma=-1.0), "gamma"), (dict(gamma=float("nan")), "gamma"), (dict(gamma=torch.ones(3)), "gamma"),
    (dict(gamma=1.0, mu=2.0), "mu"), (dict(gamma=1.0, mu=float("inf")), "mu"),
])
def test_bad_arguments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        igw_probabilities(torch.zeros(2, 4), **kw)


def test_bad_predictions_raise():
    with pytest.raises(ValueError, match="predicted"):
        igw_probabilities(torch.tensor([0.0, float("nan")]), 1.0)
    with pytest.raises(ValueError, match="predicted"):
        igw_probabilities(torch.zeros(3, 0), 1.0)


def test_gamma_schedule_is_vw_default():
    assert squarecb_gamma(0) == 0.0 and squarecb_gamma(100) == pytest.approx(100.0)
    assert squarecb_gamma(7, 3.0, 0.0) == 3.0
    for bad in (dict(t=-1), dict(t=float("nan")), dict(t=1, scale=-1.0), dict(t=1, exponent=float("inf"))):
        with pytest.raises(ValueError):
            squarecb_gamma(**bad)


def test_matches_vowpal_wabbit_squarecb():
    data = json.loads(GOLDEN.read_text(encoding="utf-8"))
    n = 0
    for case in data["cases"]:
        for s in case["snapshots"]:
            gamma = squarecb_gamma(s["counter"], case["gamma_scale"], case["gamma_exponent"])
            costs = torch.tensor(s["scores"], dtype=torch.float64)
            p = igw_probabilities(costs, gamma, rewards=False)
            torch.testing.assert_close(p, torch.tensor(s["probs"], dtype=torch.float64), rtol=0, atol=2e-6)
            n += 1
    assert n == 48
