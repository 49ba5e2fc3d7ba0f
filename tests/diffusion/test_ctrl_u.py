"""Ctrl-U uncertainty-weighted reward loss: equal (float64, rel 1e-10) to the authors' loss arithmetic
(tests/data/reward_tuning_golden.pt); the weighting's behaviour; bad input."""
import pytest
import torch

from gradwise.diffusion import uncertainty_weighted_reward_loss
from gradwise.registry import get

from .reward_cases import GOLDEN, LADDER, denoiser, logits_fn, reward_fn


def test_matches_authors_arithmetic():
    g = GOLDEN["ctrl_u"]
    loss = uncertainty_weighted_reward_loss(denoiser, reward_fn, GOLDEN["x0"], GOLDEN["labels"],
                                            logits_fn=logits_fn, sigma_max=float(LADDER[999]), reward_scale=0.1,
                                            index=g["timesteps"], noise=GOLDEN["noise"])
    # rtol 1e-9, not 1e-10: the authors' masked means divide by (count + 1e-10), 1e-10 relative for one sample
    torch.testing.assert_close(loss, 0.1 * g["per_sample_reward"] + g["per_sample_variance"], rtol=1e-9, atol=0)
    torch.testing.assert_close(loss.mean(), g["reward_plus_variance"], rtol=1e-9, atol=0)


def test_identical_passes_give_zero_uncertainty_and_the_plain_reward():
    x0 = torch.randn(5, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    reward = lambda x, y: torch.log_softmax(2.0 * x, 1).gather(1, y[:, None])[:, 0]
    seen = {}

    def den(x, s, y):
        seen["x"] = x
        return x
    loss = uncertainty_weighted_reward_loss(den, reward, x0, y, logits_fn=lambda x: 2.0 * x, add_index=0,
                                            generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, -reward(seen["x"][:5], y), rtol=1e-12, atol=1e-12)


def test_disagreement_lowers_the_reward_weight():
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    reward = lambda x, y: torch.full((x.shape[0],), -1.0, dtype=x.dtype)
    flip = lambda x: torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=x.dtype)  # the two passes disagree
    loss = uncertainty_weighted_reward_loss(lambda x, s, y: x, reward, x0, None, logits_fn=flip,
                                            generator=torch.Generator().manual_seed(0))
    p = torch.softmax(torch.tensor([0.0, 3.0], dtype=torch.float64), 0)
    q = torch.softmax(torch.tensor([3.0, 0.0], dtype=torch.float64), 0)
    u = (p * (p.log() - q.log())).sum()
    torch.testing.assert_close(loss, (torch.exp(-u) + u).reshape(1), rtol=1e-12, atol=0)
    assert float(torch.exp(-u)) < 0.1


def test_registered_under_seed_title():
    assert get("Ctrl-U").paper == "Ctrl-U: Robust Conditional Image Generation via Uncertainty-aware Reward Modeling"


@pytest.mark.parametrize("kw,match", [
    (dict(logits_fn=None), "logits_fn"), (dict(u_scale=-1.0), "u_scale"), (dict(reward_scale=float("nan")),
                                                                             "reward_scale"),
    (dict(add_index=-1), "add_index"), (dict(sigma_max=0.01), "sigma_max"),
    (dict(logits_fn=lambda x: x.sum(1)), "logits_fn"),
])
def test_bad_input(kw, match):
    kw = {"logits_fn": lambda x: x, **kw}
    with pytest.raises(ValueError, match=match):
        uncertainty_weighted_reward_loss(lambda x, s, y: x, lambda x, y: x.sum(1), torch.randn(4, 2), None, **kw)
