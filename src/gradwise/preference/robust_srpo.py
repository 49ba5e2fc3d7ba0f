"""SRPO: Self-Improving Robust Preference Optimization (Choi et al., 2024)."""
from __future__ import annotations

from torch import Tensor

from gradwise.registry import register

from ._common import check_logps, check_positive

__all__ = ["srpo_loss"]


@register(kind="preference", paper="Self-Improving Robust Preference Optimization", year=2024,
          arxiv="2406.01660", code=None,
          summary="SRPO: joint squared loss for a self-improvement policy pi(y'|y,x) and a robust policy pi(y|x)")
def srpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
              improve_w_given_l_logps: Tensor, improve_l_given_l_logps: Tensor, improve_l_given_w_logps: Tensor,
              ref_w_given_l_logps: Tensor, ref_l_given_l_logps: Tensor, ref_l_given_w_logps: Tensor,
              *, beta: float = 0.1, alpha: float = 0.5) -> Tensor:
    r"""SRPO offline loss on a labelled pair (y_w preferred to y_l).

    Paper: Choi, Ahmadian, Geist, Pietquin, Azar, "Self-Improving Robust Preference Optimization", 2024,
    arXiv 2406.01660 (ICLR 2025). Authors' code: none released.

    SRPO solves ``min_pi max_{pi'} E_{y~pi, y'~pi'(.|y)}[P(y' > y)] - beta KL(pi' || pi_ref) + beta KL(pi || pi_ref)``
    where ``pi'(y'|y, x)`` is a self-improvement (revision) policy, in practice the same LLM prompted with
    ``x`` and a draft ``y``. The closed-form solutions give, with ``h(y) = log pi(y|x) - log pi_ref(y|x)`` and
    ``g(y'|y) = log pi'(y'|y, x) - log pi_ref(y'|y, x)``:

    * self-improvement: ``beta [g(y2|y1) - g(y1|y1)] = P(y2 > y1) - 1/2``;
    * robust policy: ``beta [g(y2|y1) - h(y1)] - beta [g(y1|y2) - h(y2)] = 2 P(y2 > y1) - 1``.

    Both hold without reference to the behaviour policy (the paper's robustness claim). On a pair labelled
    ``y_w > y_l`` the probabilities are replaced by the label (IPO's argument), giving::

        loss = alpha     * (beta [g(y_w|y_l) - g(y_l|y_l)] - 1/2) ** 2
             + (1-alpha) * (beta [g(y_w|y_l) - h(y_l) - g(y_l|y_w) + h(y_w)] - 1) ** 2

    ``alpha`` in [0, 1] trades the two (the paper's ``L_alpha`` family). Inputs, all ``[B]``: policy and
    reference log-probs of ``y_w``/``y_l`` given ``x``; the revision log-probs ``log pi'(y_w|y_l,x)``,
    ``log pi'(y_l|y_l,x)``, ``log pi'(y_l|y_w,x)`` and the reference's for the same revision prompts. State:
    ``pi_ref`` only (SRPO is offline; no previous iterate).

    Not checked against the paper's printed equation: we could read only the abstract and summaries, and
    there is no authors' code; the two consistency conditions above are derived from the paper's min-max
    objective and its closed-form solutions, and the weighting by ``alpha`` is our reading of ``L_alpha``.
    Defaults ``beta = 0.1``, ``alpha = 0.5`` are ours. Returns per-pair losses ``[B]``.

    Example::

        >>> z = torch.zeros(1)
        >>> srpo_loss(z, z, z, z, z, z, z, z, z, z, beta=0.1, alpha=0.5)   # 0.5 * 0.25 + 0.5 * 1
        tensor([0.6250])
    """
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                improve_w_given_l_logps=improve_w_given_l_logps, improve_l_given_l_logps=improve_l_given_l_logps,
                improve_l_given_w_logps=improve_l_given_w_logps, ref_w_given_l_logps=ref_w_given_l_logps,
                ref_l_given_l_logps=ref_l_given_l_logps, ref_l_given_w_logps=ref_l_given_w_logps)
    beta = check_positive("beta", beta)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Invalid alpha: {alpha!r} (accepted: a number in [0, 1])")
    h_w = policy_chosen_logps - ref_chosen_logps
    h_l = policy_rejected_logps - ref_rejected_logps
    g_wl = improve_w_given_l_logps - ref_w_given_l_logps
    g_ll = improve_l_given_l_logps - ref_l_given_l_logps
    g_lw = improve_l_given_w_logps - ref_l_given_w_logps
    improve = (beta * (g_wl - g_ll) - 0.5) ** 2
    robust = (beta * (g_wl - h_l - g_lw + h_w) - 1.0) ** 2
    return alpha * improve + (1.0 - alpha) * robust
