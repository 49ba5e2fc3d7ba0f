import pytest
import torch

from gradwise.bandits import SYNTHETIC_INSTANCE as S
from gradwise.bandits import DynamicalLinearBanditEnv, budget_arms


def _env(sigma=0.01, horizon=5000, seed=0):
    return DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], sigma, horizon, seed)


def test_budget_arms_are_the_authors_six_sorted_permutations():
    arms = budget_arms(3, 1.5, 1.0)
    assert arms.tolist() == [[0, 0.5, 1], [0, 1, 0.5], [0.5, 0, 1], [0.5, 1, 0], [1, 0, 0.5], [1, 0.5, 0]]


def test_steady_rewards_of_the_synthetic_instance():
    # the issue: the best arm [1, 0.5, 0] is worth 0.8125, LinUCB's favourite [0.5, 1, 0] 0.78125
    steady = _env().steady_rewards(budget_arms(3, 1.5, 1.0))
    assert steady[5].item() == pytest.approx(0.8125) and steady[3].item() == pytest.approx(0.78125)
    assert int(steady.argmax()) == 5


def test_noise_free_step_follows_the_recursion_and_settles_to_the_steady_reward():
    env = _env(sigma=0.0, horizon=200)
    u = torch.tensor([1.0, 0.5, 0.0])
    first = env.step(u)
    assert first == pytest.approx(0.25)          # x_0 = 0: only D u
    for _ in range(100):
        r = env.step(u)
    assert r == pytest.approx(0.8125, abs=1e-12)


def test_noise_rewards_match_stepping():
    # reward of any action sequence = noise response + noise-free response
    env, quiet = _env(sigma=0.1, horizon=4500, seed=3), _env(sigma=0.0, horizon=4500)
    arms = budget_arms(3, 1.5, 1.0)
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(6, (4500,), generator=gen)
    env.reset(1)
    r = torch.tensor([env.step(arms[k]) for k in seq], dtype=torch.float64)
    r0 = torch.tensor([quiet.step(arms[k]) for k in seq], dtype=torch.float64)
    noise = env.noise_rewards(2)
    torch.testing.assert_close(r - r0, noise[1], rtol=0, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="A"):
        DynamicalLinearBanditEnv(torch.eye(2) * 1.5, torch.eye(2), torch.eye(2), torch.eye(2), 0.1, 10)
    with pytest.raises(ValueError, match="B"):
        DynamicalLinearBanditEnv(torch.eye(2) * 0.5, torch.eye(3), torch.eye(2), torch.eye(2), 0.1, 10)
    with pytest.raises(ValueError, match="noise_std"):
        _env(sigma=-1.0)
    with pytest.raises(ValueError, match="horizon"):
        _env(horizon=0)
    env = _env(horizon=1)
    with pytest.raises(ValueError, match="action"):
        env.step(torch.ones(2))
    env.step(torch.ones(3))
    with pytest.raises(ValueError, match="horizon"):
        env.step(torch.ones(3))


def test_constants_match_the_authors_script():
    from pathlib import Path

    g = torch.load(Path(__file__).parents[1] / "data" / "dynlinucb_golden.pt", weights_only=True)
    for run in (g["runs"][0], g["runs"][-1]):
        inst = g["instances"][run["instance"]]
        env = DynamicalLinearBanditEnv(inst["A"], inst["B"], inst["C"], inst["D"], 0.1, 10)
        k = env.constants(inst["arms"])
        for ours, theirs in (("rho", "rho"), ("omega_norm", "omega"), ("theta_norm", "theta"), ("b_norm", "b_val"),
                             ("u_max", "u_val"), ("phi_a", "phi")):
            assert k[ours] == pytest.approx(run[theirs], rel=1e-10), ours
