"""Calibration metrics: binned calibration errors (top-label, adaptive, class-wise) and reliability bins.

Metrics take either probabilities or logits of shape [N, C] and integer
labels [N]; they return a 0-dim tensor and carry no gradient guarantees (the
binning is piecewise constant). Bins are computed without Python loops:
``torch.bucketize`` gives each confidence its bin, ``index_add`` accumulates
per-bin sums.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_int
from gradwise.losses._common import check_logits_target
from gradwise.registry import register

__all__ = ["expected_calibration_error", "adaptive_calibration_error", "classwise_calibration_error",
           "reliability_bins"]

_NORMS = ("l1", "l2", "max")
_BINNINGS = ("equal_width", "dirichletcal")
GUO_PAPER = "On Calibration of Modern Neural Networks"
GUO_CODE = "https://github.com/gpleiss/temperature_scaling"


def _check_bins_norm(n_bins: int, norm: str) -> None:
    check_int("n_bins", n_bins, lo=1)
    check_choice("norm", norm, _NORMS)


def _probabilities(x: Tensor, target: Tensor, from_logits: bool | None) -> Tensor:
    """Validate and return float probabilities [N, C] (float64 for exact binning sums)."""
    check_logits_target(x, target, name="probs_or_logits")
    if x.shape[0] == 0:
        raise ValueError("Invalid probs_or_logits: expected at least one sample, got shape "
                         f"{tuple(x.shape)}")
    if from_logits is None:  # rows that are non-negative and sum to 1 are probabilities
        from_logits = not (bool((x >= 0).all()) and
                           bool(torch.allclose(x.double().sum(1), torch.ones((), dtype=torch.float64,
                                                                              device=x.device), atol=1e-4)))
    if from_logits:
        return torch.softmax(x.double(), dim=1)
    if bool((x < 0).any()):
        raise ValueError("Invalid probs_or_logits: from_logits=False but some probabilities are negative")
    return x.double()


def _binned_error(conf: Tensor, correct: Tensor, bins: Tensor, n_bins: int, norm: str,
                  total: int | None = None) -> Tensor:
    """Calibration error from per-item confidence, 0/1 outcome and bin index.

    ``total`` is the number the bin counts are divided by (default: items).
    """
    total = conf.numel() if total is None else total
    count = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device).index_add_(0, bins, torch.ones_like(conf))
    gap_sum = torch.zeros(n_bins, dtype=conf.dtype, device=conf.device).index_add_(0, bins, correct - conf)
    nonempty = count > 0
    gap = gap_sum.abs() / count.clamp_min(1)  # |acc_b - conf_b|
    weight = count / total
    if norm == "l1":
        return (weight * gap).sum()
    if norm == "l2":
        return (weight * gap.square()).sum().sqrt()
    return torch.where(nonempty, gap, torch.zeros_like(gap)).max()


def _equal_width_bins(conf: Tensor, n_bins: int) -> Tensor:
    """Bin b holds confidences in (b/n, (b+1)/n]; 0 goes to the first bin (Guo et al.'s boundaries)."""
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)[1:-1].to(conf)
    return torch.bucketize(conf, inner, right=False)


@register(kind="metric", paper=GUO_PAPER, year=2017, arxiv="1706.04599", code=GUO_CODE, seed=False,
          summary="expected calibration error: top-label confidence vs accuracy in equal-width bins")
def expected_calibration_error(probs_or_logits: Tensor, target: Tensor, *, n_bins: int = 15, norm: str = "l1",
                               from_logits: bool | None = None) -> Tensor:
    r"""Expected calibration error (ECE) of top-label predictions.

    Paper: Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural
    Networks", ICML 2017, arXiv 1706.04599 (binning after Naeini et al. 2015).
    Reference code: https://github.com/gpleiss/temperature_scaling (``_ECELoss``).

    With confidence :math:`\hat p_i = \max_k p_{ik}`, prediction
    :math:`\hat y_i = \arg\max_k p_{ik}` and ``n_bins`` equal-width bins
    :math:`B_b = \{i: \hat p_i \in (b/M, (b+1)/M]\}`:

    .. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|

    ``norm="l2"`` gives :math:`\sqrt{\sum_b \frac{|B_b|}{N} (\mathrm{acc}-\mathrm{conf})^2}`, ``norm="max"``
    the maximum calibration error (MCE) over non-empty bins.

    probs_or_logits: [N, C] probabilities (rows summing to 1) or logits;
        ``from_logits=None`` decides by checking the rows (one host sync).
    target: [N] class indices.
    Returns a 0-dim float64 tensor. The bin boundaries are ``torch.linspace(0, 1, n_bins + 1)``
    in float32 and a bin is (lower, upper], exactly as the reference code compares.

    Example::

        >>> ece = expected_calibration_error(model(x), y)          # logits are detected
        >>> ece = expected_calibration_error(probs, y, n_bins=10, norm="max")  # MCE
    """
    _check_bins_norm(n_bins, norm)
    p = _probabilities(probs_or_logits, target, from_logits)
    conf, pred = p.max(dim=1)
    correct = (pred == target).to(p.dtype)
    return _binned_error(conf, correct, _equal_width_bins(conf.float(), n_bins), n_bins, norm)


@register(kind="metric", paper="Measuring Calibration in Deep Learning", year=2019, arxiv="1904.01685",
          code=None, seed=False,
          summary="adaptive (equal-mass) calibration error: top-label ECE with bins holding equal counts")
def adaptive_calibration_error(probs_or_logits: Tensor, target: Tensor, *, n_bins: int = 15, norm: str = "l1",
                               from_logits: bool | None = None) -> Tensor:
    r"""Top-label calibration error with equal-mass (adaptive) bins.

    Paper: Nixon, Dusenberry, Zhang, Jerfel, Tran, "Measuring Calibration in
    Deep Learning", CVPR Workshops 2019, arXiv 1904.01685 (adaptive binning;
    also Nguyen & O'Connor 2015).

    The predictions are sorted by confidence and cut into ``n_bins`` bins of
    :math:`\lfloor N/M \rfloor` or :math:`\lceil N/M \rceil` items (item of
    rank :math:`r` goes to bin :math:`\lfloor rM/N \rfloor`); then the same
    sum as :func:`expected_calibration_error`. Choice where the paper is open:
    this is the *top-label* version (Nixon et al.'s ACE averages over all
    classes; :func:`classwise_calibration_error` covers that direction), and
    ties in confidence are split by a stable sort.
    """
    _check_bins_norm(n_bins, norm)
    p = _probabilities(probs_or_logits, target, from_logits)
    conf, pred = p.max(dim=1)
    correct = (pred == target).to(p.dtype)
    n = conf.numel()
    order = torch.sort(conf, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=conf.device)
    bins = torch.div(rank * n_bins, n, rounding_mode="floor")
    return _binned_error(conf, correct, bins, n_bins, norm)


@register(kind="metric",
          paper="Beyond temperature scaling: Obtaining well-calibrated multi-class probabilities with "
                "Dirichlet calibration",
          year=2019, arxiv="1910.12656", code="https://github.com/dirichletcal/experiments_neurips", seed=False,
          summary="class-wise ECE: per-class calibration error in equal-width bins, averaged over classes "
                  "(binning='dirichletcal' reproduces the authors' bins: n_bins - 1 equal-width plus p = 1)")
def classwise_calibration_error(probs_or_logits: Tensor, target: Tensor, *, n_bins: int = 15, norm: str = "l1",
                                from_logits: bool | None = None, binning: str = "equal_width") -> Tensor:
    r"""Class-wise expected calibration error.

    Paper: Kull, Perello-Nieto, Kängsepp, Silva Filho, Song, Flach, "Beyond
    temperature scaling: Obtaining well-calibrated multi-class probabilities
    with Dirichlet calibration", NeurIPS 2019, arXiv 1910.12656 (also the
    "static calibration error" of Nixon et al. 2019).

    For each class :math:`k`, every sample's probability :math:`p_{ik}` is
    binned into equal-width bins and compared to the frequency of
    :math:`y_i = k` in the bin:

    .. math:: \text{cw-ECE} = \frac1K \sum_k \sum_b \frac{|B_{kb}|}{N}
              \Bigl|\frac{1}{|B_{kb}|}\sum_{i\in B_{kb}} [y_i = k] - p_{ik}\Bigr|

    ``norm="l2"``/``"max"`` apply per class, then average over classes.

    ``binning`` chooses the bins :math:`B_{kb}`:

    * ``"equal_width"`` (default): ``n_bins`` bins :math:`(b/M, (b+1)/M]`, 0 in the first, the boundaries
      of :func:`expected_calibration_error` (Guo et al.'s).
    * ``"dirichletcal"``: the bins of the cited code (``binary_ECE`` / ``classwise_ECE`` in
      ``calib/utils/functions.py`` of dirichletcal/experiments_neurips), ``np.digitize(p, np.linspace(0, 1,
      n_bins)) - 1``: ``n_bins - 1`` equal-width bins :math:`[b/(M-1), (b+1)/(M-1))`, closed on the left,
      plus one bin holding only :math:`p = 1`. So their ``classwise_ECE(probs, y, bins=M)`` equals
      ``classwise_calibration_error(probs, y, n_bins=M, binning="dirichletcal")`` (tested against a
      transcription of it), and the default binning with ``n_bins=M - 1`` gives the same number except
      where a probability is exactly 1 or on a bin edge. Their ``power=2`` is
      :math:`\sum_b w_b\,\mathrm{gap}_b^2` without the square root our ``norm="l2"`` takes.
    """
    _check_bins_norm(n_bins, norm)
    check_choice("binning", binning, _BINNINGS)
    p = _probabilities(probs_or_logits, target, from_logits)
    n, k = p.shape
    onehot = F.one_hot(target.long(), k).to(p.dtype)
    if binning == "dirichletcal":  # np.digitize(p, linspace(0, 1, n_bins)) - 1, edges in float64 as numpy has them
        edges = torch.linspace(0, 1, n_bins, dtype=torch.float64, device=p.device)
        bins = torch.bucketize(p, edges, right=True) - 1                # [N, K], in 0..n_bins-1
    else:
        bins = _equal_width_bins(p.float(), n_bins)                     # [N, K]
    flat = (bins + n_bins * torch.arange(k, device=p.device)).reshape(-1)
    count = torch.zeros(k * n_bins, dtype=p.dtype, device=p.device).index_add_(0, flat, torch.ones_like(p).reshape(-1))
    gap_sum = torch.zeros(k * n_bins, dtype=p.dtype, device=p.device).index_add_(0, flat, (onehot - p).reshape(-1))
    count, gap_sum = count.view(k, n_bins), gap_sum.view(k, n_bins)
    gap = gap_sum.abs() / count.clamp_min(1)
    weight = count / n
    if norm == "l1":
        per_class = (weight * gap).sum(1)
    elif norm == "l2":
        per_class = (weight * gap.square()).sum(1).sqrt()
    else:
        per_class = torch.where(count > 0, gap, torch.zeros_like(gap)).max(1).values
    return per_class.mean()


def reliability_bins(probs_or_logits: Tensor, target: Tensor, *, n_bins: int = 15,
                     from_logits: bool | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(mean confidence, accuracy, count) per equal-width bin, for reliability diagrams.

    Empty bins have confidence and accuracy NaN.
    """
    _check_bins_norm(n_bins, "l1")
    p = _probabilities(probs_or_logits, target, from_logits)
    conf, pred = p.max(dim=1)
    correct = (pred == target).to(p.dtype)
    bins = _equal_width_bins(conf.float(), n_bins)
    zeros = torch.zeros(n_bins, dtype=p.dtype, device=p.device)
    count = zeros.clone().index_add_(0, bins, torch.ones_like(conf))
    conf_sum = zeros.clone().index_add_(0, bins, conf)
    acc_sum = zeros.clone().index_add_(0, bins, correct)
    nan = torch.full_like(count, float("nan"))
    return (torch.where(count > 0, conf_sum / count.clamp_min(1), nan),
            torch.where(count > 0, acc_sum / count.clamp_min(1), nan), count)
