r"""The loss-curve law with learning-rate annealing of Tissue, Wang and Wang (arXiv 2408.11029, 2024).

Paper: Howe Tissue, Venus Wang, Lu Wang, "Scaling Law with Learning Rate Annealing", arXiv 2408.11029.

The law (the abstract's equation; S1 and S2 as gradwise's issue 11 spells them out) predicts the
validation loss at every step ``s`` of a run from its learning-rate schedule alone::

    L(s) = L0 + A * S1(s) ** (-alpha) - C * S2(s)

    S1(s) = sum_{i=1..s} eta_i                                  (forward area: area under the LR curve)
    S2(s) = sum_{i=1..s} m_i,   m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)   (annealing area, momentum form)

Once ``(L0, A, alpha, C)`` are fitted on one or two curves the law predicts the curve of any other
schedule (WSD, multi-step, re-warmup) with the same model, data, batch size and peak LR.

What was checked, and what could not be (re-checked in the session of the schedules CLI): the stored copies
of the paper (arXiv HTML v1 and v2, the Markdown mirror hf-mirror.hancat.work/papers/2408.11029.md) come back
from the search tool only as their opening ~2,000 characters (title, table of contents, abstract), whatever
the query; §3 (the definitions of S1 and S2, the decay factor ``lam`` and the value the paper recommends, the
treatment of warm-up in S1, the ``eta_0`` convention) and the fitting details (Huber delta, optimizer,
bounds, starts, log space) could not be read. Nothing read contradicts the formulas above; the abstract and
the NeurIPS 2025 reviews confirm the law's form (``L0 + A*S1^-alpha - C*S2``, S1 the area under the LR
curve, S2 the LR annealing area). The abstract (v2) says the authors share code on AlphaXiv/HuggingFace, and
a NeurIPS reproducibility summary lists no open-source code; no repository of theirs is in the code index
(third-party reproductions only, not used), so there is no golden data.

Choices of this library where the text was not readable (see :class:`AnnealingLaw`): ``lam`` 0.999 (the
issue's value); the ``eta_0`` of the first step is ``lrs[0]`` unless ``initial_lr`` is given; warm-up
steps count in S1 like any other (a rising LR makes negative momentum contributions); the fit (Huber loss on
log losses, L-BFGS-B, the starting grid) is as the issue describes it, its delta and starts being this
library's.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gradwise._validate import check_nonneg, check_positive, check_real
from gradwise.registry import register
from gradwise.schedules._curves import as_lrs as _as_lrs
from gradwise.schedules._curves import read_curves
from gradwise.schedules._curves import steps_index as _steps_index

__all__ = ["annealing_areas", "AnnealingLaw"]

PAPER = "Scaling Law with Learning Rate Annealing"


def _areas_np(lrs: np.ndarray, decay: float, initial_lr: float | None) -> tuple[np.ndarray, np.ndarray]:
    s1 = np.cumsum(lrs)
    prev = np.empty_like(lrs)
    prev[0] = lrs[0] if initial_lr is None else initial_lr
    prev[1:] = lrs[:-1]
    drops = prev - lrs
    m = np.empty_like(lrs)
    acc = 0.0
    for i, d in enumerate(drops):  # a first-order recursion: a plain loop is exact and fast enough
        acc = decay * acc + d
        m[i] = acc
    return s1, np.cumsum(m)


def annealing_areas(lrs: Any, decay: float = 0.999, *, initial_lr: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The forward area ``S1`` and the annealing area ``S2`` after each step (float64 tensors).

    ``lrs[i]`` is the learning rate used at step ``i + 1``; entry ``i`` of each output is the area
    after that step: ``S1[i] = lrs[0] + ... + lrs[i]`` and ``S2[i] = m_1 + ... + m_{i+1}`` with
    ``m_k = decay * m_{k-1} + (eta_{k-1} - eta_k)``, ``m_0 = 0``.

    First step: ``eta_0`` (the LR "before" step 1) is ``initial_lr``; left as ``None`` it is
    ``lrs[0]``, so the first step brings no drop (``m_1 = 0``) and a constant schedule has ``S2 = 0``
    everywhere. Pass the peak LR as ``initial_lr`` when ``lrs`` starts after a drop has already begun.
    The LRs are used as given (no normalization by the peak): the fitted ``A`` and ``C`` carry the
    units. A rising LR (warmup, re-warmup) makes negative ``m`` contributions, as the formula says.
    """
    decay = check_real("decay", decay, 0.0, 1.0, hi_open=True)
    arr = _as_lrs(lrs)
    if initial_lr is not None:
        initial_lr = check_real("initial_lr", initial_lr, 0.0)
    s1, s2 = _areas_np(arr, decay, initial_lr)
    return torch.from_numpy(s1), torch.from_numpy(s2)


@register(kind="schedule", paper=PAPER, year=2024, arxiv="2408.11029", code=None,
          summary="LR-annealing loss law L(s) = L0 + A*S1^-alpha - C*S2 (forward area, momentum annealing "
                  "area): fit on one or two curves, predict the loss curve of any LR schedule")
class AnnealingLaw:
    r"""Fit and apply ``L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)`` (Tissue et al. 2024, arXiv 2408.11029).

    ``S1`` and ``S2`` are :func:`annealing_areas` of the schedule (decay factor ``decay``, 0.999 by
    default). :meth:`fit` takes one or more curves ``(lrs, steps, losses)`` (``lrs`` the full per-step
    schedule from step 1, ``steps`` the 1-based steps where ``losses`` were measured) and fits the four
    parameters jointly on all of them; :meth:`predict` returns the predicted loss curve of any schedule.

    Fit: as the issue describes the paper's (unverified against its text: δ is this library's choice),
    a Huber loss (``huber_delta``, 1e-3 by default) on the residuals ``log(predicted) - log(observed)``, minimized with
    ``scipy.optimize.minimize(method="L-BFGS-B")`` under bounds (``L0, A, C >= 0``, ``0 < alpha <= 5``)
    from several starts; the best end point wins. The starts here are a grid of ``alpha`` values, each
    completed by the linear least-squares fit of ``(L0, A, C)`` at that ``alpha`` (the law is linear in
    them), plus those starts with ``L0`` lowered; this grid is this library's choice, not the paper's.

    Checked against: the paper's abstract and law only (its §3 and fitting details could not be read in
    the stored text; see the module docstring), so the first-step convention of :func:`annealing_areas`
    is this library's (no drop at step 1; ``initial_lr`` overrides). No code of the authors was found,
    so there is no golden data: the tests check the areas against a hand loop and the fit against curves
    generated by the law itself.
    """

    def __init__(self, decay: float = 0.999, *, huber_delta: float = 1e-3, max_alpha: float = 5.0) -> None:
        self.decay = check_real("decay", decay, 0.0, 1.0, hi_open=True)
        self.huber_delta = check_positive("huber_delta", huber_delta)
        self.max_alpha = check_positive("max_alpha", max_alpha)
        self._params: tuple[float, float, float, float] | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict[str, float]:
        """The fitted ``{"L0", "A", "alpha", "C"}`` (raises before :meth:`fit` or :meth:`set_params`)."""
        if self._params is None:
            raise RuntimeError("AnnealingLaw has no parameters yet: call fit() or set_params() first")
        return dict(zip(("L0", "A", "alpha", "C"), self._params))

    def set_params(self, L0: float, A: float, alpha: float, C: float) -> AnnealingLaw:
        """Set the law's parameters by hand (e.g. the paper's reported values); returns ``self``."""
        self._params = (check_real("L0", L0), check_nonneg("A", A), check_positive("alpha", alpha),
                        check_nonneg("C", C))
        return self

    # ------------------------------------------------------------------ law
    def _curve(self, lrs: Any, steps: Any, name: str = "lrs") -> tuple[np.ndarray, np.ndarray]:
        arr = _as_lrs(lrs, name)
        s1, s2 = _areas_np(arr, self.decay, None)
        idx = np.arange(arr.size) if steps is None else _steps_index(steps, arr.size)
        s1, s2 = s1[idx], s2[idx]
        if np.any(s1 <= 0):
            raise ValueError(f"Invalid {name}: the forward area S1 is 0 at a requested step "
                             f"(accepted: some LR > 0 at or before every step used)")
        return s1, s2

    @staticmethod
    def _law(p: Sequence[float], s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        L0, A, alpha, C = p
        return L0 + A * s1 ** (-alpha) - C * s2

    def predict(self, lrs: Any, steps: Any = None) -> torch.Tensor:
        """The predicted loss after each step of ``lrs`` (or at the 1-based ``steps``), float64."""
        p = tuple(self.params.values())
        s1, s2 = self._curve(lrs, steps)
        return torch.from_numpy(self._law(p, s1, s2))

    # ------------------------------------------------------------------ fit
    def fit(self, curves: Any) -> AnnealingLaw:
        """Fit ``(L0, A, alpha, C)`` on one curve ``(lrs, steps, losses)`` or a list of them; returns self."""
        from scipy.optimize import minimize

        read = read_curves(curves, lambda lrs, steps, name: ((s12 := self._curve(lrs, steps, name)), s12[0]))
        s1s = [s1 for (s1, _), _ in read]
        s2s = [s2 for (_, s2), _ in read]
        ys = [y for _, y in read]
        s1, s2, y = np.concatenate(s1s), np.concatenate(s2s), np.concatenate(ys)
        if y.size < 4:
            raise ValueError(f"Invalid curves: {y.size} loss points (accepted: at least 4, the law has 4 "
                             f"parameters)")
        log_y, delta = np.log(y), self.huber_delta
        eps = 1e-12

        def objective(p: np.ndarray) -> tuple[float, np.ndarray]:
            L0, A, alpha, C = p
            x = s1 ** (-alpha)
            pred = L0 + A * x - C * s2
            bad = pred <= eps
            pred_c = np.where(bad, eps, pred)
            r = np.log(pred_c) - log_y
            absr = np.abs(r)
            h = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
            dh = np.clip(r, -delta, delta) / pred_c
            dh = np.where(bad, 0.0, dh)
            grad = np.array([dh.sum(), (dh * x).sum(), (dh * (-A * x * np.log(s1))).sum(), (dh * -s2).sum()])
            scale = 1.0 / (delta * y.size)  # O(1) objective, so L-BFGS-B's tolerances mean something
            return float(h.sum() * scale), grad * scale

        bounds = [(0.0, None), (0.0, None), (1e-6, self.max_alpha), (0.0, None)]
        best = None
        for p0 in self._starts(s1, s2, y):
            res = minimize(objective, p0, jac=True, method="L-BFGS-B", bounds=bounds,
                           options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
            if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise RuntimeError("AnnealingLaw.fit: no start converged to finite parameters")
        self._params = tuple(float(v) for v in best.x)  # type: ignore[assignment]
        self.fit_result_ = best
        return self

    def _starts(self, s1: np.ndarray, s2: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        starts = []
        for alpha in (0.1, 0.3, 0.5, 0.8, 1.2, 2.0):
            alpha = min(alpha, self.max_alpha)
            X = np.stack([np.ones_like(s1), s1 ** (-alpha), -s2], axis=1)
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            L0, A, C = (max(float(c), 0.0) for c in coef)
            for l0 in (L0, 0.5 * L0):
                starts.append(np.array([l0, A, alpha, C]))
        return starts
