r"""SimPO: reference-free preference optimization on length-normalized log-probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_nonneg, check_positive

__all__ = ["simpo_loss"]


@register(kind="preference", paper="SimPO: Simple Preference Optimization with a Reference-Free Reward", year=2024,
          arxiv="2405.14734", code="https://github.com/princeton-nlp/SimPO",
          summary="SimPO: -log sigmoid(beta * (avg logp_w - avg logp_l) - gamma), no reference model")
def simpo_loss(policy_chosen_avg_logps: Tensor, policy_rejected_avg_logps: Tensor, *, beta: float = 2.0,
               gamma: float = 0.5, label_smoothing: float = 0.0, loss: str = "sigmoid") -> Tensor:
    r"""SimPO loss per pair.

    Paper: Meng, Xia & Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    2024, arXiv:2405.14734 (Eq. 6). Authors' code: https://github.com/princeton-nlp/SimPO
    (``SimPOTrainer.simpo_loss`` in ``scripts/simpo_trainer.py``).

    The implicit reward is the length-normalized log-likelihood scaled by beta,
    :math:`r(x, y) = \frac{\beta}{|y|}\log\pi_\theta(y|x)`, and the loss asks for a target reward
    margin :math:`\gamma`:

    .. math::

        \ell = -\log\sigma\Bigl(\frac{\beta}{|y_w|}\log\pi_\theta(y_w|x)
                               - \frac{\beta}{|y_l|}\log\pi_\theta(y_l|x) - \gamma\Bigr).

    Inputs are the *average* per-token log-probs (sum over completion tokens divided by their
    count), shape [B]. ``gamma`` is the paper's margin in reward units; the authors' code is
    configured with ``gamma_beta_ratio = gamma / beta`` and computes
    ``beta * (avg_w - avg_l - gamma_beta_ratio)``, which is the same number. Defaults are the
    authors' config defaults (``beta=2.0``, ``gamma_beta_ratio=0.25``, so ``gamma=0.5``); the
    paper tunes beta in [2, 10] and gamma in [0.3, 1.6] per model.

    Options as in the authors' trainer: ``label_smoothing = eps`` gives
    :math:`-(1-\epsilon)\log\sigma(z) - \epsilon\log\sigma(-z)`; ``loss="hinge"`` gives
    :math:`\max(0, 1 - z)` with :math:`z` the argument above. The authors' optional SFT term
    (``sft_weight``) is left to the caller. Checked to float64 precision against golden values
    (losses and gradients) from the authors' ``simpo_loss``.

    Example::

        >>> simpo_loss(torch.tensor([-0.5]), torch.tensor([-1.0]), beta=2.0, gamma=0.5)
        tensor([0.4741])
    """
    beta = check_positive("beta", beta)
    gamma = check_nonneg("gamma", gamma)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"Invalid label_smoothing: {label_smoothing!r} (accepted: a number in [0, 0.5))")
    if loss not in ("sigmoid", "hinge"):
        raise ValueError(f"Invalid loss: {loss!r} (accepted: 'sigmoid', 'hinge')")
    check_logps(policy_chosen_avg_logps=policy_chosen_avg_logps, policy_rejected_avg_logps=policy_rejected_avg_logps)
    z = beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma
    if loss == "hinge":
        return torch.relu(1.0 - z)
    if label_smoothing == 0.0:
        return -F.logsigmoid(z)
    eps = float(label_smoothing)
    return -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
