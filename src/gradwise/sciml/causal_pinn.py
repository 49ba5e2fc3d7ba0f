r"""Causal training for physics-informed neural networks: temporal weights that make a PINN fit earlier times
before later ones.

Paper: Wang, Sankaran, Perdikaris, "Respecting causality is all you need for training physics-informed neural
networks", arXiv:2203.07404 (2022; CMAME 2024). Authors' code (JAX): github.com/PredictiveIntelligenceLab/CausalPINNs,
``Allen_Cahn/AC.ipynb`` @ 9c13a4c and ``KS/Causal_PINNs_KS.py`` @ 2df3bf6.

**Patent notice.** The authors' README states that the method is patented (University of Pennsylvania) and that
their code is for non-commercial use. This module is an independent implementation (no code of theirs, nor of
PINA, is used) and gradwise's licence grants **no patent rights**: check the patent before commercial use.

**Math.** Split the time domain into :math:`N_t` ordered chunks (or times) and let :math:`L_i` be the mean squared
PDE residual of chunk :math:`i` (``chunk_losses``, ascending time). The causal weights are

.. math:: w_i = \exp\Big(-\epsilon \big(\textstyle\sum_{k<i} L_k + L_0\big)\Big), \qquad i = 1..N_t,

with :math:`L_0` the (scaled) initial-condition loss when given (their KS script, ``1e3 * loss_ics``) and 0 otherwise
(their Allen-Cahn notebook: :math:`w_1 = 1`; their ``M = triu(ones, 1).T`` makes the sum exclusive). The weights
carry no gradient (their ``lax.stop_gradient``) and the residual loss is :math:`\frac{1}{N_t}\sum_i w_i L_i`.
:math:`\epsilon = 0` is the plain PINN loss. A chunk is trained only once the chunks before it have small
residuals, and :math:`\min_i w_i` measures how far along in time the fit is: their KS loop moves to the next
:math:`\epsilon` of ``[1e-2, 1e-1, 1, 10, 100]`` once :math:`\min_i w_i > 0.99` (:class:`CausalEpsilonSchedule`).

The initial-condition loss itself is added by the caller (their scripts add ``100 * loss_ics`` for Allen-Cahn and
``1e3 * loss_ics`` for KS to the causal residual loss); ``initial_loss`` only enters the weights.

Departures: PINA's ``CausalPINN`` (MIT code) sums inclusively, :math:`w_1 = e^{-\epsilon L_1}`; this follows the
authors (exclusive sum). The sum is an exclusive cumulative sum instead of their matrix product (same numbers to
rounding; O(N_t) instead of O(N_t^2)). Golden data: tests/data/causal_pinn_golden.pt, their Allen-Cahn notebook's
model and loss run in JAX float64 (tools/golden/make_causal_pinn_golden.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gradwise._validate import check_real
from gradwise.registry import register

__all__ = ["causal_weights", "causal_loss", "CausalLoss", "CausalEpsilonSchedule"]

PAPER = "Respecting causality is all you need for training physics-informed neural networks"
CODE = "https://github.com/PredictiveIntelligenceLab/CausalPINNs/tree/9c13a4c"
_NOTICE = " Patented method (UPenn; authors' code non-commercial): no patent rights granted."


class CausalLoss(NamedTuple):
    """``loss``: the causally weighted residual loss (0-dim); ``weights``: the detached weights [N_t]."""

    loss: Tensor
    weights: Tensor


def _check_chunks(chunk_losses) -> Tensor:
    if not isinstance(chunk_losses, Tensor) or not chunk_losses.is_floating_point():
        raise ValueError(f"Invalid chunk_losses: {type(chunk_losses).__name__} (accepted: a floating-point tensor "
                         f"[N_t], one residual loss per time chunk in ascending time)")
    if chunk_losses.dim() != 1 or chunk_losses.numel() < 1:
        raise ValueError(f"Invalid chunk_losses: shape {tuple(chunk_losses.shape)} (accepted: 1-D, [N_t] with "
                         f"N_t >= 1)")
    return chunk_losses


def _check_eps(eps) -> float:
    return check_real("eps", eps, lo=0.0)


@register(kind="sciml-objective", paper=PAPER, year=2022, arxiv="2203.07404", code=CODE,
          summary="Causal PINN weights w_i = exp(-eps(sum_{k<i} L_k + L_0)), detached." + _NOTICE)
def causal_weights(chunk_losses: Tensor, eps: float, *, initial_loss: Tensor | float | None = None) -> Tensor:
    """Causal PINN weights (Wang, Sankaran, Perdikaris, arXiv:2203.07404).

    The causal weights :math:`w_i = \\exp(-\\epsilon(\\sum_{k<i} L_k + L_0))` of ``chunk_losses`` [N_t],
    detached (no gradient), in the losses' dtype. ``initial_loss`` is :math:`L_0` (a 0-dim tensor or a number;
    ``None`` means 0, so :math:`w_1 = 1`). ``eps`` >= 0 (0 gives all-ones weights). NaN in a loss propagates
    to the weights after it. Patented method: see the module docstring (no patent rights granted)."""
    losses = _check_chunks(chunk_losses)
    e = _check_eps(eps)
    with torch.no_grad():
        # exclusive sum; the first entry is exactly 0 as in their M @ L_t
        past = torch.cat([losses.new_zeros(1), torch.cumsum(losses.detach()[:-1], 0)])
        if initial_loss is not None:
            if isinstance(initial_loss, Tensor):
                if initial_loss.numel() != 1:
                    raise ValueError(f"Invalid initial_loss: shape {tuple(initial_loss.shape)} (accepted: a number "
                                     f"or a one-element tensor)")
                past = past + initial_loss.detach().reshape(()).to(past.dtype)
            else:
                past = past + check_real("initial_loss", initial_loss, finite=False)
        return torch.exp(-e * past)


@register(kind="sciml-objective", paper=PAPER, year=2022, arxiv="2203.07404", code=CODE,
          summary="Causal PINN residual loss mean(w * L) with detached causal weights." + _NOTICE)
def causal_loss(chunk_losses: Tensor, eps: float, *, initial_loss: Tensor | float | None = None) -> CausalLoss:
    """Causal PINN residual loss (Wang, Sankaran, Perdikaris, arXiv:2203.07404).

    The causally weighted residual loss :math:`\\frac{1}{N_t}\\sum_i w_i L_i` and its weights
    (:func:`causal_weights`). Gradients flow through ``chunk_losses`` only. Add the initial- and boundary-
    condition losses yourself (the authors add ``100 * loss_ics``, Allen-Cahn, or ``1e3 * loss_ics``, KS)."""
    w = causal_weights(chunk_losses, eps, initial_loss=initial_loss)
    return CausalLoss((w * chunk_losses).mean(), w)


@register(kind="sciml-objective", paper=PAPER, year=2022, arxiv="2203.07404", code=CODE,
          summary="The authors' eps annealing: next eps once min causal weight > 0.99." + _NOTICE)
class CausalEpsilonSchedule:
    """Causal PINN epsilon annealing (Wang, Sankaran, Perdikaris, arXiv:2203.07404).

    The authors' causality-parameter annealing (their KS script): train with ``eps[0]`` until
    :math:`\\min_i w_i >` ``min_weight``, then move to the next value; :attr:`done` once the last value's
    criterion is met.

    ``update(weights)`` compares on the host (one sync per call): call it every few hundred steps, as their
    loop checks every 100. It returns True when the schedule moved on (or finished). :attr:`eps` stays at
    the last value once done. NaN weights never meet the criterion."""

    def __init__(self, eps: Sequence[float] = (1e-2, 1e-1, 1.0, 10.0, 100.0), *, min_weight: float = 0.99):
        if isinstance(eps, (str, bytes)) or not isinstance(eps, Sequence) or len(eps) < 1:
            raise ValueError(f"Invalid eps: {eps!r} (accepted: a non-empty sequence of numbers >= 0)")
        self._values = tuple(check_real(f"eps[{i}]", e, lo=0.0) for i, e in enumerate(eps))
        self.min_weight = check_real("min_weight", min_weight, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self._index = 0
        self._done = False

    @property
    def eps(self) -> float:
        return self._values[self._index]

    @property
    def stage(self) -> int:
        """The index of the current value in ``eps``."""
        return self._index

    @property
    def done(self) -> bool:
        return self._done

    def update(self, weights: Tensor) -> bool:
        if not isinstance(weights, Tensor) or weights.dim() != 1 or weights.numel() < 1:
            raise ValueError(f"Invalid weights: {weights!r:.60} (accepted: the 1-D causal weights [N_t])")
        if self._done:
            return False
        w_min = float(weights.detach().min())
        if math.isnan(w_min) or not w_min > self.min_weight:
            return False
        if self._index + 1 < len(self._values):
            self._index += 1
        else:
            self._done = True
        return True

    def state_dict(self) -> dict:
        return {"index": self._index, "done": self._done}

    def load_state_dict(self, state: dict) -> None:
        index = int(state["index"])
        if not 0 <= index < len(self._values):
            raise ValueError(f"Invalid state['index']: {index} (accepted: 0..{len(self._values) - 1})")
        self._index, self._done = index, bool(state["done"])

    def __repr__(self) -> str:
        return (f"CausalEpsilonSchedule(eps={list(self._values)}, min_weight={self.min_weight}, "
                f"stage={self._index}, done={self._done})")
