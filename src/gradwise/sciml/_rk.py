"""Embedded explicit Runge-Kutta pairs shared by the ODE-solver modules: the tableaux (Dormand-Prince 5(4),
Tsitouras 5(4)), one step with its error ratio and stiffness estimate, the Hairer-Norsett-Wanner initial step,
the step-size update and the quartic dense output. Plain torch; the controller works on host floats
(detached), the stages keep the autograd graph (discrete adjoint)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["TABLEAUX", "Tableau", "RKStep", "step", "initial_step", "next_step_size", "dense_coeffs", "local_step",
           "dense_eval", "METHODS"]


class Tableau(NamedTuple):
    """``a[i]``: the coefficients of stage ``i`` (1..6) on ``k[0..i-1]``; ``c[i]`` its node; ``b_err``: the
    error weights on k1..k7 (k7 = f(t1, y1), FSAL: ``a[6]`` are the solution weights); ``mid``: the
    dense-output weights at the half step (``y(t + dt/2) = y0 + dt * sum mid_i k_i``); ``order``."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b_err: tuple[float, ...]
    mid: tuple[float, ...]
    order: int


# Dormand & Prince (1980), the pair of torchdiffeq's dopri5 (its error weights and Shampine's mid-point weights)
_DOPRI5 = Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b_err=(35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
           -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60),
    mid=(6025192743 / 30085553152 / 2, 0.0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
         187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2),
    order=5,
)

# Tsitouras (2011), "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying assumption",
# the coefficients as OrdinaryDiffEq.jl's Tsit5 and torchode 1.0.1 use them (error weights with the corrected
# sign of the last one); ``mid`` is Tsitouras' continuous extension b_i(theta) at theta = 1/2.
_TSIT5 = Tableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((), (0.161,), (-0.008480655492356989, 0.335480655492357),
       (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838),
       (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
        2.324710524099774)),
    b_err=(0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995, 0.1447110071732629,
           -0.5823571654525552, 0.45808210592918697, -1 / 66),
    mid=(0.10741235230096871, 0.01135625, 0.39560903056045305, -0.34475214352593553, 1.3161853649581645,
         -1.0170608542936508, 0.031249999999999993),
    order=5,
)

TABLEAUX = {"tsit5": _TSIT5, "dopri5": _DOPRI5}
METHODS = tuple(TABLEAUX)


class RKStep(NamedTuple):
    """One embedded Runge-Kutta step: ``y1`` (the 5th-order solution at ``t + dt``), ``f1 = func(t + dt, y1)``
    (reused as the next step's first stage), ``error_ratio`` (0-dim, differentiable: RMS of the embedded error
    over ``atol + rtol * max(|y|, |y1|)``; the step is accepted when <= 1) and ``stiffness`` (0-dim,
    differentiable: ``||k7 - k6|| / ||y1 - g6||``, the dominant-eigenvalue estimate of the Jacobian)."""

    y1: Tensor
    f1: Tensor
    error_ratio: Tensor
    stiffness: Tensor


def _time(t: float, like: Tensor) -> Tensor:
    return torch.tensor(t, dtype=like.dtype if like.is_floating_point() else torch.float64, device=like.device)


def step(func, t: float, y: Tensor, dt: float, f0: Tensor, tab: Tableau, rtol: float, atol: float,
         *, t1: float | None = None, keep_k: bool = False):
    """One step from (t, y) with size dt (host float); ``t1`` (default t + dt) is the end time passed to the
    stages at node 1 (as torchdiffeq, for exact landing). Returns RKStep, or (RKStep, k) with ``keep_k``."""
    t_end = t + dt if t1 is None else t1
    k = [f0]
    g = y
    for i in range(1, 7):  # stage inputs g_1..g_5, then the solution (FSAL row a[6])
        g = y
        for j, a_ij in enumerate(tab.a[i]):
            if a_ij != 0.0:
                g = g + k[j] * (a_ij * dt)
        if i < 6:
            g6 = g
            ti = t_end if tab.c[i] == 1.0 else t + tab.c[i] * dt
            k.append(func(_time(ti, y), g))
    y1 = g
    f1 = func(_time(t_end, y), y1)
    k.append(f1)
    err = k[0] * (tab.b_err[0] * dt)
    for j in range(1, 7):
        if tab.b_err[j] != 0.0:
            err = err + k[j] * (tab.b_err[j] * dt)
    scale = atol + rtol * torch.maximum(y.abs(), y1.abs())
    ratio = (err / scale).pow(2).mean().sqrt()
    stiff = torch.linalg.vector_norm(f1 - k[5]) / torch.linalg.vector_norm(y1 - g6)
    out = RKStep(y1, f1, ratio, stiff)
    return (out, k) if keep_k else out


@torch.no_grad()
def initial_step(func, t0: float, y0: Tensor, f0: Tensor, order: int, rtol: float, atol: float,
                 cap: float | None = None) -> float:
    """Hairer, Norsett & Wanner (Sec. II.4) starting step, with torchdiffeq's choices (RMS norm, ``order`` =
    method order - 1); one evaluation of ``func``. ``cap`` bounds it (torchode's ``dt_max``)."""
    y0, f0 = y0.detach(), f0.detach()
    scale = atol + y0.abs() * rtol
    d0 = float((y0 / scale).pow(2).mean().sqrt())
    d1 = float((f0 / scale).pow(2).mean().sqrt())
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = abs(float(torch.tensor(h0, dtype=y0.dtype)))  # torchdiffeq computes h0 in the state's dtype
    if cap is not None:
        h0 = min(h0, cap)
    f1 = func(_time(t0 + h0, y0), y0 + h0 * f0)
    d2 = float(((f1 - f0) / scale).pow(2).mean().sqrt()) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / float(order + 1))
    h = min(100 * h0, h1)
    return min(h, cap) if cap is not None else h


def next_step_size(dt: float, ratio: float, order: int, *, safety: float = 0.9, ifactor: float = 10.0,
                   dfactor: float = 0.2) -> float:
    """torchdiffeq's integral controller: dt * min(ifactor, max(safety / ratio^(1/order), dfactor)), the lower
    bound only after a rejection, ``ifactor`` when the error is 0."""
    if ratio == 0:
        return dt * ifactor
    lo = 1.0 if ratio < 1 else dfactor
    if math.isnan(ratio):
        return dt * dfactor
    return dt * min(ifactor, max(safety / ratio ** (1.0 / order), lo))


def dense_coeffs(y0: Tensor, y1: Tensor, k: list[Tensor], dt: float, tab: Tableau) -> list[Tensor]:
    """Quartic through y0, y(t + dt/2), y1 with slopes f0, f1 (torchdiffeq's ``_interp_fit``)."""
    y_mid = y0
    for j, m in enumerate(tab.mid):
        if m != 0.0:
            y_mid = y_mid + k[j] * (m * dt)
    f0, f1 = k[0], k[-1]
    a = 2 * dt * (f1 - f0) - 8 * (y1 + y0) + 16 * y_mid
    b = dt * (5 * f0 - 3 * f1) + 18 * y0 + 14 * y1 - 32 * y_mid
    c = dt * (f1 - 4 * f0) - 11 * y0 - 5 * y1 + 16 * y_mid
    return [y0, dt * f0, c, b, a]


def dense_eval(coeffs: list[Tensor], t0: float, t1: float, t: float) -> Tensor:
    x = float(torch.tensor((t - t0) / (t1 - t0), dtype=coeffs[0].dtype))
    total = coeffs[0] + x * coeffs[1]
    xp = x
    for c in coeffs[2:]:
        xp = xp * x
        total = total + xp * c
    return total


def local_step(func, t1: float, y1: Tensor, span: float, f0: Tensor | None, tab: Tableau, rtol: float,
               atol: float) -> tuple[Tensor, int]:
    """Seed 242's local regulariser: from the detached point (t1, y1), choose a first step as a fresh
    integrator would (Hairer's rule, capped at ``span`` = |t_N - t_0|) and take one step; returns
    (EEst * dt, evaluations). The first stage ``f0`` is detached (their integrator is built outside AD);
    the other stages carry the parameters' gradient."""
    y1 = y1.detach()
    n = 0
    if f0 is None:
        with torch.no_grad():
            f0 = func(_time(t1, y1), y1)
        n += 1
    f0 = f0.detach()
    dt = initial_step(func, t1, y1, f0, tab.order - 1, rtol, atol, cap=span)
    out = step(func, t1, y1, dt, f0, tab, rtol, atol)
    return out.error_ratio * dt, n + 1 + 6
