"""INPO: Iterative Nash Policy Optimization (Zhang et al., 2024)."""
from __future__ import annotations

from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_nonneg, check_positive

__all__ = ["inpo_loss"]


@register(kind="preference",
          paper="Iterative Nash Policy Optimization: Aligning LLMs with General Preferences via No-Regret Learning",
          year=2024, arxiv="2407.00617", code=None,
          summary="INPO: squared loss regressing the log-ratio against pi_t and pi_ref (weights (eta-tau)/eta, "
                  "tau/eta) onto 1/(2 eta) (online mirror descent step)",
          info={"online": "gradwise.preference.online.iterative:INPO"})
def inpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              prev_chosen_logps: Tensor, prev_rejected_logps: Tensor,
              ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
              *, eta: float, tau: float) -> Tensor:
    r"""INPO loss of one iteration of Iterative Nash Policy Optimization.

    Paper: Zhang, Yu, Peng, Song, Tian, Huo, Jiang, Mi, Yu, "Iterative Nash Policy Optimization:
    Aligning LLMs with General Preferences via No-Regret Learning", 2024, arXiv 2407.00617 (ICLR 2025).
    Authors' code: none released that we could find.

    INPO runs online mirror descent on the tau-KL-regularized preference game. Eq. (4) of the paper,
    ``pi_{t+1} = argmin_pi <grad l_t(pi_t), pi> + eta KL(pi || pi_t)`` (``1/eta`` is the OMD learning rate,
    ``tau`` the KL coefficient of the game), has the closed form (Eq. 5)::

        pi_{t+1}(y) ∝ exp(P(y > pi_t) / eta) * pi_ref(y)^(tau/eta) * pi_t(y)^(1 - tau/eta)

    With (Sec. 3.2)::

        h_t(pi, y, y') = log pi(y)/pi(y') - (tau/eta) log pi_ref(y)/pi_ref(y')
                         - ((eta - tau)/eta) log pi_t(y)/pi_t(y')

    ``h_t(pi_{t+1}, y, y') = (P(y > pi_t) - P(y' > pi_t)) / eta`` (Eq. 6), and the squared regression onto that
    target equals, up to a constant (Proposition 6), the loss on pairs ``y, y' ~ pi_t`` labelled by the
    preference oracle (Eq. 8, Algorithm 1 line 5)::

        loss = (h_t(pi, y_w, y_l) - 1 / (2 eta)) ** 2

    so no win rate has to be estimated. Inputs are sequence log-probs ``[B]`` of the chosen/rejected
    responses under the policy being trained, the previous iterate ``pi_t`` (no gradient), and ``pi_ref``.
    The trainer keeps ``pi_t`` (a frozen copy of the policy from the start of the iteration, which also
    generates the pairs) and ``pi_ref``.

    Checked against the paper's own text (ICLR 2025 version, Sec. 3.1-3.3, Eqs. 4-8, Algorithm 1,
    Appendix B); ``eta`` and ``tau`` are the paper's. The paper's runs use ``eta = 0.005`` (grid
    0.1, 0.01, 0.0075, 0.005, 0.002) and ``tau = eta / 3``; "INPO w/o KL" is ``tau = 0``.

    Limits: ``tau = eta`` gives IPO against ``pi_ref`` with IPO's ``beta = eta`` (target ``1/(2 beta)``);
    ``tau = 0`` gives IPO against the previous iterate with ``beta = eta``. Choices: ``eta`` and ``tau`` have
    no defaults (the paper tunes them); ``0 <= tau <= eta`` is required so that the target is a geometric
    mixture of ``pi_t`` and ``pi_ref`` (our restriction; the paper's theory uses ``eta >= tau``). Returns
    per-pair losses ``[B]``.

    Example::

        >>> lp = torch.tensor([-3.0]); ln = torch.tensor([-5.0]); z = torch.tensor([-4.0])
        >>> inpo_loss(lp, ln, z, z, z, z, eta=0.5, tau=0.1)   # (2 - 1/(2*0.5))^2
        tensor([1.])
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                prev_chosen_logps=prev_chosen_logps, prev_rejected_logps=prev_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    eta = check_positive("eta", eta)
    tau = check_nonneg("tau", tau)
    if tau > eta:
        raise ValueError(f"Invalid tau: {tau!r} (accepted: 0 <= tau <= eta = {eta!r})")
    w_ref = tau / eta
    h = ((policy_chosen_logps - policy_rejected_logps)
         - w_ref * (ref_chosen_logps - ref_rejected_logps)
         - (1.0 - w_ref) * (prev_chosen_logps - prev_rejected_logps))
    return (h - 1.0 / (2.0 * eta)) ** 2
