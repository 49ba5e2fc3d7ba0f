"""Multi-sample dropout (Inoue 2019)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_choice, check_int, check_real
from gradwise.losses._common import check_reduction
from gradwise.registry import register

__all__ = ["MultiSampleDropout"]


@register(kind="module", paper="Multi-Sample Dropout for Accelerated Training and Better Generalization", year=2019,
          arxiv="1905.09788", code=None,
          summary="several dropout masks on the same features, shared head, averaged outputs or losses")
class MultiSampleDropout(nn.Module):
    r"""Apply dropout ``num_samples`` times to the input of a shared ``head`` and average.

    Paper: Hiroshi Inoue, "Multi-Sample Dropout for Accelerated Training and
    Better Generalization", arXiv 1905.09788 (2019). No official code.

    Training, with masks :math:`m_s \sim \mathrm{Bernoulli}(1-p)` (inverted dropout):

    * :meth:`forward`: :math:`\frac1S\sum_{s=1}^S h\bigl(m_s \odot x/(1-p)\bigr)` -- averaged head outputs;
    * :meth:`loss`: :math:`\frac1S\sum_{s=1}^S L\bigl(h(m_s \odot x/(1-p)), y\bigr)` -- the paper's form:
      the loss of each dropout sample, averaged (``reduction="sum"`` sums them, as the paper's
      figure does; "mean" is its stated alternative and keeps the loss scale of one sample).

    In eval mode (or with ``p=0``) both are one pass without dropout: ``head(x)``
    (in training with ``p=0`` and ``reduction="sum"`` the loss is that pass's
    loss times ``num_samples``, the sum of the S identical samples). The S
    losses are computed one by one, since ``loss_fn`` is any function.
    The samples are stacked into one batch of :math:`S\cdot N` rows, so the head runs once.

    Example::

        >>> msd = MultiSampleDropout(nn.Linear(256, 10), num_samples=8, p=0.5)
        >>> loss = msd.loss(features, labels, F.cross_entropy)
    """

    def __init__(self, head: nn.Module, num_samples: int = 8, p: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        check_int("num_samples", num_samples, lo=1)
        check_real("p", p, 0.0, 1.0, hi_open=True)
        check_choice("reduction", reduction, ("mean", "sum"))
        self.head, self.num_samples, self.p, self.reduction = head, num_samples, float(p), reduction

    def _samples(self, x: Tensor) -> Tensor:
        """Head outputs of the S dropout samples, shape [S, N, ...]."""
        rep = x.unsqueeze(0).expand(self.num_samples, *x.shape).reshape(self.num_samples * x.shape[0], *x.shape[1:])
        out = self.head(F.dropout(rep, self.p, training=True))
        return out.view(self.num_samples, x.shape[0], *out.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return self.head(x)
        return self._samples(x).mean(0)

    def loss(self, x: Tensor, target: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Average (or sum, per ``reduction``) of ``loss_fn(head(dropout_s(x)), target)`` over the samples."""
        check_reduction(self.reduction)
        if not self.training:
            return loss_fn(self.head(x), target)
        if self.p == 0:  # S identical samples: one pass, with the sum's factor S
            one = loss_fn(self.head(x), target)
            return one * self.num_samples if self.reduction == "sum" else one
        outs = self._samples(x)
        losses = torch.stack([loss_fn(o, target) for o in outs.unbind(0)])
        return losses.sum(0) if self.reduction == "sum" else losses.mean(0)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, p={self.p}, reduction={self.reduction!r}"
