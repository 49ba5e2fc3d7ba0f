"""iCT pieces: equal (float64, rel 1e-10) to diffusers' CT script, Kinyugo's port and ECT, run at the
commits of tests/data/ict_golden.pt (tools/golden/make_ict_golden.py); behaviour and bad input."""
import copy
import math
from pathlib import Path

import pytest
import torch

from gradwise.diffusion import (ict_discretization_steps, ict_loss_weights, karras_sigmas, lognormal_sigma_probs,
                                pseudo_huber_loss)
from gradwise.diffusion._common import default_c
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "ict_golden.pt", weights_only=True)


def close(a, b, rtol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=1e-300)


def test_curriculum_matches_diffusers_and_kinyugo():
    for step, total, s0, s1, n in GOLDEN["curriculum"].tolist():
        got = ict_discretization_steps(step, total, s0=s0, s1=s1)
        assert type(got) is int and got == n, (step, total, s0, s1)


@pytest.mark.parametrize("i", range(5))
def test_sigmas_probs_weights_match_references(i):
    case = GOLDEN["sigmas"][i]
    s = karras_sigmas(case["n"], sigma_min=case["sigma_min"], sigma_max=case["sigma_max"], rho=case["rho"])
    close(s, case["sigmas_diffusers"])
    close(s, case["sigmas_kinyugo"])
    for pm, ps in GOLDEN["lognormal_params"]:
        p = lognormal_sigma_probs(s, p_mean=pm, p_std=ps)
        w = case[f"weights_diffusers_{pm}_{ps}"]
        close(p, w / w.sum())
        close(p, case[f"probs_kinyugo_{pm}_{ps}"])
    close(ict_loss_weights(s), case["loss_weights_diffusers"])
    close(ict_loss_weights(s), case["loss_weights_kinyugo"])


@pytest.mark.parametrize("i", range(4))
def test_pseudo_huber_matches_kinyugo_and_ect(i):
    case = GOLDEN["pseudo_huber"][i]
    x, y = case["input"], case["target"]
    close(pseudo_huber_loss(x, y, distance="elementwise"), case["elementwise_kinyugo"])
    for tag in ("c", "ict_c"):
        if f"sum_ect_{tag}" not in case:
            continue
        ect = case[f"sum_ect_{tag}"]
        c = None if tag == "ict_c" else ect["c"]
        close(pseudo_huber_loss(x, y, c=c) / (ect["t"] - ect["r"]), ect["loss"])


@pytest.mark.parametrize("i", range(2))
def test_pseudo_huber_and_default_c_match_diffusers_float32(i):
    case = GOLDEN["pseudo_huber_diffusers_float32"][i]
    x, y = case["input"], case["target"]
    assert math.isclose(default_c(x), case["c"], rel_tol=1e-12)  # 0.00054 * resolution * sqrt(channels)
    got = case["lambda_t"] * pseudo_huber_loss(x, y, distance="elementwise")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, case["loss"], rtol=1e-5, atol=1e-7)


def test_karras_endpoints_order_and_dtype():
    s = karras_sigmas(11, dtype=torch.float32)
    assert s.dtype == torch.float32 and s.shape == (11,)
    assert bool((s[1:] > s[:-1]).all())
    assert math.isclose(float(s[0]), 0.002, rel_tol=1e-6) and math.isclose(float(s[-1]), 80.0, rel_tol=1e-6)


def test_curriculum_doubles_and_caps():
    ns = [ict_discretization_steps(k, 800) for k in range(0, 1600, 100)]
    assert ns[:8] == [11, 21, 41, 81, 161, 321, 641, 1281] and set(ns[8:]) == {1281}
    assert ict_discretization_steps(10 ** 30, 800) == 1281


def test_lognormal_probs_concentrate_near_exp_p_mean():
    s = karras_sigmas(1281)
    p = lognormal_sigma_probs(s)
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12) and bool((p > 0).all())
    mode = float(s[int(p.argmax())])
    assert 0.05 < mode < 2.0  # the lognormal's mass sits around exp(-1.1) ~ 0.33, not at the ends
    assert float(ict_loss_weights(s)[0]) > float(ict_loss_weights(s)[-1])


def test_pseudo_huber_limits_shapes_dtype_and_grad():
    x = torch.randn(4, 1, 8, 8, dtype=torch.float32, requires_grad=True)
    y = torch.randn(4, 1, 8, 8, dtype=torch.float32)
    d = pseudo_huber_loss(x, y)
    assert d.shape == (4,) and d.dtype == torch.float32
    assert pseudo_huber_loss(x, y, distance="elementwise").shape == x.shape
    assert pseudo_huber_loss(x, y, distance="mean").shape == (4,)
    d.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # small residual: ~ squared l2 / (2c); large: ~ l2 - c
    a, b = torch.tensor([[1e-4]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    assert math.isclose(float(pseudo_huber_loss(a, b, c=1.0)), 0.5e-8, rel_tol=1e-6)
    a = torch.tensor([[1e6]], dtype=torch.float64)
    assert math.isclose(float(pseudo_huber_loss(a, b, c=1.0)), 1e6 - 1, rel_tol=1e-9)


def test_pseudo_huber_nan_propagates():
    x = torch.zeros(2, 3)
    x[0, 1] = float("nan")
    d = pseudo_huber_loss(x, torch.zeros(2, 3))
    assert torch.isnan(d[0]) and torch.isfinite(d[1])


@pytest.mark.parametrize("call, name", [
    (lambda: pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "target"),
    (lambda: pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 3), c=0.0), "c"),
    (lambda: pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 3), c=float("inf")), "c"),
    (lambda: pseudo_huber_loss(torch.zeros(2, 3), torch.zeros(2, 3), distance="l2"), "distance"),
    (lambda: pseudo_huber_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), "input"),
    (lambda: ict_discretization_steps(-1, 100), "step"),
    (lambda: ict_discretization_steps(0, 5), "total_steps"),
    (lambda: ict_discretization_steps(0, 100, s0=10, s1=5), "s1"),
    (lambda: karras_sigmas(1), "n"),
    (lambda: karras_sigmas(5, sigma_min=2.0, sigma_max=1.0), "sigma_max"),
    (lambda: karras_sigmas(5, sigma_min=0.0), "sigma_min"),
    (lambda: lognormal_sigma_probs(torch.tensor([1.0, 0.5, 2.0])), "sigmas"),
    (lambda: lognormal_sigma_probs(torch.tensor([0.0, 0.5, 2.0])), "sigmas"),
    (lambda: lognormal_sigma_probs(torch.tensor([1.0])), "sigmas"),
    (lambda: lognormal_sigma_probs(karras_sigmas(5), p_std=0.0), "p_std"),
    (lambda: ict_loss_weights(torch.tensor([1.0, 1.0])), "sigmas"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        call()


def test_registered_under_the_ict_title():
    for fn in ("ict_discretization_steps", "lognormal_sigma_probs", "ict_loss_weights", "pseudo_huber_loss"):
        rec = get(fn)
        assert rec.paper == "Improved Techniques for Training Consistency Models" and rec.family == "diffusion"
        assert rec.arxiv == "2310.14189" and rec.seed
    with pytest.raises(KeyError):
        get("karras_sigmas")
    assert copy.deepcopy(pseudo_huber_loss) is pseudo_huber_loss
