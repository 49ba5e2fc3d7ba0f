r"""VaGraM: the value-gradient weighted model loss for model-based RL, a squared prediction error rescaled per
state dimension by the gradient of the value function at the observed next state.

Paper: Voelcker, Liao, Garg, Farahmand, "Value Gradient weighted Model-Based Reinforcement Learning",
arXiv:2204.01464 (ICLR 2022). Authors' code: github.com/pairlab/vagram, ``mbrl/models/vaml_mlp.py``
(``VAMLMLP._vaml_loss`` with ``use_scaling=True``, ``bound_clipping=True``, ``bound_clipping_quantile=0.95``, as
their ``dynamics_model/vaml_ensemble.yaml``), at commit caf9b92 ("Changes for rebuttal", 2021-11-15), the last
change to the file before the paper's arXiv version (April 2022); see "Which commit" below. Only the paper's
abstract and introduction were readable here (docs/coverage_notes.md); the math is the code's.

For a model prediction :math:`\hat s'` of the next state :math:`s'` and K value functions :math:`V_k` (theirs:
both critics and both target critics at the actor's mean action), with :math:`g_k = \nabla_{s} V_k(s)|_{s = s'}`:

.. math:: \mathcal L = \frac{1}{K} \sum_{k=1}^K \big(\tilde g_k \odot (\hat s' - s')\big)^2,
          \qquad \tilde g_{k,i} = g_{k,i} \min\Big(1,\ \frac{b_k}{\lVert g_{k,i} \rVert}\Big)

per sample i and state dimension, averaged (``reduction="mean"``), where :math:`b_k` is the ``clip_quantile``
(0.95) quantile of :math:`\lVert g_{k,i} \rVert` over the batch (linear interpolation, as their ``np.quantile``).
The gradients carry no gradient themselves. Their model loss adds the reward's squared error to every state
column (broadcast), which makes their mean this loss's mean plus the reward's MSE: add that yourself.

**Which commit.** At the repository's head (cc7e2e4, and 5747785 of 2022-04-24, after the paper) the clip reads
``torch.where(torch.logical_or(norms < bound, norms < 100000), ...)``, which leaves every gradient norm below
1e5 unclipped, and the 2023 ``gradient_clipping`` branch calls ``torch.logical_and`` with one argument (an
error). caf9b92 clips as above; 5747785 also moved the gradient from ``target.grad`` to ``next_obs.grad``, which
is the caller's business here: ``value_grad`` is given.

Golden data: tests/data/vagram_golden.pt, their ``_vaml_loss`` at caf9b92 run on small value networks
(tools/golden/make_vagram_golden.py). Departure: the quantile is ``torch.quantile`` (same linear rule), kept on
the tensors' device, where theirs moves the norms to numpy.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_real
from gradwise.registry import register
from gradwise.rl._checks import check_float_tensor, check_reduction, reduce_loss

__all__ = ["clip_value_gradients", "vagram_model_loss"]

VAGRAM_PAPER = "Value Gradient weighted Model-Based Reinforcement Learning"
VAGRAM_CODE = "https://github.com/pairlab/vagram/tree/caf9b92248c56550ad01ce43abf1f50a61a7cbbf"


def clip_value_gradients(value_grad: Tensor, quantile: float = 0.95) -> Tensor:
    r"""Rescale each row :math:`g_i` of ``value_grad`` ([B, D] or [K, B, D], clipped per k) to norm at most the
    ``quantile`` of the rows' norms (linear interpolation), keeping its direction. Detached."""
    q = check_real("clip_quantile", quantile, 0.0, 1.0)
    check_float_tensor("value_grad", value_grad, min_dim=2)
    g = value_grad.detach()
    g3 = g.unsqueeze(0) if g.dim() == 2 else g
    norms = torch.linalg.vector_norm(g3, dim=-1)                      # [K, B]
    bound = torch.quantile(norms, q, dim=1, keepdim=True)            # [K, 1]
    clipped = torch.where((norms < bound).unsqueeze(-1), g3, (bound / norms).unsqueeze(-1) * g3)
    return clipped.reshape(g.shape)


@register(kind="rl-objective", paper=VAGRAM_PAPER, year=2022, arxiv="2204.01464", code=VAGRAM_CODE,
          summary="VaGraM model loss: next-state prediction error rescaled per dimension by value-function "
                  "gradients (norms clipped at their batch 0.95 quantile), averaged over value functions")
def vagram_model_loss(pred: Tensor, target: Tensor, value_grad: Tensor, *, clip_quantile: float | None = 0.95,
                      reduction: str = "mean") -> Tensor:
    r"""VaGraM's model loss (arXiv:2204.01464; math in the module docstring).

    ``pred``: the model's next-state prediction, [B, D] or [E, B, D] (an ensemble); ``target``: the observed
    next state, same shape as ``pred`` or [B, D]; ``value_grad``: :math:`\nabla_s V_k` at the observed next
    states, [B, D] or [K, B, D] (K value functions; it is detached). ``clip_quantile``: the batch quantile of the
    gradient norms that bounds them (theirs 0.95; None: no clipping). ``reduction``: ``"mean"`` (theirs),
    ``"sum"`` or ``"none"`` (the [.., B, D] terms). The reward's error is not included (add its MSE).
    """
    check_reduction(reduction)
    check_float_tensor("pred", pred, min_dim=2)
    check_float_tensor("target", target, min_dim=2)
    check_float_tensor("value_grad", value_grad, min_dim=2)
    if pred.dim() > 3:
        raise ValueError(f"Invalid pred: shape {tuple(pred.shape)} (accepted: [B, D] or [E, B, D])")
    if target.shape != pred.shape and target.shape != pred.shape[-2:]:
        raise ValueError(f"Invalid target: shape {tuple(target.shape)} (accepted: the shape of pred, "
                         f"{tuple(pred.shape)}, or its last two dims)")
    if value_grad.dim() > 3 or value_grad.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"Invalid value_grad: shape {tuple(value_grad.shape)} (accepted: [B, D] or [K, B, D] "
                         f"with [B, D] = {tuple(pred.shape[-2:])})")
    if clip_quantile is None:
        g = value_grad.detach()
    else:
        g = clip_value_gradients(value_grad, clip_quantile)
    if g.dim() == 2:
        g = g.unsqueeze(0)
    err = pred - target                                                  # [.., B, D]
    terms = (g.unsqueeze(1) * err.unsqueeze(0)).square() if err.dim() == 3 else (g * err).square()
    loss = terms.mean(dim=0)
    return reduce_loss(loss, reduction)
