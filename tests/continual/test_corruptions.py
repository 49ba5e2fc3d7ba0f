import math

import pytest
import torch

from gradwise.continual import CORRUPTIONS, corrupt


def _images(n=6, c=2, h=9, w=9, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_shapes_dtypes_and_no_change_to_input():
    x = _images()
    before = x.clone()
    for kind in CORRUPTIONS:
        for s in (1, 2, 3):
            out = corrupt(x, kind, s, generator=torch.Generator().manual_seed(1))
            assert out.shape == x.shape and out.dtype == x.dtype
            flat = corrupt(x[:, 0], kind, s, generator=torch.Generator().manual_seed(1))
            assert flat.shape == x[:, 0].shape
    assert torch.equal(x, before)


def test_seeded_and_deterministic():
    x = _images()
    for kind in ("noise", "rotation"):
        a = corrupt(x, kind, 2, generator=torch.Generator().manual_seed(3))
        b = corrupt(x, kind, 2, generator=torch.Generator().manual_seed(3))
        c = corrupt(x, kind, 2, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_noise_std_scales_with_severity_and_range():
    x = torch.zeros(200, 1, 8, 8, dtype=torch.float64)
    x[0, 0, 0, 0] = 2.0  # range 2
    stds = [float((corrupt(x, "noise", s, generator=torch.Generator().manual_seed(0)) - x)[1:].std())
            for s in (1, 2, 3)]
    assert stds == pytest.approx([0.16, 0.36, 0.76], rel=0.03)


def test_smooth_is_repeated_box_blur():
    x = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    x[0, 0, 3, 3] = 9.0
    once = corrupt(x, "smooth", 1)
    assert torch.allclose(once[0, 0, 2:5, 2:5], torch.ones(3, 3, dtype=torch.float64))
    assert float(once.sum()) == pytest.approx(9.0)  # interior mass is kept
    twice = corrupt(x, "smooth", 2)
    assert float(twice[0, 0, 3, 3]) == pytest.approx(1.0)  # the centre averages the 3x3 block of ones
    assert torch.allclose(twice, corrupt(once, "smooth", 1))
    assert torch.allclose(corrupt(torch.full((2, 5, 5), 3.0), "smooth", 3), torch.full((2, 5, 5), 3.0))


def test_contrast_keeps_mean_and_shrinks_spread():
    x = _images()
    for s, c in zip((1, 2, 3), (0.4, 0.2, 0.1)):
        out = corrupt(x, "contrast", s)
        assert torch.allclose(out.mean((-2, -1)), x.mean((-2, -1)))
        assert torch.allclose(out.std((-2, -1)), c * x.std((-2, -1)))


def test_rotation_angle_direction_and_fill():
    # one bright pixel right of the centre of a 21x21 image: after the rotation it sits at 15 deg * s
    x = torch.zeros(64, 1, 21, 21, dtype=torch.float64)
    x[:, 0, 10, 16] = 1.0
    rows = torch.arange(21, dtype=torch.float64)
    for s in (1, 2, 3):
        out = corrupt(x, "rotation", s, generator=torch.Generator().manual_seed(0))
        w = out[:, 0].clamp(min=0)
        r = (w.sum(2) * rows).sum(1) / w.sum((1, 2)) - 10
        c = (w.sum(1) * rows).sum(1) / w.sum((1, 2)) - 10
        angle = torch.rad2deg(torch.atan2(r, c))  # rows grow downwards: positive = clockwise on screen
        assert torch.allclose(angle.abs(), torch.full_like(angle, 15.0 * s), atol=1.0)
        assert (angle > 0).any() and (angle < 0).any()  # both directions are drawn
    # corners uncovered by the rotation get the background (the minimum), not 0
    bg = torch.full((1, 1, 11, 11), -1.0, dtype=torch.float64)
    bg[0, 0, 5, 5] = 3.0
    out = corrupt(bg, "rotation", 3, generator=torch.Generator().manual_seed(0))
    assert float(out[0, 0, 0, 0]) == pytest.approx(-1.0)


def test_value_range_is_used():
    x = torch.zeros(50, 1, 6, 6, dtype=torch.float64)
    a = corrupt(x, "noise", 1, generator=torch.Generator().manual_seed(0), value_range=(0.0, 10.0))
    assert float(a.std()) == pytest.approx(0.8, rel=0.05)


@pytest.mark.parametrize("args, kwargs, word", [
    ((torch.rand(2, 3), "noise", 1), {}, "x"),
    ((torch.zeros(0, 4, 4), "noise", 1), {}, "x"),
    ((torch.randint(0, 2, (2, 4, 4)), "noise", 1), {}, "x"),
    ((torch.rand(2, 4, 4), "fog", 1), {}, "kind"),
    ((torch.rand(2, 4, 4), "noise", 4), {}, "severity"),
    ((torch.rand(2, 4, 4), "noise", 0), {}, "severity"),
    ((torch.rand(2, 4, 4), "noise", 1), {"generator": 3}, "generator"),
    ((torch.rand(2, 4, 4), "noise", 1), {"value_range": (1.0, 0.0)}, "value_range"),
    ((torch.rand(2, 4, 4), "noise", 1), {"value_range": (0.0, math.inf)}, "value_range"),
])
def test_bad_input(args, kwargs, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        corrupt(*args, **kwargs)
