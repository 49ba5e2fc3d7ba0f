r"""f-DPO: DPO under reverse KL, forward KL, Jensen-Shannon or alpha-divergence constraints."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["fdpo_loss", "f_divergence_score", "FDPO_DIVERGENCES"]

FDPO_DIVERGENCES = ("reverse_kl", "forward_kl", "js", "alpha")

# Largest exponent fed to exp(), as TRL's alpha-divergence clamp (80 for float32/bfloat16, 11 for
# float16); float64 uses 80 too, so float32 and float64 agree and stay finite.
_EXP_CAP = {torch.float16: 11.0}


def _capped_exp(x: Tensor) -> Tensor:
    return torch.exp(torch.clamp(x, max=_EXP_CAP.get(x.dtype, 80.0)))


def f_divergence_score(logratio: Tensor, *, divergence: str = "reverse_kl", alpha: float = 0.5) -> Tensor:
    r"""``f'(u)`` at ``u = pi_theta(y|x) / pi_ref(y|x)``, from ``logratio = log u`` (up to an additive constant).

    reverse_kl: ``log u``; forward_kl: ``-1/u``; js: ``log(2u / (1 + u))``; alpha:
    ``(1 - u^{-alpha}) / alpha``. Exponents are capped at 80 (11 in float16) as in TRL.
    """
    if divergence == "reverse_kl":
        return logratio
    if divergence == "forward_kl":
        return -_capped_exp(-logratio)
    if divergence == "js":
        return math.log(2.0) + F.logsigmoid(logratio)
    if divergence == "alpha":
        alpha = check_positive("alpha", alpha)
        return (1.0 - _capped_exp(-alpha * logratio)) / alpha
    raise ValueError(f"Invalid divergence: {divergence!r} (accepted: {', '.join(map(repr, FDPO_DIVERGENCES))})")


@register(kind="preference",
          paper="Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence Constraints",
          year=2023, arxiv="2309.16240", code=None,
          summary="f-DPO: -log sigmoid(beta (f'(u_w) - f'(u_l))) for reverse/forward KL, JS and alpha divergences")
def fdpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float = 0.1, divergence: str = "reverse_kl", alpha: float = 0.5,
              loss: str = "sigmoid") -> Tensor:
    r"""f-DPO loss per pair.

    Paper: Wang, Jiang, Yang, Liu & Chen, "Beyond Reverse KL: Generalizing Direct Preference
    Optimization with Diverse Divergence Constraints", 2023 (ICLR 2024), arXiv:2309.16240.
    No official code was found; TRL's ``f_divergence_type`` implements it.

    For an f-divergence regularizer :math:`\beta D_f(\pi_\theta\|\pi_{ref})` whose :math:`f'` has no
    zero in its domain, the KKT conditions give the reward :math:`r = \beta f'(\pi_\theta/\pi_{ref}) +
    \text{const}(x)`, so under Bradley-Terry

    .. math::

        \ell = -\log\sigma\Bigl(\beta f'\bigl(\tfrac{\pi_\theta(y_w|x)}{\pi_{ref}(y_w|x)}\bigr)
                               - \beta f'\bigl(\tfrac{\pi_\theta(y_l|x)}{\pi_{ref}(y_l|x)}\bigr)\Bigr)

    with (paper, Table 1; ``u`` the probability ratio):

    ============  =============================  ==========================================
    divergence    f'(u)                          TRL 1.16 ``f_divergence_type``
    ============  =============================  ==========================================
    reverse_kl    log u + 1                      "reverse_kl" (plain DPO)
    forward_kl    -1/u                           "forward_kl" (TRL uses 1 - 1/u; same loss)
    js            log(2u / (1 + u))              "js_divergence"
    alpha         (1 - u^(-alpha)) / alpha       "alpha_divergence", f_alpha_divergence_coef = 1 - alpha
    ============  =============================  ==========================================

    ``alpha`` is in the paper's convention (the paper studies alpha in (0, 1); alpha -> 0 gives
    reverse KL, alpha = 1 gives forward KL). TRL 1.16 writes :math:`f'(t) = (t^{a-1} - 1)/(a-1)`
    with ``a = f_alpha_divergence_coef``, so **a = 1 - alpha**; the defaults agree (0.5). Constants
    in ``f'`` cancel in the difference. ``exp`` arguments are capped at 80 (11 in float16), as TRL
    does for the alpha-divergence, so losses and gradients stay finite for log-ratios down to -1e4
    (past the cap the term's gradient is zero). ``loss="hinge"`` gives ``max(0, 1 - beta * delta)``
    on the same scores (TRL's hinge with an f-divergence). Checked against TRL 1.16 golden values
    for all four divergences.

    Example::

        >>> pc, pr = torch.tensor([-5.0]), torch.tensor([-7.0])
        >>> fdpo_loss(pc, pr, pc + 1, pr - 1, beta=0.1, divergence="js")
        tensor([0.7444])
    """
    beta = check_positive("beta", beta)
    if divergence not in FDPO_DIVERGENCES:
        raise ValueError(f"Invalid divergence: {divergence!r} (accepted: {', '.join(map(repr, FDPO_DIVERGENCES))})")
    if loss not in ("sigmoid", "hinge"):
        raise ValueError(f"Invalid loss: {loss!r} (accepted: 'sigmoid', 'hinge')")
    alpha = check_positive("alpha", alpha)
    check_logps(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    delta = (f_divergence_score(policy_chosen_logps - ref_chosen_logps, divergence=divergence, alpha=alpha)
             - f_divergence_score(policy_rejected_logps - ref_rejected_logps, divergence=divergence, alpha=alpha))
    if loss == "hinge":
        return torch.relu(1.0 - beta * delta)
    return -F.logsigmoid(beta * delta)
