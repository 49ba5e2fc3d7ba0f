"""OPIS, the Operating-Point-Inconsistency Score of the TCM paper: how much the best match threshold varies
across classes (the regularizer, :func:`gradwise.losses.tcm_loss`, lowers it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_int
from gradwise.losses._common import check_embeddings_labels
from gradwise.losses.tcm import CODE, PAPER
from gradwise.registry import register

__all__ = ["opis"]


@register(kind="metric", paper=PAPER, year=2024, arxiv="2307.04047", code=CODE,
          summary="OPIS: variance across classes of the TAR/TRR utility over a calibration range of thresholds")
def opis(embeddings: Tensor, labels: Tensor, *, far_range: tuple[float, float] = (1e-3, 1e-1),
         num_thresholds: int = 101, reference: str = "overall") -> Tensor:
    r"""Operating-Point-Inconsistency Score (Zhang et al., ICLR 2024, arXiv 2307.04047); lower is better.

    Paper: "Threshold-Consistent Margin Loss for Open-World Deep Metric
    Learning"; authors' code https://github.com/amazon-science/threshold-consistent-margin-loss
    (not available to us: this follows our reading of the paper's definition, see below).

    Pairs are scored by the distance ``d_ij = ||e_i - e_j||`` of the
    L2-normalized embeddings (``sqrt(2 - 2 cos)``). For class ``c``, the
    positives are its unordered within-class pairs and the negatives the
    pairs with exactly one end in ``c``; at threshold ``d`` (match when
    ``d_ij <= d``)

    .. math::

        TAR_c(d) = P(d_{ij} \le d \mid \text{pos}),\quad TRR_c(d) = P(d_{ij} > d \mid \text{neg}),\quad
        U_c(d) = \frac{2\,TAR_c(d)\,TRR_c(d)}{TAR_c(d) + TRR_c(d)},

    .. math::

        \mathrm{OPIS} = \frac{1}{T} \sum_{c=1}^{T} \frac{1}{d_{max} - d_{min}}
                         \int_{d_{min}}^{d_{max}} \big(U_c(d) - \bar U(d)\big)^2 \, dd .

    Choices where the paper leaves room: the calibration range
    ``[d_min, d_max]`` is where the overall false-accept rate (over all
    different-class pairs) goes from ``far_range[0]`` to ``far_range[1]``
    (its quantiles); the integral is the mean over ``num_thresholds`` equally
    spaced thresholds (both ends included); classes weigh equally
    (``w_c = 1/T``) and classes without a within-class pair are left out.
    ``reference="overall"`` (default) takes ``\bar U(d)`` as the utility of
    all pairs pooled (our reading of the paper's definition);
    ``"class_mean"`` uses the mean of the ``U_c(d)`` (then OPIS is the
    across-class variance). ``U = 0`` where ``TAR + TRR = 0``.

    Checked against (session 3): not verified in detail. The paper's text
    could not be read (the search store returns only page openings: arXiv
    HTML v2, sciencestack.ai, liner.com and tomesphere summaries give the
    abstract, "a variance-based metric ... that quantifies the variance in
    the operating characteristics across classes" within "a calibration
    range", and mention an ``epsilon``-OPIS variant, not implemented here);
    the ICLR 2024 reviews (a copy in the code index) describe OPIS as "based
    on the variance of utility score derived from the F-score", which agrees
    with the harmonic-mean utility used here. The authors' repository is not
    in the store, and the ``compute_opis`` functions found in the code index
    are unrelated stubs (nearest-neighbour error or a pooled F1 mean). So
    the calibration range (FAR quantiles ``far_range``), the number of
    thresholds, the class weights ``1/T`` and the reference ``\bar U``
    remain this library's choices. Searched again (session 3, second pass):
    exact-string searches of the code index for "Operating-Point-
    Inconsistency", "OPIS" and "threshold inconsistency", and a pages search
    with the definition's words, find no copy of the paper's Section 3. One
    third-party note (a preregistered diagnostic "following the OPIS
    definition" of arXiv 2307.04047) computes OPIS as here: per-class
    positives = within-class pairs, negatives = pairs with exactly one end in
    the class, harmonic-mean utility of TAR and TRR, a calibration range from
    the FAR quantiles of all negative pairs and 101 thresholds; it uses FAR
    0.01 to 0.10 and the class mean as reference (our
    ``reference="class_mean"``). It is not the paper, so the defaults stay.

    Example::

        >>> score = opis(test_embeddings, test_labels, far_range=(1e-3, 1e-1))
    """
    check_embeddings_labels(embeddings, labels, min_n=2)
    lo, hi = far_range
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"Invalid far_range: {far_range} (accepted: 0 <= low < high <= 1)")
    check_int("num_thresholds", num_thresholds, lo=2)
    check_choice("reference", reference, ("overall", "class_mean"))
    with torch.no_grad():
        e = F.normalize(embeddings.detach().to(torch.float64), dim=1, eps=1e-12)
        n = e.shape[0]
        d = (2.0 - 2.0 * (e @ e.T)).clamp(min=0.0).sqrt()
        iu = torch.triu_indices(n, n, offset=1, device=e.device)
        dist = d[iu[0], iu[1]]  # unordered pairs
        li, lj = labels[iu[0]], labels[iu[1]]
        same = li == lj
        if not bool(same.any()) or bool(same.all()):
            raise ValueError("Invalid labels: OPIS needs at least one same-class and one different-class pair")
        neg_d = dist[~same]
        # overall FAR(d) = P(d_neg <= d): the FAR quantiles of the negative distances
        q = torch.tensor([lo, hi], dtype=torch.float64, device=e.device)
        d_min, d_max = torch.quantile(neg_d, q).unbind()
        thr = torch.linspace(0.0, 1.0, num_thresholds, dtype=torch.float64, device=e.device)
        thr = d_min + (d_max - d_min) * thr  # [K]

        classes, inv = torch.unique(labels, return_inverse=True)
        ci, cj = inv[iu[0]], inv[iu[1]]
        C = classes.numel()
        accept = (dist[:, None] <= thr[None, :]).to(torch.float64)  # [P, K]
        # per class: pairs touching the class (each pair counted once per distinct class it touches)
        onehot_i = F.one_hot(ci, C).to(torch.float64)
        onehot_j = F.one_hot(cj, C).to(torch.float64)
        touch = (onehot_i + onehot_j).clamp(max=1.0)  # [P, C]
        pos_w = onehot_i * same[:, None]  # [P, C]: within-class pairs of c
        neg_w = touch * (~same)[:, None]  # [P, C]: pairs with exactly one end in c
        n_pos = pos_w.sum(0)  # [C]
        n_neg = neg_w.sum(0)
        tar = (pos_w.T @ accept) / n_pos.clamp(min=1)[:, None]  # [C, K]
        trr = 1.0 - (neg_w.T @ accept) / n_neg.clamp(min=1)[:, None]
        u = _harmonic(tar, trr)
        keep = (n_pos > 0) & (n_neg > 0)
        u = u[keep]
        if reference == "overall":
            tar_all = accept[same].mean(0)
            trr_all = 1.0 - accept[~same].mean(0)
            ref = _harmonic(tar_all, trr_all)[None, :]
        else:
            ref = u.mean(0, keepdim=True)
        return ((u - ref) ** 2).mean().to(embeddings.dtype)


def _harmonic(a: Tensor, b: Tensor) -> Tensor:
    s = a + b
    return torch.where(s > 0, 2.0 * a * b / s.clamp(min=1e-300), torch.zeros_like(s))
