"""The dynamical linear bandit environment of "Dynamical Linear Bandits" (Mussi, Metelli, Restelli, ICML 2023)
and its synthetic budget-allocation arms.

A hidden state x (n) evolves with the played action u (p)::

    y_t = C x_t + D u_t + v_t,   reward_t = 1^T y_t,   x_{t+1} = A x_t + B u_t + w_t,   x_0 = 0

with w_t, v_t ~ N(0, noise_std^2 I), as the authors' ``DynLinEnvironment`` (marcomussi/DLB @7fb103ec,
``dynlinucb/experimental/environment.py``; their ``output_mapping`` is the all-ones row). The expected reward of
holding u forever is ``1^T (D + C (I - A)^{-1} B) u`` (:meth:`DynamicalLinearBanditEnv.steady_rewards`), what the
authors' regret compares against.

Noise: trial ``i`` draws from a generator seeded ``seed + i``, in blocks of :data:`NOISE_BLOCK` rounds (one
``randn(block, n + m)`` each: the first n columns are w, the rest v), so the stepping environment and
:func:`gradwise.bandits.run_trials` see the same noise. Departure: the authors draw all noise up front from
NumPy's global ``np.random.seed(1)``; the golden test replays their rewards instead.
"""
from __future__ import annotations

import itertools

import torch

from gradwise.bandits._common import as_matrix, check_horizon, check_nonnegative

__all__ = ["DynamicalLinearBanditEnv", "budget_arms", "SYNTHETIC_INSTANCE"]

NOISE_BLOCK = 4096

# The authors' synthetic instance (config/testcase_synt_sigma0dot01.json and sigma0dot1.json; 6 budget arms).
SYNTHETIC_INSTANCE = {
    "A": ((0.2, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.1)),
    "B": ((0.45, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.1)),
    "C": ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.1)),
    "D": ((0.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.1)),
    "max_daily_budget": 1.5, "max_camp_budget": 1.0, "min_camp_budget": 0.0,
}


def budget_arms(p: int, total: float, max_each: float, min_each: float = 0.0) -> torch.Tensor:
    """The authors' discrete arms: for every order of the p campaigns, fill each in turn up to ``max_each``
    from the budget ``total`` (after ``min_each`` for all); the distinct allocations, sorted (``np.unique``'s
    row order). With p=3, total 1.5, max 1: the 6 permutations of (1, 0.5, 0)."""
    rows = set()
    for order in itertools.permutations(range(p)):
        budget = total - p * min_each
        u = [min_each] * p
        for i in order:
            delta = min(budget, max_each - u[i])
            u[i] += delta
            budget -= delta
        rows.add(tuple(u))
    return torch.tensor(sorted(rows), dtype=torch.float64)


class DynamicalLinearBanditEnv:
    """Dynamical linear bandit (see the module docstring): ``step(action) -> reward``.

    ``A`` [n, n] (spectral radius < 1), ``B`` [n, p], ``C`` [m, n], ``D`` [m, p]; ``noise_std`` the standard
    deviation of both noises; ``horizon`` the number of rounds; ``seed`` the noise seed of trial 0.
    """

    def __init__(self, A, B, C, D, noise_std: float, horizon: int, seed: int = 0):
        self.A = as_matrix("A", A, (None, None))
        n = self.A.shape[0]
        if self.A.shape[1] != n:
            raise ValueError(f"Invalid A: shape {tuple(self.A.shape)} (accepted: a square n x n matrix)")
        self.B = as_matrix("B", B, (n, None))
        p = self.B.shape[1]
        self.C = as_matrix("C", C, (None, n))
        m = self.C.shape[0]
        self.D = as_matrix("D", D, (m, p))
        rho = float(torch.linalg.eigvals(self.A).abs().max())
        if rho >= 1:
            raise ValueError(f"Invalid A: spectral radius {rho:.6g} (accepted: a stable matrix, radius < 1)")
        self.rho = rho
        self.n, self.p, self.m = n, p, m
        self.noise_std = check_nonnegative("noise_std", noise_std)
        self.horizon = check_horizon(horizon)
        self.seed = int(seed)
        self.c = self.C.sum(0)          # 1^T C  [n]
        self.d = self.D.sum(0)          # 1^T D  [p]
        self.reset()

    # ---- stepping -------------------------------------------------------------------------------
    def reset(self, trial: int = 0) -> None:
        """Start trial ``trial`` (state 0, round 0, noise from ``seed + trial``)."""
        self.x = torch.zeros(self.n, dtype=torch.float64)
        self.t = 0
        self._gen = torch.Generator().manual_seed(self.seed + int(trial))
        self._noise = torch.empty(0, self.n + self.m, dtype=torch.float64)

    def step(self, action) -> float:
        """Play ``action`` (a [p] vector) for one round; returns the reward."""
        if self.t >= self.horizon:
            raise ValueError(f"Invalid step: the horizon ({self.horizon} rounds) is over (accepted: reset() first)")
        u = torch.as_tensor(action, dtype=torch.float64).reshape(-1)
        if u.numel() != self.p:
            raise ValueError(f"Invalid action: {u.numel()} entries (accepted: a vector of p = {self.p})")
        i = self.t % NOISE_BLOCK
        if i == 0:
            self._noise = noise_block(self._gen, self.n + self.m, self.noise_std)
        e = self._noise[i]
        y = self.C @ self.x + self.D @ u + e[self.n:]
        self.x = self.A @ self.x + self.B @ u + e[:self.n]
        self.t += 1
        return float(y.sum())

    # ---- what the regret needs -------------------------------------------------------------------
    def markov(self) -> torch.Tensor:
        """``D + C (I - A)^{-1} B`` [m, p]: the steady-state output of a held action."""
        eye = torch.eye(self.n, dtype=torch.float64)
        return self.D + self.C @ torch.linalg.solve(eye - self.A, self.B)

    def steady_rewards(self, arms) -> torch.Tensor:
        """[K] the expected reward of holding each arm forever, ``1^T markov() a``."""
        return torch.as_tensor(arms, dtype=torch.float64) @ self.markov().sum(0)

    def constants(self, arms) -> dict[str, float]:
        """The bounds DynLin-UCB takes, computed as the authors' script does for this system and ``arms``:
        ``rho`` (spectral radius of A), ``omega_norm`` ||1^T C||, ``theta_norm`` ||1^T D||, ``b_norm`` ||B||_2,
        ``u_max`` the largest arm norm, ``phi_a`` max over i = 1..999 of ||A^i||_2 / rho^i (their ``spectr``,
        skipping the powers that underflow)."""
        a = torch.as_tensor(arms, dtype=torch.float64)
        phi = 1.0
        if self.rho > 0:
            powers = [self.A]
            for _ in range(998):
                powers.append(powers[-1] @ self.A)
            scale = self.rho ** torch.arange(1, 1000, dtype=torch.float64)
            ratios = torch.linalg.matrix_norm(torch.stack(powers), 2) / scale
            phi = float(ratios[(scale > 0) & torch.isfinite(ratios)].max())
        return {"rho": self.rho, "omega_norm": float(torch.linalg.vector_norm(self.c)),
                "theta_norm": float(torch.linalg.vector_norm(self.d)),
                "b_norm": float(torch.linalg.matrix_norm(self.B, 2)),
                "u_max": float(torch.linalg.vector_norm(a, dim=1).max()), "phi_a": phi}

    # ---- batched noise (for run_trials) ----------------------------------------------------------
    def noise_rewards(self, trials: int, start_trial: int = 0) -> torch.Tensor:
        """[trials, horizon] the action-free part of each reward, ``1^T (C x^w_t + v_t)`` with
        ``x^w_{t+1} = A x^w_t + w_t`` (the same noise as :meth:`step` for trials ``start_trial + i``).

        By linearity the reward of any action sequence is this plus the noise-free response to the actions.
        Computed block by block, each block's recurrence by doubling (log2 of the block steps).
        """
        out = torch.empty(trials, self.horizon, dtype=torch.float64)
        L = NOISE_BLOCK
        powers = [torch.eye(self.n, dtype=torch.float64)]
        for _ in range(L):
            powers.append(powers[-1] @ self.A)
        apow = torch.stack(powers)                     # [L+1, n, n]: A^0 .. A^L
        gens = [torch.Generator().manual_seed(self.seed + start_trial + i) for i in range(trials)]
        x = torch.zeros(trials, self.n, dtype=torch.float64)
        for s in range(0, self.horizon, L):
            e = torch.stack([noise_block(g, self.n + self.m, self.noise_std) for g in gens])   # [N, L, n+m]
            w, v = e[..., :self.n], e[..., self.n:]
            # y_j = sum_{i<j} A^{j-1-i} w_i (zero start), by doubling: y <- y + A^k y shifted by k
            y = torch.zeros(trials, L, self.n, dtype=torch.float64)
            y[:, 1:] = w[:, :-1]
            k = 1
            while k < L:
                y[:, k:] = y[:, k:] + y[:, :-k] @ apow[k].T
                k *= 2
            xs = y + torch.einsum("jab,nb->nja", apow[:L], x)   # x^w at the block's rounds
            n_here = min(L, self.horizon - s)
            out[:, s:s + n_here] = (xs @ self.c + v.sum(-1))[:, :n_here]
            x = xs[:, -1] @ self.A.T + w[:, -1]
        return out


def noise_block(gen: torch.Generator, width: int, std: float) -> torch.Tensor:
    return torch.randn(NOISE_BLOCK, width, dtype=torch.float64, generator=gen) * std
