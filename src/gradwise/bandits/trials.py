"""Many independent runs of one bandit agent on a :class:`~gradwise.bandits.DynamicalLinearBanditEnv`, batched
over the trials, and the regret of the arms they played.

``run_trials(agent, env, trials)`` plays ``trials`` fresh copies of ``agent`` (a :class:`DynLinUCB`,
:class:`LinUCB` or :class:`Exp3`, used as a template: its settings, ``first_arm`` and ``seed``) for the whole
horizon, trial i on the environment's trial i noise, and returns the arm of every round, ``[trials, horizon]``
(int16). It gives the same arms as stepping the agent and ``env.step`` by hand (up to rounding at near-ties),
much faster:

* by linearity, reward_t = (the response to the noise, ``env.noise_rewards``, computed once for all rounds)
  + (the response to the actions), so the loop only follows the noise-free state;
* DynLin-UCB holds its action over an epoch, so the loop runs per epoch, not per round: the state at the
  epoch's last round is ``A^(L-1) x + sum_{i<L-1} A^i B u`` (powers precomputed per epoch length);
* the agents' least-squares state is batched over trials (Sherman-Morrison per arm,
  :class:`gradwise.bandits._common.LinearUCBState`).

The first arm of trial i is the template's ``first_arm``, or uniform from ``seed + i``. Exp3's draws come from
a generator seeded ``seed + i`` per trial, in blocks.
"""
from __future__ import annotations

import numpy as np
import torch

from gradwise.bandits._common import EpochAgent, LinearUCBState, first_arms
from gradwise.bandits.environment import DynamicalLinearBanditEnv
from gradwise.bandits.exp3 import Exp3

__all__ = ["run_trials", "cumulative_regret"]

_BLOCK = 4096


def _check(agent, env: DynamicalLinearBanditEnv, trials: int) -> None:
    if not isinstance(env, DynamicalLinearBanditEnv):
        raise ValueError(f"Invalid env: {type(env).__name__} (accepted: a DynamicalLinearBanditEnv)")
    if isinstance(trials, bool) or int(trials) != trials or trials < 1:
        raise ValueError(f"Invalid trials: {trials!r} (accepted: an integer >= 1)")
    if not isinstance(agent, (EpochAgent, Exp3)):
        raise ValueError(f"Invalid agent: {type(agent).__name__} (accepted: DynLinUCB, LinUCB or Exp3)")
    if agent.horizon != env.horizon:
        raise ValueError(f"Invalid agent: horizon {agent.horizon} (accepted: the environment's, {env.horizon})")
    if isinstance(agent, EpochAgent) and agent.arms.shape[1] != env.p:
        raise ValueError(f"Invalid agent: arms of dimension {agent.arms.shape[1]} (accepted: the environment's "
                         f"action dimension p = {env.p})")


def run_trials(agent, env: DynamicalLinearBanditEnv, trials: int = 1, *, arms=None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """The arm index of every round of ``trials`` runs of ``agent`` on ``env``: ``[trials, horizon]`` int16.

    ``arms`` [K, p] is needed for :class:`Exp3` (it only knows K); the UCB agents use their own. ``noise``:
    ``env.noise_rewards(trials)`` when already computed (several agents on the same trials share it).
    """
    _check(agent, env, trials)
    if noise is None:
        noise = env.noise_rewards(trials)                       # [N, T]
    elif tuple(noise.shape) != (trials, env.horizon):
        raise ValueError(f"Invalid noise: shape {tuple(noise.shape)} (accepted: env.noise_rewards(trials), "
                         f"({trials}, {env.horizon}))")
    if isinstance(agent, Exp3):
        if arms is None:
            raise ValueError("Invalid arms: None (accepted: the [K, p] action vectors, needed for Exp3)")
        arms = torch.as_tensor(arms, dtype=torch.float64)
        if arms.shape != (agent.n_arms, env.p):
            raise ValueError(f"Invalid arms: shape {tuple(arms.shape)} (accepted: ({agent.n_arms}, {env.p}))")
        return _run_exp3(agent, env, arms, noise)
    return _run_epochs(agent, env, noise)


def _run_epochs(agent: EpochAgent, env: DynamicalLinearBanditEnv, noise: torch.Tensor) -> torch.Tensor:
    arms = agent.arms
    N, T = noise.shape
    K = arms.shape[0]
    ends = torch.as_tensor(agent._schedule).tolist()
    lengths = [ends[0] + 1] + [b - a for a, b in zip(ends, ends[1:])]
    Lmax = max(lengths)
    A, B = env.A.numpy(), env.B.numpy()
    # per epoch length L: (A^(L-1))^T and, per arm, sum_{i<L-1} A^i B a  [K, n]
    apow, acc = [np.eye(env.n)], [np.zeros((env.n, env.p))]
    for _ in range(Lmax):
        acc.append(acc[-1] + apow[-1] @ B)
        apow.append(apow[-1] @ A)
    a_np = arms.numpy()
    powT = [np.ascontiguousarray(p.T) for p in apow]
    drive = [a_np @ s.T for s in acc]
    c = env.c.numpy()
    du, Bu, AT = a_np @ env.d.numpy(), a_np @ B.T, np.ascontiguousarray(A.T)
    nz = noise.numpy()
    state = LinearUCBState(arms, agent.lam, N)
    k = np.array(first_arms(K, N, agent.seed) if agent.first_arm is None else [agent.first_arm] * N)
    out = np.empty((N, T), dtype=np.int16)
    x = np.zeros((N, env.n))
    start = 0
    for e, L in zip(ends, lengths):
        out[:, start:min(e, T - 1) + 1] = k[:, None]
        if e >= T:
            break
        xl = x @ powT[L - 1] + drive[L - 1][k] if L > 1 else x
        r = xl @ c + du[k] + nz[:, e]
        state.update(k, r)
        x = xl @ AT + Bu[k]
        start = e + 1
        if start < T:
            k = state.choose(agent.beta(start))
    return torch.from_numpy(out)


def _run_exp3(agent: Exp3, env: DynamicalLinearBanditEnv, arms: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    N, T = noise.shape
    K = agent.n_arms
    base = 0 if agent.seed is None else int(agent.seed)
    gens = [torch.Generator().manual_seed(base + i) for i in range(N)]
    a_np = arms.numpy()
    du, Bu, AT, c = a_np @ env.d.numpy(), a_np @ env.B.numpy().T, np.ascontiguousarray(env.A.numpy().T), env.c.numpy()
    nz = noise.numpy()
    G = np.zeros((N, K))
    p = np.full((N, K), 1.0 / K)
    x = np.zeros((N, env.n))
    out = np.empty((N, T), dtype=np.int16)
    rows = np.arange(N)
    g, eta, add, mx = agent.gamma, agent.eta, agent.add_factor, agent.max_reward
    for s in range(0, T, _BLOCK):
        u = torch.stack([torch.rand(_BLOCK, dtype=torch.float64, generator=gen) for gen in gens], 1).numpy()
        for i in range(min(_BLOCK, T - s)):
            t = s + i
            cdf = np.cumsum(p / p.sum(1, keepdims=True), 1)
            k = np.minimum((cdf <= u[i][:, None]).sum(1), K - 1)
            out[:, t] = k
            r = x @ c + du[k] + nz[:, t]
            x = x @ AT + Bu[k]
            G[rows, k] += ((r + add) / mx) / p[rows, k]
            w = np.exp(eta * (G - G.max(1, keepdims=True)))
            p = (1 - g) * w / w.sum(1, keepdims=True) + g / K
    return torch.from_numpy(out)


def cumulative_regret(env: DynamicalLinearBanditEnv, arms, played: torch.Tensor,
                      rounds: list[int] | None = None) -> torch.Tensor:
    """The authors' regret: per round, the best arm's steady reward minus the played arm's
    (``env.steady_rewards``), summed over rounds; ``[trials, len(rounds)]`` at the given rounds (1-based counts;
    None: every round)."""
    steady = env.steady_rewards(arms)
    gap = (steady.max() - steady)[played.long()]                # [N, T]
    cum = torch.cumsum(gap, -1)
    if rounds is None:
        return cum
    return cum[:, [r - 1 for r in rounds]]
