"""Shared pieces of the bandit agents: argument checks, the epoch schedule and the batched
optimistic least-squares state (Sherman-Morrison updates on a finite arm set).

The least-squares state of LinUCB-style agents over K fixed arms a_1..a_K (rows of ``arms``) is kept
per arm, batched over N independent runs (trials)::

    V = lam I + sum_s u_s u_s^T,   b = sum_s u_s r_s,   h = V^{-1} b
    G = arms V^{-1} arms^T  [K, K],   z = arms h  [K]

A new observation (arm k, reward r) updates them in O(K^2) with Sherman-Morrison
(g = G[:, k], the column of arm k)::

    G <- G - g g^T / (1 + g_k),   z <- z + g (r - z_k) / (1 + g_k)

so the optimistic index of every arm, z + beta sqrt(diag G), needs no inverse. ``V`` and ``b`` are also
kept (exactly, as sums) for the estimate ``V^{-1} b``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__: list[str] = []


def check_arms(arms) -> torch.Tensor:
    """``arms`` as a float64 [K, d] tensor (K >= 1 arms, d >= 1), finite; ValueError otherwise."""
    t = torch.as_tensor(arms, dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"Invalid arms: shape {tuple(t.shape)} (accepted: a [K, d] matrix, K >= 1 arms of "
                         f"dimension d >= 1)")
    if not torch.isfinite(t).all():
        raise ValueError("Invalid arms: non-finite entries (accepted: finite action vectors)")
    return t.clone()


def check_positive(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a finite number > 0)")
    return v


def check_nonnegative(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a finite number >= 0)")
    return v


def check_horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"Invalid horizon: {horizon!r} (accepted: an integer >= 1)")
    return int(horizon)


def check_arm_index(arm, n_arms: int, name: str = "arm") -> int:
    if isinstance(arm, bool) or not isinstance(arm, (int, np.integer)) and not (
            isinstance(arm, torch.Tensor) and arm.numel() == 1 and not arm.is_floating_point()):
        raise ValueError(f"Invalid {name}: {arm!r} (accepted: an integer arm index in [0, {n_arms}))")
    k = int(arm)
    if not 0 <= k < n_arms:
        raise ValueError(f"Invalid {name}: {k} (accepted: an arm index in [0, {n_arms}))")
    return k


def check_reward(reward) -> float:
    r = float(reward)
    if not math.isfinite(r):
        raise ValueError(f"Invalid reward: {reward!r} (accepted: a finite number)")
    return r


def first_arm_of(first_arm, seed, n_arms: int) -> int:
    """The first arm: ``first_arm`` if given, else uniform over the arms from ``seed``."""
    if first_arm is not None:
        return check_arm_index(first_arm, n_arms, "first_arm")
    return first_arms(n_arms, 1, seed)[0]


def first_arms(n_arms: int, trials: int, seed) -> list[int]:
    """One uniform first arm per trial: trial i draws from a generator seeded ``seed + i`` (``seed=None``: 0)."""
    base = 0 if seed is None else int(seed)
    return [int(torch.randint(n_arms, (1,), generator=torch.Generator().manual_seed(base + i))) for i in range(trials)]


def estimate_rounds(horizon: int, rho: float, epsilon: float = 1e-6) -> np.ndarray:
    """Rounds (0-based) whose reward updates the estimate; the action changes the round after each.

    As the authors' ``DynLinUCBAgent``: epoch m (m = 1, 2, ...) lasts ``1 + floor(log m / log(1/rho))`` rounds and
    the estimate rounds are the cumulative sums (the first is 1, so the first action is held for two rounds);
    with ``rho < epsilon`` every round is an estimate round (0, 1, ..., horizon-1).
    """
    if rho < epsilon:
        return np.arange(horizon, dtype=np.int64)
    inv = np.log(1 / rho)
    out: list[np.ndarray] = []
    total, m0, chunk = 0, 1, 4096
    while total < horizon:
        m = np.arange(m0, m0 + chunk, dtype=np.float64)
        lengths = 1 + np.floor(np.log(m) / inv).astype(np.int64)
        ends = total + np.cumsum(lengths)
        stop = np.searchsorted(ends, horizon, side="left")  # the first end >= horizon is the last one kept
        if stop < len(ends):
            out.append(ends[:stop + 1])
            break
        out.append(ends)
        total, m0 = int(ends[-1]), m0 + chunk
    return np.concatenate(out)


class LinearUCBState:
    """Batched least-squares state of a UCB agent over fixed arms (see the module docstring).

    Kept in NumPy float64: the agents' loops do a few dozen operations on [N, K, K] arrays per round, where
    NumPy's per-call cost is a fraction of torch's. ``V`` and ``b`` are not updated per round: the pull counts
    and reward sums per arm are, and ``V = lam I + sum_k n_k a_k a_k^T``, ``b = sum_k a_k s_k`` are formed when
    asked for.
    """

    def __init__(self, arms: torch.Tensor, lam: float, trials: int):
        a = arms.numpy()
        k, d = a.shape
        self.arms = a
        self.lam = lam
        self.G = np.broadcast_to(a @ a.T / lam, (trials, k, k)).copy()
        self.z = np.zeros((trials, k))
        self.count = np.zeros((trials, k))
        self.reward_sum = np.zeros((trials, k))
        self._rows = np.arange(trials)

    def scores(self, beta) -> np.ndarray:
        """[N, K] optimistic indices ``z + beta sqrt(diag G)`` (``beta`` a number or [N, 1])."""
        return self.z + beta * np.sqrt(np.maximum(np.diagonal(self.G, axis1=1, axis2=2), 0))

    def choose(self, beta) -> np.ndarray:
        """[N] the arm of highest index (ties: the lowest index)."""
        return np.argmax(self.scores(beta), axis=1)

    def update(self, arm: np.ndarray, reward: np.ndarray) -> None:
        """One observation per trial: ``arm`` [N] int, ``reward`` [N] float64."""
        rows = self._rows
        g = self.G[rows, arm]                    # [N, K]: G is symmetric, its row of the arm is its column
        denom = 1 + g[rows, arm]                 # 1 + a^T V^{-1} a
        self.z += g * ((reward - self.z[rows, arm]) / denom)[:, None]
        gs = g / denom[:, None]
        self.G -= gs[:, :, None] * g[:, None, :]
        self.count[rows, arm] += 1
        self.reward_sum[rows, arm] += reward

    @property
    def V(self) -> torch.Tensor:
        """[N, d, d] ``lam I + sum_s u_s u_s^T``."""
        a = self.arms
        v = np.einsum("nk,ki,kj->nij", self.count, a, a) + self.lam * np.eye(a.shape[1])
        return torch.from_numpy(v)

    @property
    def b(self) -> torch.Tensor:
        """[N, d] ``sum_s u_s r_s``."""
        return torch.from_numpy(self.reward_sum @ self.arms)

    def estimate(self) -> torch.Tensor:
        """[N, d] ``V^{-1} b``."""
        return torch.linalg.solve(self.V, self.b.unsqueeze(-1)).squeeze(-1)


def as_matrix(name: str, x, shape: Sequence[int | None]) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.dim() == 1 and len(shape) == 2 and shape[0] == 1:
        t = t.unsqueeze(0)
    ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
    if not ok:
        want = " x ".join("?" if s is None else str(s) for s in shape)
        raise ValueError(f"Invalid {name}: shape {tuple(t.shape)} (accepted: {want})")
    if not torch.isfinite(t).all():
        raise ValueError(f"Invalid {name}: non-finite entries (accepted: finite values)")
    return t.clone()


class EpochAgent:
    """select()/update() over a fixed arm set with a schedule of estimate rounds (shared by LinUCB)."""

    arms: torch.Tensor
    horizon: int
    lam: float

    def _start(self, first_arm, seed, schedule) -> None:
        self._schedule = schedule                 # numpy int64: rounds whose reward updates the estimate
        self._state = LinearUCBState(self.arms, self.lam, 1)
        self._arm = first_arm_of(first_arm, seed, self.arms.shape[0])
        self.t = 0
        self._next = 0                            # index into the schedule

    def beta(self, t: int) -> float:
        raise NotImplementedError

    def select(self) -> int:
        """The arm to play this round: the held one, or a new optimistic choice at an epoch's first round."""
        if self.t >= self.horizon:
            raise ValueError(f"Invalid select: the horizon ({self.horizon} rounds) is over")
        if self.t > 0 and self._next > 0 and self.t == int(self._schedule[self._next - 1]) + 1:
            self._arm = int(self._state.choose(self.beta(self.t))[0])
        return self._arm

    def update(self, arm: int, reward: float) -> None:
        """Record this round's ``arm`` and ``reward``; the estimate moves only at an epoch's last round."""
        k = check_arm_index(arm, self.arms.shape[0])
        r = check_reward(reward)
        if self.t >= self.horizon:
            raise ValueError(f"Invalid update: the horizon ({self.horizon} rounds) is over")
        self._arm = k
        if self._next < len(self._schedule) and self.t == int(self._schedule[self._next]):
            self._state.update(np.array([k]), np.array([r]))
            self._next += 1
        self.t += 1

    @property
    def estimate(self) -> torch.Tensor:
        """The ridge estimate ``V^{-1} b`` [d]."""
        return self._state.estimate()[0]
