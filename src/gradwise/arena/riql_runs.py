"""A small plain-torch IQL / RIQL reference loop (the riql study's trainer and the RIQL case of
``benchmarks/rl_step.py``): the authors' ``ImplicitQLearning.train`` order (value, then Q, then the Polyak
target, then the AWR policy step) on :mod:`gradwise.rl`'s losses, with the K critics as one batched-matmul
ensemble (:class:`EnsembleMLP`, no Python loop over critics).

Variants (:data:`VARIANTS`), each a change to the authors' ``IQL.py`` (twin Q, min as the value's target,
MSE Q loss, no observation normalisation):

* ``IQL``: 2 critics, quantile 0 (the min), MSE, raw observations;
* ``IQL+Huber``: IQL with the Huber Q loss (their sigma 1, delta 1) and the (-100, 1000) target clip;
* ``IQL+quantile``: IQL with 5 critics and the 0.25-quantile as the value's target;
* ``RIQL``: 5 critics, 0.25-quantile, Huber, normalised observations (their ``RIQL.py`` defaults).

Networks as theirs: ReLU MLPs with ``hidden`` x 2 layers; the critics initialised as their ``VectorizedQ``
(EDAC: biases 0.1, last layer U(-3e-3, 3e-3)); a deterministic tanh actor (their default
``iql_deterministic``) regressing the actions scaled into [-1, 1]; Adam, the actor's rate on a cosine
schedule over the run.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise.rl import awr_weights, ensemble_quantile, expectile_loss, riql_q_loss
from gradwise.rl._common import polyak_update

__all__ = ["Variant", "VARIANTS", "EnsembleMLP", "Agent", "make_agent", "train_step", "evaluate"]


@dataclass(frozen=True)
class Variant:
    critics: int
    quantile: float
    delta: float | None  # Huber delta (their 1/sigma**2); None: their IQL's MSE, no target clip
    normalize: bool


VARIANTS = {"IQL": Variant(2, 0.0, None, False), "IQL+Huber": Variant(2, 0.0, 1.0, False),
            "IQL+quantile": Variant(5, 0.25, None, False), "RIQL": Variant(5, 0.25, 1.0, True)}


class EnsembleMLP(nn.Module):
    """``members x k`` ReLU MLPs ``dims[0] -> ... -> dims[-1]`` evaluated together (one matmul per layer):
    input ``[members, B, in]`` (each member's batch, shared by its k copies) gives ``[k, members, B, out]``.
    Weights ``[k * members, in, out]``, k-major, so the k outputs of all members view as ``[k, members * B]``
    without a copy. ``edac_init``: biases 0.1 and the last layer U(-3e-3, 3e-3) (their ``VectorizedQ``);
    otherwise ``nn.Linear``'s default init per member (their ``MLP``)."""

    def __init__(self, members: int, k: int, dims: tuple[int, ...], *, edac_init: bool = False):
        super().__init__()
        self.members, self.k = members, k
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for i, o in zip(dims[:-1], dims[1:]):
            w, b = torch.empty(k * members, i, o), torch.empty(k * members, 1, o)
            for m in range(k * members):
                nn.init.kaiming_uniform_(w[m].T, a=math.sqrt(5))
            nn.init.uniform_(b, -1 / math.sqrt(i), 1 / math.sqrt(i))
            if edac_init:
                nn.init.constant_(b, 0.1)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))
        if edac_init:
            nn.init.uniform_(self.weights[-1], -3e-3, 3e-3)
            nn.init.uniform_(self.biases[-1], -3e-3, 3e-3)

    def forward(self, x: Tensor) -> Tensor:
        m, b, i = x.shape
        w0 = self.weights[0].view(self.k, m, i, -1)
        h = torch.matmul(x, w0) + self.biases[0].view(self.k, m, 1, -1)  # [k, M, B, out], x broadcast over k
        h = h.view(self.k * m, b, -1)
        for w, bias in zip(self.weights[1:], self.biases[1:]):
            h = torch.baddbmm(bias, torch.relu(h), w)
        return h.view(self.k, m, b, -1)


@dataclass
class Agent:
    variant: Variant
    q: EnsembleMLP
    q_target: EnsembleMLP
    v: EnsembleMLP
    actor: EnsembleMLP
    opts: tuple[torch.optim.Optimizer, ...]
    schedule: Any
    hp: dict[str, float]

    def act(self, obs: Tensor) -> Tensor:
        """Each member's deterministic action in [-1, 1] for its observations ``[members, B, obs]``."""
        return torch.tanh(self.actor(obs)[0])


def make_agent(variant: Variant, obs_dim: int, act_dim: int, *, members: int = 1, hidden: int = 256,
               lr: float = 3e-4, steps: int = 1_000_000, discount: float = 0.99, tau: float = 0.005,
               expectile: float = 0.7, beta: float = 3.0) -> Agent:
    """``members`` independent agents' networks and optimisers (built from the global torch RNG, which the
    caller seeds). Adam treats every element apart, and each loss below is the sum of the members' means, so
    the members train exactly as separate agents would (one set of kernels for all)."""
    q = EnsembleMLP(members, variant.critics, (obs_dim + act_dim, hidden, hidden, 1), edac_init=True)
    v = EnsembleMLP(members, 1, (obs_dim, hidden, hidden, 1))
    actor = EnsembleMLP(members, 1, (obs_dim, hidden, hidden, act_dim))
    opts = tuple(torch.optim.Adam(m.parameters(), lr=lr, foreach=True) for m in (v, q, actor))
    return Agent(variant, q, copy.deepcopy(q).requires_grad_(False), v, actor, opts,
                 torch.optim.lr_scheduler.CosineAnnealingLR(opts[2], steps),
                 dict(discount=discount, tau=tau, expectile=expectile, beta=beta))


def train_step(agent: Agent, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor) -> None:
    """One update of every member in the authors' order: ``obs``/``next_obs`` ``[M, B, obs]``, ``action``
    ``[M, B, act]`` in [-1, 1], ``reward``/``done`` ``[M, B]``. No host sync."""
    var, hp = agent.variant, agent.hp
    v_opt, q_opt, pi_opt = agent.opts
    m, b = reward.shape
    sa = torch.cat([obs, action], -1)
    with torch.no_grad():
        next_v = agent.v(next_obs)[0, ..., 0].reshape(m * b)
        target = ensemble_quantile(agent.q_target(sa)[..., 0], var.quantile)  # [M, B]
    adv = target - agent.v(obs)[0, ..., 0]
    v_opt.zero_grad(set_to_none=True)
    (expectile_loss(adv, hp["expectile"]) * m).backward()  # the sum over members of each member's mean
    v_opt.step()
    q = agent.q(sa).view(var.critics, m * b)
    r, d = reward.reshape(m * b), done.reshape(m * b)
    if var.delta is None:
        q_loss = F.mse_loss(q, (r + (1 - d.to(q.dtype)) * hp["discount"] * next_v).expand_as(q))
    else:
        q_loss = riql_q_loss(q, r, d, next_v, discount=hp["discount"], delta=var.delta)
    q_opt.zero_grad(set_to_none=True)
    (q_loss * m).backward()
    q_opt.step()
    polyak_update(agent.q_target, agent.q, hp["tau"])
    bc = ((agent.act(obs) - action) ** 2).sum(-1)
    pi_loss = (awr_weights(adv, beta=hp["beta"]) * bc).mean() * m
    pi_opt.zero_grad(set_to_none=True)
    pi_loss.backward()
    pi_opt.step()
    agent.schedule.step()


@torch.no_grad()
def evaluate(agent: Agent, env_id: str, episodes: int, seed: int, max_action: float, mean: Tensor,
             std: Tensor) -> list[float]:
    """Each member's mean return over ``episodes`` episodes of the clean ``env_id`` with its deterministic
    actor, observations normalised by the member's ``mean``/``std`` (``[M, obs]``); all episodes step
    together (one batched actor call per time step), episode ``i`` reset with seed ``seed + i``."""
    from gradwise.rl._common import require_gymnasium

    gym = require_gymnasium()
    m = mean.shape[0]
    envs = [[gym.make(env_id) for _ in range(episodes)] for _ in range(m)]
    try:
        obs = torch.as_tensor(np.array([[e.reset(seed=seed + i)[0] for i, e in enumerate(row)] for row in envs]),
                              dtype=torch.float32)
        total = torch.zeros(m, episodes, dtype=torch.float64)
        live = torch.ones(m, episodes, dtype=torch.bool)
        while bool(live.any()):
            acts = (agent.act((obs - mean[:, None]) / std[:, None]) * max_action).clamp(-max_action, max_action)
            for j, row in enumerate(envs):
                for i, e in enumerate(row):
                    if live[j, i]:
                        o, r, term, trunc, _ = e.step(acts[j, i].numpy())
                        obs[j, i] = torch.as_tensor(o)
                        total[j, i] += float(r)
                        live[j, i] = not (term or trunc)
    finally:
        for row in envs:
            for e in row:
                e.close()
    return total.mean(1).tolist()
