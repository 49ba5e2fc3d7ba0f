"""LinUCB over a fixed arm set, the baseline of "Dynamical Linear Bandits" (authors' ``LinUCBAgent``).

Every round is played and learned from (ridge V = lam I + sum u u^T, b = sum u r); the arm maximises
``<V^{-1} b, a> + beta ||a||_{V^{-1}}`` with the authors' constant width (marcomussi/DLB @7fb103ec,
``dynlinucb/experimental/agents.py``, ``LinUCBAgent``)::

    beta = theta sqrt(lam) + sqrt(2 log T + d log((d lam + T max_norm^2) / (d lam)))

``theta_norm`` bounds the parameter's norm, ``max_norm`` the actions' (their ``max_global``, the daily budget
1.5 in their script). The first round plays ``first_arm`` (None: uniform from ``seed``); ties go to the lowest
arm. Checked against their code in the ``dynlinucb`` golden data. Departure: V^{-1} carried by Sherman-Morrison
updates (:class:`gradwise.bandits._common.LinearUCBState`) instead of one inverse per arm per round.
"""
from __future__ import annotations

import math

import numpy as np

from gradwise.bandits._common import EpochAgent, check_arms, check_horizon, check_nonnegative, check_positive

__all__ = ["LinUCB"]


class LinUCB(EpochAgent):
    """LinUCB baseline: ``select() -> arm``, ``update(arm, reward)``, ``estimate`` (see the module docstring)."""

    def __init__(self, arms, horizon: int, *, theta_norm: float, max_norm: float, lam: float = 1.0,
                 first_arm: int | None = None, seed: int | None = None):
        self.arms = check_arms(arms)
        self.horizon = check_horizon(horizon)
        self.theta_norm = check_nonnegative("theta_norm", theta_norm)
        self.max_norm = check_nonnegative("max_norm", max_norm)
        self.lam = check_positive("lam", lam)
        self.first_arm, self.seed = first_arm, seed
        d, T = self.arms.shape[1], self.horizon
        self._beta = self.theta_norm * math.sqrt(self.lam) + math.sqrt(
            2 * math.log(T) + d * math.log((d * self.lam + T * self.max_norm ** 2) / (d * self.lam)))
        self._start(first_arm, seed, np.arange(self.horizon, dtype=np.int64))

    def beta(self, t: int) -> float:
        """The confidence width (constant over rounds)."""
        return self._beta
