"""Self-Tuning Networks' HyperLinear / HyperConv2d and per-example dropout, against the authors' layers
(golden data from asteroidhouse/self-tuning-networks@3c42049, tools/golden/make_stn_golden.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwise.schedules import HyperConv2d, HyperLinear, per_example_dropout

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "stn_golden.pt", weights_only=False)
F64 = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def _layer(case: str):
    if case == "linear":
        return HyperLinear(5, 4, 3, dtype=F64)
    if case == "linear_nobias":
        return HyperLinear(5, 4, 2, bias=False, dtype=F64)
    return HyperConv2d(3, 4, 3, 2, stride=2, padding=1, dtype=F64)


@pytest.mark.parametrize("case", ["linear", "linear_nobias", "conv"])
def test_forward_and_gradients_match_the_authors_layer(case):
    gold = GOLDEN["layers"][case]
    layer = _layer(case)
    layer.load_state_dict(gold["state"])  # their parameter names load unchanged
    x = gold["x"].clone().requires_grad_(True)
    hnet = gold["hnet"].clone().requires_grad_(True)
    out = layer(x, hnet)
    torch.testing.assert_close(out, gold["out"], **TOL)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad((out * gold["cotangent"]).sum(), [x, hnet, *params.values()])
    torch.testing.assert_close(grads[0], gold["grad_x"], **TOL)
    torch.testing.assert_close(grads[1], gold["grad_hnet"], **TOL)
    assert set(params) == set(gold["grad_params"])
    for name, g in zip(params, grads[2:]):
        torch.testing.assert_close(g, gold["grad_params"][name], **TOL, msg=name)


@pytest.mark.parametrize("case", ["linear", "conv"])
def test_seeded_initialisation_is_the_authors(case):
    torch.manual_seed(7)
    state = _layer(case).state_dict()
    gold = GOLDEN["layers"]["init_" + case]
    assert set(state) == set(gold)
    for k in gold:
        torch.testing.assert_close(state[k], gold[k], rtol=0, atol=1e-15, msg=k)


def test_init_ranges_and_the_elementary_part_alone():
    layer = HyperLinear(100, 50, 4)
    bound = 1 / 10
    for name in ("elem_weight", "hnet_weight", "elem_bias", "hnet_bias"):
        p = getattr(layer, name)
        assert p.abs().max() <= bound and p.abs().max() > 0.9 * bound
    assert 0.005 < layer.htensor_to_scalars.weight.std() < 0.015
    assert layer.elem_scalar.item() == 1.0
    x = torch.randn(3, 100)
    torch.testing.assert_close(layer(x, None), x @ layer.elem_weight.T + layer.elem_bias)
    # zero hyperparameters gate the hyper part off
    torch.testing.assert_close(layer(x, torch.zeros(3, 4)), layer(x, None))


def test_shared_row_equals_repeated_rows_and_extra_dims_get_per_example_gates():
    torch.manual_seed(0)
    layer = HyperLinear(6, 5, 2)
    x, h = torch.randn(4, 6), torch.randn(2)
    torch.testing.assert_close(layer(x, h), layer(x, h.expand(4, 2)))
    x3, hb = torch.randn(4, 3, 6), torch.randn(4, 2)
    out = layer(x3, hb)
    assert out.shape == (4, 3, 5)
    for b in range(4):
        torch.testing.assert_close(out[b], layer(x3[b], hb[b].expand(3, 2)))
    conv = HyperConv2d(2, 3, 3, 2, padding=1)
    xc = torch.randn(4, 2, 5, 5)
    torch.testing.assert_close(conv(xc, h), conv(xc, h.expand(4, 2)))


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="in_features"):
        HyperLinear(0, 3, 1)
    with pytest.raises(ValueError, match="num_hparams"):
        HyperLinear(3, 3, 0)
    with pytest.raises(ValueError, match="bias"):
        HyperLinear(3, 3, 1, bias=1)
    with pytest.raises(ValueError, match="kernel_size"):
        HyperConv2d(3, 3, 0, 1)
    layer = HyperLinear(3, 2, 2)
    with pytest.raises(TypeError, match="input"):
        layer([[1.0, 2.0, 3.0]], None)
    with pytest.raises(ValueError, match="input"):
        layer(torch.randn(4, 5), None)
    with pytest.raises(ValueError, match="hnet_tensor"):
        layer(torch.randn(4, 3), torch.randn(3, 2))
    with pytest.raises(ValueError, match="hnet_tensor"):
        layer(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(TypeError, match="hnet_tensor"):
        layer(torch.randn(4, 3), torch.randn(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="input"):
        HyperConv2d(3, 3, 3, 1)(torch.randn(2, 4, 5, 5), None)


def test_per_example_dropout_matches_the_authors_and_keeps_the_mean():
    gold = GOLDEN["dropout"]
    torch.manual_seed(3)
    out = per_example_dropout(gold["x"], gold["probs"], True)
    out2d = per_example_dropout(gold["x2d"], gold["probs"], True, channelwise=True)
    torch.testing.assert_close(out, gold["out"], **TOL)
    torch.testing.assert_close(out2d, gold["out2d"], **TOL)
    x = torch.ones(4, 20000, dtype=F64)
    probs = torch.tensor([0.0, 0.2, 0.5, 0.8], dtype=F64, requires_grad=True)
    y = per_example_dropout(x, probs, True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.mean(1), torch.ones(4, dtype=F64), rtol=0, atol=0.03)
    torch.testing.assert_close((y == 0).double().mean(1), probs.detach(), rtol=0, atol=0.015)
    assert not y.requires_grad  # the rates are constants to the mask, as theirs
    assert per_example_dropout(x, probs, False) is x
    with pytest.raises(ValueError, match="probs"):
        per_example_dropout(x, torch.rand(3), True)
    with pytest.raises(ValueError, match="probs"):
        per_example_dropout(x, 1.5, True)
    with pytest.raises(ValueError, match="x"):
        per_example_dropout(x, probs.detach(), True, channelwise=True)


@pytest.mark.parametrize("make", [lambda: HyperLinear(6, 5, 2), lambda: HyperConv2d(2, 3, 3, 2, padding=1)],
                         ids=["linear", "conv"])
def test_torch_compile_matches_eager(make):
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(4, 6) if isinstance(layer, HyperLinear) else torch.randn(4, 2, 5, 5)
    h = torch.randn(4, 2)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x, h)
    y.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    y_eager = layer(x, h)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def test_state_dict_round_trip():
    torch.manual_seed(1)
    a, b = HyperLinear(4, 3, 2), HyperLinear(4, 3, 2)
    b.load_state_dict(a.state_dict())
    x, h = torch.randn(2, 4), torch.randn(2, 2)
    assert torch.equal(a(x, h), b(x, h))
