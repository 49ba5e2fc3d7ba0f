"""EGPO: Extragradient Preference Optimization (Zhou, Fazel, Du, 2025)."""
from __future__ import annotations

from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["egpo_half_step_loss", "egpo_full_step_loss"]

_PAPER = ("Extragradient Preference Optimization (EGPO): Beyond Last-Iterate Convergence for Nash Learning "
          "from Human Feedback")
_CODE = "https://github.com/zhourunlong/EGPO"


def _online_ipo(policy_logps, policy_logps_prime, ref_logps, ref_logps_prime, pref, pref_prime, beta):
    check_logps(policy_logps=policy_logps, policy_logps_prime=policy_logps_prime, ref_logps=ref_logps,
                ref_logps_prime=ref_logps_prime, pref=pref, pref_prime=pref_prime)
    beta = check_positive("beta", beta)
    h = (policy_logps - ref_logps) - (policy_logps_prime - ref_logps_prime)
    return (h - (pref - pref_prime) / beta) ** 2


_DOC = r"""

    Paper: Zhou, Fazel, Du, "Extragradient Preference Optimization (EGPO): Beyond Last-Iterate Convergence
    for Nash Learning from Human Feedback", 2025, arXiv 2503.08942. Authors' code:
    https://github.com/zhourunlong/EGPO (``ExtragradientTrainer._compute_losses``; ``simulations/loss_funcs.py``).

    Both steps use the online IPO loss (per sample, as the authors' ``_compute_losses``)::

        h    = [log pi(y) - log pi_ref(y)] - [log pi(y') - log pi_ref(y')]
        loss = (h - (P(y > y'') - P(y' > y'')) / beta) ** 2

    with ``y, y'`` drawn from the sampling policy (the authors' default: ``pi_ref``) and ``y''`` from the
    opponent; ``pref = P(y > y'')``, ``pref_prime = P(y' > y'')`` from the preference model. The gradient in
    ``theta`` is that of the mirror-descent step on the beta-regularized game, so extragradient is:

    * half step: from ``theta_t``, opponent ``y'' ~ pi_t``: ``theta_{t+1/2} = theta_t - lr * grad``;
    * full step: sample ``y''`` from ``pi_{t+1/2}``, restore ``theta_t`` (and the optimizer state), evaluate
      the loss with log-probs at ``theta_t`` and take the step from ``theta_t`` to ``theta_{t+1}``.

    The trainer keeps a copy of ``theta_t`` (parameters and optimizer state) during the half step, and
    ``pi_ref``. The two functions compute the same formula; they differ in which opponent produced
    ``pref`` and at which parameters ``policy_logps`` are taken. Online IPO 2 of the paper
    (``y, y' ~ pi``, target ``(P(y > y') - 1/2) / beta``) is ``pref = P(y > y')``, ``pref_prime = 0.5``.
    The authors' LM trainer length-normalizes log-probs (``normalize_logprobs=True``); pass averaged
    log-probs to reproduce that. Returns per-sample losses ``[B]``.
"""


@register(kind="preference", paper=_PAPER, year=2025, arxiv="2503.08942", code=_CODE,
          summary="EGPO half step: online IPO loss against the current iterate (extragradient look-ahead)")
def egpo_half_step_loss(policy_logps: Tensor, policy_logps_prime: Tensor, ref_logps: Tensor,
                        ref_logps_prime: Tensor, pref: Tensor, pref_prime: Tensor, *, beta: float) -> Tensor:
    return _online_ipo(policy_logps, policy_logps_prime, ref_logps, ref_logps_prime, pref, pref_prime, beta)


@register(kind="preference", paper=_PAPER, year=2025, arxiv="2503.08942", code=_CODE,
          summary="EGPO full step: online IPO loss at theta_t against the half-step iterate's samples",
          info={"online": "gradwise.preference.online.egpo:EGPO"})
def egpo_full_step_loss(policy_logps: Tensor, policy_logps_prime: Tensor, ref_logps: Tensor,
                        ref_logps_prime: Tensor, pref: Tensor, pref_prime: Tensor, *, beta: float) -> Tensor:
    return _online_ipo(policy_logps, policy_logps_prime, ref_logps, ref_logps_prime, pref, pref_prime, beta)


egpo_half_step_loss.__doc__ = ("EGPO half-step loss: online IPO against the current iterate pi_t "
                               "(opponent samples y'' ~ pi_t, log-probs at theta_t)." + _DOC + r"""
    Example::

        >>> z = torch.zeros(1)
        >>> egpo_half_step_loss(z + 1, z, z, z, z + 0.7, z + 0.2, beta=0.5)   # (1 - 1)^2
        tensor([0.])
""")
egpo_full_step_loss.__doc__ = ("EGPO full-step loss: online IPO at theta_t against the half-step iterate "
                               "(opponent samples y'' ~ pi_{t+1/2})." + _DOC + r"""
    Example::

        >>> z = torch.zeros(1)
        >>> egpo_full_step_loss(z, z, z, z, z + 0.75, z + 0.25, beta=0.5)   # (0 - 1)^2
        tensor([1.])
""")
