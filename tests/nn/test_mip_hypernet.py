"""MIPHyperNet and magnitude_invariant_encoding against the authors' hyperlight (golden data from
JJGO/hyperlight@a3e2108): encodings, predicted parameters and gradients, and the initialization's scales."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.nn import MIPHyperNet, magnitude_invariant_encoding
from numerics import assert_close_to_stored

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "mip_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _their_keys_to_ours(state):
    out = {}
    for k, v in state.items():
        k = k.replace("backbone.", "")
        if k.startswith("block"):
            k = "hidden." + k[len("block"):].replace("_lin", "")
        out[k] = v
    return out


@pytest.mark.numerics
def test_encoding_matches_hyperlight(golden):
    for mode, want in golden["encodings"].items():
        got = magnitude_invariant_encoding(golden["z"], None if mode == "None" else mode)
        assert_close_to_stored(got, want)


@pytest.mark.numerics
@pytest.mark.parametrize("idx", range(6))
def test_predicted_parameters_and_gradients_match_hyperlight(golden, idx):
    case = golden["cases"][idx]
    enc = None if case["encoding"] == "None" else case["encoding"]
    ours = MIPHyperNet(golden["shapes"], input_size=3, hidden_sizes=[8, 16], encoding=enc,
                       additive=case["independent"])
    ours.load_state_dict(_their_keys_to_ours(case["state"]))
    h = case["h"].clone().requires_grad_(True)
    out = ours(h)
    assert list(out) == list(case["out"])
    for k, want in case["out"].items():
        assert_close_to_stored(out[k].detach(), want, ulps=32)
    loss = sum((out[k] * w).sum() for k, w in case["weights"].items())
    names = dict(ours.named_parameters())
    grads = torch.autograd.grad(loss, list(names.values()) + [h])
    want = _their_keys_to_ours(case["grads"])
    for (name, _), g in zip(names.items(), grads[:-1]):
        assert_close_to_stored(g, want[name], ulps=64)
    assert_close_to_stored(grads[-1], case["grad_h"], ulps=64)


def test_initialization_has_hyperlights_scales(golden):
    ref = golden["init"]
    got = {"weight": {k: [] for k in ref["shapes"]}, "independent": {k: [] for k in ref["shapes"]}, "hidden": []}
    for seed in range(20):
        torch.manual_seed(seed)
        net = MIPHyperNet(ref["shapes"], input_size=ref["input_size"], hidden_sizes=ref["hidden_sizes"])
        for (k, _), rows, th in zip(net.shapes.items(), net.output.weight.split(net.sizes), net.output.bias.split(
                net.sizes)):
            got["weight"][k].append(rows.std().item())
            got["independent"][k].append(th.std().item() if k.endswith("weight") else th.abs().max().item())
        got["hidden"].append([lin.weight.std().item() for lin in net.hidden])
    for k in ref["shapes"]:
        assert sum(got["weight"][k]) / 20 == pytest.approx(ref["weight_std"][k], rel=0.1)
        assert sum(got["independent"][k]) / 20 == pytest.approx(ref["independent_std"][k], rel=0.1, abs=1e-12)
    for mine, theirs in zip(torch.tensor(got["hidden"]).mean(0).tolist(), ref["hidden_std"]):
        assert mine == pytest.approx(theirs, rel=0.1)


def test_cos_sin_encoding_has_constant_norm():
    z = torch.rand(100, 4)
    z[0] = 0.0
    z[1] = 1.0
    norms = magnitude_invariant_encoding(z).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full((100,), 2.0))
    # the plain input's norm (and with it the plain hypernet's output scale) follows the input's magnitude
    assert z.norm(dim=-1).std() > 0.1


def test_additive_output_is_independent_parameters_plus_hypernet_change():
    target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hyper = MIPHyperNet(target, input_size=2, hidden_sizes=[8], init_from_target=True)
    for k, v in hyper.independent.items():
        torch.testing.assert_close(v, dict(target.named_parameters())[k])
    gamma = torch.rand(5, 2)
    with torch.no_grad():
        hyper.output.weight.zero_()  # no change predicted: theta == theta0 for every gamma
    params = hyper(gamma)
    for k, v in params.items():
        assert v.shape == (5, *hyper.shapes[k])
        torch.testing.assert_close(v, hyper.independent[k].expand_as(v))
    one = hyper(gamma[0])
    x = torch.randn(7, 3)
    torch.testing.assert_close(MIPHyperNet.call_target(target, one, x), target(x))
    plain = MIPHyperNet(target, input_size=2, hidden_sizes=[8], additive=False)
    assert all(bool((v == 0).all()) for v in plain.independent.values())


def test_trains_the_target_through_the_hypernet():
    torch.manual_seed(0)
    target = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    hyper = MIPHyperNet(target, input_size=1, hidden_sizes=[16, 16])
    opt = torch.optim.Adam(hyper.parameters(), lr=3e-3)
    x = torch.linspace(-1, 1, 32)[:, None]
    losses = []
    for step in range(150):  # fit y = gamma * sin(3x) for gamma in [0, 1]
        gamma = torch.rand(1)
        y = hyper.call_target(target, hyper(gamma), x)
        loss = ((y - gamma * torch.sin(3 * x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < 0.3 * sum(losses[:20])


def test_bad_arguments_raise_clear_errors():
    shapes = {"w": (2, 3)}
    with pytest.raises(ValueError, match="encoding"):
        MIPHyperNet(shapes, 1, [4], encoding="fourier")
    with pytest.raises(ValueError, match="hidden_sizes"):
        MIPHyperNet(shapes, 1, [4, 0])
    with pytest.raises(ValueError, match="input_size"):
        MIPHyperNet(shapes, 0, [4])
    with pytest.raises(ValueError, match="target"):
        MIPHyperNet({"w": (2, -1)}, 1, [4])
    with pytest.raises(ValueError, match="target"):
        MIPHyperNet([("w", (2, 3))], 1, [4])
    with pytest.raises(ValueError, match="names"):
        MIPHyperNet(nn.Linear(2, 3), 1, [4], names=["bias", "scale"])
    with pytest.raises(ValueError, match="init_from_target"):
        MIPHyperNet(shapes, 1, [4], init_from_target=True)
    with pytest.raises(ValueError, match="nonlinearity"):
        MIPHyperNet(shapes, 1, [4], nonlinearity="Softplus2")
    with pytest.raises(ValueError, match=r"gamma.*\[B, 1\]"):
        MIPHyperNet(shapes, 1, [4])(torch.rand(3, 2))
    with pytest.raises(ValueError, match="mode"):
        magnitude_invariant_encoding(torch.rand(3), "sin")


def test_names_select_target_parameters_and_bare_weight_gets_kaiming():
    lin = nn.Linear(16, 4)
    hyper = MIPHyperNet(lin, 1, [4], names=["weight"])
    assert list(hyper.shapes) == ["weight"]
    assert hyper.independent["weight"].std().item() == pytest.approx(math.sqrt(2 / 16), rel=0.3)


def test_compiles():
    torch._dynamo.reset()
    hyper = MIPHyperNet({"a.weight": (3, 2), "a.bias": (3,)}, 2, [8])
    gamma = torch.rand(4, 2)
    compiled = torch.compile(hyper, backend="eager", fullgraph=True)
    for k, v in compiled(gamma).items():
        torch.testing.assert_close(v, hyper(gamma)[k])
    torch._dynamo.reset()
