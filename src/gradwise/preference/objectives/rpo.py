r"""RPO: regularized preference optimization, DPO plus an SFT (chosen NLL) term."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_nonneg, check_positive
from .dpo import dpo_loss

__all__ = ["rpo_loss"]


@register(kind="preference",
          paper="Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer",
          year=2024, arxiv="2405.16436", code="https://github.com/YSLIU627/Regularized-Preference-Optimization",
          summary="RPO: DPO loss + sft_weight * NLL of the chosen response (average or cumulative)")
def rpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, sft_weight: float = 0.2,
             chosen_lengths: Tensor | None = None) -> Tensor:
    r"""Regularized Preference Optimization loss per pair.

    Paper: Liu, Lu, Zhang, Liu, Guo, Yang, Blanchet & Wang, "Provably Mitigating Overoptimization in
    RLHF: Your SFT Loss is Implicitly an Adversarial Regularizer", 2024 (NeurIPS), arXiv:2405.16436.
    Authors' code: https://github.com/YSLIU627/Regularized-Preference-Optimization (an OpenRLHF fork:
    ``openrlhf/trainer/dpo_trainer.py``, ``--nll_loss_coef``; ``train_rpo.sh``).

    The theory's adversarial reward penalty turns, through DPO's reward-policy equivalence, into an
    SFT loss on a baseline distribution; taking the chosen responses as the baseline:

    .. math::

        \ell = -\log\sigma(\beta h) + w \cdot \mathrm{NLL}(y_w),

    with ``h`` DPO's log-ratio margin and ``w = sft_weight``. Two forms, both in the authors' code
    (YSLIU627/Regularized-Preference-Optimization@d0389c4d):

    * cumulative (``chosen_lengths=None``; the paper's main experiments, authors' alignment-handbook
      ``scripts/rpo_trainer.py``): :math:`\mathrm{NLL}(y_w) = -\log\pi_\theta(y_w|x)`, the summed
      log-prob (``get_batch_logps`` sums, l.1349), weighted by ``eta * beta`` (their RPOConfig ``eta``)
      (``losses -= policy_chosen_logps * self.beta * self.eta``, l.1312-1313), so
      ``sft_weight = eta * beta``; their recipes use ``eta = 0.005`` with ``beta = 0.01`` (zephyr-7b-beta)
      or ``0.05`` (zephyr-7b-gemma), i.e. ``sft_weight`` 5e-5 or 2.5e-4;
    * average (``chosen_lengths`` given; the authors' OpenRLHF fork, Appendix F of the paper, "the
      default" in their README): :math:`\mathrm{NLL}(y_w) = -\log\pi_\theta(y_w|x) / |y_w|`, the per-sequence
      token mean (``openrlhf/trainer/dpo_trainer.py``, ``_get_batch_logps`` and l.293), added as
      ``preference_loss + nll_loss * nll_loss_coef`` (l.159) with no beta factor, so
      ``sft_weight = nll_loss_coef`` (``train_rpo.sh``: 0.2, with ``beta = 0.5``); the batch mean of this
      loss equals the authors' loss.

    ``sft_weight`` defaults to the authors' OpenRLHF value 0.2 (beta defaults to DPO's 0.1 here); with
    the cumulative form use the authors' ``eta * beta`` (about 1e-4), since that NLL grows with length.
    TRL 1.16 mapping: ``loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight]``; TRL's SFT term is
    one token-weighted mean over the batch, equal to the average form when all chosen completions have
    the same length (checked against TRL golden values one pair at a time). The DPO part is
    :func:`dpo_loss` (no label smoothing). (TRL's older ``rpo_alpha`` belongs to a different paper,
    Iterative Reasoning Preference Optimization, arXiv 2404.19733.)

    Args:
        chosen_lengths: completion token counts of the chosen responses, shape [B] (clamped to >= 1).

    Example::

        >>> pc, pr = torch.tensor([-5.0]), torch.tensor([-7.0])
        >>> rpo_loss(pc, pr, pc.new_tensor([-6.0]), pr.new_tensor([-6.0]), beta=0.1, sft_weight=0.2,
        ...          chosen_lengths=torch.tensor([5]))
        tensor([0.7981])
    """
    beta = check_positive("beta", beta)
    sft_weight = check_nonneg("sft_weight", sft_weight)
    shape = check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    nll = -policy_chosen_logps
    if chosen_lengths is not None:
        if not torch.is_tensor(chosen_lengths) or chosen_lengths.shape != shape:
            got = tuple(chosen_lengths.shape) if torch.is_tensor(chosen_lengths) else type(chosen_lengths).__name__
            raise ValueError(f"Invalid chosen_lengths: expected a tensor of token counts of shape {tuple(shape)}, "
                             f"got {got}")
        nll = nll / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1.0)
    return dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    beta=beta) + sft_weight * nll
