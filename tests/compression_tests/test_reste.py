"""ReSTE: gradients, schedule, binary conv and indicators equal the authors' code (tests/data/reste_golden.pt,
made by tools/golden/make_reste_golden.py from DravenALG/ReSTE@0d3c36a), float64, tolerance 1e-10."""
from pathlib import Path

import pytest
import torch

from gradwise.compression import (BinaryConv2d, BinaryLinear, reste_estimating_error, reste_gradient_stability,
                                  reste_o_schedule, reste_sign, set_reste_o, ste_sign)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "reste_golden.pt", weights_only=True)
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN["sign"], ids=lambda c: f"o{c['o']}-t{c['t']}")
def test_gradient_equals_the_authors_binary_reste(case):
    x = case["x"].clone().requires_grad_()
    out = reste_sign(x, case["o"], t=case["t"])
    out.backward(case["grad_out"])
    torch.testing.assert_close(out.detach(), case["out"], rtol=0, atol=0)
    torch.testing.assert_close(x.grad, case["grad"], **TOL)


@pytest.mark.parametrize("case", GOLDEN["schedule"], ids=lambda c: f"E{c['epochs']}")
def test_schedule_equals_the_authors(case):
    ours = torch.tensor([reste_o_schedule(e, case["epochs"], o_end=case["o_end"]) for e in range(case["epochs"])], dtype=torch.float64)
    torch.testing.assert_close(ours, case["o"], **TOL)


@pytest.mark.parametrize("case", GOLDEN["conv"], ids=lambda c: f"a32{c['a32']}-o{c['o']}")
def test_binary_conv_equals_the_authors(case):
    conv = BinaryConv2d(3, 4, 3, stride=case["stride"], padding=case["padding"], bias=False,
                        binarize_activations=not case["a32"], o=case["o"], t=case["t"], dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(case["weight"])
    x = case["x"].clone().requires_grad_()
    out = conv(x)
    out.backward(case["grad_out"])
    torch.testing.assert_close(out.detach(), case["out"], **TOL)
    torch.testing.assert_close(conv.weight.grad, case["grad_weight"], **TOL)
    torch.testing.assert_close(x.grad, case["grad_x"], **TOL)


def test_indicators_equal_the_authors():
    ind = GOLDEN["indicators"]
    torch.testing.assert_close(reste_estimating_error(ind["weights"], 2.0).double(), ind["error_o2"], **TOL)
    torch.testing.assert_close(reste_estimating_error(ind["weights"], 3.0).double(), ind["error_o3"], **TOL)
    torch.testing.assert_close(reste_gradient_stability(ind["grads"]).double(), ind["stability"], **TOL)


def test_contract_points_and_the_authors_ste_crash():
    c = GOLDEN["contract"]
    assert "ones_like" in c["ste_error"]  # why "ste" here is written from what their class meant
    x = c["x"].clone().requires_grad_()
    out = reste_sign(x, c["o"], t=c["t"])
    out.backward(torch.ones_like(x))
    assert out[0] == 0  # sign(0) = 0
    torch.testing.assert_close(x.grad, c["grad"], **TOL)


def test_estimating_error_falls_and_gradient_spread_grows_with_o():
    w = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
    errs, spreads = [], []
    for o in (1.0, 2.0, 3.0):
        x = w.clone().requires_grad_()
        reste_sign(x, o).sum().backward()
        errs.append(float(reste_estimating_error(w, o)))
        spreads.append(float(reste_gradient_stability(x.grad)))
    assert errs[0] > errs[1] > errs[2]
    assert spreads[0] < spreads[1] < spreads[2]


def test_ste_is_the_clipped_identity_and_o1_matches_it_outside_the_centre():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.2], requires_grad=True)
    ste_sign(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    y = x.detach().clone().requires_grad_()
    reste_sign(y, 1.0, t=1.0).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_binary_linear_and_ste_estimator_train_and_float32_stays_float32():
    torch.manual_seed(0)
    lin = BinaryLinear(5, 3, bias=True, estimator="ste")
    x = torch.randn(4, 5, requires_grad=True)
    y = lin(x)
    assert y.dtype == torch.float32
    y.sum().backward()
    assert lin.weight.grad is not None and x.grad is not None and lin.bias.grad is not None
    scale = lin.weight.abs().mean()
    torch.testing.assert_close(y, torch.sign(x) @ (torch.sign(lin.weight) * scale).T + lin.bias)
    net = torch.nn.Sequential(BinaryConv2d(1, 2, 3), torch.nn.Flatten(), BinaryLinear(2, 2, binarize_activations=False))
    assert set_reste_o(net, reste_o_schedule(3, 10)) == 2
    assert net[0].o == net[2].o > 1


def test_nan_is_not_zeroed():
    x = torch.tensor([float("nan"), 0.5], requires_grad=True)
    out = reste_sign(x, 2.0)
    out.sum().backward()
    assert out[0].isnan() and x.grad[0].isnan()
    y = torch.tensor([0.5], requires_grad=True)
    reste_sign(y, 1.0).backward(torch.tensor([float("nan")]))
    assert y.grad[0].isnan()


@pytest.mark.parametrize("call, match", [
    (lambda: reste_sign(torch.ones(2), 0.0), "o"),
    (lambda: reste_sign(torch.ones(2), -1.0), "o"),
    (lambda: reste_sign(torch.ones(2), 2.0, t=0.1), "t"),
    (lambda: reste_sign(torch.ones(2), 2.0, t=0.05), "t"),
    (lambda: reste_sign(torch.ones(2), float("nan")), "o"),
    (lambda: BinaryConv2d(1, 1, 3, estimator="sign"), "estimator"),
    (lambda: BinaryLinear(1, 1, o=0), "o"),
    (lambda: BinaryLinear(1, 1, t=0.1), "t"),
    (lambda: BinaryLinear(1, 1).set_o(-2.0), "o"),
    (lambda: reste_o_schedule(11, 10), "epoch"),
    (lambda: reste_o_schedule(0, 0), "epochs"),
    (lambda: reste_o_schedule(1, 10, o_end=0.0), "o_end"),
    (lambda: reste_estimating_error([torch.ones(2)], 0.0), "o"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_o_leaves_the_module_unchanged():
    lin = BinaryLinear(2, 2, o=2.0)
    with pytest.raises(ValueError):
        lin.set_o(0.0)
    assert lin.o == 2.0
