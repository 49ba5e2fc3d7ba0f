"""ControlNet++ single-step reward loss: equal (float64, rel 1e-10) to the authors' loss arithmetic
(tests/data/reward_tuning_golden.pt, tools/golden/make_reward_tuning_golden.py); draws, gradients, bad input."""
import pytest
import torch

from gradwise.diffusion import single_step_reward_loss
from gradwise.registry import get

from .reward_cases import GOLDEN, LADDER, denoiser, reward_fn


def test_matches_authors_reward_arithmetic():
    g = GOLDEN["controlnet_pp"]
    t = g["timesteps"]
    loss = single_step_reward_loss(denoiser, reward_fn, GOLDEN["x0"], GOLDEN["labels"], sigma_max=float(LADDER[999]),
                                   index=t, noise=GOLDEN["noise"])
    mask = t <= 200
    # rtol 1e-9, not 1e-10: the authors' masked means divide by (count + 1e-10), 1e-10 relative for one sample
    torch.testing.assert_close(loss[mask], g["per_sample"][mask], rtol=1e-9, atol=0)
    torch.testing.assert_close(loss[mask].mean(), g["reward_loss"], rtol=1e-9, atol=0)


def test_draws_stay_below_sigma_max_and_are_reproducible():
    seen = []

    def spy(x, sigma, y):
        seen.append(sigma)
        return x

    x0 = torch.randn(64, 2, dtype=torch.float64)
    r = lambda x, y: -(x ** 2).sum(1)
    a = single_step_reward_loss(spy, r, x0, None, sigma_max=0.5, generator=torch.Generator().manual_seed(1))
    b = single_step_reward_loss(spy, r, x0, None, sigma_max=0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (64,) and a.dtype == torch.float64
    assert float(seen[0].max()) <= 0.5 and float(seen[0].min()) >= float(LADDER[0])
    assert len(set(seen[0].tolist())) > 10


def test_gradient_reaches_denoiser_and_float32_kept():
    net = torch.nn.Linear(2, 2)
    den = lambda x, s, y: x + net(x) * s[:, None]
    x0 = torch.randn(8, 2)
    loss = single_step_reward_loss(den, lambda x, y: -(x - 1).square().sum(1), x0, None, sigma_max=0.6,
                                   generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and loss.shape == (8,)
    loss.mean().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_registered_under_seed_title():
    m = get("ControlNet++")
    assert m.paper == "ControlNet++: Improving Conditional Controls with Efficient Consistency Feedback"
    assert m.family == "diffusion"


@pytest.mark.parametrize("kw,match", [
    (dict(sigma_max=0.0), "sigma_max"), (dict(sigma_max=0.001), "sigma_max"),
    (dict(sigma_max=0.5, noise=torch.randn(3, 2)), "noise"),
    (dict(sigma_max=0.5, index=torch.zeros(4)), "index"),
    (dict(sigma_max=0.5, ladder=torch.tensor([0.3, 0.2])), "ladder"),
])
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        single_step_reward_loss(lambda x, s, y: x, lambda x, y: x.sum(1), torch.randn(4, 2), None, **kw)


def test_bad_reward_output_and_callables():
    with pytest.raises(ValueError, match="reward_fn"):
        single_step_reward_loss(lambda x, s, y: x, lambda x, y: x.sum(), torch.randn(4, 2), None, sigma_max=0.5)
    with pytest.raises(ValueError, match="denoiser"):
        single_step_reward_loss(None, lambda x, y: x.sum(1), torch.randn(4, 2), None, sigma_max=0.5)
    with pytest.raises(ValueError, match="x0"):
        single_step_reward_loss(lambda x, s, y: x, lambda x, y: x.sum(1), torch.arange(4), None, sigma_max=0.5)
