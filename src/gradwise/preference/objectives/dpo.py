r"""DPO (sigmoid, with conservative / robust label smoothing) and the SLiC-style hinge loss.

Both take sequence-level summed log-probabilities of shape [B] from the policy and the frozen
reference model and return per-pair losses of shape [B]. The implicit reward margin is

.. math::

    h = \bigl(\log\pi_\theta(y_w|x) - \log\pi_{ref}(y_w|x)\bigr)
      - \bigl(\log\pi_\theta(y_l|x) - \log\pi_{ref}(y_l|x)\bigr).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["dpo_loss", "dpo_hinge_loss", "dpo_margin"]


def dpo_margin(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
               ref_rejected_logps: Tensor) -> Tensor:
    """The log-ratio margin ``h`` (chosen log-ratio minus rejected log-ratio), shape [B]."""
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


@register(kind="preference", paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
          year=2023, arxiv="2305.18290", code="https://github.com/eric-mitchell/direct-preference-optimization",
          seed=False, summary="DPO: -log sigmoid(beta * log-ratio margin), conservative or robust label smoothing",
          info={"online": "gradwise.preference.online.iterative:IterativeDPO"})
def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0,
             smoothing: str = "conservative") -> Tensor:
    r"""Direct Preference Optimization loss per pair.

    Paper: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
    Model", 2023, arXiv:2305.18290 (Eq. 7). Authors' code:
    https://github.com/eric-mitchell/direct-preference-optimization.

    .. math::

        \ell = -\log\sigma(\beta h)

    with ``h`` the log-ratio margin (see :func:`dpo_margin`). With ``label_smoothing = eps > 0``:

    * ``smoothing="conservative"`` (cDPO, Mitchell 2023; the authors' ``label_smoothing`` and TRL's
      old sigmoid loss): :math:`-(1-\epsilon)\log\sigma(\beta h) - \epsilon\log\sigma(-\beta h)`;
    * ``smoothing="robust"`` (rDPO, Chowdhury et al. 2024, arXiv:2403.00409; TRL's
      ``loss_type="robust"``): :math:`[-(1-\epsilon)\log\sigma(\beta h) + \epsilon\log\sigma(-\beta h)]
      / (1-2\epsilon)`, an unbiased estimate of the clean loss under label flips of rate eps.

    TRL 1.16 mapping: ``loss_type="sigmoid"`` (TRL 1.16 no longer applies ``label_smoothing`` to
    it) and ``loss_type="robust"`` with the same ``beta``/``label_smoothing``; checked to float64
    precision against golden values from TRL's ``DPOTrainer._compute_loss``.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: summed
            log-probs of the completions, shape [B], floating point.
        beta: inverse temperature (> 0); the KL-regularization strength of the RLHF problem.
        label_smoothing: assumed label-flip rate eps in [0, 0.5).
        smoothing: "conservative" or "robust".

    Returns the per-pair loss, shape [B]; take ``.mean()`` for the batch loss.

    Example::

        >>> pc, pr = torch.tensor([-5.0]), torch.tensor([-7.0])
        >>> dpo_loss(pc, pr, pc.new_tensor([-6.0]), pr.new_tensor([-6.0]), beta=0.1)
        tensor([0.5981])
    """
    beta = check_positive("beta", beta)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"Invalid label_smoothing: {label_smoothing!r} (accepted: a number in [0, 0.5))")
    if smoothing not in ("conservative", "robust"):
        raise ValueError(f"Invalid smoothing: {smoothing!r} (accepted: 'conservative', 'robust')")
    logits = beta * dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if label_smoothing == 0.0:
        return -F.logsigmoid(logits)
    eps = float(label_smoothing)
    if smoothing == "conservative":
        return -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)


@register(kind="preference", paper="SLiC-HF: Sequence Likelihood Calibration with Human Feedback", year=2023,
          arxiv="2305.10425", code=None, seed=False,
          summary="Hinge loss max(0, 1 - beta * log-ratio margin) (SLiC calibration loss on reference-normalized "
                  "likelihoods, TRL's loss_type='hinge')")
def dpo_hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                   ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Tensor:
    r"""Hinge (SLiC) preference loss on the reference-normalized likelihood margin.

    Paper: Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", 2023,
    arXiv:2305.10425. SLiC's calibration loss is :math:`\max(0, \delta - \log\pi(y_w) +
    \log\pi(y_l))`; following RSO (Liu et al., arXiv:2309.06657) and TRL's ``loss_type="hinge"`` the
    margin is measured on reference-normalized log-probs and scaled by beta:

    .. math::

        \ell = \max(0,\; 1 - \beta h), \qquad \text{i.e. } \delta = 1/\beta \text{ in log-ratio units.}

    SLiC's separate SFT regularizer is not included (add a chosen NLL term, e.g. via
    :func:`rpo_loss`'s form, if wanted). Checked against TRL 1.16's ``loss_type="hinge"``.

    Example::

        >>> dpo_hinge_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]),
        ...                torch.tensor([-6.0]), beta=0.1)
        tensor([0.8000])
    """
    beta = check_positive("beta", beta)
    h = dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1.0 - beta * h)
