"""SuperHF: supervised iterative learning from human feedback (Mukobi et al., 2023)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_nonneg

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
def superhf_loss(policy_logprobs: Tensor, prior_logprobs: Tensor, labels: Tensor, mask: Tensor | None = None,
                 *, kl_coef: float) -> Tensor:
    r"""SuperHF fine-tuning loss per filtered completion.

    Paper: Mukobi, Chatain, Fong, Windesheim, Kutyniok, Bhatia, Alberti, "SuperHF: Supervised Iterative
    Learning from Human Feedback", 2023, arXiv 2310.16763. Authors' code: https://github.com/openfeedback/superhf
    (``SuperHFTrainer.finetune_language_model`` in ``src/superhf/training.py``).

    Each SuperHF step samples completions from the current policy, scores them with a reward model, keeps the
    best ones (:func:`superhf_select`) and fine-tunes on them with the language-modelling loss plus a KL
    penalty to the prior (the model before SuperHF).

    Inputs are in **input coordinates**, as the authors' code has them: ``policy_logprobs`` and
    ``prior_logprobs`` ``[B, T, V]`` are the log-softmax of the two models' logits on the input sequence
    (position ``t`` predicts token ``t + 1``; prior without gradient), ``labels [B, T]`` the input token ids
    and ``mask [B, T]`` True on the completion tokens (default: ``labels != -100``, the authors' labels, with
    -100 on the prompt). With ``C_i`` the completion positions of example ``i``::

        ce_i = -mean_{t in C_i, t >= 1} log pi_{t-1}(labels_t)          (Hugging Face's shifted LM loss)
        kl_i =  mean_{t in C_i} sum_v p_prior,t(v) [log p_prior,t(v) - log pi_t(v)]
        loss_i = ce_i + kl_coef * max(kl_i, 0)

    The two terms use **different rows**: the cross entropy scores each completion token from the position
    before it (the model's ``outputs.loss`` with ``labels``), while the authors' KL takes
    ``logp[i, labels[i] != -100]``, i.e. the distributions *at* the completion tokens' own positions (the
    last one predicts past the sequence; the last prompt position, which predicts the first completion
    token, is not in it). This is their ``KLDivLoss(reduction="batchmean", log_target=True)`` call per
    example: ``KL(prior || pi)`` averaged over those positions, clamped at 0. Rows without a counted
    position give 0 for that term. State: the frozen prior only; the policy is re-sampled every step (no
    previous iterate is kept).

    Departures from the authors' code: the code averages the cross entropy over all completion tokens of a
    minibatch and sums the KL terms over its examples; here both are per example (take ``.mean()``). The
    code's optional ``inverse_loss_penalty`` (default 0) is left out. ``kl_coef`` has no default (the code's
    is 0, i.e. off; the paper sweeps it). Returns ``[B]``.

    Example::

        >>> lp = torch.log_softmax(torch.zeros(1, 3, 4), -1)
        >>> superhf_loss(lp, lp, torch.tensor([[1, 2, 3]]), torch.tensor([[False, True, True]]), kl_coef=0.1)
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
    if mask is None:
        mask = labels != -100
    if not torch.is_tensor(mask) or mask.shape != bt:
        raise ValueError(f"Invalid mask: expected None or a tensor of shape {tuple(bt)}")
    kl_coef = check_nonneg("kl_coef", kl_coef)
    mask = mask.bool()
    V = policy_logprobs.shape[-1]
    tgt = labels[:, 1:].long()
    bad = mask[:, 1:] & ((tgt < 0) | (tgt >= V))
    if bool(bad.any()):
        raise ValueError(f"Invalid labels: a completion position holds {int(tgt[bad][0])}, outside [0, {V}) "
                         "(mark prompt and padding with -100 or with mask)")
    # cross entropy: token t scored by the distribution at t - 1 (labels shifted, as Hugging Face does)
    ce_m = mask[:, 1:]
    tok = policy_logprobs[:, :-1].gather(-1, torch.where(ce_m, tgt, 0).unsqueeze(-1)).squeeze(-1)
    ce = -torch.where(ce_m, tok, torch.zeros_like(tok)).sum(-1) / ce_m.sum(-1).clamp_min(1).to(tok.dtype)
    # KL: the distributions at the completion tokens' own positions (the authors' logp[i, labels[i] != -100])
    kl_tok = (prior_logprobs.exp() * (prior_logprobs - policy_logprobs)).sum(-1)
    kl = torch.where(mask, kl_tok, torch.zeros_like(kl_tok)).sum(-1) / mask.sum(-1).clamp_min(1).to(kl_tok.dtype)
    return ce + kl_coef * kl.clamp_min(0.0)
