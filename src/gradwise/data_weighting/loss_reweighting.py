"""Online loss-based sample reweighting (Sow et al., ICLR 2025)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_positive, check_real
from gradwise.losses._common import LossModule, check_reduction, reduce_loss, upcast
from gradwise.registry import register

__all__ = ["loss_reweighting_weights", "reweighted_loss", "ReweightedLoss", "REWEIGHT_STRATEGIES"]

_PAPER = "Dynamic Loss-Based Sample Reweighting for Improved Large Language Model Pretraining"
_CODE = "https://github.com/sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025"
REWEIGHT_STRATEGIES = ("linupper", "quadratic", "extremes", "upper", "uniform")


def _check(losses: Tensor, strategy: str, temperature: float, delta: float) -> None:
    if not torch.is_tensor(losses) or not losses.is_floating_point() or losses.dim() != 1:
        got = type(losses).__name__ if not torch.is_tensor(losses) else (losses.dtype, tuple(losses.shape))
        raise ValueError(f"Invalid per_sample_losses: expected a 1-D floating-point tensor, got {got}")
    check_choice("strategy", strategy, REWEIGHT_STRATEGIES)
    check_real("temperature", temperature, 0.0, lo_open=True, finite=False)  # inf: uniform weights
    check_positive("delta", delta)


def loss_reweighting_weights(per_sample_losses: Tensor, *, strategy: str = "linupper", temperature: float = 1.0,
                             delta: float = 1.0) -> Tensor:
    r"""Per-sample weights from the losses of one batch, detached, with mean 1.

    Paper: Sow, Woisetschläger, Bulusu, Wang, Jacobsen, Liang, "Dynamic
    Loss-Based Sample Reweighting for Improved Large Language Model
    Pretraining", ICLR 2025, arXiv 2502.06733.
    Code: https://github.com/sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025
    (``h_func``, ``f_func_*``, ``g_func`` in ``src/trainer.py``).

    The losses are mapped to :math:`[-\delta, \delta]` by the batch min/max,
    :math:`h_i = \delta\,(2\ell_i - \ell_{\max} - \ell_{\min}) / \max(\ell_{\max} - \ell_{\min}, 10^{-6})`,
    scored by the strategy :math:`f`:

    * ``"linupper"`` :math:`\min(h + \delta, \delta)` -- down-weights low-loss samples, flat above the middle;
    * ``"quadratic"`` (the code's ``"mid"``) :math:`1 - h^2/\delta^2` -- favours medium losses;
    * ``"extremes"`` :math:`|h|` -- favours both ends;
    * ``"upper"`` :math:`(h + \delta)/2` -- linear, favours high losses;
    * ``"uniform"`` -- no reweighting (weights 1);

    and turned into weights by a softmax with temperature :math:`r` (the code's ``kl_reg``; the
    KL-regularised solution of the paper):
    :math:`w_i = N\,e^{f_i/r} / \sum_j e^{f_j/r}`. The code's weights sum to 1 and
    multiply the *sum* of losses; here they are scaled by :math:`N` so they have
    mean 1 and multiply the mean -- the same loss. They are computed under
    ``no_grad`` (no gradient flows through them), as in the code. Large ``temperature`` ->
    uniform weights; the code warms up with uniform weights for ``burnout_steps`` (1000) steps,
    which is the caller's schedule. Defaults: the README's ``linupper`` and the code's
    ``kl_reg=1``; its GPT-2 configs use ``extremes`` with ``kl_reg=0.4``.

    Example::

        >>> per = F.cross_entropy(logits, y, reduction="none")
        >>> loss = (loss_reweighting_weights(per, strategy="extremes", temperature=0.4) * per).mean()
    """
    _check(per_sample_losses, strategy, temperature, delta)
    with torch.no_grad():
        losses = upcast(per_sample_losses.detach())
        n = losses.numel()
        if strategy == "uniform" or n == 0:
            return torch.ones_like(per_sample_losses).detach()
        lo, hi = losses.min(), losses.max()
        h = delta * (2 * losses - hi - lo) / (hi - lo).clamp_min(1e-6)
        if strategy == "linupper":
            f = torch.minimum(h + delta, torch.full_like(h, delta))
        elif strategy == "quadratic":
            f = 1 - h.square() / delta ** 2
        elif strategy == "extremes":
            f = h.abs()
        else:  # upper
            f = 0.5 * h + 0.5 * delta
        w = torch.softmax((f - f.max()) / temperature, dim=0) * n
        return w.to(per_sample_losses.dtype)


@register(kind="sample-weighting", paper=_PAPER, year=2025, arxiv="2502.06733", code=_CODE,
          summary="online loss-based sample reweighting: softmax of a strategy score of min-max normalised losses",
          info={"reliability": {"inputs": ("losses",), "labels": "none"}})
def reweighted_loss(per_sample_losses: Tensor, *, strategy: str = "linupper", temperature: float = 1.0,
                    delta: float = 1.0, reduction: str = "mean") -> Tensor:
    r"""Batch loss with the online loss-based weights of Sow et al. (ICLR 2025, arXiv 2502.06733).

    :math:`\frac1N\sum_i w_i \ell_i` with :math:`w` from :func:`loss_reweighting_weights`
    (detached, mean 1); ``reduction="sum"`` gives :math:`\sum_i w_i\ell_i`, ``"none"`` the
    products :math:`w_i\ell_i`. Gradients flow through the losses only.
    Code: https://github.com/sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025.

    Example::

        >>> loss = reweighted_loss(F.cross_entropy(logits, y, reduction="none"), strategy="extremes")
    """
    check_reduction(reduction)
    w = loss_reweighting_weights(per_sample_losses, strategy=strategy, temperature=temperature, delta=delta)
    return reduce_loss(w * per_sample_losses, reduction)


class ReweightedLoss(LossModule):
    """Module twin of :func:`reweighted_loss`: ``ReweightedLoss(strategy="extremes")(per_sample_losses)``."""

    function = reweighted_loss
