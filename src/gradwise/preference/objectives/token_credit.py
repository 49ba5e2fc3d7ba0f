"""Token-level implicit rewards for credit assignment (Rafailov et al., 2024, "From r to Q*")."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["token_implicit_rewards", "cumulative_implicit_rewards"]

_PAPER = "From r to Q^*: Your Language Model is Secretly a Q-Function"


def _check_mask(mask, shape):
    if not torch.is_tensor(mask) or mask.shape != shape:
        raise ValueError(f"Invalid mask: expected a tensor of shape {tuple(shape)} (True on response tokens)")


@register(kind="preference", paper=_PAPER, year=2024, arxiv="2404.12358", code=None,
          summary="Per-token DPO implicit rewards beta*(log pi - log pi_ref) for credit assignment")
def token_implicit_rewards(policy_token_logps: Tensor, ref_token_logps: Tensor, mask: Tensor,
                           *, beta: float = 0.1) -> Tensor:
    r"""Per-token implicit rewards of a DPO-trained policy.

    Paper: Rafailov, Hejna, Park, Finn, "From r to Q*: Your Language Model is Secretly a Q-Function", 2024,
    arXiv 2404.12358. Authors' code: none for this computation.

    In the token-level MDP the DPO policy satisfies ``beta log pi(a_t|s_t)/pi_ref(a_t|s_t) = Q*(s_t, a_t) -
    V*(s_t)``: each token's log-ratio is an advantage-like implicit reward, and the sum over the response is
    the sequence-level DPO reward (up to the start-state value). So::

        r_t = beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) * mask_t

    Inputs: per-token log-probs of the taken tokens ``[B, T]`` under the policy and the reference, ``mask
    [B, T]`` (True on response tokens). Returns ``[B, T]`` (0 where masked). ``r.sum(-1)`` is DPO's implicit
    reward ``beta log pi(y)/pi_ref(y)``. State: ``pi_ref``. ``beta`` must be the DPO beta the policy was
    trained with (default 0.1).

    Example::

        >>> token_implicit_rewards(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -2.0]]),
        ...                        torch.tensor([[True, False]]), beta=0.5)
        tensor([[0.5000, 0.0000]])
    """
    shape = check_logps(policy_token_logps=policy_token_logps, ref_token_logps=ref_token_logps)
    if len(shape) != 2:
        raise ValueError(f"Invalid policy_token_logps: expected shape [B, T], got {tuple(shape)}")
    _check_mask(mask, shape)
    beta = check_positive("beta", beta)
    r = beta * (policy_token_logps - ref_token_logps)
    return torch.where(mask.bool(), r, torch.zeros_like(r))


def cumulative_implicit_rewards(policy_token_logps: Tensor, ref_token_logps: Tensor, mask: Tensor,
                                *, beta: float = 0.1) -> Tensor:
    r"""Running sums ``sum_{k<=t} r_k`` of :func:`token_implicit_rewards` along the response.

    By the paper's telescoping identity the partial sum up to token t equals ``Q*(s_t, a_t) - V*(s_0)``
    (arXiv 2404.12358): the implicit value of the prefix, used to find where a response goes wrong (credit
    assignment) and for search. Masked tokens add 0, so after the response the sum stays at the sequence
    reward. Returns ``[B, T]``.

    Example::

        >>> cumulative_implicit_rewards(torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -3.0]]),
        ...                             torch.ones(1, 2, dtype=torch.bool), beta=1.0)
        tensor([[1., 3.]])
    """
    return token_implicit_rewards(policy_token_logps, ref_token_logps, mask, beta=beta).cumsum(-1)
