"""DynLinUCB and LinUCB against the authors' code (marcomussi/DLB@7fb103ec), teacher-forced.

tests/data/dynlinucb_golden.pt (tools/golden/make_dynlinucb_golden.py) holds the arm of every round of 12 runs of
their agents (10,000 rounds) and their final estimate. The rewards are replayed from the same NumPy noise
(``np.random.seed``'s legacy stream) through the system; at each round our agent chooses, the choice must equal
theirs (or tie with it within 1e-9), then it is fed their arm and reward.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.bandits import DynLinUCB, LinUCB

DATA = Path(__file__).parents[1] / "data" / "dynlinucb_golden.pt"
G = torch.load(DATA, weights_only=True)
T = G["horizon"]


def _rewards(inst, run):
    A, B, C, D = (inst[k].numpy() for k in ("A", "B", "C", "D"))
    arms = inst["arms"].numpy()
    n, m = A.shape[0], C.shape[0]
    rs = np.random.RandomState(run["noise_seed"])
    w = rs.normal(0, run["sigma"], (run["n_trials"], T, n))[run["trial"]]
    v = rs.normal(0, run["sigma"], (run["n_trials"], T, m))[run["trial"]]
    u = arms[run["arms_idx"].numpy().astype(np.int64)]
    c, d = C.sum(0), D.sum(0)
    x = np.zeros(n)
    out = np.empty(T)
    Bu = u @ B.T
    for t in range(T):
        out[t] = c @ x + d @ u[t] + v[t].sum()
        x = A @ x + Bu[t] + w[t]
    return out


def _agent(inst, run):
    arms, idx = inst["arms"], run["arms_idx"]
    first = int(idx[0])
    if run["agent"] == "linucb":
        return LinUCB(arms, T, theta_norm=run["theta"], max_norm=run["max_global"], lam=run["lam"], first_arm=first)
    return DynLinUCB(arms, T, rho=run["rho"], omega_norm=run["omega"], theta_norm=run["theta"], u_max=run["u_val"],
                     b_norm=run["b_val"], phi_a=run["phi"], noise_var=run["sigma_sq"], lam=run["lam"],
                     first_arm=first)


def _replay(run, rounds=T):
    inst = G["instances"][run["instance"]]
    rewards = _rewards(inst, run)
    assert rewards.sum() == pytest.approx(run["reward_sum"], rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(rewards[:8], run["reward_head"].numpy(), rtol=1e-12, atol=1e-14)
    agent = _agent(inst, run)
    theirs = run["arms_idx"].tolist()
    ties = 0
    for t in range(rounds):
        k = agent.select()
        if k != theirs[t]:
            s = agent._state.scores(agent.beta(t))[0]
            gap = abs(float(s[k] - s[theirs[t]]))
            assert gap <= 1e-9 * max(1.0, abs(float(s[k]))), (run["agent"], run["instance"], t, k, theirs[t], gap)
            ties += 1
        agent.update(theirs[t], float(rewards[t]))
    if rounds < T:
        return ties
    torch.testing.assert_close(agent.estimate, run["hat_h"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(agent._state.V[0], run["V"], rtol=1e-12, atol=1e-12)
    return ties


FAST = [0, 4, 11]  # synthetic DynLin lam=1 trial 0, LinUCB trial 0; random-instance LinUCB


@pytest.mark.parametrize("i", FAST)
def test_teacher_forced_runs_match_the_authors_first_rounds(i):
    assert _replay(G["runs"][i], rounds=1500) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("i", range(12))
def test_teacher_forced_runs_match_the_authors(i):
    assert _replay(G["runs"][i]) <= 2


def test_widths_match_the_authors():
    arms = G["instances"]["synthetic"]["arms"]
    for c in G["contract"]["betas"]:
        dyn = DynLinUCB(arms, T, rho=0.2, omega_norm=1.005, theta_norm=0.51, u_max=1.118, b_norm=0.45, phi_a=1.0,
                        noise_var=1e-4, lam=c["lam"])
        lin = LinUCB(arms, T, theta_norm=0.51, max_norm=1.5, lam=c["lam"])
        assert dyn.beta(c["t"]) == pytest.approx(c["dyn"], rel=1e-13)
        assert lin.beta(c["t"]) == pytest.approx(c["lin"], rel=1e-13)


def test_every_round_branch_below_their_epsilon():
    c = G["contract"]["every_round"]
    arms = G["instances"]["synthetic"]["arms"]
    agent = DynLinUCB(arms, 300, rho=1e-7, omega_norm=1.005, theta_norm=0.51, u_max=1.118, b_norm=0.45, phi_a=1.0,
                      noise_var=1e-4, first_arm=int(c["arms_idx"][0]))
    for t in range(300):
        assert agent.select() == int(c["arms_idx"][t])
        agent.update(int(c["arms_idx"][t]), float(c["rewards"][t]))
    torch.testing.assert_close(agent.estimate, c["hat_h"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(agent._state.V[0], c["V"])


def test_epoch_schedule_matches_the_authors():
    from gradwise.bandits._common import estimate_rounds

    for rho, theirs in G["contract"]["schedules"].items():
        np.testing.assert_array_equal(estimate_rounds(T, float(rho)), theirs.numpy())


def test_action_held_within_an_epoch_and_only_the_last_reward_counts():
    arms = torch.eye(2)
    agent = DynLinUCB(arms, 50, rho=0.5, omega_norm=1.0, theta_norm=1.0, u_max=1.0, b_norm=0.5, phi_a=1.0,
                      noise_var=0.01, first_arm=1)
    # rho 0.5: epoch m lasts 1 + floor(log2 m) rounds (1, 2, 2, 3, ...); estimate rounds 1, 3, 5, 8 (the first
    # action is held for rounds 0-1, then 2-3, 4-5, 6-8)
    seen = []
    for t in range(9):
        seen.append(agent.select())
        # rewards that are not the epoch's last are poison: they must not reach the estimate
        agent.update(seen[-1], 1.0 if t in (1, 3, 5, 8) else 1e6)
    assert seen[0] == seen[1] == 1 and seen[2] == seen[3] and seen[4] == seen[5] and seen[6] == seen[7] == seen[8]
    assert float(agent.estimate.abs().max()) < 2


def test_ties_go_to_the_lowest_arm():
    arms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    agent = LinUCB(arms, 10, theta_norm=1.0, max_norm=1.0, first_arm=1)
    agent.select()
    agent.update(1, 0.0)
    assert agent.select() == 0  # arms 0 and 2 are the same vector


def test_delta_none_is_one_over_horizon():
    kw = dict(rho=0.2, omega_norm=1.0, theta_norm=0.5, u_max=1.1, b_norm=0.45, phi_a=1.0, noise_var=0.01)
    a = DynLinUCB(torch.eye(3), 1000, **kw)
    b = DynLinUCB(torch.eye(3), 1000, delta=1e-3, **kw)
    assert a.delta == 1e-3 and a.beta(10) == b.beta(10)
    assert DynLinUCB(torch.eye(3), 1000, lam=math.log(1000), **kw).beta(10) != a.beta(10)


@pytest.mark.parametrize("kw, match", [
    (dict(rho=1.0), "rho"), (dict(rho=-1.2), "rho"), (dict(delta=0.0), "delta"), (dict(delta=-1.0), "delta"),
    (dict(lam=0.0), "lam"), (dict(first_arm=3), "first_arm"), (dict(noise_var=float("nan")), "noise_var"),
])
def test_bad_arguments(kw, match):
    base = dict(rho=0.2, omega_norm=1.0, theta_norm=0.5, u_max=1.1, b_norm=0.45, phi_a=1.0, noise_var=0.01)
    with pytest.raises(ValueError, match=match):
        DynLinUCB(torch.eye(3), 100, **(base | kw))


def test_bad_arms_arm_index_and_reward_leave_state_alone():
    base = dict(rho=0.2, omega_norm=1.0, theta_norm=0.5, u_max=1.1, b_norm=0.45, phi_a=1.0, noise_var=0.01)
    with pytest.raises(ValueError, match="arms"):
        DynLinUCB(torch.ones(3), 100, **base)
    with pytest.raises(ValueError, match="arms"):
        LinUCB(torch.ones(2, 2, 2), 100, theta_norm=1.0, max_norm=1.0)
    agent = LinUCB(torch.eye(3), 100, theta_norm=1.0, max_norm=1.0, first_arm=0)
    agent.select()
    for arm, r, match in ((3, 1.0, "arm"), (-1, 1.0, "arm"), (0.5, 1.0, "arm"), (0, float("nan"), "reward"),
                          (0, float("inf"), "reward")):
        with pytest.raises(ValueError, match=match):
            agent.update(arm, r)
    assert agent.t == 0 and torch.equal(agent.estimate, torch.zeros(3))
    agent.update(0, 1.0)
    assert agent.t == 1 and agent.estimate[0] == pytest.approx(0.5)
