"""Sample-quality metrics of the toy substrate: energy distance, mode recall, Frechet distance of classifier
features. Each computes in float64 and returns a 0-d float64 tensor.
"""
from __future__ import annotations

import torch
from torch import nn

from gradwise._validate import check_positive

from gradwise.diffusion.toy.data import mixture_2d_weights

__all__ = ["energy_distance", "mode_recall", "feature_frechet", "MODE_RECALL_FRACTION"]

# A mode counts as recalled when at least this fraction of its weight's share of the samples lies within
# `radius` of its centre.
MODE_RECALL_FRACTION = 0.5


def _rows(name: str, t, min_rows: int = 2) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] < min_rows:
        raise ValueError(f"Invalid {name}: {getattr(t, 'shape', t)!r} (accepted: a tensor [n, ...] with "
                         f"n >= {min_rows})")
    return t.detach().reshape(t.shape[0], -1).double()


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Székely's squared energy distance ``2 E|A - B| - E|A - A'| - E|B - B'|`` between the empirical
    distributions of ``a [n, ...]`` and ``b [m, ...]`` (rows flattened; Euclidean norm; V-statistics, so it is
    >= 0 and 0 exactly when the two samples are the same multiset). In one dimension it is the square of
    ``scipy.stats.energy_distance``. Raises ValueError naming ``a``/``b`` for fewer than 2 rows or row sizes
    that differ."""
    a2, b2 = _rows("a", a), _rows("b", b)
    if a2.shape[1] != b2.shape[1]:
        raise ValueError(f"Invalid b: rows of {b2.shape[1]} values (accepted: as many as a's, {a2.shape[1]})")
    mode = "donot_use_mm_for_euclid_dist"
    ab = torch.cdist(a2, b2, compute_mode=mode).mean()
    aa = torch.cdist(a2, a2, compute_mode=mode).mean()
    bb = torch.cdist(b2, b2, compute_mode=mode).mean()
    return 2 * ab - aa - bb


def mode_recall(x: torch.Tensor, centers: torch.Tensor, weights=None, radius: float = 0.25) -> torch.Tensor:
    """The fraction of a mixture's modes that the samples ``x [n, d]`` cover.

    Each sample is given to its nearest centre (``centers [K, d]``) when within ``radius`` of it; mode ``k`` is
    recalled when its share of the samples is at least ``MODE_RECALL_FRACTION * weights[k]`` (``weights``
    normalised to sum to 1; uniform if None). So a model that drops a light mode loses its ``1 / K``, however
    light. Raises ValueError naming the argument for shapes that disagree, bad weights or ``radius <= 0``.
    """
    x2 = _rows("x", x, 1)
    c = _rows("centers", centers, 1)
    if x2.shape[1] != c.shape[1]:
        raise ValueError(f"Invalid centers: rows of {c.shape[1]} values (accepted: as many as x's, {x2.shape[1]})")
    check_positive("radius", radius)
    k = c.shape[0]
    w = mixture_2d_weights(weights, k)
    dist = torch.cdist(x2, c, compute_mode="donot_use_mm_for_euclid_dist")
    nearest = dist.min(dim=1)
    hit = nearest.values <= radius
    share = torch.bincount(nearest.indices[hit], minlength=k).double() / x2.shape[0]
    return (share.cpu() >= MODE_RECALL_FRACTION * w).double().mean()


def _gaussian_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


@torch.no_grad()
def feature_frechet(clf: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Frechet distance between Gaussians fitted to ``clf.features`` of ``a`` and of ``b`` (``clf(x)``
    where it has no ``features``), as FID with a digits classifier in place of Inception:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`` (unbiased covariances, float64,
    matrix square roots by symmetric eigendecomposition). Raises ValueError naming ``a``/``b`` for fewer than
    2 samples."""
    _rows("a", a)
    _rows("b", b)
    feat = getattr(clf, "features", clf)
    fa, fb = feat(a).double().flatten(1), feat(b).double().flatten(1)
    mu_a, s_a = _gaussian_stats(fa)
    mu_b, s_b = _gaussian_stats(fb)
    root_a = _sqrt_psd(s_a)
    cross = _sqrt_psd(root_a @ s_b @ root_a)
    return (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * torch.trace(cross)
