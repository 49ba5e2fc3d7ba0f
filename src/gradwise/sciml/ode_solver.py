r"""An embedded Runge-Kutta solver for neural ODEs that exposes its internal heuristics (local error and stiffness
estimates) as differentiable regularisers.

Paper: Pal, Ma, Shah, Rackauckas, "Opening the Blackbox: Accelerating Neural Differential Equations by
Regularizing Internal Solver Heuristics", ICML 2021, arXiv:2105.03918. Authors' code (Julia):
github.com/avik-pal/RegNeuralODE.jl (not mirrored here; see docs/coverage_notes.md). The local variants
(``regularize="local"``, ``"local-biased"``) are seed 242, :mod:`gradwise.sciml.local_reg`.

**Math.** An adaptive solver takes steps :math:`h_j` from :math:`t_0` to :math:`t_N`; each step of an embedded
pair gives a local error estimate :math:`\mathrm{EEst}_j = \mathrm{RMS}\big(\tilde e_j / (\mathrm{atol} +
\mathrm{rtol}\max(|y_j|, |y_{j+1}|))\big)` (the step is accepted when :math:`\le 1`) and a stiffness estimate
:math:`\tilde\lambda_j = \|k_7 - k_6\| / \|y_{j+1} - g_6\|` (the dominant Jacobian eigenvalue as
OrdinaryDiffEq.jl's ``eigen_est`` for Tsit5/DP5, :math:`g_6` the last stage's input). Over the accepted steps

.. math:: R_E = \sum_j \mathrm{EEst}_j\,|h_j|, \qquad R_S = \sum_j \tilde\lambda_j,

and the training loss is :math:`L + \lambda R`. The controller (accept/reject, the next :math:`h`) is detached
and runs on host floats; the stages keep the graph, so backprop through the steps is the discrete adjoint and
the regularisers' gradients come for free with the forward pass.

``controller="torchdiffeq"`` is torchdiffeq 0.2.5's loop exactly (Hairer's first step, safety 0.9, factors
[0.2, 10], steps run past the output times, outputs by its quartic dense output): with ``method="dopri5"`` it
takes odeint's steps with odeint's NFE. ``controller="default"`` uses the same step-size rule but clips steps
to land on each output time (outputs are solver states, no interpolation; the first step capped at
:math:`|t_N - t_0|` as torchode).

Departures and gaps: the method section of 234 could not be read here (searches in docs/coverage_notes.md);
:math:`R_E` follows the issue and the authors' later code (LocalRegNeuralDE.jl ``EEst * dt``); :math:`R_S` is
the sum of OrdinaryDiffEq's stiffness estimate over accepted steps, not checked against the paper's text.
Rejected steps enter neither regulariser. The authors regularise inside DiffEqFlux (Julia); this is torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from gradwise._validate import check_real
from gradwise.registry import register
from gradwise.sciml import _rk

__all__ = ["rk_step", "solve_ode", "RKStep", "ODESolution"]

PAPER = ("Opening the Blackbox: Accelerating Neural Differential Equations by Regularizing Internal Solver "
         "Heuristics")
CODE = "https://github.com/avik-pal/RegNeuralODE.jl"
CONTROLLERS = ("default", "torchdiffeq")
REGULARIZERS = (None, "error", "stiffness", "local", "local-biased")

RKStep = _rk.RKStep


class ODESolution(NamedTuple):
    """``ys`` [len(t), *y0.shape]: the solution at ``t``; ``reg``: the regulariser (0-dim, 0 when none);
    ``nfe``: evaluations of ``func`` (the local step's included); ``n_steps``: accepted steps."""

    ys: Tensor
    reg: Tensor
    nfe: int
    n_steps: int


def _check_method(method) -> _rk.Tableau:
    if method not in _rk.TABLEAUX:
        raise ValueError(f"Invalid method: {method!r} (accepted: one of {_rk.METHODS})")
    return _rk.TABLEAUX[method]


def _check_tols(rtol, atol) -> tuple[float, float]:
    return (check_real("rtol", rtol, lo=0.0, lo_open=True), check_real("atol", atol, lo=0.0, lo_open=True))


def _check_state(name: str, y) -> Tensor:
    if not isinstance(y, Tensor) or not y.is_floating_point() or y.numel() < 1:
        raise ValueError(f"Invalid {name}: {type(y).__name__} (accepted: a non-empty floating-point tensor)")
    return y


@register(kind="ode-solver", paper=PAPER, year=2021, arxiv="2105.03918", code=CODE,
          summary="One embedded Tsit5/DP5 step with a differentiable error ratio and stiffness estimate.")
def rk_step(func, t, y: Tensor, dt, *, method: str = "tsit5", f0: Tensor | None = None, rtol: float = 1e-3,
            atol: float = 1e-6) -> RKStep:
    """One embedded Runge-Kutta step (Pal et al., arXiv:2105.03918).

    ``func(t, y)`` (torchdiffeq's convention, ``t`` a 0-dim tensor) from ``(t, y)`` with step ``dt`` (numbers;
    ``dt`` may be negative). ``method``: ``"tsit5"`` (Tsitouras 5(4)) or ``"dopri5"`` (Dormand-Prince 5(4), the
    same arithmetic as torchdiffeq's ``_runge_kutta_step``). ``f0 = func(t, y)`` when given saves one
    evaluation. Returns :class:`RKStep` (``y1``, ``f1``, ``error_ratio``, ``stiffness``), all differentiable.
    NaN in the state propagates."""
    tab = _check_method(method)
    rtol, atol = _check_tols(rtol, atol)
    y = _check_state("y", y)
    t = check_real("t", float(t) if isinstance(t, Tensor) and t.numel() == 1 else t)
    dt = check_real("dt", float(dt) if isinstance(dt, Tensor) and dt.numel() == 1 else dt)
    if dt == 0.0:
        raise ValueError("Invalid dt: 0.0 (accepted: a finite non-zero number)")
    if f0 is None:
        f0 = func(_rk._time(t, y), y)
    elif not isinstance(f0, Tensor) or f0.shape != y.shape:
        raise ValueError(f"Invalid f0: shape {getattr(f0, 'shape', None)} (accepted: func(t, y), shape "
                         f"{tuple(y.shape)})")
    return _rk.step(func, t, y, dt, f0, tab, rtol, atol)


def _check_times(t) -> list[float]:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"Invalid t: {getattr(t, 'shape', type(t).__name__)} (accepted: a 1-D tensor of >= 2 "
                         f"strictly increasing or strictly decreasing times)")
    ts = [float(v) for v in t.detach().to(torch.float64).cpu()]
    if not all(math.isfinite(v) for v in ts):
        raise ValueError("Invalid t: non-finite times (accepted: finite, strictly monotone)")
    d = [b - a for a, b in zip(ts, ts[1:])]
    if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        raise ValueError("Invalid t: not strictly monotone (accepted: strictly increasing or strictly decreasing)")
    return ts


class _Reversed:
    """torchdiffeq's time reversal: solve s = -t with g(s, y) = -f(-s, y)."""

    def __init__(self, func):
        self.func = func

    def __call__(self, s, y):
        return -self.func(-s, y)


@register(kind="ode-solver", paper=PAPER, year=2021, arxiv="2105.03918", code=CODE,
          summary="Adaptive Tsit5/DP5 solve with discrete adjoint and R_E / R_S (or local) regularisers.")
def solve_ode(func, y0: Tensor, t: Tensor, *, method: str = "tsit5", rtol: float = 1e-3, atol: float = 1e-6,
              first_step: float | None = None, max_steps: int = 10_000, controller: str = "default",
              regularize: str | None = None, generator: torch.Generator | None = None) -> ODESolution:
    """Adaptive embedded Runge-Kutta solve with solver-heuristic regularisers (Pal et al., arXiv:2105.03918).

    Solves ``dy/dt = func(t, y)`` from ``y0`` at ``t[0]`` and returns :class:`ODESolution` (``ys`` at every
    ``t``, ``reg``, ``nfe``, ``n_steps``). ``t``: strictly increasing or decreasing. ``regularize``: ``None``,
    ``"error"`` (:math:`R_E = \\sum_j \\mathrm{EEst}_j |h_j|`), ``"stiffness"`` (:math:`R_S = \\sum_j
    \\tilde\\lambda_j`), ``"local"`` / ``"local-biased"`` (one extra step's :math:`\\mathrm{EEst}\\cdot h` from a
    random point, seed 242: :func:`gradwise.sciml.local_regularizer`; ``generator`` draws it).
    ``controller``: ``"default"`` (steps land on each ``t``) or ``"torchdiffeq"`` (odeint's steps and dense
    output). ``first_step``: the first step size (default: Hairer's rule, one evaluation). More than
    ``max_steps`` attempted steps, or a non-finite state, raise RuntimeError. Gradients flow through the steps
    (discrete adjoint); the step sizes carry none."""
    tab = _check_method(method)
    rtol, atol = _check_tols(rtol, atol)
    y0 = _check_state("y0", y0)
    ts = _check_times(t)
    if controller not in CONTROLLERS:
        raise ValueError(f"Invalid controller: {controller!r} (accepted: one of {CONTROLLERS})")
    if regularize not in REGULARIZERS:
        raise ValueError(f"Invalid regularize: {regularize!r} (accepted: one of {REGULARIZERS})")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"Invalid max_steps: {max_steps!r} (accepted: an int >= 1)")
    if first_step is not None:
        first_step = check_real("first_step", first_step, lo=0.0, lo_open=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Invalid generator: {generator!r} (accepted: a torch.Generator or None)")
    if ts[-1] < ts[0]:
        func, ts = _Reversed(func), [-v for v in ts]
    return _integrate(func, y0, ts, tab, rtol, atol, first_step, max_steps, controller, regularize, generator)


def _integrate(func, y0, ts, tab, rtol, atol, first_step, max_steps, controller, regularize, generator):
    t0, tn = ts[0], ts[-1]
    f = func(_rk._time(t0, y0), y0)
    nfe = 1
    if first_step is None:
        dt = _rk.initial_step(func, t0, y0, f, tab.order - 1, rtol, atol,
                              cap=(tn - t0) if controller == "default" else None)
        nfe += 1
    else:
        dt = first_step
    t_local = None
    if regularize == "local":
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        t_local = t0 + u * (tn - t0)
    y_star = None  # (t1, y(t1), f(t1)) detached, for the local step
    starts = []    # accepted step starts (t, y, f) detached, for "local-biased"
    ys = [y0]
    reg = y0.new_zeros(())
    t, y = t0, y0
    i_out, attempts, accepted = 1, 0, 0
    land = controller == "default"
    while i_out < len(ts):
        if attempts >= max_steps:
            raise RuntimeError(f"solve_ode: max_steps={max_steps} reached at t={t:.6g} before t={ts[-1]:.6g} "
                               f"(raise max_steps, loosen rtol/atol, or check the dynamics)")
        attempts += 1
        h, t1 = dt, t + dt
        if land and t1 >= ts[i_out]:
            t1 = ts[i_out]
            h = t1 - t
        need_k = (not land) or (t_local is not None and y_star is None and t <= t_local <= t1)
        res = _rk.step(func, t, y, h, f, tab, rtol, atol, t1=t1, keep_k=need_k)
        out, k = res if need_k else (res, None)
        nfe += 6
        ratio = float(out.error_ratio.detach())
        if not math.isfinite(ratio):
            raise RuntimeError(f"solve_ode: non-finite error estimate at t={t:.6g} (NaN or inf in the state "
                               f"or in func)")
        if ratio <= 1:
            accepted += 1
            if regularize == "error":
                reg = reg + out.error_ratio * abs(h)
            elif regularize == "stiffness":
                reg = reg + out.stiffness
            elif regularize == "local-biased":
                starts.append((t, y.detach(), f.detach()))
            coeffs = _rk.dense_coeffs(y, out.y1, k, h, tab) if k is not None and not land else None
            if k is not None and t_local is not None and y_star is None and t <= t_local <= t1:
                with torch.no_grad():
                    c = coeffs if coeffs is not None else _rk.dense_coeffs(y, out.y1, k, h, tab)
                    y_star = (t_local, _rk.dense_eval([v.detach() for v in c], t, t1, t_local).detach(), None)
            if land:
                if t1 == ts[i_out]:
                    ys.append(out.y1)
                    i_out += 1
            else:
                while i_out < len(ts) and ts[i_out] <= t1:
                    ys.append(_rk.dense_eval(coeffs, t, t1, ts[i_out]))
                    i_out += 1
            t, y, f = t1, out.y1, out.f1
        dt = _rk.next_step_size(h, ratio, tab.order)
    if regularize in ("local", "local-biased"):
        if regularize == "local-biased":
            j = int(torch.randint(len(starts), (), generator=generator))
            y_star = starts[j]
        t1, ys1, fs1 = y_star
        r, n = _rk.local_step(func, t1, ys1, tn - t0, fs1, tab, rtol, atol)
        reg, nfe = r, nfe + n
    return ODESolution(torch.stack(ys), reg, nfe, accepted)
