r"""The Multi-Power Law of Luo et al. (ICLR 2025): the loss curve of any learning-rate schedule.

Paper: Kairong Luo, Haodong Wen, Shengding Hu, Zhenbo Sun, Zhiyuan Liu, Maosong Sun, Kaifeng Lyu, Wenguang Chen,
"A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules", ICLR 2025, arXiv 2503.12811.
Authors' code: github.com/thu-yao-01-luo/MultiPowerLaw @ 8da9f19 (``src/models.py``, ``src/evaluation.py``,
``src/fitting.py``, ``src/config.py``).

The law (the paper's Eq. for the MPL, as its abstract page, its README and its code state it)::

    L(t) = L0 + A * (S1(t) + S_W) ** (-alpha) - LD(t)
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k ** (-gamma) * S_k(t))
    G(x)  = 1 - (C * x + 1) ** (-beta)
    S_k(t) = sum_{tau=k..t} eta_tau,     S1(t) = S_1(t),     S_W = the warm-up's LR sum

Where the stored text could be read (the paper's opening page, the README and a summary page give the
formula above; the paper's method and appendix sections could not be read in the search tool, which returns
only a page's opening), each symbol was checked against the authors' code, whose conventions are the default:

- ``lrs`` is the whole schedule from the first step, warm-up included, so ``S1(t) + S_W`` is the sum of
  ``lrs`` up to step ``t``;
- the loss-drop sum runs over every step after the first (their ``lr_gap[1:s+1]``): warm-up rises enter it
  as negative drops, and the first step has no drop (``eta_0 = eta_1``). ``warmup_steps=W`` gives the
  paper's reading instead (``t`` counted after a warm-up of ``W`` steps, whose LRs enter only ``S_W``):
  drops at steps ``<= W`` are left out;
- a step whose LR is exactly 0 has ``eta_k^-gamma = inf``: its drop counts fully (``G = 1``) once a later LR
  is positive, and not at all (``G = 0``) while ``S_k(t) = 0`` (the limit for ``gamma < 1``); their code gives
  NaN there.

Cost of :meth:`MultiPowerLaw.predict`: ``O(n_steps * n_drops)`` for ``n_steps`` requested steps and
``n_drops`` steps where the LR changes (a WSD or step schedule has few; a cosine has ``T``), in numpy chunks
of about 4M entries: about 0.2 us an entry, so a 5000-step cosine at every step took 5 s on one (shared)
core here, and a 20k-step cosine at every step takes over a minute; ask for every 10th step to pay a tenth.

Fit (the authors' ``main.py`` pipeline, :meth:`MultiPowerLaw.fit`): (1) their ``initialize_params``: a grid of
135 starts (``L0`` around the lowest loss, ``A``/``alpha`` around a log-log regression of
``loss - min + 0.01`` on ``S1``, ``B`` in 100, 550, 1000), each refined by L-BFGS-B (numerical gradient,
their tolerances) on the surrogate ``L0 + A*S1^-alpha - B*(peak - eta_t)``; (2) their ``mpl_adam_fit``: from
the best start with ``C = 1, beta = 0.5, gamma = 0.5``, ``torch.optim.AdamW`` (lr 5e-2 for ``L0, A, B, C``,
5e-3 for ``alpha, beta, gamma``, torch's defaults otherwise, weight decay 0.01 included) on the sum over
curves of a Huber loss (delta 1e-3) of ``log(loss) - log(max(pred, 1e-10))``, at most 200 steps, stopping
after 20 steps without improvement or at a gradient norm below 1e-5; the lowest loss seen wins.

Checked against: golden data from their code (tests/data/multi_power_law_golden.pt,
tools/golden/make_multi_power_law_golden.py): their ``evaluate_mpl`` predictions on five schedules (constant,
cosine, two WSDs, a two-stage step) to 1e-12 relative, their ``MPL.forward`` objective and its gradient to
1e-10, and their fit (both stages) on three curves.

Departures from their code: (1) the surrogate of stage 1 uses the highest LR of the fitted curves as the
peak (their code writes 3e-4, the peak of their runs); (2) the fit returns the parameters at which the lowest
objective was evaluated (their loop records the parameters after the AdamW step that followed it, one step
later); (3) losses stay float64 (theirs are cast to float32); (4) LR-0 steps as above; (5) prediction is
vectorized over steps (their loop is per step); the numbers agree to rounding; (6) where every start of stage 1
reaches a negative prediction (their objective is then NaN and their fit has no start), stage 1 is run again
with the prediction floored at 1e-10, as their stage 2 floors it (seen on short, noisy curves).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradwise._validate import check_int, check_nonneg, check_positive, check_real
from gradwise.registry import register
from gradwise.schedules._curves import as_lrs as _as_lrs
from gradwise.schedules._curves import read_curves
from gradwise.schedules._curves import steps_index as _steps_index

__all__ = ["MultiPowerLaw"]

PAPER = "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules"
PARAM_NAMES = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
_CHUNK = 1 << 22  # entries of one (steps x drops) block


def _drops(lrs: np.ndarray, warmup_steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """0-based indices ``j`` of the steps with a drop ``lrs[j-1] - lrs[j] != 0`` that the sum counts,
    the drops, and the cumulative LR sum before each such step."""
    d = np.zeros_like(lrs)
    d[1:] = lrs[:-1] - lrs[1:]
    d[:max(1, warmup_steps)] = 0.0
    idx = np.flatnonzero(d)
    csum = np.cumsum(lrs)
    return idx, d[idx], csum[idx - 1]


def _g_arg(eta: np.ndarray, s: np.ndarray, gamma: float) -> np.ndarray:
    """``eta^-gamma * S`` with the LR-0 convention (inf where S > 0, 0 where S = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = eta ** (-gamma) * s
    zero = eta == 0
    if np.any(zero):
        x = np.where(zero, np.where(s > 0, np.inf, 0.0), x)
    return x


@register(kind="schedule", paper=PAPER, year=2025, arxiv="2503.12811",
          code="https://github.com/thu-yao-01-luo/MultiPowerLaw", seed=False,
          summary="Multi-Power Law L(t) = L0 + A*(S1+S_W)^-alpha - LD(t), a power-law loss drop per LR decrease: "
                  "fit on a few loss curves, predict the curve of any LR schedule")
class MultiPowerLaw:
    r"""Fit and apply the Multi-Power Law (Luo et al. 2025, arXiv 2503.12811); see the module docstring.

    Same interface as :class:`~gradwise.schedules.AnnealingLaw`: :meth:`fit` takes one curve
    ``(lrs, steps, losses)`` or a list (``lrs`` the whole per-step schedule from step 1, warm-up included;
    ``steps`` the 1-based steps where ``losses`` were measured); :meth:`predict` returns the predicted loss
    after each step of a schedule (float64); :attr:`params` / :meth:`set_params` hold
    ``L0, A, alpha, B, C, beta, gamma``. ``warmup_steps`` (0: the authors' code) leaves the first
    ``warmup_steps`` steps out of the loss-drop sum (the paper's ``S_W`` reading).

    Example::

        law = MultiPowerLaw().set_params(2.375, 0.654, 0.429, 523.4, 2.025, 0.594, 0.635)  # their 400M fit
        curve = law.predict(lrs)                 # lrs: per-step LRs of any schedule
        law = MultiPowerLaw().fit([(cos_lrs, steps, cos_loss), (const_lrs, steps, const_loss)])
    """

    def __init__(self, *, warmup_steps: int = 0) -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self._params: tuple[float, ...] | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def params(self) -> dict[str, float]:
        """The fitted ``{"L0", "A", "alpha", "B", "C", "beta", "gamma"}`` (raises before fit/set_params)."""
        if self._params is None:
            raise RuntimeError("MultiPowerLaw has no parameters yet: call fit() or set_params() first")
        return dict(zip(PARAM_NAMES, self._params))

    def set_params(self, L0: float, A: float, alpha: float, B: float, C: float, beta: float,
                   gamma: float) -> MultiPowerLaw:
        """Set the seven parameters by hand (e.g. the authors' ``PARAMS``); returns ``self``."""
        self._params = (check_real("L0", L0), check_nonneg("A", A), check_positive("alpha", alpha),
                        check_nonneg("B", B), check_nonneg("C", C), check_positive("beta", beta),
                        check_real("gamma", gamma))
        return self

    # ------------------------------------------------------------------ law
    def _prepare(self, lrs: Any, steps: Any, name: str = "lrs") -> tuple[np.ndarray, np.ndarray]:
        arr = _as_lrs(lrs, name)
        idx = np.arange(arr.size) if steps is None else _steps_index(steps, arr.size)
        if np.any(np.cumsum(arr)[idx] <= 0):
            raise ValueError(f"Invalid {name}: the LR sum S1 + S_W is 0 at a requested step "
                             f"(accepted: some LR > 0 at or before every step used)")
        return arr, idx

    def _predict_np(self, arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
        L0, A, alpha, B, C, beta, gamma = self.params.values()
        csum = np.cumsum(arr)
        s1 = csum[idx]
        j, d, before = _drops(arr, self.warmup_steps)
        ld = np.zeros(idx.size)
        if j.size:
            eta = arr[j]
            rows = max(1, _CHUNK // j.size)
            for lo in range(0, idx.size, rows):
                t = idx[lo:lo + rows]
                s = np.maximum(csum[t][:, None] - before[None, :], 0.0)  # < 0 only where masked out
                x = _g_arg(eta[None, :], s, gamma)
                g = 1.0 - (C * x + 1.0) ** (-beta)
                ld[lo:lo + rows] = np.where(j[None, :] <= t[:, None], g, 0.0) @ d
        return L0 + A * s1 ** (-alpha) - B * ld

    def predict(self, lrs: Any, steps: Any = None) -> torch.Tensor:
        """The predicted loss after each step of ``lrs`` (or at the 1-based ``steps``), float64."""
        self.params  # noqa: B018  (raises before fit/set_params)
        arr, idx = self._prepare(lrs, steps)
        return torch.from_numpy(self._predict_np(arr, idx))

    # ------------------------------------------------------------------ fit
    def _curves(self, curves: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        read = read_curves(curves, lambda lrs, steps, name: ((ai := self._prepare(lrs, steps, name)), ai[1]))
        out = [(arr, idx, y) for (arr, idx), y in read]
        if sum(c[2].size for c in out) < len(PARAM_NAMES):
            raise ValueError(f"Invalid curves: {sum(c[2].size for c in out)} loss points (accepted: at least 7, "
                             f"the law has 7 parameters)")
        return out

    def fit(self, curves: Any) -> MultiPowerLaw:
        """Fit the seven parameters on one curve ``(lrs, steps, losses)`` or a list of them, with the
        authors' two-stage procedure (module docstring); returns ``self``. ``fit_init_`` holds the
        stage-1 start ``(L0, A, alpha, B)`` and ``fit_loss_`` the final objective."""
        data = self._curves(curves)
        init = _initialize(data)
        start = (*init, 1.0, 0.5, 0.5)
        best, best_loss = _adamw_fit(data, start, self.warmup_steps)
        self.fit_init_ = tuple(float(v) for v in init)
        self.fit_loss_ = best_loss
        self._params = tuple(best)
        return self


# ---------------------------------------------------------------------- the authors' fitting procedure

def _huber(r: np.ndarray, delta: float = 1e-3) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn's dependency; only a speed matter
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(1)


def _initialize(data: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Stage 1, their ``initialize_params``: L-BFGS-B from a grid of starts on a linear-drop surrogate."""
    from itertools import product

    from scipy.optimize import minimize
    from scipy.stats import linregress

    min_loss = min(y.min() for _, _, y in data)
    log_y = np.concatenate([np.log(y - min_loss + 0.01) for _, _, y in data])
    log_x = np.concatenate([np.log(np.cumsum(arr)[idx]) for arr, idx, _ in data])
    slope, intercept, *_ = linregress(log_x, log_y)
    peak = max(arr.max() for arr, _, _ in data)
    s1s = [np.cumsum(arr)[idx] for arr, idx, _ in data]
    etas = [arr[idx] for arr, idx, _ in data]

    floor = None  # their objective: log of a negative prediction is NaN, and such a start is skipped

    def loss_fn0(p: np.ndarray) -> float:
        L0, A, alpha, B = p
        total = 0.0
        with np.errstate(all="ignore"):
            for s1, eta, (_, _, y) in zip(s1s, etas, data):
                pred = L0 + A * s1 ** (-alpha) - B * (peak - eta)
                if floor is not None:
                    pred = np.maximum(pred, floor)
                total += _huber(np.log(y) - np.log(pred)).sum()
        return total

    grid = product(np.linspace(min_loss - 0.2, min_loss + 0.2, 5),
                   np.linspace(np.exp(intercept) - 0.1, np.exp(intercept) + 0.1, 3),
                   np.linspace(-slope - 0.1, -slope + 0.1, 3), np.linspace(100, 1000, 3))
    grid = list(grid)

    def search() -> tuple[np.ndarray | None, float]:
        best, best_loss = None, float("inf")
        for p0 in grid:
            res = minimize(loss_fn0, p0, method="L-BFGS-B", bounds=[(0, np.inf)] * 4,
                           options={"maxiter": 100000, "ftol": 1e-9, "gtol": 1e-6, "eps": 1e-8})
            if res.fun < best_loss:
                best, best_loss = res.x, res.fun
        return best, best_loss

    with _one_blas_thread():  # 4 parameters: BLAS threads only contend (3x slower on 2 shared cores)
        best, _ = search()
        if best is None:
            # every start reached a negative prediction (a short or noisy curve): where their code stops with
            # nothing, retry with the prediction floored at 1e-10, as their second stage floors it
            floor = 1e-10
            best, _ = search()
    if best is None:
        raise RuntimeError("MultiPowerLaw.fit: no start of the initialization gave a finite objective")
    return np.asarray(best, dtype=np.float64)


def _torch_terms(data, warmup_steps: int, log_dtype: torch.dtype = torch.float64) -> list[dict[str, torch.Tensor]]:
    """Per curve: S1 at the steps, and the (steps x drops) matrices the loss-drop sum needs."""
    out = []
    for arr, idx, y in data:
        csum = np.cumsum(arr)
        j, d, before = _drops(arr, warmup_steps)
        s = csum[idx][:, None] - before[None, :]
        mask = j[None, :] <= idx[:, None]
        eta = arr[j]
        # the LR-0 convention of _g_arg, without infinities in the graph: eta^-gamma * S -> G = 1 or 0
        zero = (eta == 0)[None, :]
        out.append({"s1": torch.from_numpy(csum[idx]), "log_y": torch.log(torch.from_numpy(y).to(log_dtype)),
                    "s": torch.from_numpy(np.where(mask & ~zero, s, 1.0)),
                    "eta": torch.from_numpy(np.where(eta == 0, 1.0, eta)),
                    "d": torch.from_numpy(d),
                    "mask": torch.from_numpy((mask & ~zero).astype(np.float64)),
                    "full": torch.from_numpy((mask & zero & (s > 0)).astype(np.float64))})
    return out


def _objective(p: list[torch.Tensor], terms: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Their ``MPL.forward`` summed over curves: Huber (delta 1e-3) of log(loss) - log(max(pred, 1e-10))."""
    L0, A, alpha, B, C, beta, gamma = p
    total = torch.zeros((), dtype=torch.float64)
    for t in terms:
        x = t["eta"] ** (-gamma) * t["s"]
        g = (1 - (1 + C * x) ** (-beta)) * t["mask"] + t["full"]
        ld = g @ t["d"]
        pred = L0 + A * t["s1"] ** (-alpha) - B * ld
        r = t["log_y"] - torch.log(pred.clamp(min=1e-10))
        total = total + torch.where(r.abs() < 1e-3, 0.5 * r ** 2, 1e-3 * (r.abs() - 0.5e-3)).sum()
    return total


def _adamw_fit(data, start, warmup_steps: int, *, max_steps: int = 200, patience: int = 20,
               grad_norm_thr: float = 1e-5, loss_thr: float = 0.0, params_after_step: bool = False,
               log_dtype: torch.dtype = torch.float64) -> tuple[list[float], float]:
    """Stage 2, their ``mpl_adam_fit``. For the golden test, ``params_after_step=True`` reproduces their
    bookkeeping (the parameters recorded with the lowest loss are those after the following AdamW step) and
    ``log_dtype=torch.float32`` their float32 log losses."""
    terms = _torch_terms(data, warmup_steps, log_dtype)
    p = [torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for v in start]
    opt = torch.optim.AdamW([{"params": [p[0], p[1], p[3], p[4]], "lr": 5e-2},
                             {"params": [p[2], p[5], p[6]], "lr": 5e-3}])
    best, best_loss = [float(v) for v in start], float("inf")
    min_loss, no_improve = float("inf"), 0
    for step in range(max_steps):
        opt.zero_grad()
        total = _objective(p, terms)
        total.backward()
        evaluated = [float(v.detach()) for v in p]
        opt.step()
        value = float(total.detach())
        if value < min_loss - loss_thr:
            min_loss, no_improve = value, 0
        else:
            no_improve += 1
        if step > patience and no_improve >= patience:
            break
        grad_norm = float(torch.stack([q.grad for q in p]).norm())
        if grad_norm < grad_norm_thr:
            break
        if value < best_loss:
            best_loss = value
            best = [float(v.detach()) for v in p] if params_after_step else evaluated
    return best, best_loss
