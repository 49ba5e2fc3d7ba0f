"""SuperHF: supervised iterative learning from human feedback (Mukobi et al., 2023)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from ._common import check_nonneg

__all__ = ["superhf_loss", "superhf_select"]


def superhf_select(rewards: Tensor, *, top_k: int = 1) -> Tensor:
    r"""SuperHF's filter: a boolean mask of the ``top_k`` highest-reward completions per prompt.

    ``rewards [P, N]``: reward-model scores of N completions sampled from the current policy for each of P
    prompts (the authors' ``CompletionFilterTopK`` over one prompt's completions). Ties go to the lower
    index. Returns a bool mask ``[P, N]``.

    Example::

        >>> superhf_select(torch.tensor([[0.1, 0.9, 0.5]]))
        tensor([[False,  True, False]])
    """
    if not torch.is_tensor(rewards) or not rewards.is_floating_point() or rewards.dim() != 2:
        raise ValueError("Invalid rewards: expected a floating-point tensor of shape [P, N]")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= rewards.shape[1]:
        raise ValueError(f"Invalid top_k: {top_k!r} (accepted: an integer in [1, N={rewards.shape[1]}])")
    idx = torch.topk(rewards, top_k, dim=1, sorted=False).indices
    return torch.zeros_like(rewards, dtype=torch.bool).scatter_(1, idx, True)


@register(kind="preference", paper="SuperHF: Supervised Iterative Learning from Human Feedback", year=2023,
          arxiv="2310.16763", code="https://github.com/openfeedback/superhf",
          summary="SuperHF: cross-entropy on reward-filtered own completions plus a KL penalty to the prior model")
def superhf_loss(policy_logprobs: Tensor, prior_logprobs: Tensor, labels: Tensor, mask: Tensor,
                 *, kl_coef: float) -> Tensor:
    r"""SuperHF fine-tuning loss per filtered completion.

    Paper: Mukobi, Chatain, Fong, Windesheim, Kutyniok, Bhatia, Alberti, "SuperHF: Supervised Iterative
    Learning from Human Feedback", 2023, arXiv 2310.16763. Authors' code: https://github.com/openfeedback/superhf
    (``SuperHFTrainer.finetune`` in ``src/superhf/training.py``).

    Each SuperHF step samples completions from the current policy, scores them with a reward model, keeps the
    best ones (:func:`superhf_select`) and fine-tunes on them with the language-modelling loss plus a KL
    penalty to the prior (the model before SuperHF)::

        ce_i = -mean_{t in completion} log pi(y_t | y_<t, x)
        kl_i =  mean_{t in completion} sum_v p_prior(v | .) [log p_prior(v | .) - log pi(v | .)]
        loss_i = ce_i + kl_coef * max(kl_i, 0)

    KL: as the authors' code computes it (``KLDivLoss(reduction="batchmean", log_target=True)`` on the
    full next-token distributions of the completion tokens: ``KL(prior || pi)`` averaged over tokens, then
    clamped at 0). Inputs: ``policy_logprobs``, ``prior_logprobs`` ``[B, T, V]`` (log-softmax over the
    vocabulary; prior without gradient), ``labels [B, T]`` (token ids of the kept completions) and ``mask
    [B, T]`` (True on completion tokens). Rows with an empty mask give 0. State: the frozen prior only; the
    policy is re-sampled every step (no previous iterate is kept).

    Departures from the authors' code: the code averages the cross entropy over all completion tokens of a
    minibatch and sums the KL terms over its examples; here both are per example (take ``.mean()``). The
    code's optional ``inverse_loss_penalty`` (default 0) is left out. ``kl_coef`` has no default (the code's
    is 0, i.e. off; the paper sweeps it). Returns ``[B]``.

    Example::

        >>> lp = torch.log_softmax(torch.zeros(1, 2, 4), -1)
        >>> superhf_loss(lp, lp, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool), kl_coef=0.1)
        tensor([1.3863])
    """
    if not torch.is_tensor(policy_logprobs) or not policy_logprobs.is_floating_point() or policy_logprobs.dim() != 3:
        raise ValueError("Invalid policy_logprobs: expected a floating-point tensor of shape [B, T, V]")
    if not torch.is_tensor(prior_logprobs) or not prior_logprobs.is_floating_point() \
            or prior_logprobs.shape != policy_logprobs.shape:
        raise ValueError(f"Invalid prior_logprobs: expected a floating-point tensor of shape "
                         f"{tuple(policy_logprobs.shape)}")
    bt = policy_logprobs.shape[:2]
    if not torch.is_tensor(labels) or labels.dtype not in (torch.int64, torch.int32) or labels.shape != bt:
        raise ValueError(f"Invalid labels: expected an integer tensor of shape {tuple(bt)}")
    if not torch.is_tensor(mask) or mask.shape != bt:
        raise ValueError(f"Invalid mask: expected a tensor of shape {tuple(bt)}")
    kl_coef = check_nonneg("kl_coef", kl_coef)
    m = mask.to(policy_logprobs.dtype)
    n = m.sum(-1).clamp_min(1.0)
    tok = policy_logprobs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    ce = -(torch.where(mask.bool(), tok, torch.zeros_like(tok))).sum(-1) / n
    kl_tok = (prior_logprobs.exp() * (prior_logprobs - policy_logprobs)).sum(-1)
    kl = (torch.where(mask.bool(), kl_tok, torch.zeros_like(kl_tok))).sum(-1) / n
    return ce + kl_coef * kl.clamp_min(0.0)
