"""UNPG: margin-based softmax with sample-to-sample negative pairs added to the proxy negatives."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_choice, check_int, check_positive, check_real
from gradwise.losses._common import (NAN_FOR_INF_EMBEDDING, LossModule, check_embeddings_labels, check_label_range,
                                     check_reduction, reduce_loss)
from gradwise.registry import register

__all__ = ["unpg_loss", "UNPGLoss", "box_and_whisker_mask"]

_ACOS_EPS = 1e-7


def box_and_whisker_mask(values: Tensor, valid: Tensor, whisker: float) -> Tensor:
    """Keep mask of Tukey's fences over ``values[valid]``, as the UNPG code computes them.

    With ``x`` the sorted valid values and ``l`` their count, ``Q1 = x[floor(l/4)]``,
    ``Q3 = x[floor(3l/4)]``, ``IQR = Q3 - Q1``; a value is kept when it lies in
    ``[Q1 - whisker*IQR, Q3 + whisker*IQR]``. No host sync: invalid entries
    sort last and the quartile positions are gathered from tensors.
    """
    vals = values.detach()
    big = torch.finfo(vals.dtype).max
    sorted_x = torch.sort(torch.where(valid, vals, torch.full_like(vals, big))).values
    n = valid.sum()
    last = (n - 1).clamp(min=0)
    # int(0.25 l) and int(0.75 l), exactly for integer l; gathered with a 1-element index tensor (a 0-dim
    # index would be read on the host as a Python int)
    pos = torch.minimum(torch.stack([(n * 25) // 100, (n * 75) // 100]), last)
    q1, q3 = sorted_x.gather(0, pos).unbind()
    iqr = q3 - q1
    return valid & (vals >= q1 - whisker * iqr) & (vals <= q3 + whisker * iqr)


@register(kind="loss",
          paper="Unified Negative Pair Generation toward Well-discriminative Feature Space for Face Recognition",
          year=2022, arxiv="2203.11593", code="https://github.com/Jung-Jun-Uk/UNPG",
          summary="UNPG: ArcFace/CosFace softmax whose negatives also include filtered sample-to-sample pairs",
          info={"reliability": {"inputs": ("x", "labels", "class_matrix"), "ignore_index": True,
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_EMBEDDING)}}})
def unpg_loss(embeddings: Tensor, labels: Tensor, weight: Tensor, *, margin_type: str = "arcface",
              s: float = 64.0, m: float = 0.5, whisker: float = 1.5, reduction: str = "mean",
              ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""Unified Negative Pair Generation (Jung et al., BMVC 2022, arXiv 2203.11593).

    Paper: "Unified Negative Pair Generation toward Well-discriminative
    Feature Space for Face Recognition". Authors' code:
    https://github.com/Jung-Jun-Uk/UNPG (``recognition/models/head.py`` class
    ``UNPG`` and ``recognition/models/build.py``); this function matches it to
    float64 round-off (golden test), defaults from its ``data/head.zoo.yaml``
    (``s = 64``, ``m = 0.5``, whisker 1.5).

    A classification loss generates negative pairs CLPG-style (a sample
    against the other classes' weights ``W_j``); a metric loss MLPG-style
    (sample against sample in the batch). UNPG puts both in one softmax.
    With ``x_i`` and ``W_j`` L2-normalized, ``cos_ij = x_i . W_j`` and the
    margin on the target class (ArcFace ``cos(theta + m)`` or CosFace
    ``cos - m``), the negative pair similarities of the batch
    ``S^- = {x_a . x_b : a < b, y_a != y_b}`` are filtered by the
    box-and-whisker rule (:func:`box_and_whisker_mask`, ``whisker`` = 1.5)
    to drop outliers (noisy labels, too-easy pairs), and every sample gets
    the kept ones ``S'`` as extra negative logits:

    .. math::

        L_i = -\log \frac{e^{s\,\phi(\cos\theta_{i y_i})}}
              {e^{s\,\phi(\cos\theta_{i y_i})} + \sum_{j \ne y_i} e^{s \cos\theta_{ij}}
               + \sum_{c \in S'} e^{s\,c}} .

    The pair similarities are not detached (gradients flow into both ends of
    each pair, as in the authors' code), the quartiles are.

    Departures from the authors' code (values unchanged): the kept pairs'
    log-sum-exp is computed once and shared by all rows instead of
    materializing an ``[N, C + |S'|]`` logit matrix; ArcFace clamps ``cos``
    to ``[-1 + 1e-7, 1 - 1e-7]`` before ``acos`` so the gradient stays finite
    (the code's ``acos`` has an infinite slope at ``|cos| = 1``). Samples
    whose label is ``ignore_index`` are left out of the loss and of the pairs.

    Args:
        embeddings: ``[N, D]`` features. labels: ``[N]`` class ids in ``[0, C)``.
        weight: ``[C, D]`` class weights (proxies) of the margin softmax head.
        margin_type: ``'arcface'`` (additive angular) or ``'cosface'`` (additive cosine).
        s: scale; m: margin; whisker: fence width in IQRs (``inf`` keeps all pairs).
        validate: check the label range (one host sync per call; ``False`` skips it).

    Example::

        >>> head = torch.nn.Parameter(torch.randn(1000, 512))
        >>> loss = unpg_loss(features, labels, head, margin_type="arcface", s=64.0, m=0.5)
    """
    check_embeddings_labels(embeddings, labels)
    if not torch.is_tensor(weight) or not weight.is_floating_point() or weight.dim() != 2:
        raise ValueError("Invalid weight: expected a floating-point tensor of shape [C, D]")
    if weight.shape[1] != embeddings.shape[1]:
        raise ValueError(f"Invalid weight: expected shape [C, {embeddings.shape[1]}] to match embeddings, got "
                         f"{tuple(weight.shape)}")
    check_choice("margin_type", margin_type, ("arcface", "cosface"))
    check_positive("s", s)
    check_real("m", m)
    if not (0.0 <= m < math.pi if margin_type == "arcface" else -1.0 <= m <= 2.0):  # the range depends on the type
        raise ValueError(f"Invalid m: {m} (accepted: 0 <= m < pi for arcface, -1 <= m <= 2 for cosface)")
    check_real("whisker", whisker, 0.0, finite=False)  # inf: keep every negative pair
    check_reduction(reduction)
    if validate:
        check_label_range(labels, weight.shape[0], ignore_index, name="labels")
    keep = labels != ignore_index

    cdtype = torch.promote_types(torch.promote_types(embeddings.dtype, weight.dtype), torch.float32)
    x = F.normalize(embeddings.to(cdtype), dim=1)
    w = F.normalize(weight.to(cdtype), dim=1)
    cosine = x @ w.T  # [N, C]
    tgt = torch.where(keep, labels, torch.zeros_like(labels)).long()
    onehot = F.one_hot(tgt, weight.shape[0]).bool() & keep[:, None]
    if margin_type == "arcface":
        theta = torch.acos(cosine.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
        target_logit = torch.cos(theta + m)
    else:
        target_logit = cosine - m
    logits = s * torch.where(onehot, target_logit, cosine)

    # MLPG-style negatives: unordered different-label pairs of kept samples, box-and-whisker filtered
    n = x.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    sim = (x @ x.T)[iu[0], iu[1]]  # as the code's convert_label_to_similarity: no [pairs, D] tensor
    neg = (labels[iu[0]] != labels[iu[1]]) & keep[iu[0]] & keep[iu[1]]
    lse = torch.logsumexp(logits, dim=1)
    if sim.numel():
        kept = box_and_whisker_mask(sim, neg, whisker) if math.isfinite(whisker) else neg
        aux = torch.logsumexp(torch.where(kept, s * sim, torch.full_like(sim, -math.inf)), dim=0)  # shared by rows
        lse = torch.logaddexp(lse, aux)
    per_sample = lse - logits.gather(1, tgt[:, None]).squeeze(1)
    return reduce_loss(per_sample, reduction, keep).to(embeddings.dtype)


class UNPGLoss(LossModule):
    """Module twin of :func:`unpg_loss` that owns the class weights ``[num_classes, embedding_dim]``.

    The weights are initialized with Xavier-uniform as in the authors' heads;
    ``forward(embeddings, labels)`` calls :func:`unpg_loss` with them. See
    :func:`unpg_loss` for the math (arXiv 2203.11593).
    """

    function = unpg_loss

    def __init__(self, num_classes: int, embedding_dim: int, *, margin_type: str = "arcface", s: float = 64.0,
                 m: float = 0.5, whisker: float = 1.5, reduction: str = "mean", ignore_index: int = -100,
                 validate: bool = True) -> None:
        """The class weights are ``[num_classes, embedding_dim]``; the keyword arguments are
        :func:`unpg_loss`'s, with its defaults."""
        check_int("num_classes", num_classes, lo=1)
        check_int("embedding_dim", embedding_dim, lo=1)
        super().__init__(margin_type=margin_type, s=s, m=m, whisker=whisker, reduction=reduction,
                         ignore_index=ignore_index, validate=validate)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return unpg_loss(embeddings, labels, self.weight, **self.kwargs)
