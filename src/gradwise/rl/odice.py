"""ODICE: the orthogonal-gradient update for DICE value learning, plus the true- and semi-gradient
updates it is compared with, and the DICE policy-extraction weights.

Paper: "ODICE: Revealing the Mystery of Distribution Correction Estimation via Orthogonal-gradient
Update", Mao, Xu, Zhang, Zhan, ICLR 2024, arXiv 2402.00348. Authors' code:
https://github.com/maoliyuan/ODICE-Pytorch at 1692507c (``odice.py``: ``orthogonal_true_g_update``,
``true_g_update``, ``semi_g_update``, ``f_star``, ``f_prime_inverse``). Only the abstract and the
introduction of the paper were readable in the stored text (see docs/coverage_notes.md), so the
formulas below are those of the authors' code, which ``tests/rl/test_odice.py`` checks update by
update (float64, tests/data/odice_golden.pt).

V-DICE objective, with ``δ(s, s') = r + γ (1 − done) V(s') − V(s)`` and ``f*`` the convex conjugate::

    L(V) = (1 − λ) E[V(s)] + λ E[f*(δ)]

* ``mode="true"``: the full gradient of ``L`` (through ``V(s)`` and ``V(s')``).
* ``mode="semi"``: ``V(s')`` from the target network (no gradient through it).
* ``mode="orthogonal"`` (O-DICE): the forward loss ``λ E f*(r + γ V̄(s') − V(s))`` and the backward
  loss ``λ η E f*(r + γ V(s') − V̄(s))`` (``V̄`` the target net) give gradients ``g_f`` and ``g_b``;
  the update is ::

      g = (1 − c) g_f + g_b + g_lin,   c = <g_f, g_b> / max(|g_f|², eps),   g_lin = ∇ (1 − λ) E V(s)

  i.e. ``g_b`` projected on the normal plane of ``g_f`` (``g_b − c g_f``), added to ``g_f``. ``eps``
  (1e-10) is the authors' guard against ``g_f = 0``, which happens with χ² when every forward
  residual is below −2 (``f*`` is flat there): then ``c = 0`` and the update is ``g_b + g_lin``.

``f*`` (``dice_f_star``): ``"chi2"`` (their Pearson χ²) ``ω = max(x/2 + 1, 0)``, ``x ω − (ω − 1)²``;
``"kl"`` (their reverse KL) ``exp(x − 1)``. Policy weights (``odice_policy_weights``) are
``(f')⁻¹(δ)`` clipped at ``max_weight`` (100): ``max(δ, 0)`` for χ², ``exp(δ − 1)`` for KL, where
``δ`` is the forward residual (``mode="true"``: the true residual).

Defaults: the issue's ``lam=0.6``, ``eta=1.0``, ``discount=0.99``, ``f="chi2"`` (their D4RL configs
use λ 0.6-0.8 per task, η 1.0 or less).

Departures from the authors' code, each with its reason:

* **No host sync.** They read ``c`` with ``.item()``; here ``c`` stays a 0-dim tensor (returned as
  ``parallel_coef``) and the whole update is queued on the device.
* **Gradients are computed, then added.** They call ``.backward()`` three times into ``.grad`` and
  subtract the forward gradient back out (``g_b = (g_f + g_b) − g_f``); here each gradient is taken
  with ``torch.autograd.grad`` and only the final update is added into ``.grad`` (so ``g_b`` has no
  cancellation error, and input errors are raised before any ``.grad`` is touched). As with
  ``.backward()``, the update is *added* to what ``.grad`` holds: zero it first, as they do.
* **No optimizer, no target update, no policy step inside.** The caller steps its optimizer and
  updates the target (``gradwise.rl._common.polyak_update`` is their EMA), and trains the policy with
  ``odice_policy_weights``; the golden test runs their Adam + EMA sequence around this function.
* **dtype.** Their ``terminals.float()`` casts ``done`` to float32; here ``done`` is cast to the
  value network's dtype, so float64 runs stay float64.
* Twin V (``value_fn=lambda m, x: m.both(x)``): as in their code, the residuals have the heads'
  shape ``[2, B]`` and the targets use ``vf_target(x)`` (their ``TwinV.forward``, the min over heads);
  ``residual`` (and so the policy weights) is ``[2, B]``, and their policy loss averages over it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from gradwise._validate import check_choice, check_nonneg, check_positive, check_range
from gradwise.registry import register
from gradwise.rl._common import check_batch, check_tensor

__all__ = ["ODICEStep", "dice_f_star", "dice_f_prime_inverse", "orthogonal_backward",
           "odice_value_backward", "odice_policy_weights"]

_PAPER = ("ODICE: Revealing the Mystery of Distribution Correction Estimation via Orthogonal-gradient "
          "Update")
_CODE = "https://github.com/maoliyuan/ODICE-Pytorch@1692507c"
F_NAMES = ("chi2", "kl")
MODES = ("orthogonal", "true", "semi")


class ODICEStep(NamedTuple):
    """What :func:`odice_value_backward` returns (all detached)."""
    loss: Tensor           # the objective value (1 − λ) E V(s) + λ E f*(δ) (orthogonal: + the η backward term)
    residual: Tensor       # δ used for the policy weights: [B] (or [heads, B] with a twin V)
    parallel_coef: Tensor  # c (0-dim); NaN for the "true" and "semi" modes, which have none


def dice_f_star(x: Tensor, f: str = "chi2") -> Tensor:
    """Convex conjugate ``f*(x)`` of the DICE f-divergence: ``"chi2"`` (Pearson χ²,
    ``x ω − (ω − 1)²`` with ``ω = max(x/2 + 1, 0)``) or ``"kl"`` (reverse KL, ``exp(x − 1)``)."""
    check_choice("f", f, F_NAMES)
    if f == "kl":
        return torch.exp(x - 1)
    omega = torch.clamp_min(x / 2 + 1, 0)
    return x * omega - (omega - 1) ** 2


def dice_f_prime_inverse(x: Tensor, f: str = "chi2") -> Tensor:
    """``(f')⁻¹(x)``, the optimal density ratio for residual ``x``: ``max(x, 0)`` (χ²), ``exp(x − 1)`` (KL)."""
    check_choice("f", f, F_NAMES)
    return torch.exp(x - 1) if f == "kl" else torch.clamp_min(x, 0)


def odice_policy_weights(residual: Tensor, *, f: str = "chi2", max_weight: float = 100.0) -> Tensor:
    """Weights of ODICE's weighted behaviour cloning, ``min((f')⁻¹(δ), max_weight)``, detached.
    The policy loss is ``mean(w · (−log π(a|s)))``."""
    check_tensor("residual", residual)
    check_positive("max_weight", max_weight)
    return torch.clamp_max(dice_f_prime_inverse(residual.detach(), f), max_weight)


def _grads(loss: Tensor, params: Sequence[Tensor], retain: bool) -> list[Tensor]:
    gs = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


@torch.no_grad()
def _add_grads(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.add_(g)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return torch.stack([torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b)]).sum()


def orthogonal_backward(forward_loss: Tensor, backward_loss: Tensor, params, *,
                        extra_loss: Tensor | None = None, eps: float = 1e-10) -> Tensor:
    """Add the orthogonal-gradient update ``(1 − c) g_f + g_b (+ ∇ extra_loss)`` into ``p.grad`` and
    return ``c = <g_f, g_b> / max(|g_f|², eps)`` (a 0-dim tensor: no host sync).

    ``g_f = ∇ forward_loss``, ``g_b = ∇ backward_loss`` over ``params`` (one flat vector over all of
    them, as the authors concatenate). Parameters that a loss does not reach get a zero gradient."""
    params = [p for p in params]
    if not params:
        raise ValueError("params is empty: pass the parameters of the network being trained")
    for name, t in (("forward_loss", forward_loss), ("backward_loss", backward_loss), ("extra_loss", extra_loss)):
        if t is not None and (not isinstance(t, Tensor) or t.dim() != 0):
            raise ValueError(f"{name} must be a 0-dim tensor (a scalar loss)")
    check_positive("eps", eps)
    g_f = _grads(forward_loss, params, retain=True)
    g_b = _grads(backward_loss, params, retain=extra_loss is not None)
    g_lin = _grads(extra_loss, params, retain=False) if extra_loss is not None else None
    ff, fb = _dot(g_f, g_f), _dot(g_f, g_b)
    c = fb / torch.clamp_min(ff, eps)
    with torch.no_grad():
        upd = [gb.add(gf * (1 - c)) for gf, gb in zip(g_f, g_b)]
        if g_lin is not None:
            torch._foreach_add_(upd, g_lin)
    _add_grads(params, upd)
    return c.detach()


@register(kind="rl-objective", paper=_PAPER, year=2024, arxiv="2402.00348", code=_CODE, name="ODICE",
          summary="DICE value learning whose backward (next-state) gradient is projected on the normal "
                  "plane of the forward gradient (orthogonal-gradient update); true/semi-gradient modes")
def odice_value_backward(vf: nn.Module, vf_target: nn.Module, obs: Tensor, next_obs: Tensor, reward: Tensor,
                         done: Tensor, *, mode: str = "orthogonal", discount: float = 0.99, lam: float = 0.6,
                         eta: float = 1.0, f: str = "chi2",
                         value_fn: Callable[[nn.Module, Tensor], Tensor] | None = None) -> ODICEStep:
    """Add one ODICE value update into ``vf``'s ``.grad`` (the caller steps the optimizer and the
    target); see the module docstring for the math and the departures from the authors' code.

    "ODICE: Revealing the Mystery of Distribution Correction Estimation via Orthogonal-gradient Update"
    (ICLR 2024), arXiv 2402.00348; authors' code maoliyuan/ODICE-Pytorch@1692507c.

    ``reward`` and ``done`` are ``[B]``; ``obs``/``next_obs`` ``[B, ...]``. ``value_fn(vf, x)`` gives
    the values being trained (default ``vf(x)``; twin V: ``lambda m, x: m.both(x)``); the targets are
    ``vf_target(x)``. Returns :class:`ODICEStep` (loss, residual, parallel_coef)."""
    check_choice("mode", mode, MODES)
    check_choice("f", f, F_NAMES)
    check_range("discount", discount, 0.0, 1.0)
    check_range("lam", lam, 0.0, 1.0)
    check_nonneg("eta", eta)
    if not isinstance(vf, nn.Module) or not isinstance(vf_target, nn.Module):
        raise ValueError("vf and vf_target must be torch.nn.Module")
    check_batch(obs=obs, next_obs=next_obs, reward=reward, done=done)
    check_tensor("reward", reward, 1)
    check_tensor("done", done, 1)
    params = [p for p in vf.parameters() if p.requires_grad]
    if not params:
        raise ValueError("vf has no parameters that require grad")
    value = value_fn or (lambda m, x: m(x))
    v = value(vf, obs)
    not_done = 1 - done.to(v.dtype)
    reward = reward.to(v.dtype)
    nan = torch.full((), float("nan"), dtype=v.dtype, device=v.device)

    if mode == "true":
        v_next = value(vf, next_obs)
        residual = reward + not_done * discount * v_next - v
        loss = torch.mean((1 - lam) * v + lam * dice_f_star(residual, f))
        _add_grads(params, _grads(loss, params, retain=False))
        return ODICEStep(loss.detach(), residual.detach(), nan)

    with torch.no_grad():
        target_v_next = vf_target(next_obs)
        target_v = vf_target(obs) if mode == "orthogonal" else None
    forward_residual = reward + not_done * discount * target_v_next - v
    if mode == "semi":
        loss = torch.mean((1 - lam) * v + lam * dice_f_star(forward_residual, f))
        _add_grads(params, _grads(loss, params, retain=False))
        return ODICEStep(loss.detach(), forward_residual.detach(), nan)

    v_next = value(vf, next_obs)
    backward_residual = reward + not_done * discount * v_next - target_v
    forward_loss = torch.mean(lam * dice_f_star(forward_residual, f))
    backward_loss = torch.mean(lam * eta * dice_f_star(backward_residual, f))
    lin_loss = torch.mean((1 - lam) * v)
    c = orthogonal_backward(forward_loss, backward_loss, params, extra_loss=lin_loss)
    loss = (forward_loss + backward_loss + lin_loss).detach()
    return ODICEStep(loss, forward_residual.detach(), c)
