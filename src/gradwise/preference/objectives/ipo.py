r"""IPO: identity preference optimization, the squared-loss baseline of Azar et al."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive
from .dpo import dpo_margin

__all__ = ["ipo_loss"]


def _as_lengths(name: str, lengths, shape, dtype) -> Tensor:
    """Completion token counts as ``dtype``, clamped to >= 1 as TRL does; ValueError naming a bad one.

    Only the type and shape are checked (a value check would need a host sync).
    """
    if not torch.is_tensor(lengths):
        raise ValueError(f"Invalid {name}: expected a tensor of token counts of shape {tuple(shape)}, "
                         f"got {type(lengths).__name__}")
    if lengths.shape != shape:
        raise ValueError(f"Invalid {name}: expected shape {tuple(shape)}, got {tuple(lengths.shape)}")
    return lengths.to(dtype).clamp(min=1.0)


@register(kind="preference", paper="A General Theoretical Paradigm to Understand Learning from Human Preferences",
          year=2023, arxiv="2310.12036", code=None, seed=False,
          summary="IPO: (log-ratio margin - 1/(2 beta))^2, optionally token-averaged as in TRL")
def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, chosen_lengths: Tensor | None = None,
             rejected_lengths: Tensor | None = None) -> Tensor:
    r"""Identity Preference Optimization loss per pair.

    Paper: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", 2023, arXiv:2310.12036 (Eq. 17, the empirical IPO loss). No authors' code was
    released.

    .. math::

        \ell = \Bigl(h - \frac{1}{2\beta}\Bigr)^2,\qquad
        h = \log\frac{\pi_\theta(y_w)}{\pi_{ref}(y_w)} - \log\frac{\pi_\theta(y_l)}{\pi_{ref}(y_l)},

    where ``beta`` is the paper's regularization parameter :math:`\tau`. The minimum (zero) is at
    ``h = 1/(2 beta)``: unlike DPO, IPO does not push the margin to infinity.

    Token-averaged variant (TRL's ``loss_type="ipo"``): pass ``chosen_lengths`` and
    ``rejected_lengths`` (token counts, shape [B]; clamped to >= 1 as in TRL) and each log-ratio is divided by
    its completion's length before the margin is taken,
    :math:`h = \frac{\log\pi_\theta(y_w)/\pi_{ref}(y_w)}{|y_w|} - \frac{\log\pi_\theta(y_l)/\pi_{ref}(y_l)}{|y_l|}`.
    TRL says the IPO authors confirmed their reported results used this normalized form. With no
    lengths (the default) this is the paper's Eq. 17 on summed log-probs. Both forms are checked
    against TRL 1.16 (the sequence-level one with unit lengths).

    Example::

        >>> ipo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]),
        ...          torch.tensor([-6.0]), beta=0.25)
        tensor([0.])
    """
    beta = check_positive("beta", beta)
    shape = check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("Invalid chosen_lengths/rejected_lengths: pass both (token-averaged IPO) or neither")
    if chosen_lengths is None:
        h = dpo_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    else:
        dt = policy_chosen_logps.dtype
        lc = _as_lengths("chosen_lengths", chosen_lengths, shape, dt)
        lr = _as_lengths("rejected_lengths", rejected_lengths, shape, dt)
        h = (policy_chosen_logps - ref_chosen_logps) / lc - (policy_rejected_logps - ref_rejected_logps) / lr
    return (h - 1.0 / (2.0 * beta)) ** 2
