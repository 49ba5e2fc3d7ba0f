"""sLCT pieces: equal (float64, rel 1e-10) to quandao10/LCT @ 34661b9 run on the data of
tests/data/slct_golden.pt (tools/golden/make_slct_golden.py); behaviour and bad input."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.diffusion import cauchy_loss, ot_pair, pseudo_huber_loss, slct_scaling_c
from gradwise.diffusion._common import default_c
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "slct_golden.pt", weights_only=True)


def close(a, b, rtol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-300)


def _mean(t):
    return t.mean(dim=tuple(range(1, t.ndim)))


@pytest.mark.parametrize("i", range(4))
def test_losses_match_lct(i):
    case = GOLDEN["losses"][i]
    x, y, c = case["input"], case["target"], case["c"]
    close(cauchy_loss(x, y, c=c), case["cauchy"])
    close(_mean(cauchy_loss(x, y, c=c, distance="elementwise")), case["cauchy_new"])
    close(pseudo_huber_loss(x, y, c=c, distance="mean"), case["huber"])
    close(_mean(pseudo_huber_loss(x, y, c=c, distance="elementwise")), case["huber_new"])


def test_scaling_c_matches_lct():
    for channels, size, start, n, c in GOLDEN["scaling_c"]:
        c_init = default_c(torch.zeros(1, channels, size, size))
        got = slct_scaling_c(n, start_scales=start, c_init=c_init)
        assert math.isclose(got, c, rel_tol=1e-12), (channels, size, start, n)


@pytest.mark.parametrize("i", range(4))
def test_ot_pair_matches_lct_exact_plan(i):
    case = GOLDEN["ot"][i]
    torch.testing.assert_close(ot_pair(case["x"], case["noise"]), case["noise"][case["perm"]], rtol=0, atol=0)


def test_ot_pair_lowers_cost_and_keeps_grad_to_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 8, 8, generator=g)
    n = torch.randn(64, 1, 8, 8, generator=g, requires_grad=True)
    p = ot_pair(x, n)
    assert sorted(map(tuple, p.detach().flatten(1).tolist())) == sorted(map(tuple, n.detach().flatten(1).tolist()))
    assert float((x - p.detach()).square().sum()) < float((x - n.detach()).square().sum())
    p.sum().backward()
    assert torch.equal(n.grad, torch.ones_like(n))


def test_cauchy_is_more_robust_than_pseudo_huber():
    x = torch.zeros(2, 64, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(2, 64, dtype=torch.float64)
    y[0] = 0.1
    y[1] = 100.0  # an outlier sample
    c = 0.05
    gc, = torch.autograd.grad(cauchy_loss(x, y, c=c).sum(), x)
    gh, = torch.autograd.grad(pseudo_huber_loss(x, y, c=c, distance="mean").sum(), x)
    # the outlier's pull relative to the inlier's: much smaller under Cauchy
    assert gc[1].norm() / gc[0].norm() < 0.01 * gh[1].norm() / gh[0].norm()


def test_cauchy_shapes_dtype_and_nan():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float32)
    assert cauchy_loss(x, torch.zeros_like(x)).dtype == torch.float32
    assert cauchy_loss(x, torch.zeros_like(x), distance="elementwise").shape == x.shape
    assert cauchy_loss(x, torch.zeros_like(x), distance="sum").shape == (3,)
    x[1, 0, 0, 0] = float("nan")
    d = cauchy_loss(x, torch.zeros_like(x))
    assert torch.isnan(d[1]) and torch.isfinite(d[[0, 2]]).all()


def test_scaling_c_schedule_shape():
    assert slct_scaling_c(11, c_init=0.7) == 0.7
    cs = [slct_scaling_c(n, c_init=0.7) for n in (21, 41, 81, 161, 321, 641, 1281)]
    assert all(a > b for a, b in zip(cs, cs[1:]))


@pytest.mark.parametrize("call, name", [
    (lambda: cauchy_loss(torch.zeros(2, 3), torch.zeros(3, 3)), "target"),
    (lambda: cauchy_loss(torch.zeros(2, 3), torch.zeros(2, 3), c=-1.0), "c"),
    (lambda: cauchy_loss(torch.zeros(2, 3), torch.zeros(2, 3), c=float("nan")), "c"),
    (lambda: cauchy_loss(torch.zeros(2, 3), torch.zeros(2, 3), distance="max"), "distance"),
    (lambda: slct_scaling_c(1, c_init=0.1), "num_scales"),
    (lambda: slct_scaling_c(20, c_init=0.0), "c_init"),
    (lambda: slct_scaling_c(20, start_scales=0, c_init=0.1), "start_scales"),
    (lambda: ot_pair(torch.zeros(4, 2), torch.zeros(5, 2)), "noise"),
    (lambda: ot_pair(torch.zeros(4, 2), torch.zeros(4, 3)), "noise"),
    (lambda: ot_pair([[0.0]], torch.zeros(1, 1)), "x"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        call()


def test_registered_under_the_slct_title():
    for fn in ("cauchy_loss", "slct_scaling_c", "ot_pair"):
        rec = get(fn)
        assert rec.paper == "Improved Training Technique for Latent Consistency Models" and rec.arxiv == "2502.01441"
        assert rec.family == "diffusion" and rec.seed
