"""INPO: Iterative Nash Policy Optimization (Zhang et al., 2024)."""
from __future__ import annotations

from torch import Tensor

from gradwise.registry import register

from ._common import check_logps, check_nonneg, check_positive

__all__ = ["inpo_loss"]


@register(kind="preference",
          paper="Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret Learning",
          year=2024, arxiv="2407.00617", code=None,
          summary="INPO: squared loss regressing the log-ratio against pi_t and pi_ref onto eta/2 (online mirror descent step)")
def inpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              prev_chosen_logps: Tensor, prev_rejected_logps: Tensor,
              ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
              *, eta: float, tau: float) -> Tensor:
    r"""INPO loss of one iteration of Iterative Nash Policy Optimization.

    Paper: Zhang, Yu, Peng, Song, Tian, Huo, Jiang, Mi, Yu, "Iterative Nash Policy Optimization:
    Aligning LLMs with General Preferences via No-Regret Learning", 2024, arXiv 2407.00617 (ICLR 2025).
    Authors' code: none released that we could find.

    INPO runs online mirror descent on the KL-regularized preference game: the target of iteration t is
    ``pi_{t+1}(y) ∝ pi_t(y)^{1-eta*tau} pi_ref(y)^{eta*tau} exp(eta P(y > pi_t))``. With
    ``h_t(pi, y, y') = log pi(y)/pi(y') - eta*tau log pi_ref(y)/pi_ref(y') - (1 - eta*tau) log pi_t(y)/pi_t(y')``
    the population loss ``E_{y,y'~pi_t}[(h_t - eta (P(y>pi_t) - P(y'>pi_t)))^2]`` equals, up to a constant
    (the IPO argument, ``h_t`` being a difference of per-response terms), the loss on labelled pairs
    sampled from ``pi_t``::

        loss = (h_t(pi, y_w, y_l) - eta / 2) ** 2

    so no win rate has to be estimated. Inputs are sequence log-probs ``[B]`` of the chosen/rejected
    responses under the policy being trained, the previous iterate ``pi_t`` (no gradient), and ``pi_ref``.
    The trainer keeps ``pi_t`` (a frozen copy of the policy from the start of the iteration, which also
    generates the pairs) and ``pi_ref``.

    Limits: ``eta * tau = 1`` gives IPO against ``pi_ref`` with ``beta = 1/eta``; ``tau = 0`` gives IPO against
    the previous iterate. Choices: ``eta`` and ``tau`` have no defaults (the paper tunes them per run);
    ``eta * tau`` must lie in ``[0, 1]`` so the target is a geometric mixture of ``pi_t`` and ``pi_ref``
    (our restriction). Returns per-pair losses ``[B]``.

    Example::

        >>> lp = torch.tensor([-3.0]); ln = torch.tensor([-5.0]); z = torch.tensor([-4.0])
        >>> inpo_loss(lp, ln, z, z, z, z, eta=2.0, tau=0.1)   # (2 - 1)^2
        tensor([1.])
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                prev_chosen_logps=prev_chosen_logps, prev_rejected_logps=prev_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    eta = check_positive("eta", eta)
    tau = check_nonneg("tau", tau)
    if eta * tau > 1:
        raise ValueError(f"Invalid eta*tau: {eta * tau!r} (accepted: eta * tau in [0, 1])")
    mix = eta * tau
    h = ((policy_chosen_logps - policy_rejected_logps)
         - mix * (ref_chosen_logps - ref_rejected_logps)
         - (1.0 - mix) * (prev_chosen_logps - prev_rejected_logps))
    return (h - eta / 2) ** 2
