"""DynLin-UCB, the optimistic agent of "Dynamical Linear Bandits" (Mussi, Metelli, Restelli, ICML 2023).

Reward = linear function of a hidden state driven by past actions (see
:class:`gradwise.bandits.DynamicalLinearBanditEnv`). DynLin-UCB plays in epochs: epoch m holds one action for
``1 + floor(log m / log(1/rho))`` rounds, so that the state has nearly settled, and only the epoch's last
reward enters a ridge regression of the reward on the action (V = lam I + sum u u^T, b = sum u r). The next
action maximises, over the arms a,::

    <h, a> + beta_t ||a||_{V^{-1}},   h = V^{-1} b
    beta_t = c1 sqrt(lam) + c2 / sqrt(lam) log(e (t + 1))
             + sqrt(2 sigma_bar^2 (log(1/delta) + d/2 log(1 + t u_max^2 / (d lam))))
    c1 = theta + omega b phi / (1 - rho),   c2 = u_max omega phi (u_max b / (1 - rho) + u_max / (1 - rho))
    sigma_bar^2 = noise_var (1 + omega^2 phi^2 / (1 - rho^2))

with t the number of rounds played (0-based round index of the decision), theta = ||1^T D||, omega = ||1^T C||,
b = ||B||_2, phi = sup_i ||A^i|| / rho^i, u_max = max_a ||a||.

Checked against the authors' code (marcomussi/DLB @7fb103ec, ``dynlinucb/experimental/agents.py``,
``DynLinUCBAgent`` for lam = 1 and ``LinearAgent(dynlinucb=True)`` for lam = log T, both with delta = 1/T as in
their ``scripts/main.py``) on 12 runs of 10,000 rounds, teacher-forced (``tests/data/dynlinucb_golden.pt``).
As theirs: the epoch schedule (the first estimate round is round 1, so the first action is held two rounds;
with rho < 1e-6 every round is an epoch), t in beta_t counts rounds, not epochs; ties go to the lowest arm.
Departures: ``V^{-1}`` is not inverted each decision but carried per arm by Sherman-Morrison updates
(:class:`gradwise.bandits._common.LinearUCBState`; equal to rounding), and the first arm is drawn from a torch
generator (``seed``) instead of NumPy's global state (pass ``first_arm`` to fix it).
"""
from __future__ import annotations

import math

import torch

from gradwise.bandits._common import (EpochAgent, check_arms, check_horizon, check_nonnegative, check_positive,
                                      estimate_rounds)
from gradwise.registry import register

__all__ = ["DynLinUCB"]

_PAPER = "Dynamical Linear Bandits"
_CODE = "https://github.com/marcomussi/DLB@7fb103ec"


@register(kind="bandit", paper=_PAPER, year=2023, arxiv="2211.08997", code=_CODE,
          summary="Optimistic linear bandit for rewards driven by a hidden linear state: actions held over "
                  "growing epochs, only each epoch's last reward in the ridge estimate")
class DynLinUCB(EpochAgent):
    """DynLin-UCB of "Dynamical Linear Bandits" (Mussi, Metelli, Restelli, ICML 2023), arXiv 2211.08997; authors'
    code https://github.com/marcomussi/DLB @7fb103ec (see the module docstring for the index, what was checked
    against their code and the departures).

    ``arms`` [K, d]; ``horizon`` T; ``rho`` the spectral radius bound of A (|rho| < 1); ``omega_norm``
    ||1^T C||, ``theta_norm`` ||1^T D||, ``u_max`` max arm norm, ``b_norm`` ||B||_2, ``phi_a`` sup_i ||A^i||/rho^i,
    ``noise_var`` sigma^2; ``lam`` the ridge (the paper's two variants: 1 and log T); ``delta`` the confidence
    (None: 1/T); ``first_arm`` the arm of the first epoch (None: uniform from ``seed``).
    """

    def __init__(self, arms, horizon: int, *, rho: float, omega_norm: float, theta_norm: float, u_max: float,
                 b_norm: float, phi_a: float, noise_var: float, lam: float = 1.0, delta: float | None = None,
                 first_arm: int | None = None, seed: int | None = None):
        self.arms = check_arms(arms)
        self.horizon = check_horizon(horizon)
        rho = abs(float(rho))
        if not rho < 1:
            raise ValueError(f"Invalid rho: {rho!r} (accepted: |rho| < 1, a stable system)")
        self.rho = rho
        self.omega_norm = check_nonnegative("omega_norm", omega_norm)
        self.theta_norm = check_nonnegative("theta_norm", theta_norm)
        self.u_max = check_nonnegative("u_max", u_max)
        self.b_norm = check_nonnegative("b_norm", b_norm)
        self.phi_a = check_nonnegative("phi_a", phi_a)
        self.noise_var = check_nonnegative("noise_var", noise_var)
        self.lam = check_positive("lam", lam)
        if delta is None:
            delta = 1.0 / self.horizon
        delta = float(delta)
        if not 0 < delta <= 1:
            raise ValueError(f"Invalid delta: {delta!r} (accepted: 0 < delta <= 1, or None for 1/horizon)")
        self.delta = delta
        self.first_arm, self.seed = first_arm, seed
        g = 1 - rho
        self.c1 = self.theta_norm + self.omega_norm * self.b_norm * self.phi_a / g
        self.c2 = self.u_max * self.omega_norm * self.phi_a * (self.u_max * self.b_norm / g + self.u_max / g)
        self.bar_sigma_sq = self.noise_var * (1 + self.omega_norm ** 2 * self.phi_a ** 2 / (1 - rho ** 2))
        self._start(first_arm, seed, estimate_rounds(self.horizon, rho))

    def beta(self, t: int) -> float:
        """The confidence width at round ``t`` (0-based)."""
        d, lam = self.arms.shape[1], self.lam
        return (self.c1 * math.sqrt(lam) + self.c2 / math.sqrt(lam) * math.log(math.e * (t + 1))
                + math.sqrt(2 * self.bar_sigma_sq * (math.log(1 / self.delta)
                                                     + d / 2 * math.log(1 + t * self.u_max ** 2 / (d * lam)))))
