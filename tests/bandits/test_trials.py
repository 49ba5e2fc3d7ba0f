import pytest
import torch

from gradwise.bandits import SYNTHETIC_INSTANCE as S
from gradwise.bandits import DynamicalLinearBanditEnv, DynLinUCB, Exp3, LinUCB, budget_arms, cumulative_regret, run_trials

ARMS = budget_arms(3, 1.5, 1.0)
KW = dict(rho=0.2, omega_norm=1.01 ** 0.5, theta_norm=0.26 ** 0.5, u_max=1.25 ** 0.5, b_norm=0.45, phi_a=1.0,
          noise_var=0.01)


def _agents(T, seed):
    return {"dyn": DynLinUCB(ARMS, T, seed=seed, **KW), "lin": LinUCB(ARMS, T, theta_norm=0.51, max_norm=1.5, seed=seed),
            "exp3": Exp3(6, T, seed=seed, **Exp3.paper_setting(6, T, rho=0.2, omega_norm=1.0, theta_norm=0.51,
                                                              b_norm=0.45, u_max=1.118))}


@pytest.mark.parametrize("name", ["dyn", "lin", "exp3"])
def test_run_trials_equals_stepping_each_trial(name):
    T = 600
    env = DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], 0.1, T, seed=4)
    batch = run_trials(_agents(T, 7)[name], env, 2, arms=ARMS)
    assert batch.shape == (2, T) and batch.dtype == torch.int16
    for i in range(2):
        agent = _agents(T, 7 + i)[name]
        env.reset(i)
        seq = []
        for _ in range(T):
            k = agent.select()
            seq.append(k)
            agent.update(k, env.step(ARMS[k]))
        assert batch[i].tolist() == seq


def test_cumulative_regret_counts_the_steady_gap():
    env = DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], 0.0, 4, seed=0)
    played = torch.tensor([[5, 3, 3, 5]], dtype=torch.int16)
    gap = 0.8125 - 0.78125
    torch.testing.assert_close(cumulative_regret(env, ARMS, played), torch.tensor([[0, gap, 2 * gap, 2 * gap]],
                                                                                   dtype=torch.float64))
    assert cumulative_regret(env, ARMS, played, rounds=[2, 4])[0].tolist() == pytest.approx([gap, 2 * gap])


def test_bad_arguments():
    env = DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], 0.1, 50, seed=0)
    with pytest.raises(ValueError, match="horizon"):
        run_trials(LinUCB(ARMS, 60, theta_norm=0.5, max_norm=1.5), env, 2)
    with pytest.raises(ValueError, match="trials"):
        run_trials(LinUCB(ARMS, 50, theta_norm=0.5, max_norm=1.5), env, 0)
    with pytest.raises(ValueError, match="arms"):
        run_trials(LinUCB(ARMS[:, :2], 50, theta_norm=0.5, max_norm=1.5), env, 1)
    with pytest.raises(ValueError, match="arms"):
        run_trials(Exp3(6, 50, gamma=0.1, eta=0.01), env, 1)
    with pytest.raises(ValueError, match="agent"):
        run_trials(object(), env, 1)
