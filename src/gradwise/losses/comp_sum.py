"""Comp-sum losses (Mao, Mohri & Zhong, 2023): one family from the
sum-exponential loss through cross-entropy and generalized cross-entropy to MAE.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_nonneg
from gradwise.losses._common import LossModule, check_logits_target, prepare_logits_target, reduce_loss
from gradwise.registry import register

__all__ = ["comp_sum_loss", "CompSumLoss"]

PAPER = "Cross-Entropy Loss Functions: Theoretical Analysis and Applications"


def _phi_tau_of_logp(logp_y: Tensor, tau: float) -> Tensor:
    """Phi^tau(1/p_y) written in terms of log p_y (<= 0), stable in log space.

    tau = 1:  -log p_y
    tau != 1: (p_y^(tau-1) - 1) / (1 - tau) = -expm1((tau-1) log p_y) / (tau-1)
    """
    if tau == 1.0:
        return -logp_y
    return torch.expm1((tau - 1.0) * logp_y) / (1.0 - tau)


def comp_sum_per_sample(logits: Tensor, target: Tensor, tau: float,
                        ignore_index: int | None) -> tuple[Tensor, Tensor | None]:
    """Per-sample comp-sum loss (float32 for half inputs) and the keep-mask (None when nothing is ignored)."""
    x, tgt, mask = prepare_logits_target(logits, target, ignore_index)
    # -log p_y from torch's fused cross-entropy kernel: its backward is one fused
    # [N, C] pass, and the comp-sum transform below only touches [N] values
    ce = F.cross_entropy(x, tgt, reduction="none")
    if tau == 1.0:
        return ce, mask
    return _phi_tau_of_logp(-ce, tau), mask


@register(kind="loss", paper=PAPER, year=2023, arxiv="2304.07288", code=None,
          summary="Comp-sum family Phi^tau(sum exp(h_y'-h_y)): sum-exp (0), CE (1), GCE (1<tau<2), MAE (2)",
          info={"reliability": {"ignore_index": True}})
def comp_sum_loss(logits: Tensor, target: Tensor, *, tau: float = 1.0, reduction: str = "mean",
                  ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Comp-sum loss of Mao, Mohri & Zhong (2023).

    Paper: "Cross-Entropy Loss Functions: Theoretical Analysis and Applications",
    Anqi Mao, Mehryar Mohri, Yutao Zhong, ICML 2023, arXiv:2304.07288.
    Authors' code: none released (the losses are closed forms).

    Math (scores ``h`` = ``logits``, true class ``y``, ``p_y = softmax(h)_y``)::

        l_tau(h, y) = Phi^tau( sum_{y'} exp(h_{y'} - h_y) ) = Phi^tau(1 / p_y)

        Phi^tau(u) = log u                          if tau == 1
                   = (u^(1-tau) - 1) / (1 - tau)     otherwise (tau >= 0)

    so that

    * ``tau = 0``: sum-exponential loss ``sum_{y' != y} exp(h_{y'} - h_y)``;
    * ``tau = 1``: logistic loss = cross-entropy ``-log p_y``;
    * ``1 < tau < 2``: generalized cross-entropy ``(1 - p_y^(tau-1)) / (tau-1)``
      (Zhang & Sabuncu's GCE with ``q = tau - 1``);
    * ``tau = 2``: mean absolute error ``1 - p_y`` (the MAE of the one-hot target
      and the softmax, ``||e_y - p||_1 = 2(1 - p_y)``, up to the factor 2).

    The family is continuous in ``tau`` (``tau -> 1`` recovers the log).

    Checked against (session 3): the paper's full text (arXiv HTML, PMLR PDF,
    OpenReview) could not be read here: the search store returns only the
    opening (abstract) of each page, and no code by the authors or faithful
    reimplementation of ``Phi^tau`` was found (searched: the pages corpus for
    the arXiv/ar5iv/OpenReview/PMLR pages and third-party summaries with the
    formula's words; the code index for "comp-sum", "comp_sum", "sum
    exponential loss", ``Phi^tau`` in LaTeX, learning-to-defer code using
    comp-sum surrogates). What could be checked: the abstract names the
    members (cross-entropy = logistic loss, generalized cross-entropy, mean
    absolute error); a third-party summary of the paper gives the same
    ``tau`` assignment (0 sum-exponential, 1 logistic, (1, 2) GCE, 2 MAE);
    a third-party tutorial on the same authors' NeurIPS 2023 paper ("H-
    Consistency Bounds: Characterization and Extensions", found in the code
    index) writes the family as ``Psi(p_y)`` with ``-log p``, ``1/p - 1``
    (sum-exponential), ``(1 - p^q)/q`` (GCE) and ``1 - p`` (MAE): the same
    members and constants as here (``q = tau - 1``);
    ``1 < tau < 2`` is exactly Zhang & Sabuncu's GCE ``(1 - p_y^q)/q`` with
    ``q = tau - 1`` (arXiv:1805.07836) and ``tau = 0`` exactly the
    sum-exponential loss of Weston & Watkins; the tests check these closed
    forms and the continuity at ``tau = 1``. Not confirmed from this paper's
    own text: its parametrization by ``tau`` (we read it as
    ``Phi^tau(u) = ((1 + u)^(1-tau) - 1)/(1 - tau)`` on
    ``u = sum_{y' != y} exp(h_y' - h_y)``, equal to the form above with
    ``1 + u = 1/p_y``); the constants of the members (``1 - p_y`` for MAE,
    not ``2(1 - p_y)``; ``1/q`` for GCE) agree with the tutorial above.
    Searched again (session 3, second pass), without finding the body:
    exact-string searches of the code index for "smooth adversarial
    comp-sum", "ADV-COMP-SUM", "comp-sum losses", ``\Phi^{\tau}``,
    ``\frac{1}{1 - \tau}`` and "sum exponential loss", and meaning searches
    for the ``Phi^tau`` formula: only abstracts, paper lists and third-party
    summaries of this and later papers by the same authors.

    Numerics: computed from ``log p_y = -cross_entropy(h, y)`` with ``expm1``, so
    it is finite for any finite logits when ``tau >= 1``. For ``tau < 1`` the
    loss grows like ``p_y^-(1-tau)`` and overflows float32 once
    ``(1-tau) * (-log p_y)`` exceeds ~88 (the true value is not representable).
    float16/bfloat16 inputs are computed in float32 and the result cast back.

    Choices: ``tau`` may be any finite number ``>= 0`` (the paper's family;
    ``tau > 2`` gives bounded losses too). ``ignore_index`` and ``reduction``
    behave as in ``F.cross_entropy``; ``validate=False`` skips the label-range check (one host sync).

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> comp_sum_loss(logits, y, tau=1.5).backward()   # generalized cross-entropy
    """
    tau = check_nonneg("tau", tau)
    check_logits_target(logits, target, ignore_index, validate=validate)
    per, mask = comp_sum_per_sample(logits, target, tau, ignore_index)
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class CompSumLoss(LossModule):
    """Module twin of :func:`comp_sum_loss` (see it for the paper, arXiv:2304.07288, and the math).

    ``CompSumLoss(tau=1.5)(logits, target)``.
    """

    function = comp_sum_loss
