"""Exp3 over a fixed arm set, the adversarial baseline of "Dynamical Linear Bandits" (authors' ``Exp3Agent``).

Each round draws an arm from p; after the reward r (rescaled ``r' = (r + add_factor) / max_reward``)::

    G_k <- G_k + r' / p_k   (the played arm only),   p = (1 - gamma) softmax(eta G) + gamma / K

as marcomussi/DLB @7fb103ec ``dynlinucb/experimental/agents.py`` (``Exp3Agent``; their script sets
gamma = min(1, sqrt(K log K / ((e - 1) 2T/3))), eta = gamma / K, max_reward 4M, add_factor 2M with
M = (theta + omega b / (1 - rho)) u_max: :meth:`Exp3.paper_setting`). Departures: the softmax subtracts max(eta G)
(the same value, no overflow), and the arm is drawn by inverse CDF from uniforms of a torch generator (``seed``),
drawn in blocks of 4096, instead of ``np.random.choice``.
"""
from __future__ import annotations

import math

import torch

from gradwise.bandits._common import check_arm_index, check_horizon, check_positive, check_reward

__all__ = ["Exp3"]

_BLOCK = 4096


class Exp3:
    """Exp3: ``select() -> arm``, ``update(arm, reward)``; ``probabilities`` [K] (see the module docstring)."""

    def __init__(self, n_arms: int, horizon: int, *, gamma: float, eta: float, max_reward: float = 1.0,
                 add_factor: float = 0.0, seed: int | None = None):
        if isinstance(n_arms, bool) or int(n_arms) != n_arms or n_arms < 1:
            raise ValueError(f"Invalid n_arms: {n_arms!r} (accepted: an integer >= 1)")
        self.n_arms = int(n_arms)
        self.horizon = check_horizon(horizon)
        gamma = float(gamma)
        if not 0 <= gamma <= 1:
            raise ValueError(f"Invalid gamma: {gamma!r} (accepted: 0 <= gamma <= 1)")
        self.gamma = gamma
        self.eta = check_positive("eta", eta)
        self.max_reward = check_positive("max_reward", max_reward)
        self.add_factor = float(add_factor)
        self.seed = seed
        self.G = torch.zeros(self.n_arms, dtype=torch.float64)
        self.probabilities = torch.full((self.n_arms,), 1.0 / self.n_arms, dtype=torch.float64)
        self._gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self._u = torch.empty(0, dtype=torch.float64)
        self.t = 0

    @staticmethod
    def paper_setting(n_arms: int, horizon: int, *, rho: float, omega_norm: float, theta_norm: float,
                      b_norm: float, u_max: float) -> dict:
        """The authors' script's gamma, eta, max_reward and add_factor for a dynamical linear bandit."""
        lr = min(1.0, math.sqrt(n_arms * math.log(n_arms) / ((math.e - 1) * 2 * horizon / 3)))
        m = (theta_norm + omega_norm * b_norm / (1 - abs(rho))) * u_max
        return {"gamma": lr, "eta": lr / n_arms, "max_reward": 4 * m, "add_factor": 2 * m}

    def select(self) -> int:
        """Draw this round's arm from ``probabilities``."""
        i = self.t % _BLOCK
        if i == 0 or len(self._u) == 0:
            self._u = torch.rand(_BLOCK, dtype=torch.float64, generator=self._gen)
        p = self.probabilities / self.probabilities.sum()
        return min(int((torch.cumsum(p, 0) <= self._u[i]).sum()), self.n_arms - 1)

    def update(self, arm: int, reward: float) -> None:
        """Importance-weighted gain of the played ``arm``, then the new probabilities."""
        k = check_arm_index(arm, self.n_arms)
        r = (check_reward(reward) + self.add_factor) / self.max_reward
        self.G[k] += r / float(self.probabilities[k])
        self.probabilities = ((1 - self.gamma) * torch.softmax(self.eta * self.G, 0) + self.gamma / self.n_arms)
        self.t += 1
