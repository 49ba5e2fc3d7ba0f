"""EQ-Net (seed 190): elastic quantized layers, WDR and GPG equal the authors' code (tests/data/eq_net_golden.pt,
made by tools/golden/make_eq_net_golden.py from xuke225/EQ-Net@86b9e41), float64, tolerance 1e-10."""
from pathlib import Path

import pytest
import torch

from gradwise.compression import ElasticQuantConv2d, ElasticQuantLinear, gpg_loss, wdr_loss

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "eq_net_golden.pt", weights_only=True)
TOL = dict(rtol=1e-10, atol=1e-12)


def _layer(run):
    w = run["weight"]
    if w.dim() == 2:
        layer = ElasticQuantLinear(w.shape[1], w.shape[0], dtype=torch.float64)
    else:
        layer = ElasticQuantConv2d(w.shape[1], w.shape[0], w.shape[2], padding=1, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(run["bias"])
        layer(run["calib"])  # the first forward initialises every configuration
    return layer


@pytest.mark.parametrize("k", [0, 1], ids=["linear", "conv2d"])
def test_initial_step_sizes_equal_the_authors_mse_search(k):
    run = GOLDEN["layers"][k]
    layer = _layer(run)
    assert bool(layer.input_positive) == run["positive"]
    for name, want in run["init"].items():
        torch.testing.assert_close(getattr(layer, name).detach(), want, **TOL, msg=name)


@pytest.mark.parametrize("k", [0, 1], ids=["linear", "conv2d"])
def test_forward_and_gradients_equal_the_authors_per_configuration(k):
    run = GOLDEN["layers"][k]
    layer = _layer(run)
    for case in run["cases"]:
        layer.set_config(case["w_bits"], case["a_bits"], symmetric=case["symmetric"],
                         channel_wise=case["channel_wise"], act_symmetric=case["act_symmetric"])
        layer.zero_grad(set_to_none=True)
        x = case["x"].clone().requires_grad_()
        out = layer(x)
        out.backward(case["grad_out"])
        torch.testing.assert_close(out.detach(), case["out"], **TOL)
        torch.testing.assert_close(layer.weight.grad, case["grad_weight"], **TOL)
        torch.testing.assert_close(layer.bias.grad, case["grad_bias"], **TOL)
        torch.testing.assert_close(x.grad, case["grad_x"], **TOL)
        for name, want in case["grad_tables"].items():
            got = getattr(layer, name).grad
            torch.testing.assert_close(torch.zeros_like(want) if got is None else got, want, **TOL, msg=name)


def test_wdr_equals_the_authors_kurtosis_and_skewness_losses():
    g = GOLDEN["wdr"]
    weights = [w.clone().requires_grad_() for w in g["weights"]]
    rest = weights[1:]  # the authors leave out the first layer
    torch.testing.assert_close(wdr_loss(rest, skew_weight=0.0).detach(), g["kurtosis"], **TOL)
    torch.testing.assert_close(wdr_loss(rest, kurt_weight=0.0).detach(), g["skewness"], **TOL)
    wdr_loss(rest, skew_weight=g["skew_rate"], kurt_weight=g["kurt_rate"]).backward()
    assert weights[0].grad is None
    for w, want in zip(rest, g["grads"][1:]):
        torch.testing.assert_close(w.grad, want, **TOL)


def test_wdr_paper_weights_and_targets():
    w = torch.randn(5000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (w - w.mean()) / w.std()
    want = z.pow(3).mean() ** 2 + (z.pow(4).mean() - 1.8) ** 2
    torch.testing.assert_close(wdr_loss(w), want, **TOL)
    u = torch.linspace(-1, 1, 10001, dtype=torch.float64)  # uniform: skew 0, kurtosis 1.8, the paper's target
    assert wdr_loss(u) < 1e-6 < wdr_loss(w)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_gpg_equals_the_authors_sandwich_step(k):
    g = GOLDEN["gpg"][k]
    logits = [z.clone().requires_grad_() for z in g["logits"]]
    loss = gpg_loss(logits, g["labels"], temperature=g["temperature"])
    torch.testing.assert_close(loss.detach(), g["losses"].sum(), **TOL)
    loss.backward()
    for z, want in zip(logits, g["grads"]):
        torch.testing.assert_close(z.grad, want, **TOL)


def test_signed_zero_point_departs_only_where_a_zero_point_is_negative():
    run = GOLDEN["layers"][0]
    ours = _layer(run)
    signed = ElasticQuantLinear(6, 5, signed_zero_point=True, dtype=torch.float64)
    signed.load_state_dict(ours.state_dict())
    for layer in (ours, signed):
        layer.set_config(4, 8, symmetric=False, channel_wise=True)
    x = run["cases"][0]["x"]
    negative = ours.w_zero_channel_asym[:, ours.bits.index(4)] < 0
    assert negative.any() and not negative.all()
    diff = (ours(x) - signed(x)).abs().amax(0)
    assert (diff[negative] > 0).all() and (diff[~negative] == 0).all()


def test_parameters_exist_before_the_first_forward_and_switching_is_per_forward():
    layer = ElasticQuantLinear(4, 3, bits=(2, 4, 8), act_bits=(4, 8))
    names = {n for n, _ in layer.named_parameters()}
    assert {"w_scale_channel_sym", "x_zero_asym"} <= names and not bool(layer.initialized)
    x = torch.randn(8, 4)
    y8 = layer(x)
    assert bool(layer.initialized)
    layer.set_config(2, 4)
    y2 = layer(x)
    assert not torch.allclose(y8, y2)
    layer.set_config(8, 8)
    torch.testing.assert_close(layer(x), y8)
    layer.quantize_weight = layer.quantize_input = False
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_nan_propagates():
    layer = ElasticQuantLinear(3, 2)
    layer(torch.randn(4, 3))
    x = torch.randn(2, 3)
    x[0, 0] = float("nan")
    out = layer(x)
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()


def test_bad_input_raises_before_anything_changes():
    with pytest.raises(ValueError, match="bits"):
        ElasticQuantLinear(3, 2, bits=(1, 8))
    with pytest.raises(ValueError, match="act_bits"):
        ElasticQuantLinear(3, 2, act_bits=())
    layer = ElasticQuantLinear(3, 2, bits=(4, 8))
    before = dict(layer.config)
    for kwargs in (dict(w_bits=6), dict(w_bits=4, a_bits=9), dict(w_bits=True), dict(w_bits=4, symmetric=1)):
        with pytest.raises(ValueError):
            layer.set_config(**kwargs)
        assert layer.config == before
    with pytest.raises(ValueError, match="weights"):
        wdr_loss([])
    with pytest.raises(ValueError, match="kurt_weight"):
        wdr_loss(torch.randn(5), kurt_weight=-1.0)
    with pytest.raises(ValueError, match="logits"):
        gpg_loss([torch.randn(2, 3)], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="lam"):
        gpg_loss([torch.randn(2, 3)] * 2, torch.tensor([0, 1]), lam=1.5)
    with pytest.raises(ValueError, match="temperature"):
        gpg_loss([torch.randn(2, 3)] * 2, torch.tensor([0, 1]), temperature=0.0)
