"""energy_distance, mode_recall, feature_frechet against direct computations."""
import numpy as np
import pytest
import torch
from torch import nn

from gradwise.diffusion.toy import energy_distance, feature_frechet, mixture_2d, mixture_2d_centers, mode_recall


def test_energy_distance_is_the_square_of_scipys_in_1d():
    from scipy.stats import energy_distance as scipy_ed

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, generator=g, dtype=torch.float64), 0.5 + torch.randn(200, generator=g, dtype=torch.float64)
    ours = energy_distance(a[:, None], b[:, None]).item()
    assert ours == pytest.approx(scipy_ed(a.numpy(), b.numpy()) ** 2, rel=1e-10)


def test_energy_distance_matches_a_direct_sum_in_2d_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 2, generator=g), torch.randn(30, 2, generator=g) + 1
    an, bn = a.double().numpy(), b.double().numpy()
    d = lambda p, q: np.linalg.norm(p[:, None] - q[None], axis=-1).mean()  # noqa: E731
    assert energy_distance(a, b).item() == pytest.approx(2 * d(an, bn) - d(an, an) - d(bn, bn), rel=1e-10)
    assert energy_distance(a, a).item() == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(a, b).dtype == torch.float64


def test_energy_distance_bad_input():
    with pytest.raises(ValueError, match="a"):
        energy_distance(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="b"):
        energy_distance(torch.zeros(5, 2), torch.zeros(5, 3))


def test_mode_recall_counts_dropped_modes():
    c = mixture_2d_centers(8, 2.0)
    w = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03])
    x, _ = mixture_2d(4000, weights=w, generator=torch.Generator().manual_seed(0))
    assert mode_recall(x, c, w, 0.25).item() == 1.0
    kept = torch.cdist(x, c).argmin(1) < 6  # drop the two lightest modes
    assert mode_recall(x[kept], c, w, 0.25).item() == 0.75
    assert mode_recall(x * 3, c, w, 0.25).item() == 0.0  # nothing within the radius
    with pytest.raises(ValueError, match="radius"):
        mode_recall(x, c, w, 0.0)
    with pytest.raises(ValueError, match="weights"):
        mode_recall(x, c, w[:4], 0.25)
    with pytest.raises(ValueError, match="centers"):
        mode_recall(x, torch.zeros(8, 3), w, 0.25)


def test_feature_frechet_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    a, b = torch.randn(100, 1, 8, 8), torch.randn(80, 1, 8, 8) * 1.3 + 0.2
    with torch.no_grad():
        fa, fb = clf(a).double().numpy(), clf(b).double().numpy()
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    ref = ((fa.mean(0) - fb.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * sqrtm(sa @ sb).real)
    assert feature_frechet(clf, a, b).item() == pytest.approx(ref, rel=1e-8)
    assert feature_frechet(clf, a, a).item() == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="b"):
        feature_frechet(clf, a, b[:1])
