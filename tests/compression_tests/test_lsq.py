"""LSQ: outputs and gradients equal lsq-net's quantizer (tests/data/lsq_golden.pt, made by
tools/golden/make_lsq_golden.py from zhutmost/lsq-net@1f644e9) in float64 to 1e-10, the step-size gradient
equals the paper's closed form and a finite difference of the forward, and bad input is refused."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.compression import LSQQuantizer, lsq_bounds, lsq_quantize

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "lsq_golden.pt", weights_only=True)
TOL = dict(rtol=1e-10, atol=1e-12)


def _kw(case):
    signed = not case["all_positive"]
    return dict(bits=case["bits"], signed=signed, symmetric=case["symmetric"])


@pytest.mark.parametrize("case", GOLDEN["runs"], ids=lambda c: f"b{c['bits']}-pos{c['all_positive']}-"
                         f"sym{c['symmetric']}-ch{c['per_channel']}")
def test_output_and_gradients_equal_lsq_net(case):
    assert lsq_bounds(**_kw(case)) == (case["q_n"], case["q_p"])
    x = case["x"].clone().requires_grad_()
    step = case["step"].clone().requires_grad_()
    y = lsq_quantize(x, step, **_kw(case))
    y.backward(case["gy"])
    torch.testing.assert_close(y.detach(), case["y"], **TOL)
    torch.testing.assert_close(x.grad, case["gx"], **TOL)
    torch.testing.assert_close(step.grad, case["gs"], **TOL)
    u = case["x"] / case["step"]
    assert ((u < -case["q_n"]) | (u > case["q_p"])).any() and ((u > -case["q_n"]) & (u < case["q_p"])).any()


@pytest.mark.parametrize("case", GOLDEN["runs"][3:5], ids=["unsigned", "per-channel"])
def test_module_init_from_equals_lsq_net(case):
    q = LSQQuantizer(case["bits"], signed=not case["all_positive"], per_channel=case["per_channel"],
                     dtype=torch.float64)
    q.init_from(case["w"])  # the tensor their init_from saw
    torch.testing.assert_close(q.step.detach().reshape(case["step"].shape), case["step"], **TOL)
    y = q(case["x"])
    torch.testing.assert_close(y.detach(), case["y"], **TOL)


def test_boundary_points_follow_the_paper_not_the_closed_clamp():
    b = GOLDEN["boundary"]  # 4-bit signed, step 0.5: x/s = -8, 7 (on the clip points), -9, 8, 0.6
    x = b["x"].clone().requires_grad_()
    step = b["step"].clone().requires_grad_()
    y = lsq_quantize(x, step, bits=4)
    y.backward(b["gy"])
    torch.testing.assert_close(y.detach(), b["y"], **TOL)
    g = 1 / math.sqrt(5 * 7)
    # the paper: -Q_N, Q_P on the clip points (lsq-net: 0 there, d/dx = 1)
    torch.testing.assert_close(step.grad, torch.tensor([(-8 + 7 - 8 + 7 + 0.4) * g], dtype=torch.float64), **TOL)
    torch.testing.assert_close(b["gs"], torch.tensor([0.4 * g - 8 * g + 7 * g], dtype=torch.float64), **TOL)
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 0.0, 1.0] and b["gx"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_step_gradient_closed_form_and_finite_difference():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, generator=gen, dtype=torch.float64) * 2
    s0 = 0.37
    step = torch.tensor(s0, dtype=torch.float64, requires_grad=True)
    y = lsq_quantize(x, step, bits=3, grad_scale=1.0)
    # per-element gradients: backward a one-hot at a time is slow; use a Jacobian through sum with weights
    w = torch.randn(400, generator=gen, dtype=torch.float64)
    (y * w).sum().backward()
    u = x / s0
    q_n, q_p = lsq_bounds(3)
    inside = (u > -q_n) & (u < q_p)
    d = torch.where(inside, torch.round(u) - u, torch.clamp(u, -q_n, q_p))
    torch.testing.assert_close(step.grad, (w * d).sum(), **TOL)
    # finite difference of the forward: on clipped entries the true derivative is -Q_N / Q_P (= LSQ's);
    # inside, with round frozen, it is round(u), i.e. LSQ's gradient plus the straight-through term u
    h = 1e-7
    fwd = lambda s: torch.clamp(torch.round(x / s), -q_n, q_p) * s  # noqa: E731
    fd = (fwd(s0 + h) - fwd(s0 - h)) / (2 * h)
    far = (u - torch.round(u)).abs() < 0.49  # no rounding jump within +-h
    clipped = ~inside & ((u < -q_n - 1e-3) | (u > q_p + 1e-3))
    assert clipped.sum() > 20 and (inside & far).sum() > 100
    torch.testing.assert_close(fd[clipped], d[clipped], rtol=0, atol=1e-6)
    torch.testing.assert_close(fd[inside & far], (d + u)[inside & far], rtol=0, atol=1e-6)


def test_default_gradient_scale_is_one_over_sqrt_n_qp():
    x = torch.linspace(-3, 3, 30, dtype=torch.float64)
    s1 = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    s2 = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    lsq_quantize(x, s1, bits=4).sum().backward()
    lsq_quantize(x, s2, bits=4, grad_scale=1.0).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad / math.sqrt(30 * 7), **TOL)


def test_module_trains_its_step_and_nan_propagates():
    torch.manual_seed(0)
    q = LSQQuantizer(4)
    w = torch.randn(64)
    q.init_from(w)
    torch.testing.assert_close(q.step.detach(), (2 * w.abs().mean() / math.sqrt(7)).reshape(1))
    opt = torch.optim.SGD(q.parameters(), lr=0.05)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = (q(w) - w).pow(2).mean()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first
    x = torch.tensor([0.1, float("nan")], requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    y = lsq_quantize(x, s, bits=4)
    y.sum().backward()
    assert torch.isnan(y[1]) and torch.isnan(s.grad) and x.grad[1] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=1), "bits"), (dict(bits=17), "bits"), (dict(bits=4, signed=False, symmetric=True), "symmetric"),
    (dict(bits=4.0), "bits"), (dict(bits=4, grad_scale=0.0), "grad_scale"), (dict(bits=4, grad_scale=-1.0), "grad_scale"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lsq_quantize(torch.randn(4), 0.1, **kwargs)


def test_bad_step_and_input_raise_before_any_gradient():
    x = torch.randn(4, 3)
    for step, match in [(0.0, "step"), (-1.0, "step"), (torch.tensor([0.1, -0.1, 0.2, 0.1]).reshape(4, 1), "step"),
                        (torch.ones(3, 4), "step"), (torch.ones(2, 4, 3), "step"), (torch.tensor(1), "step")]:
        with pytest.raises(ValueError, match=match):
            lsq_quantize(x, step)
    with pytest.raises(ValueError, match="x"):
        lsq_quantize(torch.arange(4), 0.1)
    q = LSQQuantizer(4, per_channel=True)
    with pytest.raises(ValueError, match="v"):
        q.init_from(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="v"):
        q.init_from(torch.arange(4))
    assert q.step.grad is None and q.step.tolist() == [1.0]
    with pytest.raises(ValueError, match="step"):
        LSQQuantizer(4, step=0.0)
