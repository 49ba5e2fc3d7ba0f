r"""D3PO: DPO on the denoising steps of a diffusion model, with clipped per-step probability ratios."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["d3po_loss"]


@register(kind="preference", paper="Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model",
          year=2024, arxiv="2311.13231", code="https://github.com/yk7333/D3PO",
          summary="D3PO: -log sigmoid(beta log r_w - beta log r_l) per denoising step, r = clip(pi/pi_ref, "
                  "1 - eps, 1 + eps); ties give log 2 and no gradient")
def d3po_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float = 0.1, eps: float = 0.1,
              ties: Tensor | None = None) -> Tensor:
    r"""Direct Preference for Denoising Diffusion Policy Optimization loss, per pair and denoising step.

    Paper: Yang, Tao, Lyu, Ge, Chen, Li, Li, Xu, "Using Human Feedback to Fine-tune Diffusion Models
    without Any Reward Model", CVPR 2024, arXiv 2311.13231. Authors' code: yk7333/D3PO @ 40d3175,
    ``scripts/train.py`` (the loss lines after ``ddim_step_with_logprob``), which
    ``tests/preference/test_d3po.py`` checks in float64 (rel 1e-10, ``tests/data/d3po_golden.pt``).

    Each denoising step :math:`t` of the preferred (w) and dispreferred (l) trajectories is one DPO
    decision, with the ratio to the reference model clipped as in PPO:

    .. math::

        r = \mathrm{clip}\Bigl(\frac{\pi_\theta(x_{t-1}\mid x_t)}{\pi_{ref}(x_{t-1}\mid x_t)},
        1-\epsilon, 1+\epsilon\Bigr),\qquad
        \ell_t = -\log\sigma\bigl(\beta\log r_w - \beta\log r_l\bigr).

    Inputs are the per-step log-probabilities of the step that was taken, e.g. from
    :func:`gradwise.diffusion.ddim_step_logprob` (the authors average them over the latent's entries),
    shaped ``[B]`` (one step per pair) or ``[B, T]`` (T steps); the loss has the same shape and
    ``.mean()`` is the authors' scalar. Outside the clip range the ratio is constant and its gradient 0.
    ``ties`` (bool ``[B]``) marks pairs the labeller judged equal: the authors give both sides label 0, so
    the loss is :math:`\log 2` with zero gradient, and it stays in their mean.

    The clip is applied to the log-ratio, :math:`\log r = \mathrm{clip}(\log\pi_\theta - \log\pi_{ref},
    \log(1-\epsilon), \log(1+\epsilon))`, equal to the authors' ``log(clamp(exp(.)))`` without
    overflowing ``exp``. Dtype in = out; no host sync.

    Example::

        >>> d3po_loss(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-1.0]),
        ...           torch.tensor([1.0]), beta=1.0, eps=0.1)
        tensor([0.5978])
    """
    beta = check_positive("beta", beta)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
        raise ValueError(f"Invalid eps: {eps!r} (accepted: a number with 0 < eps < 1)")
    shape = check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if len(shape) not in (1, 2):
        raise ValueError(f"Invalid policy_chosen_logps: shape {tuple(shape)} (accepted: [B] or [B, T] per-step "
                         "log-probabilities)")
    lo, hi = math.log(1.0 - eps), math.log(1.0 + eps)
    log_rw = (policy_chosen_logps - ref_chosen_logps).clamp(lo, hi)
    log_rl = (policy_rejected_logps - ref_rejected_logps).clamp(lo, hi)
    loss = -torch.nn.functional.logsigmoid(beta * (log_rw - log_rl))
    if ties is None:
        return loss
    if not torch.is_tensor(ties) or ties.dtype != torch.bool or ties.shape != shape[:1]:
        got = type(ties).__name__ if not torch.is_tensor(ties) else f"{ties.dtype} of shape {tuple(ties.shape)}"
        raise ValueError(f"Invalid ties: {got} (accepted: a bool tensor [B] with B = {shape[0]})")
    mask = ties.reshape(ties.shape + (1,) * (loss.ndim - 1))
    return torch.where(mask, torch.full_like(loss, math.log(2.0)), loss)
