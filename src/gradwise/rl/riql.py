"""RIQL: robust IQL under data corruption: a Huber loss on the Q regression, an ensemble quantile
as the value's target, observation normalisation, and the authors' random data corruption.

Paper: "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption", Yang, Zhong,
Xu, Zhang, Zhang, Han, Zhang, ICLR 2024, arXiv 2310.12955. Authors' code:
https://github.com/YangRui2015/RIQL at cc07d812 (``RIQL.py``: ``huber_loss``, ``asymmetric_l2_loss``,
``ImplicitQLearning._update_v``/``_update_q``/``_update_policy``, ``compute_mean_std``; ``attack.py``:
``Attack`` in random mode). The stored paper text gave the abstract and introduction (observation
normalisation, Huber loss for the heavy-tailed Q targets, quantile estimator over a Q ensemble); the
formulas below are those of the authors' code, which ``tests/rl/test_riql.py`` checks (float64,
tests/data/riql_golden.pt).

With an ensemble ``Q_1..Q_K`` (``q`` shaped ``[K, B]``), its target copy ``Q̄`` and a value net ``V``::

    y      = clip(r + γ (1 − done) V(s'), −100, 1000)                      (target_clip)
    L_Q    = mean_{k,b} h_δ(y_b − Q_k(s_b, a_b)),  h_δ(x) = x²/(2δ) if |x| < δ else |x| − δ/2
    L_V    = mean_b |τ − 1(u_b < 0)| u_b²,  u = quantile_α(Q̄_1..Q̄_K)(s, a) − V(s)   (linear interpolation)
    w      = min(exp(β u), 100)  (AWR weights of the policy's behaviour cloning)

``h_δ`` is their ``huber_loss(diff, sigma)`` with ``δ = 1/σ²`` (their config's ``sigma``; e.g.
σ = 0.1 is δ = 100, σ = 3 is δ = 1/9); it equals ``F.smooth_l1_loss(..., beta=δ)``. Defaults: their
``TrainConfig``: α (``quantile``) 0.25, τ (``expectile``) 0.7, β 3, K = 5, σ = 1 (δ = 1).

Observation normalisation (``normalize_observations``): mean and std (population, ``ddof=0``) over
the observations *and* next observations together, ``std + eps`` with ``eps = 1e-3``.

Random corruption (``corrupt_transitions``, their ``attack.py`` random mode): each row is picked with
probability ``rate``; on picked rows ``reward ← U(−s, s) · 30``, and ``obs``/``action``/``next_obs``
(``"dynamics"``) ``← x + U(−s, s) · std(x)`` with ``std`` over the whole column before corruption.

Departures from the authors' code, each with its reason:

* **float64.** Their ``terminals.float()`` and the expectile weight's ``(u < 0).float()`` round
  ``γ`` and ``τ`` to float32 (so float64 runs are float32-accurate); here everything stays in the
  inputs' dtype.
* **Random draws.** Theirs come from ``np.random.RandomState(seed)`` (rows, then the uniform noise);
  here from a ``torch.Generator``. Given the same picked rows and the same U(−s, s) draws the
  corrupted data are theirs (the golden test feeds their draws through the private
  ``_apply_corruption``). Several kinds in one call draw their rows independently, as their
  ``resample_indexs=True`` does, in their order (obs, action, reward, dynamics).
* Losses take tensors, not networks: the caller's ensemble gives ``q`` (``[K, B]``) and the target
  ensemble gives ``target_q``; no ``.item()`` logging.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_nonneg, check_positive, check_range
from gradwise.registry import register
from gradwise.rl._common import check_batch, check_tensor

__all__ = ["riql_q_loss", "riql_value_loss", "ensemble_quantile", "expectile_loss", "awr_weights",
           "normalize_observations", "corrupt_transitions", "CORRUPTION_KINDS"]

_PAPER = "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption"
_CODE = "https://github.com/YangRui2015/RIQL@cc07d812"
REDUCTIONS = ("mean", "sum", "none")
CORRUPTION_KINDS = ("obs", "action", "reward", "dynamics")  # the authors' order of application
_FIELD = {"obs": "obs", "action": "action", "reward": "reward", "dynamics": "next_obs"}
REWARD_SCALE = 30.0


def _reduce(x: Tensor, reduction: str) -> Tensor:
    return x.mean() if reduction == "mean" else x.sum() if reduction == "sum" else x


def ensemble_quantile(q: Tensor, quantile: float = 0.25, dim: int = 0) -> Tensor:
    """The ``quantile`` of ``q`` across ensemble dimension ``dim`` with linear interpolation
    (``torch.quantile``'s default, the authors' estimator)."""
    check_tensor("q", q)
    check_range("quantile", quantile, 0.0, 1.0)
    return torch.quantile(q, quantile, dim=dim)


def expectile_loss(u: Tensor, expectile: float = 0.7, reduction: str = "mean") -> Tensor:
    """IQL's asymmetric squared loss ``|τ − 1(u < 0)| u²`` (τ = ``expectile``)."""
    check_tensor("u", u)
    check_range("expectile", expectile, 0.0, 1.0)
    check_choice("reduction", reduction, REDUCTIONS)
    return _reduce(torch.abs(expectile - (u < 0).to(u.dtype)) * u ** 2, reduction)


def awr_weights(adv: Tensor, *, beta: float = 3.0, max_weight: float = 100.0) -> Tensor:
    """Advantage-weighted regression weights ``min(exp(β · adv), max_weight)``, detached."""
    check_tensor("adv", adv)
    check_positive("max_weight", max_weight)
    return torch.exp(beta * adv.detach()).clamp(max=max_weight)


@register(kind="rl-objective", paper=_PAPER, year=2024, arxiv="2310.12955", code=_CODE, name="RIQL",
          summary="IQL made robust to corrupted offline data: Huber loss on the Q regression and an "
                  "ensemble quantile as the value's expectile target")
def riql_q_loss(q: Tensor, reward: Tensor, done: Tensor, next_v: Tensor, *, discount: float = 0.99,
                delta: float = 1.0, target_clip: tuple[float, float] | None = (-100.0, 1000.0),
                reduction: str = "mean") -> Tensor:
    """RIQL's Q loss: Huber (``smooth_l1`` with ``beta=delta``) between each critic's ``q`` (``[K, B]``
    or ``[B]``) and the clipped target ``r + γ (1 − done) next_v`` (``next_v`` detached).
    ``reduction="none"`` returns the ``[K, B]`` elementwise losses. The authors' ``sigma`` is
    ``delta = 1/sigma**2``.

    "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption" (ICLR 2024),
    arXiv 2310.12955; authors' code YangRui2015/RIQL@cc07d812 (``RIQL.py``)."""
    check_range("discount", discount, 0.0, 1.0)
    check_positive("delta", delta)
    check_choice("reduction", reduction, REDUCTIONS)
    check_tensor("q", q, (1, 2))
    for name, t in (("reward", reward), ("done", done), ("next_v", next_v)):
        check_tensor(name, t, 1)
    b = check_batch(reward=reward, done=done, next_v=next_v)
    if q.shape[-1] != b:
        raise ValueError(f"q must be [K, B] or [B] with B = {b} (the reward's batch), got {tuple(q.shape)}")
    if target_clip is not None:
        lo, hi = target_clip
        if not lo <= hi:
            raise ValueError(f"target_clip must be (low, high) with low <= high, got {target_clip!r}")
    target = reward.to(q.dtype) + (1 - done.to(q.dtype)) * discount * next_v.detach().to(q.dtype)
    if target_clip is not None:
        target = target.clamp(lo, hi)
    return F.smooth_l1_loss(q, target.expand_as(q), beta=float(delta), reduction=reduction)


def riql_value_loss(v: Tensor, target_q: Tensor, *, quantile: float = 0.25, expectile: float = 0.7,
                    reduction: str = "mean") -> Tensor:
    """RIQL's value loss: the expectile loss of ``u = quantile_α(target_q) − v``, with ``target_q`` the
    target ensemble's values ``[K, B]`` (detached) and ``v`` ``[B]``. The advantage for the policy is
    ``ensemble_quantile(target_q, quantile) − v``."""
    check_tensor("v", v, 1)
    check_tensor("target_q", target_q)
    if target_q.dim() != 2 or target_q.shape[1] != v.shape[0]:
        raise ValueError(f"target_q must be [K, B] with B = {v.shape[0]} (v's batch), got {tuple(target_q.shape)}")
    check_range("quantile", quantile, 0.0, 1.0)
    u = ensemble_quantile(target_q.detach(), quantile, dim=0) - v
    return expectile_loss(u, expectile, reduction)


def normalize_observations(obs: Tensor, next_obs: Tensor, eps: float = 1e-3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(obs − μ)/σ``, ``(next_obs − μ)/σ``, μ, σ, with μ and the population std (+ ``eps``) over the
    rows of ``obs`` and ``next_obs`` together (the authors' ``compute_mean_std``)."""
    check_tensor("obs", obs, 2)
    check_tensor("next_obs", next_obs, 2)
    check_nonneg("eps", eps)
    both = torch.cat([obs, next_obs], 0)
    mean, std = both.mean(0), both.std(0, correction=0) + eps
    return (obs - mean) / std, (next_obs - mean) / std, mean, std


def _apply_corruption(data: Mapping[str, Tensor], kind: str, rows: Tensor, noise: Tensor) -> dict[str, Tensor]:
    """``data`` with ``kind`` corrupted on boolean ``rows`` by ``noise`` ~ U(−s, s), one draw per
    corrupted entry (shape ``[rows.sum(), *field.shape[1:]]``)."""
    field = _FIELD[kind]
    x = data[field]
    out = dict(data)
    new = x.clone()
    if kind == "reward":
        new[rows] = noise.to(x.dtype) * REWARD_SCALE
    else:
        std = x.std(0, correction=0, keepdim=True)
        new[rows] = x[rows] + noise.to(x.dtype) * std
    out[field] = new
    return out


def corrupt_transitions(data: Mapping[str, Tensor], kind: str | Sequence[str], rate: float = 0.3,
                        scale: float = 1.0, generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """The authors' random corruption of an offline dataset (a mapping with ``obs``, ``action``,
    ``reward``, ``next_obs``, ...): for each ``kind`` in ``("obs", "action", "reward", "dynamics")``
    (one, or several applied in that order, rows drawn for each), pick each row with probability
    ``rate`` and perturb it (see the module docstring). Returns the new mapping (other fields shared,
    not copied) and the boolean mask of rows corrupted by any kind."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not kinds:
        raise ValueError(f"kind must name at least one of {CORRUPTION_KINDS}")
    for k in kinds:
        check_choice("kind", k, CORRUPTION_KINDS)
    check_range("rate", rate, 0.0, 1.0)
    check_positive("scale", scale)
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be a mapping of tensors, got {type(data).__name__}")
    for k in kinds:
        if _FIELD[k] not in data:
            raise ValueError(f"data has no {_FIELD[k]!r} field, needed for kind {k!r}")
    n = check_batch(**{k: v for k, v in data.items() if isinstance(v, torch.Tensor)})
    out, mask = dict(data), None
    for k in (c for c in CORRUPTION_KINDS if c in kinds):
        x = out[_FIELD[k]]
        rows = torch.rand(n, generator=generator, device=x.device) < rate
        shape = (int(rows.sum()), *x.shape[1:])
        noise = (torch.rand(shape, generator=generator, dtype=torch.float64, device=x.device) * 2 - 1) * scale
        out = _apply_corruption(out, k, rows, noise)
        mask = rows if mask is None else mask | rows
    return out, mask
