"""Conservative reward-ensemble aggregation (Coste et al., 2023)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_nonneg

__all__ = ["aggregate_rewards"]

_METHODS = ("mean", "worst_case", "uncertainty_weighted")


@register(kind="preference", paper="Reward Model Ensembles Help Mitigate Overoptimization", year=2023,
          arxiv="2310.02743", code="https://github.com/tlc4418/llm_optimization",
          summary="Reward-ensemble aggregation: mean, worst-case (WCO) or uncertainty-weighted (UWO) reward")
def aggregate_rewards(rewards: Tensor, method: str = "mean", *, coef: float = 1.0, unbiased: bool = False) -> Tensor:
    r"""Combine the rewards of a K-model ensemble into one reward per sample.

    Paper: Coste, Anwar, Kirk, Krueger, "Reward Model Ensembles Help Mitigate Overoptimization", 2023,
    arXiv 2310.02743 (ICLR 2024). Authors' code: https://github.com/tlc4418/llm_optimization
    (``OBJECTIVE_FUNCTIONS`` in ``src/bon/ensemble_rm.py`` and ``src/reward_modeling/scoring/ppo_reward_functions.py``).

    With ``rewards [K, B]`` (reward model k's score of sample b)::

        mean:                  R = 1/K sum_k R_k
        worst_case (WCO):      R = min_k R_k
        uncertainty_weighted:  R = 1/K sum_k R_k - coef * Var_k(R_k)        (UWO)

    Variance: the paper's intra-ensemble variance ``1/K sum_k (R_k - mean)^2`` and the authors' best-of-n code
    (``np.var``) use the population variance (default); their PPO code uses ``torch.var`` (unbiased,
    ``1/(K-1)``): ``unbiased=True``. ``coef`` default 1.0 is the code's default (the paper sweeps it; the
    reward scale matters, the authors normalize each model's rewards). ``coef`` is ignored by the other
    methods. Returns ``[B]``; differentiable (WCO routes the gradient to the minimizing member).
    State: the K reward models only.

    Example::

        >>> R = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> aggregate_rewards(R, "uncertainty_weighted", coef=0.5)   # 2 - 0.5 * 1
        tensor([1.5000, 0.0000])
    """
    if not torch.is_tensor(rewards) or not rewards.is_floating_point() or rewards.dim() != 2 or rewards.shape[0] < 1:
        raise ValueError("Invalid rewards: expected a floating-point tensor of shape [K, B] with K >= 1")
    if method not in _METHODS:
        raise ValueError(f"Invalid method: {method!r} (accepted: {', '.join(_METHODS)})")
    coef = check_nonneg("coef", coef)
    if method == "mean":
        return rewards.mean(0)
    if method == "worst_case":
        return rewards.min(0).values
    k = rewards.shape[0]
    if unbiased and k < 2:
        raise ValueError("Invalid rewards: unbiased variance needs K >= 2 ensemble members")
    var = rewards.var(0, correction=1 if unbiased else 0)
    return rewards.mean(0) - coef * var
