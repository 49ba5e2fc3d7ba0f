"""Double Rounding (seed 101): eq. 1-3 and their exactness claims, the STE gradient of eq. 13, ALRS (eq. 6-7).
No authors' code exists (their repository is a README), so the checks are the paper's formulas written out."""
import pytest
import torch

from gradwise.compression import DoubleRoundingQuantizer, alrs_eta, alrs_lr_scale, double_round

TOL = dict(rtol=1e-12, atol=1e-12)


def _weights(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * 0.05


@pytest.mark.parametrize("rounding", ["nearest", "half_up", "floor"])
def test_lower_widths_come_from_the_stored_integers_alone(rounding):
    w = _weights()
    q = DoubleRoundingQuantizer((8, 6, 4, 2), rounding=rounding)
    q.init_scale_(w)
    w_int = q.quantize_int(w)
    assert w_int.dtype == torch.int8
    for b in q.bits:
        ours = q(w, bits=b)
        stored = q.dequantize_int(w_int, b, dtype=torch.float64)
        assert torch.equal(ours, stored), b  # bit-exact: the forward is a function of W~_h and s_h only
        lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
        levels = ours / (q.scale.detach() * 2 ** (8 - b))
        assert torch.equal(levels, levels.round()) and levels.min() >= lo and levels.max() <= hi


def test_second_rounding_error_is_at_most_half_a_low_bit_step():
    w = _weights(seed=1)
    q = DoubleRoundingQuantizer((8, 4), scale=float(w.abs().max() / 127))  # no high-bit clipping
    w_int = q.quantize_int(w).to(torch.int64)
    low = double_round(w_int, 8, 4)
    inside = (low > -8) & (low < 7)
    err = (low * 16 - w_int)[inside]
    assert err.abs().max() <= 8  # |2^D W~_l - W~_h| <= 2^(D-1) where the l-bit clip does not bite
    assert (low[~inside].abs() >= 7).all()


def test_integer_and_float_paths_agree_and_ties_follow_the_rounding_rule():
    w_int = torch.arange(-128, 128, dtype=torch.int16)
    for rounding in ("nearest", "half_up", "floor"):
        for b in (7, 6, 4, 2):
            a = double_round(w_int, 8, b, rounding=rounding)
            f = double_round(w_int.to(torch.float64), 8, b, rounding=rounding)
            assert a.dtype == torch.int16 and torch.equal(a.to(torch.float64), f)
    ties = torch.tensor([-6, -2, 2, 6], dtype=torch.int8)  # /4 -> -1.5, -0.5, 0.5, 1.5
    assert double_round(ties, 8, 6).tolist() == [-2, 0, 0, 2]
    assert double_round(ties, 8, 6, rounding="half_up").tolist() == [-1, 0, 1, 2]
    assert double_round(ties, 8, 6, rounding="floor").tolist() == [-2, -1, 0, 1]
    assert torch.equal(double_round(w_int, 8, 8), w_int)


def test_highest_width_is_lsq_and_scales_are_powers_of_two():
    w = _weights(seed=2)
    q = DoubleRoundingQuantizer(scale=0.004, dtype=torch.float64)
    torch.testing.assert_close(q(w), torch.round(w / 0.004).clamp(-128, 127) * 0.004, **TOL)
    for b in (6, 4, 2):  # eq. 3: the l-bit step is s_h 2^(h-l)
        levels = torch.unique(q(w, bits=b))
        steps = torch.diff(levels)
        torch.testing.assert_close(steps.min(), torch.tensor(0.004 * 2 ** (8 - b), dtype=torch.float64), **TOL)


def test_gradients_follow_eq13_by_hand():
    s, step = 0.1, 4.0  # h = 4, l = 2, Delta = 2
    q = DoubleRoundingQuantizer((4, 2), scale=s, dtype=torch.float64)
    # inside both ranges (two); clipped by the 2-bit range only (6 / 4 = 1.5 -> 2 > 1); clipped by the 4-bit one
    w = torch.tensor([0.13, -0.27, 0.62, -2.0], dtype=torch.float64, requires_grad=True)
    out = q(w, bits=2)
    w_h = torch.round(w.detach() / s).clamp(-8, 7)
    w_l = torch.round(w_h / step).clamp(-2, 1)
    torch.testing.assert_close(out.detach(), w_l * s * step, **TOL)
    out.backward(torch.ones_like(out))
    inner_ok = (w_h > -8) & (w_h < 7)
    outer_ok = (torch.round(w_h / step) >= -2) & (torch.round(w_h / step) <= 1)
    assert inner_ok.tolist() == [True, True, True, False] and outer_ok.tolist() == [True, True, False, True]
    want_s = torch.where(inner_ok & outer_ok, step * w_l - w.detach() / s, step * w_l)
    torch.testing.assert_close(q.scale.grad, want_s.sum(), **TOL)
    torch.testing.assert_close(w.grad, (inner_ok & outer_ok).double(), **TOL)


def test_highest_width_gradient_is_lsq_eq13():
    q = DoubleRoundingQuantizer((8, 4), scale=0.01, dtype=torch.float64)
    w = torch.tensor([0.0123, -0.4567, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    q(w).sum().backward()
    v = w.detach() / 0.01
    want = torch.where(v > 127, torch.tensor(127.0, dtype=torch.float64),
                       torch.where(v < -128, torch.tensor(-128.0, dtype=torch.float64), torch.round(v) - v))
    torch.testing.assert_close(q.scale.grad, want.sum(), **TOL)


def test_switching_per_forward_and_first_forward_initialises():
    w = _weights(seed=3)
    q = DoubleRoundingQuantizer()
    assert not bool(q.initialized)
    out8 = q(w)
    assert bool(q.initialized)
    torch.testing.assert_close(q.scale.detach().double(), 2 * w.abs().mean() / 127 ** 0.5, rtol=1e-6, atol=0)
    q.set_bits(2)
    assert q.active_bits == 2 and torch.unique(q(w)).numel() <= 4
    assert torch.equal(q(w, bits=8), out8)


def test_nan_propagates():
    q = DoubleRoundingQuantizer(scale=0.1)
    out = q(torch.tensor([float("nan"), 0.3]), bits=4)
    assert torch.isnan(out[0]) and not torch.isnan(out[1])


def test_alrs_eta_and_lr_by_hand():
    assert [alrs_eta(b) for b in (8, 7, 6, 5, 4, 2)] == pytest.approx([1.0, 0.5, 0.1, 0.05, 0.01, 0.001])
    grads = [torch.tensor(0.3), torch.tensor(-2.5), torch.tensor([0.6, 0.8, 0.0]), None]
    # clipped max-abs per layer: 0.3; 1.0; [0.6, 0.8] has norm 1 -> 0.8; None -> 0
    mean = (0.3 + 1.0 + 0.8 + 0.0) / 4
    assert alrs_lr_scale(1.0, grads, 6) == pytest.approx(0.1 * (1.0 - mean))
    assert alrs_lr_scale(1.0, grads, 8) == pytest.approx(1.0 - mean)
    big = [torch.tensor([3.0, 4.0])]  # norm 5 -> clipped to [0.6, 0.8] -> 0.8
    assert alrs_lr_scale(2.0, big, 4) == pytest.approx(0.01 * (2.0 - 0.8))
    assert alrs_lr_scale(5e-4, [torch.tensor(0.05)], 8) < 0  # eq. 6 as printed can go negative
    assert torch.isnan(torch.tensor(alrs_lr_scale(1.0, [torch.tensor(float("nan"))], 8)))


@pytest.mark.parametrize("kwargs", [dict(bits=(8, 3, 3)), dict(bits=(8, 1)), dict(bits=()), dict(bits=(8, 17)),
                                    dict(bits=(8.0, 4)), dict(rounding="stochastic"), dict(scale=0.0)])
def test_bad_construction_raises(kwargs):
    with pytest.raises(ValueError):
        DoubleRoundingQuantizer(**kwargs)


def test_unsupported_width_raises_before_anything_changes():
    q = DoubleRoundingQuantizer((8, 6, 4, 2), scale=0.1)
    for bad in (5, 3, 1, True, 9):
        with pytest.raises(ValueError, match="bits"):
            q(torch.randn(3), bits=bad)
    with pytest.raises(ValueError, match="bits"):
        q.set_bits(3)
    assert q.active_bits == 8 and q.scale.grad is None
    with pytest.raises(ValueError, match="to_bits"):
        double_round(torch.zeros(2, dtype=torch.int8), 4, 8)
    with pytest.raises(ValueError, match="bits"):
        alrs_lr_scale(1e-3, [torch.tensor(0.1)], 9)
    with pytest.raises(ValueError, match="scale_grads"):
        alrs_lr_scale(1e-3, [], 8)
    with pytest.raises(ValueError, match="lr"):
        alrs_lr_scale(-1.0, [torch.tensor(0.1)], 8)
