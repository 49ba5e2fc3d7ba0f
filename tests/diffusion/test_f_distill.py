"""f-distill's weight: equal (float64, rel 1e-10; float32 loosely) to NVlabs/FastGen's
_get_f_div_weighting_h at the commit of tests/data/f_distill_golden.pt (tools/golden/make_f_distill_golden.py),
with and without per-time-bin normalisation; behaviour and bad input."""
from pathlib import Path

import pytest
import torch

from gradwise.diffusion import F_DIVERGENCES, f_distill_weight
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "f_distill_golden.pt", weights_only=True)
DIVS = ("kl", "js", "sf", "neyman", "sh", "jf")


@pytest.mark.parametrize("i", range(len(GOLDEN["h"])))
def test_weight_matches_fastgen(i):
    case = GOLDEN["h"][i]
    logits, t = case["logits"], case["t"]
    f64 = logits.dtype == torch.float64
    for div in DIVS:
        plain = f_distill_weight(logits, divergence=div)
        binned = f_distill_weight(logits, t, divergence=div, t_range=case["t_range"])
        assert plain.dtype == logits.dtype and plain.shape == (logits.shape[0],)
        for got, key in ((plain, f"{div}_plain"), (binned, f"{div}_bins")):
            torch.testing.assert_close(got, case[key], rtol=1e-10 if f64 else 1e-5, atol=1e-300 if f64 else 1e-6,
                                       msg=lambda m, key=key: f"{key}: {m}")


def test_fastgen_rkl_fails_and_here_is_constant():
    assert GOLDEN["rkl_error"].startswith("TypeError")
    h = f_distill_weight(torch.randn(5, 1, dtype=torch.float64), divergence="rkl")
    torch.testing.assert_close(h, torch.full((5,), 1 / (1 + 1e-6), dtype=torch.float64), rtol=1e-12, atol=0)


def test_weights_favour_teacher_dense_samples_for_less_mode_seeking_divergences():
    logits = torch.tensor([[-2.0], [0.0], [2.0]], dtype=torch.float64)  # r = p / q increasing
    for div in ("kl", "js", "sh", "jf"):
        h = f_distill_weight(logits, divergence=div)
        assert (h.diff() > 0).all(), div
        torch.testing.assert_close(h.mean(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-5, atol=0)
    for div in ("sf", "neyman"):
        assert (f_distill_weight(logits, divergence=div).diff() < 0).all(), div
    # clamping: logits far out give the ratio bounds
    h = f_distill_weight(torch.tensor([-50.0, 50.0, 0.0], dtype=torch.float64), divergence="kl",
                         ratio_bounds=(0.5, 2.0))
    torch.testing.assert_close(h / h[2], torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64))


def test_time_bins_normalise_each_bin():
    # two bins with different ratio scales: after normalisation each bin's mean ratio is ~1, so KL's h is too
    logits = torch.log(torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=torch.float64))
    t = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=torch.float64)
    h = f_distill_weight(logits, t, divergence="kl", num_bins=2, t_range=(0.0, 1.0), ratio_bounds=(0.1, 100.0))
    torch.testing.assert_close(h, torch.tensor([0.5, 1.5, 0.5, 1.5], dtype=torch.float64), rtol=1e-5, atol=0)
    # t outside the range falls in the end bins
    h2 = f_distill_weight(logits, t * 10 - 3, divergence="kl", num_bins=2, t_range=(-1.0, 5.0))
    assert torch.isfinite(h2).all()


def test_nan_propagates_and_no_gradient():
    logits = torch.tensor([[0.0], [float("nan")]], requires_grad=True)
    h = f_distill_weight(logits)
    assert h.isnan().all() and not h.requires_grad


def test_bad_input():
    x = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="divergence"):
        f_distill_weight(x, divergence="tv")
    with pytest.raises(ValueError, match="t_range"):
        f_distill_weight(x, torch.rand(4))
    with pytest.raises(ValueError, match="t_range"):
        f_distill_weight(x, torch.rand(4), t_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="t"):
        f_distill_weight(x, torch.rand(3), t_range=(0.0, 1.0))
    for bounds in ((0.0, 1.0), (2.0, 1.0), (0.1,), (0.1, float("inf"))):
        with pytest.raises(ValueError, match="ratio_bounds"):
            f_distill_weight(x, ratio_bounds=bounds)
    with pytest.raises(ValueError, match="num_bins"):
        f_distill_weight(x, num_bins=0)
    with pytest.raises(ValueError, match="fake_logits"):
        f_distill_weight(torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="fake_logits"):
        f_distill_weight(torch.zeros(2, dtype=torch.long))


def test_registered_under_the_seed_title():
    rec = get("f_distill_weight")
    assert rec.paper == "One-step Diffusion Models with f-Divergence Distribution Matching"
    assert rec.kind == "diffusion-objective" and rec.arxiv == "2502.15681"
    assert set(F_DIVERGENCES) == {"rkl", "kl", "js", "sf", "neyman", "sh", "jf"}
