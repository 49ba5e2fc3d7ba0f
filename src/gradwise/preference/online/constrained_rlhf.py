"""Constrained RLHF (Moskovitz et al., 2023): Lagrange multipliers that weight component reward models
(:class:`LagrangeMultipliers`) and the Nelder-Mead search for their thresholds
(:func:`nelder_mead_thresholds`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_positive, check_real
from gradwise.registry import register

__all__ = ["LagrangeMultipliers", "nelder_mead_thresholds"]

_PAPER = "Confronting Reward Model Overoptimization with Constrained RLHF"
_CODE = "https://github.com/tedmoskovitz/ConstrainedRL4LMs@11ac8fe"
_SQUASH = ("sigmoid", "tanh", None)


def _check_matrix(name: str, t: Any, n: int) -> Tensor:
    if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() != 2 or t.shape[0] < 1 or t.shape[1] != n:
        got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"Invalid {name}: expected a floating-point tensor [B, N] with N = {n} "
                         f"(one column per threshold) and B >= 1, got {got}")
    return t


@register(kind="preference", paper=_PAPER, year=2023, arxiv="2310.04373", code=_CODE,
          summary="Constrained RLHF: Lagrange multipliers as dynamic weights of component reward models "
                  "(sigmoid/tanh-squashed or plain), SGD-momentum dual ascent on the constraint violations")
class LagrangeMultipliers:
    r"""Lagrange multipliers weighting N component reward models against a task reward (constrained RLHF).

    Paper: Moskovitz, Singh, Strouse, Sandholm, Salakhutdinov, Dragan, McAleer, "Confronting Reward Model
    Overoptimization with Constrained RLHF", ICLR 2024, arXiv 2310.04373. Authors' code:
    tedmoskovitz/ConstrainedRL4LMs @11ac8fe, ``rl4lms/algorithms/constrained_ppo/constrained_ppo.py``
    (``ConstrainedPPO.__init__`` and ``train``).

    The problem: keep each component reward's return ``J_i`` at its proxy point ``theta_i`` (beyond it,
    more reward means worse human ratings) while maximising a task reward (the authors: the KL penalty
    ``-KL(pi || pi_0)``). The Lagrangian relaxation gives dynamic weights: with
    ``w_i = squash(lambda_i)``,

    * squashed (``squash="sigmoid"``: inequality constraints ``J_i >= theta_i``, the paper's mu-PPO;
      ``squash="tanh"``: equality constraints ``J_i = theta_i``, xi-PPO)::

          A = (N - sum_i w_i) * A_task + sum_i w_i * A_i          (mix_advantages)

    * unsquashed (``squash=None``), ``w_i = lambda_i >= 0``::

          A = A_task + sum_i lambda_i * A_i

    The multipliers follow SGD with momentum (the authors: ``lr=1e-2``, ``momentum=0.1``) on the dual loss
    ``sum_i squash(lambda_i) * (mean_b J_{b,i} - theta_i)`` (violations detached, :meth:`update`), after
    clipping the gradient's norm to ``max_grad_norm`` (0.5, shared with their policy clipping); the
    unsquashed multipliers are clamped at 0 after each step. A return below its threshold raises the
    multiplier, so the policy leans on that reward; above it, the weight goes back to the task.

    ``init``: None draws one number ``0.01 * N(0, 1)`` (``generator``) for all multipliers when squashed
    (their ``np.random.normal(scale=0.01)``), 0.5 unsquashed; a number gives every multiplier that value; a
    sequence of N gives each its own. ``fixed=True`` keeps them (the authors' ``fixed_lagrange``, used for
    fixed-weight baselines). Dtype: ``thresholds``'s when it is a floating-point tensor, else the default
    dtype (theirs: float32).

    Departures from the authors' code:

    * their unsquashed mixing is ``kl_advantages + sum(self.lagrange[1:] * constraint_advantages)``: N - 1
      multipliers against N advantage columns (the first multiplier is never used, and for N >= 3 it raises
      a shape error; N = 2 broadcasts the second multiplier over both columns). Here all N are used,
      ``A_task + sum_i lambda_i A_i``, the Lagrangian the paper writes;
    * the update is written out (``grad = squash'(lambda) * violation``, norm clipping as
      ``clip_grad_norm_``, SGD momentum without dampening) instead of an autograd leaf and
      ``torch.optim.SGD``: the same numbers (golden ``lagrange``: 60 updates of their code in float64, to
      1e-12), no autograd graph and a plain ``state_dict``;
    * advantage normalisation (their ``normalize_advantage``) is the caller's: pass normalised advantages.

    Example::

        >>> lm = LagrangeMultipliers([0.3, 0.5], squash="sigmoid", init=0.0)
        >>> adv = lm.mix_advantages(task_adv, constraint_adv)           # [B], for the PPO loss  # doctest: +SKIP
        >>> lm.update(constraint_returns)                               # [B, 2] returns, each step  # doctest: +SKIP
    """

    def __init__(self, thresholds, *, squash: str | None = "sigmoid", lr: float = 1e-2, momentum: float = 0.1,
                 init: float | Sequence[float] | None = None, max_grad_norm: float = 0.5, fixed: bool = False,
                 generator: torch.Generator | None = None):
        if torch.is_tensor(thresholds):
            if not thresholds.is_floating_point() or thresholds.dim() != 1:
                raise ValueError(f"Invalid thresholds: expected a 1-D floating-point tensor, got "
                                 f"{thresholds.dtype} of shape {tuple(thresholds.shape)}")
            th = thresholds.detach().clone()
        else:
            try:
                vals = [check_real(f"thresholds[{i}]", v) for i, v in enumerate(thresholds)]
            except TypeError:
                raise ValueError(f"Invalid thresholds: {thresholds!r} (accepted: a sequence of N >= 1 numbers)") \
                    from None
            th = torch.tensor(vals, dtype=torch.get_default_dtype())
        if th.numel() < 1 or not bool(torch.isfinite(th).all()):
            raise ValueError("Invalid thresholds: expected N >= 1 finite numbers")
        check_choice("squash", squash, _SQUASH)
        self.lr = check_positive("lr", lr)
        self.momentum = check_real("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
        self.fixed = check_bool("fixed", fixed)
        self.squash = squash
        self.thresholds = th
        n = th.numel()
        if init is None:
            if squash is None:
                lam = torch.full((n,), 0.5, dtype=th.dtype)
            else:
                draw = torch.randn((), generator=generator, dtype=torch.float64) * 0.01
                lam = torch.full((n,), float(draw), dtype=th.dtype)
        elif isinstance(init, (int, float)) and not isinstance(init, bool):
            lam = torch.full((n,), check_real("init", init), dtype=th.dtype)
        else:
            try:
                vals = [check_real(f"init[{i}]", v) for i, v in enumerate(init)]
            except TypeError:
                raise ValueError(f"Invalid init: {init!r} (accepted: None, a number or {n} numbers)") from None
            if len(vals) != n:
                raise ValueError(f"Invalid init: {len(vals)} values for {n} thresholds")
            lam = torch.tensor(vals, dtype=th.dtype)
        if squash is None and bool((lam < 0).any()):
            raise ValueError("Invalid init: unsquashed multipliers must be >= 0")
        self._lam = lam.to(th.device)
        self._buf: Tensor | None = None

    @property
    def n(self) -> int:
        """The number of constraints N."""
        return self.thresholds.numel()

    @property
    def multipliers(self) -> Tensor:
        """The raw multipliers ``lambda`` [N] (a copy)."""
        return self._lam.clone()

    @property
    def weights(self) -> Tensor:
        """``squash(lambda)`` [N]: each constraint's weight in the mixed advantage (``lambda`` unsquashed)."""
        return self._squash(self._lam)

    def _squash(self, lam: Tensor) -> Tensor:
        if self.squash == "sigmoid":
            return torch.sigmoid(lam)
        if self.squash == "tanh":
            return torch.tanh(lam)
        return lam.clone()

    def mix_advantages(self, task_adv: Tensor, constraint_adv: Tensor) -> Tensor:
        """The mixed advantage [B] of the task advantage ``task_adv`` [B] and the constraint advantages
        ``constraint_adv`` [B, N] (constants for the policy loss: no gradient reaches the multipliers)."""
        if not torch.is_tensor(task_adv) or not task_adv.is_floating_point() or task_adv.dim() != 1:
            raise ValueError("Invalid task_adv: expected a 1-D floating-point tensor [B]")
        _check_matrix("constraint_adv", constraint_adv, self.n)
        if constraint_adv.shape[0] != task_adv.shape[0]:
            raise ValueError(f"Invalid constraint_adv: {constraint_adv.shape[0]} rows for {task_adv.shape[0]} "
                             "task advantages")
        w = self.weights.to(device=constraint_adv.device, dtype=constraint_adv.dtype)
        task_w = (self.n - w.sum()) if self.squash is not None else 1.0
        return task_w * task_adv + (constraint_adv * w).sum(-1)

    def violations(self, constraint_returns: Tensor) -> Tensor:
        """``mean_b J_{b,i} - theta_i`` [N] (negative: below the threshold)."""
        _check_matrix("constraint_returns", constraint_returns, self.n)
        return constraint_returns.detach().mean(0).to(self._lam.dtype) - self.thresholds.to(constraint_returns.device)

    def update(self, constraint_returns: Tensor) -> Tensor:
        """One dual step on the returns [B, N] of the current batch; returns the dual loss
        ``sum_i squash(lambda_i) * violation_i`` before the step (a 0-d tensor). ``fixed`` multipliers stay."""
        v = self.violations(constraint_returns)
        lam = self._lam.to(v.device)
        w = self._squash(lam)
        loss = (w * v).sum()
        if self.fixed:
            return loss
        if self.squash == "sigmoid":
            grad = w * (1 - w) * v
        elif self.squash == "tanh":
            grad = (1 - w * w) * v
        else:
            grad = v.clone()
        # torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), never above 1
        coef = (self.max_grad_norm / (torch.linalg.vector_norm(grad) + 1e-6)).clamp(max=1.0)
        grad = grad * coef
        if self.momentum > 0:
            self._buf = grad if self._buf is None else self._buf.to(v.device) * self.momentum + grad
            step = self._buf
        else:
            step = grad
        lam = lam - self.lr * step
        if self.squash is None:
            lam = lam.clamp(min=0)
        self._lam = lam
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": self._lam.clone(), "momentum_buffer": None if self._buf is None else self._buf.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = state.get("multipliers")
        if not torch.is_tensor(lam) or lam.shape != self._lam.shape:
            raise ValueError(f"Invalid state: 'multipliers' must be a tensor of shape {tuple(self._lam.shape)}")
        buf = state.get("momentum_buffer")
        if buf is not None and (not torch.is_tensor(buf) or buf.shape != self._lam.shape):
            raise ValueError(f"Invalid state: 'momentum_buffer' must be None or of shape {tuple(self._lam.shape)}")
        self._lam = lam.detach().clone().to(self._lam.dtype)
        self._buf = None if buf is None else buf.detach().clone().to(self._lam.dtype)

    def __repr__(self) -> str:
        return (f"LagrangeMultipliers(n={self.n}, squash={self.squash!r}, lr={self.lr}, momentum={self.momentum}, "
                f"fixed={self.fixed})")


class _Cached:
    """The authors' ``NelderMeadFunc``: values by exact key, else by a key within ``tol`` in every
    coordinate (the first such, in insertion order), else evaluated and stored."""

    def __init__(self, fn: Callable, tol: float):
        self.fn, self.tol, self.cache, self.calls = fn, tol, {}, 0

    def __call__(self, x) -> float:
        key = tuple(float(v) for v in x)
        if key in self.cache:
            return self.cache[key]
        for k, val in self.cache.items():
            if all(abs(a - b) < self.tol for a, b in zip(k, key)):
                return val
        out = float(self.fn(torch.tensor(key, dtype=torch.float64)))
        if math.isnan(out):
            raise ValueError(f"Invalid evaluate: returned NaN at thresholds {list(key)}")
        self.calls += 1
        self.cache[key] = out
        return out


@register(kind="preference", paper=_PAPER, year=2023, arxiv="2310.04373", code=_CODE,
          summary="NM-PPO's threshold search: Nelder-Mead over constraint thresholds with a nearby-point cache")
def nelder_mead_thresholds(evaluate: Callable[[Tensor], float], simplex, *, alpha: float = 1.0, gamma: float = 2.0,
                           rho: float = 0.5, sigma: float = 0.5, max_iters: int = 10, cache_tol: float = 5e-3,
                           tol: float | None = None) -> dict[str, Any]:
    r"""Search the constraint thresholds with Nelder-Mead (the paper's NM-PPO), minimising ``evaluate``.

    Paper: arXiv 2310.04373, section on NM-PPO; authors' code: ``NelderMeadTrainer.train_and_eval`` and
    ``NelderMeadFunc`` in ``rl4lms/envs/text_generation/training_utils.py`` @11ac8fe. ``evaluate(thresholds
    [N] float64) -> float`` is what to minimise: theirs continues PPO training under those thresholds
    for a while and returns the negative evaluation score, so one call is a stretch of training and the
    search runs within a single training run. ``simplex`` is [N + 1, N] starting points (theirs: random
    points between the initial and the maximal returns).

    Each iteration (theirs, with their config's defaults ``alpha=1, gamma=2, rho=0.5, sigma=0.5``): sort
    the points by value; reflect the worst through the centroid of the others,
    ``r = c + alpha (c - x_worst)``; keep ``r`` if ``f(best) <= f(r) < f(second worst)``; if ``f(r) <
    f(best)`` expand, ``e = c + gamma (r - c)``, keep ``e`` if better than the best else ``r``; else
    contract, ``k = c + rho (x_worst - c)``, keep it if better than the worst; else shrink every point
    towards the best by ``sigma``. Values are cached (their ``NelderMeadFunc``): a point within
    ``cache_tol`` (every coordinate) of an evaluated one reuses its value without calling ``evaluate``.

    Stopping: ``max_iters`` iterations (theirs stop on a budget of training iterations instead) or, when
    ``tol`` is given, after a shrink whose point values have a population std below ``tol`` (theirs,
    config ``tol: 0.01``).

    Returns ``{"best": thresholds [N], "value": f(best), "simplex": [N+1, N] (sorted after the last
    iteration's sort; the last step's replacement is at the end), "evaluations": calls of evaluate,
    "iterations": n}``, in float64.

    Departures: theirs iterates while the training budget lasts and ``iterates.append(simplex[-1])`` is
    unused; the result here is the best point by value over all evaluated points of the final simplex.
    """
    if not callable(evaluate):
        raise ValueError("Invalid evaluate: expected a callable thresholds -> float")
    s = torch.as_tensor(simplex, dtype=torch.float64) if not torch.is_tensor(simplex) else \
        simplex.detach().to(torch.float64).clone()
    if s.dim() != 2 or s.shape[0] != s.shape[1] + 1 or s.shape[1] < 1 or not bool(torch.isfinite(s).all()):
        raise ValueError(f"Invalid simplex: expected finite points [N + 1, N] with N >= 1, got {tuple(s.shape)}")
    alpha = check_positive("alpha", alpha)
    gamma = check_real("gamma", gamma, 1.0, lo_open=True)
    rho = check_real("rho", rho, 0.0, 1.0, lo_open=True, hi_open=True)
    sigma = check_real("sigma", sigma, 0.0, 1.0, lo_open=True, hi_open=True)
    check_int("max_iters", max_iters, lo=1)
    cache_tol = check_nonneg("cache_tol", cache_tol)
    if tol is not None:
        tol = check_positive("tol", tol)
    f = _Cached(evaluate, cache_tol)
    pts = [s[i].clone() for i in range(s.shape[0])]
    n = s.shape[1]
    it = 0
    for it in range(1, max_iters + 1):
        pts.sort(key=f)  # stable, as their sorted(simplex, key=func)
        best = f(pts[0])
        c = torch.stack(pts[:-1]).mean(0)
        r = c + alpha * (c - pts[-1])
        fr = f(r)
        if best <= fr < f(pts[-2]):
            pts[-1] = r
            continue
        if fr < f(pts[0]):
            e = c + gamma * (r - c)
            pts[-1] = e if f(e) < f(pts[0]) else r
            continue
        k = c + rho * (pts[-1] - c)
        if f(k) < f(pts[-1]):
            pts[-1] = k
            continue
        for i in range(1, n + 1):
            pts[i] = pts[0] + sigma * (pts[i] - pts[0])
        if tol is not None:
            vals = torch.tensor([f(p) for p in pts], dtype=torch.float64)
            if float(vals.std(correction=0)) < tol:
                break
    vals = [f(p) for p in pts]
    i_best = min(range(len(pts)), key=vals.__getitem__)
    return {"best": pts[i_best].clone(), "value": vals[i_best], "simplex": torch.stack(pts),
            "evaluations": f.calls, "iterations": it}
