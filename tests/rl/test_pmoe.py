from pathlib import Path

import pytest
import torch

from gradwise.rl import GaussianMixtureHead, pmoe_policy_loss

GOLDEN = Path(__file__).parents[1] / "data" / "pmoe_golden.pt"
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(torch.load(GOLDEN, weights_only=True)))
def test_matches_coauthors_code(name):
    c = torch.load(GOLDEN, weights_only=True)[name]
    b, k, a = c["mean"].shape
    head = GaussianMixtureHead(1, a, k, action_range=c["action_range"]).double()
    head.forward = lambda h, mix_input=None: (c["mixing"], c["mean"], c["log_std"])
    mixing, action, log_prob = head.rsample(torch.zeros(b, 1, dtype=torch.float64), noise=c["noise"])
    torch.testing.assert_close(action, c["action"], **TOL)
    torch.testing.assert_close(log_prob, c["log_prob"], **TOL)
    loss = pmoe_policy_loss(c["mixing"], c["log_prob"], c["q"], alpha=c["alpha"])
    torch.testing.assert_close(loss, c["policy_loss"], **TOL)


def test_gradients_reach_only_the_best_expert_and_the_mixing_weights():
    torch.manual_seed(0)
    head = GaussianMixtureHead(5, 2, 3).double()
    h = torch.randn(4, 5, dtype=torch.float64)
    mixing, action, log_prob = head.rsample(h)
    # expert 1 is best in every row; q depends on every expert's action
    q = torch.tensor([[1.0, 5.0, 0.0]] * 4, dtype=torch.float64) + 0.1 * action.sum(-1)
    pmoe_policy_loss(mixing, log_prob, q, alpha=0.1).backward()
    g = head.mean.weight.grad.reshape(3, 2, 5)  # rows of expert k are k*A .. k*A + A - 1
    assert g[1].abs().sum() > 0 and g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    assert head.mixing.weight.grad.abs().sum() > 0
    act = head.act(h, deterministic=True)
    assert act.shape == (4, 2) and act.abs().max() < 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_experts"):
        GaussianMixtureHead(3, 2, 0)
    head = GaussianMixtureHead(3, 2, 2)
    with pytest.raises(ValueError, match="noise"):
        head.rsample(torch.zeros(4, 3), noise=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="mix_input"):
        head(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="q"):
        pmoe_policy_loss(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="alpha"):
        pmoe_policy_loss(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), alpha=-1.0)
