"""HyPO: offline DPO plus online reverse KL (Song et al., 2024)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from ._common import check_logps, check_nonneg, check_positive

__all__ = ["hypo_loss"]


@register(kind="preference",
          paper="The Importance of Online Data: Understanding Preference Fine-tuning via Coverage",
          year=2024, arxiv="2406.01462", code=None,
          summary="HyPO: DPO on offline pairs plus a reverse-KL penalty estimated on the policy's own samples")
def hypo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
              policy_online_logps: Tensor, ref_online_logps: Tensor,
              *, beta: float = 0.1, lam: float) -> Tensor:
    r"""HyPO (Hybrid Preference Optimization) loss per prompt.

    Paper: Song, Swamy, Singh, Bagnell, Sun, "The Importance of Online Data: Understanding Preference
    Fine-tuning via Coverage", 2024, arXiv 2406.01462 (NeurIPS 2024). Authors' code: none found.

    DPO's offline loss only constrains the policy on the data's support; HyPO adds the reverse KL
    ``KL(pi || pi_ref)``, which needs samples from the policy (unlabelled, so no preference oracle)::

        loss = -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
               + lam * k1,   k1 = log pi(y) - log pi_ref(y),   y ~ pi(.|x)

    KL estimator: the plain one-sample ``k1`` estimate of ``E_{y~pi}[log pi(y)/pi_ref(y)]``, as the paper
    writes the online term. Because the expectation is over ``pi`` itself, differentiating ``k1`` through
    the log-probs alone gives ``grad log pi`` (mean zero); the term is therefore written so that its value
    is ``k1`` and its gradient is the score-function gradient ``k1 * grad log pi(y)`` of the KL:
    ``k1 + stopgrad(k1) * (log pi(y) - stopgrad(log pi(y)))``. (Choice: no baseline; a batch-mean baseline
    would lower the variance.) Inputs: offline pair log-probs ``[B]`` and, for the same prompts, the log-probs
    of one fresh sample ``y ~ pi_theta`` under the policy (with gradient) and ``pi_ref`` (``[B]``). State:
    ``pi_ref`` only; the samples come from the current policy (no previous iterate). ``lam`` has no default.
    Returns per-prompt losses ``[B]``.

    Example::

        >>> z = torch.zeros(1)
        >>> hypo_loss(z, z, z, z, z - 1, z - 2, lam=0.5)   # log 2 + 0.5 * 1
        tensor([1.1931])
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                policy_online_logps=policy_online_logps, ref_online_logps=ref_online_logps)
    beta = check_positive("beta", beta)
    lam = check_nonneg("lam", lam)
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    dpo = -F.logsigmoid(beta * logits)
    k1 = (policy_online_logps - ref_online_logps).detach()
    online = k1 + k1 * (policy_online_logps - policy_online_logps.detach())
    return dpo + lam * online
