"""AdaPT: the fixed-point quantizer, the KL push-down loss and whole MSGD_FP runs equal the authors' code
(tests/data/adapt_golden.pt, made by tools/golden/make_adapt_golden.py from lorenz0890/AdaPT@980eead with
qtorch 0.3.0). Discrete outputs (word/fraction lengths, lookbacks, resolutions, strategies, grid codes) exactly;
float32 master weights within 1e-6."""
import copy
from pathlib import Path

import pytest
import torch

from gradwise.compression import AdaPTController, AdaPTSGD, FixedPointQuantizer, fixed_point_quantize
from gradwise.compression.adapt import _kl_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "adapt_golden.pt", weights_only=True)


def _codes(x: torch.Tensor, fl: int) -> torch.Tensor:
    return (x.double() * 2.0 ** fl).round().long()


@pytest.mark.parametrize("case", GOLDEN["quantize"], ids=lambda c: f"{c['wl']}.{c['fl']}-{c['rounding']}")
def test_quantizer_equals_qtorch(case):
    torch.manual_seed(case["seed"])
    q = FixedPointQuantizer(case["wl"], case["fl"], rounding=case["rounding"], clamp=case["clamp"],
                            symmetric=case["symmetric"])
    y = q(case["x"])
    assert y.dtype == torch.float32
    assert torch.equal(_codes(y, case["fl"]), _codes(case["out"], case["fl"]))


@pytest.mark.parametrize("case", GOLDEN["kl"], ids=lambda c: f"res{c['res']}")
def test_push_down_loss_equals_theirs(case):
    torch.manual_seed(case["seed"])
    w_hat = fixed_point_quantize(case["w"], case["wl"], case["fl"])
    torch.testing.assert_close(_kl_loss(case["w"], w_hat, case["res"]).double(), case["loss"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("run", GOLDEN["runs"], ids=lambda r: r["ctl"]["push_up_strategy"] + str(r["seed"]))
def test_msgd_fp_runs_equal_the_authors(run):
    params = [torch.nn.Parameter(t.clone()) for t in run["init"]]
    opt = AdaPTSGD(params, **run["opt"], **run["ctl"])
    torch.manual_seed(run["seed"])
    for t, grads in enumerate(run["grads"]):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step(run["losses"][t].clone())
        c = opt.controller
        assert (c.wl, c.fl, c.lookback, c.resolution, c.strategy) == (
            run["qwl"][t], run["qfl"][t], run["lb"][t], run["res"][t], run["strategy"][t]), f"step {t}"
        for i, p in enumerate(params):
            torch.testing.assert_close(opt.master[i], run["master"][t][i], rtol=1e-6, atol=1e-7)
            assert torch.equal(_codes(p.detach(), c.fl[i]), _codes(run["params"][t][i], c.fl[i])), f"step {t} param {i}"


def test_the_contract_points_recorded_from_their_source():
    assert GOLDEN["contract"] == {"fl_bisection_at_fl_min": True, "no_quant_grads_exits": True}


def test_stochastic_rounding_is_unbiased_and_nearest_is_half_even_on_the_grid():
    x = torch.full((200_000,), 0.3, dtype=torch.float64)
    y = fixed_point_quantize(x, 8, 2, generator=torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == {0.25, 0.5}
    assert abs(float(y.mean()) - 0.3) < 2e-3
    ties = torch.tensor([0.125, 0.375, -0.125, 100.0, -100.0])
    assert fixed_point_quantize(ties, 6, 2, rounding="nearest").tolist() == [0.0, 0.5, 0.0, 7.75, -8.0]
    q = FixedPointQuantizer(6, 2, symmetric=True)
    assert q.range == (-7.75, 7.75)
    nan = fixed_point_quantize(torch.tensor([float("nan")]), 8, 4)
    assert torch.isnan(nan).all()


def test_ste_passes_the_gradient_through():
    x = torch.linspace(-1, 1, 7, requires_grad=True)
    FixedPointQuantizer(8, 3).ste(x).mul(torch.arange(7.0)).sum().backward()
    assert x.grad.tolist() == list(range(7))


@pytest.mark.parametrize("strategy, gd, want", [("min", 20.0855, (13, 5)), ("mean", 20.0855, (27, 19)),
                                                  ("max", 20.0855, (32, 24)), ("max", 1.0, (13, 5))])
def test_push_up_by_hand(strategy, gd, want):
    # gd = e^3: l = log(gd) - 1 = 2, s1 = max(ceil(1/4), 1) = 1, s2 = min(ceil(32*4), 32) - 4 = 28;
    # gd = 1: l < 0, s = 1. Then fl += s, wl = max(wl, fl) + 1, fl <= 32 - 8, wl >= fl + 8 (capped at 32).
    ctl = AdaPTController(1, push_up_strategy=strategy)
    assert ctl._push_up(torch.tensor(gd), 8, 4) == want


@pytest.mark.parametrize("kw", [dict(wl=0), dict(min_lookback=0), dict(max_lookback=1, min_lookback=2),
                                dict(push_up_strategy="avg"), dict(lookback_momentum=1.5)])
def test_bad_controller_settings_raise(kw):
    with pytest.raises(ValueError, match="Invalid"):
        AdaPTController(2, **kw)


def test_bad_input_raises_before_any_state_changes():
    with pytest.raises(ValueError, match="rounding"):
        FixedPointQuantizer(8, 4, rounding="floor")
    with pytest.raises(ValueError, match="x"):
        fixed_point_quantize(torch.arange(3), 8, 4)
    p = torch.nn.Parameter(torch.ones(2, 2))
    p.grad = torch.ones(2, 2)
    opt = AdaPTSGD([p], lr=0.1)
    with pytest.raises(ValueError, match="loss"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(2, 2)) and opt.controller._losses == []
    with pytest.raises(ValueError, match="nesterov"):
        AdaPTSGD([p], nesterov=True)


def test_state_dict_round_trip_resumes_the_same_run():
    run = GOLDEN["runs"][0]

    def fresh():
        params = [torch.nn.Parameter(t.clone()) for t in run["init"]]
        return params, AdaPTSGD(params, **run["opt"], **run["ctl"])

    def steps(params, opt, ts):
        for t in ts:
            for p, g in zip(params, run["grads"][t]):
                p.grad = g.clone()
            opt.step(run["losses"][t].clone())

    params, opt = fresh()
    torch.manual_seed(7)
    steps(params, opt, range(6))
    saved, rng = copy.deepcopy(opt.state_dict()), torch.get_rng_state()  # torch's state_dict holds references
    values = [p.detach().clone() for p in params]
    steps(params, opt, range(6, 12))
    params2, opt2 = fresh()
    with torch.no_grad():
        for p, v in zip(params2, values):
            p.copy_(v)
    opt2.load_state_dict(saved)
    torch.set_rng_state(rng)
    steps(params2, opt2, range(6, 12))
    assert opt2.controller.state_dict()["wl"] == opt.controller.wl and opt2.controller.fl == opt.controller.fl
    for a, b in zip(params, params2):
        assert torch.equal(a, b)


def test_float64_training_lowers_the_loss_and_keeps_weights_on_their_grid():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(8, 2, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(8, 2).double()
    opt = AdaPTSGD(model.parameters(), lr=0.05, momentum=0.9, min_lookback=4, max_lookback=8,
                   min_resolution=8, max_resolution=16, generator=gen)
    losses = []
    for _ in range(40):
        loss = (model(x) - y).square().mean()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step(loss.detach())
    assert losses[-1] < 0.3 * losses[0]
    for i, p in enumerate(model.parameters()):
        assert p.dtype == torch.float64
        scaled = p.detach() * 2.0 ** opt.controller.fl[i]
        assert torch.equal(scaled, scaled.round())
        lo, hi = opt.controller.quantizer(i).range
        assert lo <= float(p.detach().min()) and float(p.detach().max()) <= hi
