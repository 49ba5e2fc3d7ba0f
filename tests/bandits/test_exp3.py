import math

import pytest
import torch

from gradwise.bandits import Exp3


def test_update_follows_the_authors_rule():
    agent = Exp3(3, 100, gamma=0.2, eta=0.5, max_reward=4.0, add_factor=2.0, seed=0)
    agent.update(1, 2.0)              # r' = (2 + 2) / 4 = 1, p_1 = 1/3: G_1 = 3
    w = torch.tensor([1.0, math.exp(1.5), 1.0], dtype=torch.float64)
    torch.testing.assert_close(agent.probabilities, 0.8 * w / w.sum() + 0.2 / 3)
    assert agent.G.tolist() == [0.0, 3.0, 0.0]


def test_draws_follow_the_probabilities_and_learn_the_best_arm():
    agent = Exp3(4, 3000, gamma=0.05, eta=0.05, seed=1)
    means = [0.2, 0.5, 0.9, 0.4]
    counts = [0] * 4
    for t in range(3000):
        k = agent.select()
        counts[k] += 1
        agent.update(k, means[k])
    assert max(range(4), key=counts.__getitem__) == 2 and counts[2] > 1500
    assert agent.probabilities.sum().item() == pytest.approx(1.0)


def test_paper_setting():
    s = Exp3.paper_setting(6, 10 ** 6, rho=0.2, omega_norm=1.0, theta_norm=0.5, b_norm=0.45, u_max=1.0)
    lr = math.sqrt(6 * math.log(6) / ((math.e - 1) * 2e6 / 3))
    assert s["gamma"] == pytest.approx(lr) and s["eta"] == pytest.approx(lr / 6)
    assert s["max_reward"] == pytest.approx(4 * (0.5 + 0.45 / 0.8))


@pytest.mark.parametrize("kw, match", [(dict(gamma=1.5), "gamma"), (dict(eta=0.0), "eta"),
                                       (dict(max_reward=-1.0), "max_reward")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Exp3(3, 10, **(dict(gamma=0.1, eta=0.1) | kw))
    agent = Exp3(3, 10, gamma=0.1, eta=0.1)
    with pytest.raises(ValueError, match="arm"):
        agent.update(3, 1.0)
    with pytest.raises(ValueError, match="reward"):
        agent.update(0, float("nan"))
    assert agent.t == 0 and agent.G.tolist() == [0.0, 0.0, 0.0]
