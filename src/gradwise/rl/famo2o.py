r"""FamO2O: a family of policies conditioned on an improvement/constraint balance, and a balance model that picks
the balance per state, for offline-to-online RL on top of AWR-style policy extraction (IQL).

Paper: Wang, Yang, Gao, Lin, Chen, Wu, Jia, Song, Huang, "Train Once, Get a Family: State-Adaptive Balances for
Offline-to-Online Reinforcement Learning", arXiv:2310.17966 (NeurIPS 2023). Authors' code:
github.com/LeapLabTHU/FamO2O, commit ea9cb01, ``jax_iql/family_actor.py`` (``family_update``,
``family_hierarchical_update``), ``jax_iql/family_utils.py`` (``sin_cos_skill_func``),
``jax_iql/family_temperature.py``, ``jax_iql/configs/family_antmaze_finetune_config.py``. Only the paper's abstract
and introduction were readable here (docs/coverage_notes.md); the math is the code's.

**Balance.** A balance model (theirs: a tanh-Gaussian policy on the state) outputs :math:`u \in [-1, 1]`, mapped
to :math:`\beta = \beta_{lo} + (u + 1)(\beta_{hi} - \beta_{lo}) / 2` (:func:`famo2o_balance`; their range
(8, 14)). The universal policy sees the state concatenated with a sinusoidal embedding of β
(:func:`balance_embedding`, theirs d = 6, n = 10000):
:math:`e_{2i} = \sin(\beta / n^{2i/d})`, :math:`e_{2i+1} = \cos(\beta / n^{2i/d})`, :math:`i = 0 \dots d/2 - 1`.

**Universal policy loss** (:func:`famo2o_policy_loss`): IQL's advantage-weighted regression with the state's
balance as the inverse temperature, :math:`-\frac1B\sum_b \min(e^{\beta_b (Q_b - V_b)}, 100) \log \pi(a_b | s_b,
e(\beta_b))`, weights without gradient. Theirs draws β from the balance model (detached), or uniformly from
the range in the first update (``random_hierarchical_coefficients``).

**Departure: their weight broadcasts.** In their ``family_update`` the critics' Q and V are [B] (IQL's critics
squeeze the last axis) and the balances [B, 1], so ``exp_a = jnp.exp((q - v) * hierarchical_coefficients)`` is
[B, B] and the loss is :math:`-\frac{1}{B^2}\sum_{i,j} \min(e^{\beta_i (Q_j - V_j)}, 100) \log\pi(a_j|s_j,
e(\beta_j))`: each sample is weighted with every state's balance, averaged, not with its own (the policy input
still uses its own). ``pairing="per_state"`` (the default) is the per-state weight the paper describes;
``pairing="authors"`` reproduces their broadcast (golden-tested).

**Balance loss** (:func:`famo2o_balance_loss`): SAC-style, :math:`\frac1B\sum_b \alpha \log p(u_b | s_b) - Q(s_b,
a_b)` with :math:`a_b` drawn from the universal policy at :math:`e(\beta_b)` (the policy's parameters fixed,
gradients flowing through β and the reparameterised draws) and :math:`\alpha` a learned temperature updated with
:math:`\alpha\,(\mathcal H - \bar{\mathcal H})` (:func:`famo2o_temperature_loss`; their target entropy None means
no update at the antmaze config).

Golden data: tests/data/famo2o_golden.pt, their ``sin_cos_skill_func`` and the weight and loss lines of their
two updates run under CPU jax with float64 (tools/golden/make_famo2o_golden.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_real
from gradwise.registry import register
from gradwise.rl._checks import check_float_tensor, check_same_shape

__all__ = ["balance_embedding", "famo2o_balance", "famo2o_balance_loss", "famo2o_policy_loss",
           "famo2o_temperature_loss"]

FAMO2O_PAPER = "Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online Reinforcement Learning"
FAMO2O_CODE = "https://github.com/LeapLabTHU/FamO2O/tree/ea9cb01c86ca7d8cbd782b21cab5d7e1614bc6d7/jax_iql"


def _range(balance_range) -> tuple[float, float]:
    if not isinstance(balance_range, (tuple, list)) or len(balance_range) != 2:
        raise ValueError(f"Invalid balance_range: {balance_range!r} (accepted: a pair (low, high), low < high)")
    lo, hi = check_real("balance_range[0]", balance_range[0]), check_real("balance_range[1]", balance_range[1])
    if not lo < hi:
        raise ValueError(f"Invalid balance_range: {balance_range!r} (accepted: a pair (low, high), low < high)")
    return lo, hi


def famo2o_balance(u: Tensor, *, balance_range=(8.0, 14.0)) -> Tensor:
    """Map the balance model's output in [-1, 1] to the balance range (theirs (8, 14))."""
    lo, hi = _range(balance_range)
    check_float_tensor("u", u)
    return (u + 1.0) / 2.0 * (hi - lo) + lo


def balance_embedding(balance: Tensor, *, n: float = 10000.0, d: int = 6) -> Tensor:
    r"""The sinusoidal embedding of each balance (flattened to [B]): [B, d], sines in even columns, cosines in
    odd ones, frequencies :math:`n^{-2i/d}` (theirs n = 10000, d = 6; d even)."""
    n = check_real("n", n, 0.0, lo_open=True)
    d = check_int("d", d, 2)
    if d % 2:
        raise ValueError(f"Invalid d: {d} (accepted: an even integer >= 2)")
    check_float_tensor("balance", balance)
    k = balance.reshape(-1, 1)
    i = torch.arange(d // 2, dtype=balance.dtype, device=balance.device)
    inner = k / n ** (2 * i / d)
    return torch.stack([torch.sin(inner), torch.cos(inner)], dim=-1).reshape(k.shape[0], d)


@register(kind="rl-objective", paper=FAMO2O_PAPER, year=2023, arxiv="2310.17966", code=FAMO2O_CODE,
          summary="FamO2O: balance-conditioned AWR loss for a universal policy (per-state inverse temperature "
                  "from a balance model), with the balance model's SAC-style loss and sinusoidal embedding")
def famo2o_policy_loss(log_prob: Tensor, q: Tensor, v: Tensor, balance: Tensor, *,
                       max_weight: float = 100.0, pairing: str = "per_state") -> Tensor:
    r"""FamO2O's universal-policy loss (arXiv:2310.17966; module docstring): ``log_prob`` [B] of the dataset
    actions under the policy conditioned on ``balance_embedding(balance)``, ``q`` [B] (min of the twin critics),
    ``v`` [B], ``balance`` [B] or [B, 1]. ``q``, ``v`` and ``balance`` are detached. ``pairing``:
    ``"per_state"`` (each sample's own balance) or ``"authors"`` (their [B, B] broadcast, module docstring).
    Returns a scalar."""
    w_max = check_real("max_weight", max_weight, 0.0, lo_open=True, finite=False)
    check_choice("pairing", pairing, ("per_state", "authors"))
    for name, t in (("log_prob", log_prob), ("q", q), ("v", v), ("balance", balance)):
        check_float_tensor(name, t, min_dim=1)
    check_same_shape(log_prob, q, "log_prob", "q")
    check_same_shape(log_prob, v, "log_prob", "v")
    if balance.numel() != log_prob.numel() or balance.shape[0] != log_prob.shape[0]:
        raise ValueError(f"Invalid balance: shape {tuple(balance.shape)} (accepted: one per row of log_prob, "
                         f"{log_prob.shape[0]})")
    adv = q.detach() - v.detach()
    beta = balance.detach().reshape(-1)
    if pairing == "authors":  # [B, 1] balances times [B] advantages: row i uses state i's balance for every j
        weight = torch.clamp_max(torch.exp(adv.reshape(1, -1) * beta.reshape(-1, 1)), w_max)
        return -(weight * log_prob.reshape(1, -1)).mean()
    weight = torch.clamp_max(torch.exp(adv * beta.reshape(adv.shape)), w_max)
    return -(weight * log_prob).mean()


def famo2o_balance_loss(balance_log_prob: Tensor, q_policy: Tensor, temperature: float | Tensor) -> Tensor:
    r"""The balance model's loss: mean of ``temperature * balance_log_prob - q_policy`` (both [B];
    ``q_policy`` the critic's min at actions drawn from the universal policy at the drawn balances, with its
    graph kept; ``temperature`` detached)."""
    check_float_tensor("balance_log_prob", balance_log_prob, min_dim=1)
    check_float_tensor("q_policy", q_policy, min_dim=1)
    check_same_shape(balance_log_prob, q_policy, "balance_log_prob", "q_policy")
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"Invalid temperature: shape {tuple(temperature.shape)} (accepted: a number or a "
                             f"1-element tensor)")
        temperature = temperature.detach().reshape(())
    else:
        temperature = check_real("temperature", temperature, 0.0)
    return (balance_log_prob * temperature - q_policy).mean()


def famo2o_temperature_loss(temperature: Tensor, entropy: Tensor, target_entropy: float) -> Tensor:
    """``temperature * mean(entropy - target_entropy)``, the entropy is detached (their temperature update)."""
    check_float_tensor("temperature", temperature)
    check_float_tensor("entropy", entropy)
    target = check_real("target_entropy", target_entropy)
    return temperature * (entropy.detach() - target).mean()
