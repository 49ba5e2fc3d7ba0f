"""DNO: Direct Nash Optimization (Rosset et al., 2024)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise.registry import register

from gradwise.preference._common import check_logps, check_positive

__all__ = ["dno_loss"]


@register(kind="preference",
          paper="Direct Nash Optimization: Teaching Language Models to Self-Improve with General Preferences",
          year=2024, arxiv="2404.03715", code=None,
          summary="DNO: regression of the log-ratio to the previous iterate onto win-rate reward differences (soft-label BCE)",
          info={"online": "gradwise.preference.online.iterative:DNO"})
def dno_loss(policy_logps_1: Tensor, policy_logps_2: Tensor,
             prev_logps_1: Tensor, prev_logps_2: Tensor,
             *, eta: float, reward_1: Tensor | None = None, reward_2: Tensor | None = None) -> Tensor:
    r"""DNO loss of one iteration of Direct Nash Optimization.

    Paper: Rosset, Cheng, Mitra, Santacroce, Awadallah, Xie, "Direct Nash Optimization: Teaching Language
    Models to Self-Improve with General Preferences", 2024, arXiv 2404.03715. Authors' code: none released.

    Algorithm 1 (DNO), line 3: the reward of iteration t is the win rate against the previous iterate,
    ``r_t(x, y) = E_{y'~pi_t}[P(y > y' | x)]``; line 4 (Eq. 8): ``pi_{t+1}`` maximizes, over pairs
    ``(y1, y2)``, the soft-label binary log-likelihood, i.e. minimizes::

        z    = eta * [(log pi(y1) - log pi_t(y1)) - (log pi(y2) - log pi_t(y2))]
        p    = sigmoid(r_t(y1) - r_t(y2))
        loss = -[p log sigmoid(z) + (1 - p) log sigmoid(-z)]

    (Eq. 11-12: a regression of the "internal reward" ``eta log pi/pi_t`` onto ``r_t``, whose minimizer is
    ``z = r_t(y1) - r_t(y2)``; ``eta`` is the learning rate of the soft policy iteration
    ``pi_{t+1} ∝ pi_t exp(r_t / eta)``, Eq. 9). With ``reward_1 = reward_2 = None`` the label is hard (``y1``
    is the preferred response) and the loss is DNO-Prct's (Algorithm 2, Eq. 13): DPO with ``beta = eta`` and
    the previous iterate ``pi_t`` as the reference. Inputs: sequence log-probs ``[B]``; rewards ``[B]`` (win
    rates in [0, 1], e.g. from :func:`spo_win_rate_reward`). The trainer keeps ``pi_t`` (frozen copy of the
    previous iterate, which also samples the responses) and, for Algorithm 1, the preference oracle's win
    rates.

    Checked against the paper's own text (arXiv 2404.03715, Sec. 3, Algorithm 1 / Eq. 8, Sec. 4,
    Algorithm 2 / Eq. 13). Choices: ``eta`` has no default (the paper tunes it; its DNO-Prct runs use TRL's
    DPO with ``beta`` 0.1 or 0.05, i.e. ``eta`` 0.1 or 0.05); the large-margin filtering of DNO-Prct
    (Algorithm 2 line 6: keep pairs whose win-rate gap is large) and the gold/teacher responses are the
    trainer's job, not the loss's.

    Example::

        >>> a = torch.tensor([-3.0]); b = torch.tensor([-4.0])
        >>> dno_loss(a, b, b, b, eta=1.0)        # -log sigmoid(1)
        tensor([0.3133])
    """
    check_logps(policy_logps_1=policy_logps_1, policy_logps_2=policy_logps_2,
                prev_logps_1=prev_logps_1, prev_logps_2=prev_logps_2)
    eta = check_positive("eta", eta)
    if (reward_1 is None) != (reward_2 is None):
        raise ValueError("Invalid reward_1/reward_2: give both (Algorithm 1) or neither (DNO-Prct, hard labels)")
    z = eta * ((policy_logps_1 - prev_logps_1) - (policy_logps_2 - prev_logps_2))
    if reward_1 is None:
        return -F.logsigmoid(z)
    check_logps(policy_logps_1=policy_logps_1, reward_1=reward_1, reward_2=reward_2)
    p = torch.sigmoid(reward_1 - reward_2)
    return -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z))
