r"""Local regularisation of neural ODEs: the solver's error estimate at one random time point instead of summed
over the whole trajectory.

Paper: Pal, Edelman, Rackauckas, "Locally Regularized Neural Differential Equations: Some Black Boxes Were Meant
to Remain Closed!", ICML 2023, arXiv:2303.02262. Authors' code (Julia): github.com/avik-pal/LocalRegNeuralDE.jl
@ 12a261e, ``src/layers/neural_ode.jl`` (the sampling, ``NeuralODE{:unbiased}`` / ``{:biased}``) and
``src/perform_step.jl`` (one Tsit5 step returning ``EEst * dt``).

**Math.** Solve as usual (any sensitivity method), draw :math:`t_1`, build a fresh integrator at
:math:`(t_1, y(t_1))` outside AD, let it choose its first step :math:`h` (Hairer's rule, at most
:math:`|t_N - t_0|`) and take one step: :math:`R = \mathrm{EEst}(t_1)\,h`, differentiable in the parameters
through stages 2..7 (the state :math:`y(t_1)`, the first stage and :math:`h` carry no gradient, as in their
``@non_differentiable _get_ode_integrator``). Unbiased (``"local"``): :math:`t_1 \sim U(t_0, t_N)`, the state
from the solver's dense output. Biased (``"local-biased"``): :math:`t_1` drawn uniformly from the solver's
accepted step times. Use it through :func:`gradwise.sciml.solve_ode` (``regularize="local"`` /
``"local-biased"``) or call :func:`local_regularizer` on a solution from any solver (e.g. torchdiffeq's
adjoint).

Departures: their step runs at time :math:`t_0` from :math:`y(t_1)` (their integrator's ``tspan`` starts at
:math:`t_0`); here at :math:`t_1` (the same for autonomous dynamics). Their biased draw includes :math:`t_N`;
here only step starts (a step from :math:`t_N` leaves the interval). Their returned NFE adds the whole solve's
count twice (``6 + sol.destats.nf``); here the extra step's own evaluations are counted.
"""
from __future__ import annotations

from torch import Tensor

from gradwise._validate import check_real
from gradwise.registry import register
from gradwise.sciml import _rk

__all__ = ["local_regularizer"]

PAPER = ("Locally Regularized Neural Differential Equations: Some Black Boxes Were Meant to Remain Closed!")
CODE = "https://github.com/avik-pal/LocalRegNeuralDE.jl/tree/12a261e"


@register(kind="sciml-objective", paper=PAPER, year=2023, arxiv="2303.02262", code=CODE,
          summary="Local regulariser EEst*dt of one solver step from y(t1), t1 random (unbiased or biased).")
def local_regularizer(func, t1, y1: Tensor, *, span, f0: Tensor | None = None, method: str = "tsit5",
                      rtol: float = 1e-3, atol: float = 1e-6) -> tuple[Tensor, int]:
    """Local solver-heuristic regulariser (Pal, Edelman, Rackauckas, arXiv:2303.02262).

    One embedded step of ``method`` from the point ``(t1, y1)`` of a solution (``y1`` is detached), its size
    chosen as a fresh integrator would (Hairer's rule, capped at ``span`` = :math:`|t_N - t_0|`). Returns
    ``(EEst * dt, nfe)``: a 0-dim tensor carrying the gradient of ``func``'s parameters, and the evaluations
    used. ``f0 = func(t1, y1)`` when known saves one."""
    if method not in _rk.TABLEAUX:
        raise ValueError(f"Invalid method: {method!r} (accepted: one of {_rk.METHODS})")
    rtol = check_real("rtol", rtol, lo=0.0, lo_open=True)
    atol = check_real("atol", atol, lo=0.0, lo_open=True)
    span = check_real("span", span, lo=0.0, lo_open=True)
    t1 = check_real("t1", float(t1) if isinstance(t1, Tensor) and t1.numel() == 1 else t1)
    if not isinstance(y1, Tensor) or not y1.is_floating_point() or y1.numel() < 1:
        raise ValueError(f"Invalid y1: {type(y1).__name__} (accepted: a non-empty floating-point tensor)")
    if f0 is not None and (not isinstance(f0, Tensor) or f0.shape != y1.shape):
        raise ValueError(f"Invalid f0: shape {getattr(f0, 'shape', None)} (accepted: func(t1, y1), shape "
                         f"{tuple(y1.shape)})")
    return _rk.local_step(func, t1, y1, span, f0, _rk.TABLEAUX[method], rtol, atol)
