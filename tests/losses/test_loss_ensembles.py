"""EnsLoss (random calibrated loss-derivatives per minibatch), binary and one-vs-rest."""
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradwise.losses as L

from numerics import assert_close_to_stored


DATA = Path(__file__).parents[1] / "data"
GOLD = torch.load(DATA / "ensloss_golden.pt", weights_only=True)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(n=40, seed=0, scale=2.0, dtype=torch.float64):
    g = _gen(seed)
    x = (torch.randn(n, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, 2, (n,), generator=g)
    return x, y


# ----- golden values from the authors' losses.py (class ensLoss) -------------------------------------------------

@pytest.mark.parametrize("case", GOLD["cases"], ids=lambda c: f"seed{c['seed']}-lam{c['lam']}-{c['scores'].dtype}")
@pytest.mark.parametrize("mode", ["generator", "noise", "global-seed"])
def test_matches_authors_code(case, mode):
    x = case["scores"].clone().requires_grad_(True)
    if mode == "generator":
        loss = L.ensloss(x, case["target"], lam=case["lam"], generator=_gen(case["seed"]))
    elif mode == "noise":
        loss = L.ensloss(x, case["target"], lam=case["lam"], noise=case["noise"])
    else:  # their draw: the default CPU generator after torch.manual_seed
        with torch.random.fork_rng():
            torch.manual_seed(case["seed"])
            loss = L.ensloss(x, case["target"], lam=case["lam"])
    loss.backward()
    # float32 with lam = 0 follows their arithmetic step for step, so it agrees to rounding: a few ulps, not bit
    # for bit, since the golden file was made on another CPU whose vectorized kernels may round differently
    # (tests/numerics.py). lam != 0 uses exp(log1p(.)/lam) for their pow, and float64 inputs keep the
    # derivatives in float64 (theirs are float32).
    assert loss.dtype == case["scores"].dtype
    if case["scores"].dtype == torch.float32 and case["lam"] == 0.0:
        assert_close_to_stored(loss, case["loss"])
        assert_close_to_stored(x.grad, case["grad"])
    else:
        torch.testing.assert_close(loss, case["loss"], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(x.grad, case["grad"], rtol=1e-6, atol=1e-7)


def test_golden_noise_is_the_generator_stream():
    c = GOLD["cases"][0]
    # the same draws, to rounding: torch's normal sampler has vectorized variants per CPU capability
    # (ATEN_CPU_CAPABILITY=default rounds its Box-Muller transform differently from AVX2)
    assert_close_to_stored(torch.randn(len(c["noise"]), generator=_gen(c["seed"])), c["noise"])


# ----- the construction: calibrated, convex, rank-matched ---------------------------------------------------------

@pytest.mark.parametrize("lam", [0.0, 0.5, -0.7, 1.0])
@pytest.mark.parametrize("tail", [True, False])
def test_derivatives_are_calibrated_and_non_decreasing(lam, tail):
    z = torch.cat([torch.linspace(-6, 8, 199, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    z = z[torch.randperm(len(z), generator=_gen(1))]
    g = L.ensloss_derivatives(z, lam=lam, tail=tail, generator=_gen(3))
    assert g.shape == z.shape and not g.requires_grad
    assert (g < 0).all() and (g >= -1 - 1e-6 - 1e-15).all()        # phi' < 0 (so phi'(0) < 0), slope >= -1
    assert float(g[z == 0]) < 0                                        # calibration at 0 explicitly
    gs = g[torch.argsort(z)]
    assert (gs[1:] - gs[:-1] >= 0).all()                               # phi' non-decreasing: phi convex
    if tail:
        big = z > 1
        assert (g[big].abs() <= 1 / z[big] + 1e-6 + 1e-12).all()       # superlinear tail: |phi'(z)| <= 1/z


def test_derivatives_are_the_sorted_clipped_draws():
    z = torch.randn(300, generator=_gen(0), dtype=torch.float64) * 3
    e = torch.randn(300, generator=_gen(9))
    g = L.ensloss_derivatives(z, tail=False, noise=e)
    expect = (-torch.exp(e)).sort().values.clamp_min(-1.0).double() - 1e-6
    torch.testing.assert_close(g[torch.argsort(z)], expect, rtol=0, atol=0)
    # the tail divides by the margin where z > 1
    gt = L.ensloss_derivatives(z, tail=True, noise=e)
    torch.testing.assert_close(gt + 1e-6, torch.where(z > 1, (g + 1e-6) / z, g + 1e-6), rtol=1e-12, atol=1e-15)
    # Box-Cox lam -> 0 is continuous (the authors' exp)
    torch.testing.assert_close(L.ensloss_derivatives(z, lam=1e-9, noise=e), L.ensloss_derivatives(z, noise=e),
                               rtol=1e-6, atol=1e-7)
    # lam = 1: -(1 + e)_+ clipped at -1
    g1 = L.ensloss_derivatives(z, lam=1.0, tail=False, noise=e)
    expect1 = (-(1 + e).clamp_min(0)).sort().values.clamp_min(-1.0).double() - 1e-6
    torch.testing.assert_close(g1[torch.argsort(z)], expect1, rtol=1e-6, atol=1e-7)


def test_derivative_distribution_lognormal():
    # lam = 0, no tail: g + 1e-6 = -min(exp(e), 1); half the draws are clipped to -1, the median is -1 / -exp(0)
    z = torch.zeros(20000, dtype=torch.float64)
    g = L.ensloss_derivatives(z, tail=False, generator=_gen(5)) + 1e-6
    clipped = float(((g + 1).abs() < 1e-12).double().mean())
    assert abs(clipped - 0.5) < 0.02
    # the unclipped part is -exp(e) for e < 0: P(-g <= 0.5) = P(e <= -log 2)
    assert abs(float((g >= -0.5).double().mean()) - float(torch.distributions.Normal(0, 1).cdf(torch.tensor(-0.6931))))\
        < 0.02


def test_gradient_is_drawn_derivative_times_label():
    x, y = _data()
    xx = x.clone().requires_grad_(True)
    L.ensloss(xx, y, generator=_gen(7)).backward()
    sign = y.double() * 2 - 1
    g = L.ensloss_derivatives(x * sign, generator=_gen(7))
    torch.testing.assert_close(xx.grad, g * sign / len(x), rtol=0, atol=1e-15)
    # the value is the linearization g . z
    torch.testing.assert_close(L.ensloss(x, y, generator=_gen(7), reduction="none"), g * x * sign)


def test_target_codings_and_shapes_agree():
    x, y = _data()
    ref = L.ensloss(x, y, generator=_gen(2), reduction="none")
    for t in (y * 2 - 1, y.bool(), y.float(), y.double()[:, None], (y * 2 - 1).float()):
        torch.testing.assert_close(L.ensloss(x, t, generator=_gen(2), reduction="none"), ref)
    torch.testing.assert_close(L.ensloss(x[:, None], y[:, None], generator=_gen(2), reduction="none"), ref)


# ----- reproducibility -------------------------------------------------------------------------------------------

def test_seeded_generator_reproduces_and_seeds_differ():
    x, y = _data()
    grads = []
    for seed in (11, 11, 12):
        xx = x.clone().requires_grad_(True)
        L.ensloss(xx, y, generator=_gen(seed)).backward()
        grads.append(xx.grad)
    assert torch.equal(grads[0], grads[1]) and not torch.equal(grads[0], grads[2])


def test_module_twins_equal_functions_and_draw_anew_each_call():
    x, y = _data()
    crit = L.EnsLoss(generator=_gen(4), reduction="sum")
    a, b = crit(x, y), crit(x, y)
    gen = _gen(4)
    torch.testing.assert_close(a, L.ensloss(x, y, generator=gen, reduction="sum"))
    torch.testing.assert_close(b, L.ensloss(x, y, generator=gen, reduction="sum"))
    assert not torch.equal(a, b)                      # a new random loss for the next minibatch
    xm, ym = torch.randn(9, 4, generator=_gen(0), dtype=torch.float64), torch.randint(0, 4, (9,), generator=_gen(1))
    torch.testing.assert_close(L.EnsLossOVR(generator=_gen(6), lam=0.3)(xm, ym),
                               L.ensloss_ovr(xm, ym, generator=_gen(6), lam=0.3))


# ----- one-vs-rest extension -------------------------------------------------------------------------------------

def test_ovr_is_binary_ensloss_on_all_one_vs_rest_margins():
    x = torch.randn(12, 5, generator=_gen(0), dtype=torch.float64) * 2
    y = torch.randint(0, 5, (12,), generator=_gen(1))
    onehot = torch.nn.functional.one_hot(y, 5).bool()
    z = torch.where(onehot, x, -x)
    per = L.ensloss_ovr(x, y, generator=_gen(3), reduction="none")
    flat = L.ensloss(z.reshape(-1), torch.ones(60, dtype=torch.long), generator=_gen(3), reduction="none")
    torch.testing.assert_close(per, flat.view(12, 5).sum(1))
    xx = x.clone().requires_grad_(True)
    L.ensloss_ovr(xx, y, generator=_gen(3)).backward()
    g = L.ensloss_derivatives(z.reshape(-1), generator=_gen(3)).view(12, 5)
    torch.testing.assert_close(xx.grad, torch.where(onehot, g, -g) / 12)
    # the true class is pushed up and the others down
    assert (xx.grad[onehot] < 0).all() and (xx.grad[~onehot] > 0).all()


def test_ovr_ignore_index_removes_rows_before_the_draw():
    x = torch.randn(10, 3, generator=_gen(0), dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=_gen(1))
    y_ign = y.clone()
    y_ign[[2, 7]] = -100
    keep = y_ign != -100
    xx = x.clone().requires_grad_(True)
    none = L.ensloss_ovr(xx, y_ign, generator=_gen(5), reduction="none")
    assert (none[~keep] == 0).all()
    # the generator fills all [N, K] draws; the ignored rows' draws are discarded
    draws = torch.randn(10, 3, generator=_gen(5))
    torch.testing.assert_close(none[keep], L.ensloss_ovr(x[keep], y[keep], noise=draws[keep], reduction="none"))
    torch.testing.assert_close(none, L.ensloss_ovr(x, y_ign, noise=draws, reduction="none"))
    # with nothing ignored the draws are the same: ignore_index=None and -100 agree
    torch.testing.assert_close(L.ensloss_ovr(x, y, generator=_gen(5), ignore_index=None, reduction="none"),
                               L.ensloss_ovr(x, y, generator=_gen(5), reduction="none"))
    mean = L.ensloss_ovr(xx, y_ign, generator=_gen(5))
    torch.testing.assert_close(mean, none[keep].mean())
    mean.backward()
    assert (xx.grad[~keep] == 0).all()
    # noise given for all rows: the kept rows' draws are used, in row-major order
    noise = torch.randn(10, 3, generator=_gen(8))
    torch.testing.assert_close(L.ensloss_ovr(x, y_ign, noise=noise, reduction="none")[keep],
                               L.ensloss_ovr(x[keep], y[keep], noise=noise[keep], reduction="none"))


# ----- reductions, numerics, validation --------------------------------------------------------------------------

def test_reductions_consistent():
    x, y = _data()
    none = L.ensloss(x, y, generator=_gen(1), reduction="none")
    torch.testing.assert_close(L.ensloss(x, y, generator=_gen(1), reduction="sum"), none.sum())
    torch.testing.assert_close(L.ensloss(x, y, generator=_gen(1), reduction="mean"), none.mean())
    xm, ym = torch.randn(7, 3, generator=_gen(0), dtype=torch.float64), torch.randint(0, 3, (7,), generator=_gen(1))
    nm = L.ensloss_ovr(xm, ym, generator=_gen(1), reduction="none")
    torch.testing.assert_close(L.ensloss_ovr(xm, ym, generator=_gen(1), reduction="sum"), nm.sum())
    torch.testing.assert_close(L.ensloss_ovr(xm, ym, generator=_gen(1), reduction="mean"), nm.mean())


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from([1e-3, 1.0, 100.0, 1e4]),
       st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from([0.0, 0.5, -0.7]))
def test_finite_for_large_scores(seed, scale, dtype, lam):
    g = _gen(seed)
    x = ((torch.rand(16, generator=g) * 2 - 1) * scale).to(dtype).requires_grad_(True)
    y = torch.randint(0, 2, (16,), generator=g)
    loss = L.ensloss(x, y, lam=lam, generator=g)
    loss.float().backward()
    assert loss.dtype == dtype and torch.isfinite(loss.float()) and torch.isfinite(x.grad.float()).all()
    xm = ((torch.rand(8, 5, generator=g) * 2 - 1) * scale).to(dtype).requires_grad_(True)
    ym = torch.randint(0, 5, (8,), generator=g)
    lm = L.ensloss_ovr(xm, ym, lam=lam, generator=g)
    lm.float().backward()
    assert lm.dtype == dtype and torch.isfinite(lm.float()) and torch.isfinite(xm.grad.float()).all()


def test_invalid_inputs_rejected():
    x, y = _data(n=6)
    bad = [
        (lambda: L.ensloss(x.long(), y), "scores"),
        (lambda: L.ensloss(x.view(3, 2), y), "scores"),
        (lambda: L.ensloss(x, y[:5]), "target"),
        (lambda: L.ensloss(x, y + 1), "target"),                                  # label 2
        (lambda: L.ensloss(x, torch.tensor([0, 1, -1, 1, 0, 1])), "target"),     # mixed codings
        (lambda: L.ensloss(x, [0, 1, 0, 1, 0, 1]), "target"),
        (lambda: L.ensloss(x, y, lam=float("nan")), "lam"),
        (lambda: L.ensloss(x, y, lam=True), "lam"),
        (lambda: L.ensloss(x, y, generator=0), "generator"),
        (lambda: L.ensloss(x, y, noise=torch.randn(5)), "noise"),
        (lambda: L.ensloss(x, y, reduction="avg"), "reduction"),
        (lambda: L.ensloss_ovr(x.view(3, 2), torch.tensor([0, 2, 1])), "target"),
        (lambda: L.ensloss_ovr(x.view(3, 2), torch.tensor([0, 1, 1]), noise=torch.randn(3)), "noise"),
        (lambda: L.ensloss_derivatives(x.view(3, 2)), "margins"),
    ]
    for fn, name in bad:
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            fn()
    with pytest.raises(ValueError, match="Invalid reduction"):
        L.EnsLoss(reduction="avg")


def test_registry_records():
    from gradwise.registry import get

    for name in ("ensloss", "ensloss_ovr"):
        m = get(name)
        assert m.kind == "loss" and m.arxiv == "2409.00908" and m.code == "https://github.com/statmlben/ensLoss"
