"""The ``odice`` study's plain-PyTorch reference loop: an offline V-DICE value net trained with
:func:`gradwise.rl.odice_value_backward` in one of its three gradient modes, a policy trained at the same
time by ODICE's weighted behaviour cloning (:func:`gradwise.rl.odice_policy_weights`), as in the authors'
``odice.py`` (maoliyuan/ODICE-Pytorch@1692507c: value step, EMA target with ``beta``, then the policy
step on the weights of that value step's residual). Two tasks:

* a **grid world** (our stand-in for the paper's toy example, whose text could not be read; see the
  study's doc): an N x N grid, start at the bottom-left corner, a terminal goal (reward 1) at the top-right,
  4 moves, a slip probability (the move is replaced by a uniform one), a behaviour policy that goes right or
  up with probability ``1 - explore`` and moves uniformly otherwise. States are fed to the networks as
  coordinates in [-1, 1], so the value net generalises between a state and its next state (the setting in
  which the forward and backward gradients interact). Evaluated by the greedy policy's success rate from
  the start state and from uniformly drawn start states (most of them rare or absent in the data: the
  OOD-state case);
* **Pendulum-v1** offline data (``gradwise.rl.data.collect``): a Gaussian policy (state-free log std), its
  deterministic mean action evaluated with Gaussian noise added to the (normalised) observations.

Everything runs on one torch thread (``torch.set_num_threads(1)``: with other jobs on the 2 cores, two
threads made these small steps several times slower).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["GridWorld", "grid_dataset", "train_odice", "grid_eval", "pendulum_data", "pendulum_eval",
           "c_quantiles", "MODES"]

MODES = ("semi", "true", "orthogonal")
_MOVES = ((1, 0), (0, 1), (-1, 0), (0, -1))  # right, up, left, down


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class GridWorld:
    """N x N grid; start (0, 0); terminal goal (N-1, N-1); reward -3 per step, 0 on entering the goal; moves right/up/left/down; with
    probability ``slip`` the move is replaced by a uniformly drawn one; walls keep the agent in the grid."""

    def __init__(self, n: int = 8, slip: float = 0.1):
        self.n, self.slip = n, slip
        self.goal = (n - 1, n - 1)

    def features(self, cells: Tensor) -> Tensor:
        """Cells ``[B, 2]`` (int) as coordinates in [-1, 1]."""
        return cells.float() * (2.0 / (self.n - 1)) - 1.0

    def step(self, cell: tuple[int, int], action: int, rng: np.random.Generator) -> tuple[tuple[int, int], float, bool]:
        if self.slip > 0 and rng.random() < self.slip:
            action = int(rng.integers(4))
        dx, dy = _MOVES[action]
        nxt = (min(max(cell[0] + dx, 0), self.n - 1), min(max(cell[1] + dy, 0), self.n - 1))
        done = nxt == self.goal
        return nxt, 0.0 if done else -3.0, done


def grid_dataset(env: GridWorld, transitions: int, explore: float, seed: int) -> dict[str, Tensor]:
    """``transitions`` steps of the behaviour policy from the start state (reset at the goal or after
    4N steps); returns obs/next_obs (features), action (int64), reward, done and the visited cells."""
    rng = np.random.default_rng(10_000 + seed)
    cells, nexts, acts, rews, dones = [], [], [], [], []
    cell, t = (0, 0), 0
    for _ in range(transitions):
        a = int(rng.integers(4)) if rng.random() < explore else int(rng.integers(2))  # 0 right, 1 up
        nxt, r, d = env.step(cell, a, rng)
        cells.append(cell), nexts.append(nxt), acts.append(a), rews.append(r), dones.append(d)
        cell, t = (nxt, t + 1) if not d and t + 1 < 4 * env.n else ((0, 0), 0)
    c, n = torch.tensor(cells), torch.tensor(nexts)
    return {"obs": env.features(c), "next_obs": env.features(n), "action": torch.tensor(acts),
            "reward": torch.tensor(rews), "done": torch.tensor(dones), "cells": c}


class GaussianPolicy(nn.Module):
    """Mean MLP and a state-free log std clamped to [-5, 2] (the authors' ``GaussianPolicy`` bounds);
    actions in [-1, 1] (the caller scales)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.mean = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def nll(self, obs: Tensor, action: Tensor) -> Tensor:
        dist = torch.distributions.Normal(self.mean(obs), self.log_std.clamp(-5.0, 2.0).exp())
        return -dist.log_prob(action).sum(-1)

    def act(self, obs: Tensor) -> Tensor:
        return self.mean(obs).clamp(-1.0, 1.0)


class CategoricalPolicy(nn.Module):
    def __init__(self, obs_dim: int, actions: int, hidden: int):
        super().__init__()
        self.logits = mlp(obs_dim, actions, hidden)

    def nll(self, obs: Tensor, action: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.logits(obs), action, reduction="none")

    def act(self, obs: Tensor) -> Tensor:
        return self.logits(obs).argmax(-1)


def train_odice(data: dict[str, Tensor], mode: str, *, steps: int, seed: int, discrete: int = 0,
                hidden: int = 64, batch_size: int = 256, lr: float = 3e-4, policy_weight_decay: float = 1e-4,
                lam: float = 0.6, eta: float = 1.0, discount: float = 0.99, beta: float = 0.005,
                f: str = "chi2") -> tuple[nn.Module, nn.Module, Tensor]:
    """Train a value net (``odice_value_backward`` in ``mode``) and a policy (weighted BC) for ``steps``
    updates on minibatches of ``data``; ``discrete`` > 0: a categorical policy over that many actions,
    else a Gaussian one over ``data["action"]`` (in [-1, 1]). Returns (value net, policy, the parallel
    coefficient c of every step, a float tensor, NaN outside ``"orthogonal"``)."""
    from gradwise.rl import odice_policy_weights, odice_value_backward
    from gradwise.rl._common import polyak_update

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    torch.manual_seed(seed)
    obs_dim = data["obs"].shape[1]
    vf = mlp(obs_dim, 1, hidden)
    value = lambda m, x: m(x).squeeze(-1)  # noqa: E731
    vf_target = copy.deepcopy(vf).requires_grad_(False)
    target = lambda x: vf_target(x).squeeze(-1)  # noqa: E731
    policy = (CategoricalPolicy(obs_dim, discrete, hidden) if discrete
              else GaussianPolicy(obs_dim, data["action"].shape[1], hidden))
    v_opt = torch.optim.Adam(vf.parameters(), lr=lr)
    p_opt = torch.optim.Adam(policy.parameters(), lr=lr, weight_decay=policy_weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = data["obs"].shape[0]
    done = data["done"].float()
    cs = []

    class _Target(nn.Module):  # odice_value_backward calls vf_target(x): the squeezed target
        def forward(self, x):
            return target(x)

    tgt = _Target()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        obs, act = data["obs"][idx], data["action"][idx]
        v_opt.zero_grad(set_to_none=True)
        out = odice_value_backward(vf, tgt, obs, data["next_obs"][idx], data["reward"][idx], done[idx], mode=mode,
                                   discount=discount, lam=lam, eta=eta, f=f, value_fn=value)
        v_opt.step()
        polyak_update(vf_target, vf, beta)
        cs.append(out.parallel_coef)
        w = odice_policy_weights(out.residual, f=f)
        p_opt.zero_grad(set_to_none=True)
        (w * policy.nll(obs, act)).mean().backward()
        p_opt.step()
    return vf, policy, torch.stack(cs)


def c_quantiles(cs: Tensor, qs: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[str, float]:
    """Quantiles of c, the share of steps with c < 0, and a 20-bin histogram over [-3, 1] (the tails counted
    in the end bins); all NaN when c is NaN (the semi and true modes have none)."""
    c = cs.double()
    if not bool(torch.isfinite(c).all()):
        return {**{f"c_q{int(q * 100):02d}": math.nan for q in qs}, "c_neg": math.nan, "c_hist": []}
    out = {f"c_q{int(q * 100):02d}": float(torch.quantile(c, q)) for q in qs}
    out["c_neg"] = float((c < 0).double().mean())
    out["c_hist"] = torch.histc(c.clamp(-3.0, 1.0), bins=20, min=-3.0, max=1.0).long().tolist()
    return out


@torch.no_grad()
def grid_eval(env: GridWorld, policy: nn.Module, data_cells: Tensor, episodes: int, seed: int) -> dict[str, float]:
    """Greedy policy: success rate (goal within 4N steps) from the start cell and from uniformly drawn
    non-goal start cells, and the share of those random starts that the data never visits."""
    rng = np.random.default_rng(20_000 + seed)
    seen = {tuple(c) for c in data_cells.tolist()}
    n = env.n
    table = policy.act(env.features(torch.tensor([(i, j) for i in range(n) for j in range(n)]))).tolist()

    def run(cell):
        for _ in range(4 * n):
            cell, _, done = env.step(cell, table[cell[0] * n + cell[1]], rng)
            if done:
                return 1.0
        return 0.0

    from_start = sum(run((0, 0)) for _ in range(episodes)) / episodes
    starts = []
    while len(starts) < episodes:
        c = (int(rng.integers(n)), int(rng.integers(n)))
        if c != env.goal:
            starts.append(c)
    return {"grid_success": from_start, "grid_success_any": sum(run(c) for c in starts) / episodes,
            "grid_unseen_starts": sum(c not in seen for c in starts) / episodes}


def pendulum_data(replay_steps: int) -> tuple[dict[str, Tensor], str]:
    """Pendulum-v1 transitions for the study: the replay buffer of the cached ``replay_steps``-step SAC run
    (medium-replay, seed 0), or, with ``replay_steps == 0``, 10,000 random-policy steps (seed 0). Never
    starts a SAC run: a buffer that is not cached is a ValueError saying how to make it."""
    from gradwise.rl._sac import SACConfig, cache_file
    from gradwise.rl.data import collect

    if replay_steps == 0:
        return collect("Pendulum-v1", "random", n_steps=10_000, seed=0), "random (10k steps)"
    path = cache_file(SACConfig("Pendulum-v1", replay_steps, 0))
    if not path.exists():
        raise ValueError(f"replay_steps={replay_steps}: no cached SAC buffer at {path}; make it first with "
                         f"gradwise.rl.data.collect('Pendulum-v1', 'medium-replay', n_steps={replay_steps}, seed=0) "
                         "(about 30 min on 2 shared cores), or pass --replay-steps 0 for random data")
    return collect("Pendulum-v1", "medium-replay", n_steps=replay_steps, seed=0), f"medium-replay ({replay_steps} SAC steps)"


def prepare_pendulum(data: dict[str, Tensor]) -> dict[str, Any]:
    """Observations normalised by the data's mean and std (+1e-3, the authors' ``normalize``), actions divided
    by 2 (Pendulum's torque bound) into [-1, 1], rewards as Pendulum gives them (in [-16.3, 0]). Not the
    authors' locomotion scaling (``episode length / (max - min episode return)``, 0.113 here): with it, lr 3e-4
    and target rate 0.005, every χ² residual of a 1,500-update run was below 0 (95% quantile -0.04, measured on
    the medium-replay buffer), so no policy weight was positive and the policy never left its initialisation.
    Measured at lr 1e-3 / target rate 0.05 (the study's): 10% of the residuals positive with the scaling, 10-12%
    unscaled; the study runs unscaled. ``episode_returns`` lists the data's episode returns."""
    ends = (data["done"] | data["timeout"]).nonzero().flatten().tolist()
    rets, start = [], 0
    for e in ends:
        rets.append(float(data["reward"][start:e + 1].sum()))
        start = e + 1
    mean, std = data["obs"].mean(0), data["obs"].std(0) + 1e-3
    return {"obs": (data["obs"] - mean) / std, "next_obs": (data["next_obs"] - mean) / std,
            "action": (data["action"] / 2.0).clamp(-1.0, 1.0), "reward": data["reward"],
            "done": data["done"], "mean": mean, "std": std, "episode_returns": rets}


@torch.no_grad()
def pendulum_eval(policy: nn.Module, prep: dict[str, Any], sigmas: Sequence[float], episodes: int,
                  seed: int) -> dict[str, float]:
    """Mean return of the deterministic policy over ``episodes`` Pendulum-v1 episodes for each observation
    noise σ (Gaussian, added to the normalised observation, i.e. σ data-stds per dimension); episode i
    is reset with seed 30000 + 100·seed + i, the same starts for every σ and mode."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    out = {}
    try:
        for sigma in sigmas:
            rng = np.random.default_rng(40_000 + seed)
            total = 0.0
            for ep in range(episodes):
                obs, _ = env.reset(seed=30_000 + 100 * seed + ep)
                done = False
                while not done:
                    x = (torch.as_tensor(obs, dtype=torch.float32) - prep["mean"]) / prep["std"]
                    if sigma > 0:
                        x = x + sigma * torch.as_tensor(rng.standard_normal(x.shape[0]), dtype=torch.float32)
                    a = policy.act(x[None])[0].numpy() * 2.0
                    obs, r, term, trunc, _ = env.step(a)
                    total += float(r)
                    done = term or trunc
            out[f"return_s{sigma:g}"] = total / episodes
    finally:
        env.close()
    return out
