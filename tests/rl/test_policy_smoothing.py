from pathlib import Path

import pytest
import torch

from gradwise.rl import certified_reward_bound

GOLDEN = Path(__file__).parents[1] / "data" / "policy_smoothing_golden.pt"


@pytest.mark.parametrize("name", ["good", "mixed", "clean", "large_budget"])
def test_matches_the_certificate_as_computed_in_receps(name):
    c = torch.load(GOLDEN, weights_only=True)[name]
    bound = certified_reward_bound(c["rewards"], sigma=c["sigma"], budget=c["budget"], low=0, high=200)
    assert bound == pytest.approx(c["bound"], rel=1e-10)


def test_bound_properties():
    r = torch.tensor([3.0, 5.0, 5.0, 7.0, 9.0] * 200, dtype=torch.float64)
    clean = certified_reward_bound(r, sigma=0.5, budget=0.0, low=0, high=10)
    assert clean <= r.mean() and clean > r.mean() - 0.5
    bounds = [certified_reward_bound(r, sigma=0.5, budget=b, low=0, high=10) for b in (0.1, 0.5, 2.0)]
    assert clean > bounds[0] > bounds[1] > bounds[2] >= 0
    assert certified_reward_bound(r, sigma=2.0, budget=0.5, low=0, high=10) > bounds[1]  # more noise, more robust
    # a shifted reward range shifts the bound
    assert certified_reward_bound(r - 5, sigma=0.5, budget=0.5, low=-5, high=5) == pytest.approx(bounds[1] - 5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma=0.0), "sigma"), (dict(budget=-1.0), "budget"), (dict(high=0.0), "high"),
    (dict(alpha=1.0), "alpha"), (dict(high=2.5), "num_thresholds"),
])
def test_bad_arguments(kwargs, match):
    args = dict(sigma=0.5, budget=0.1, low=0.0, high=10.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        certified_reward_bound([1.0, 2.0], **args)
    with pytest.raises(ValueError, match="rewards"):
        certified_reward_bound([1.0, 20.0], sigma=0.5, budget=0.1, low=0, high=10)
