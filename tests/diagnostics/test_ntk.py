"""Empirical NTK, NTK-parametrised MLP and the infinite-width ReLU kernel (seed 143): against an explicit
Jacobian (float64), against neural-tangents (tests/data/ntk_golden.pt, made by tools/golden/make_ntk_golden.py)
and against a Monte-Carlo estimate from wide networks."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.diagnostics import NTKMLP, empirical_ntk, limit_ntk_relu

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "ntk_golden.pt"
MODES = ("full", "trace", "diagonal")


def _explicit_jacobian(model, x):
    """[N, O, P] by one autograd.grad per output entry (no torch.func)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1]).reshape(-1)
        for a in range(out.numel()):
            g = torch.autograd.grad(out[a], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                   for gi, p in zip(g, params)]))
    return torch.stack(rows).reshape(x.shape[0], -1, rows[0].numel())


def _reduce(full, mode):
    if mode == "full":
        return full
    d = full.diagonal(dim1=2, dim2=3)
    return d.sum(-1) if mode == "trace" else d


def _circle(n, dtype=torch.float64):
    ang = torch.linspace(0, 2 * math.pi, n + 1, dtype=dtype)[:-1]
    return torch.stack([ang.cos(), ang.sin()], 1)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


@pytest.mark.parametrize("implementation", ["jacobian", "ntk-vp"])
@pytest.mark.parametrize("mode", MODES)
def test_empirical_ntk_is_J_JT_to_1e12_in_float64(mode, implementation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    j1, j2 = _explicit_jacobian(model, x1), _explicit_jacobian(model, x2)
    ref = torch.einsum("naf,mbf->nmab", j1, j2)
    before = [p.clone() for p in model.parameters()]
    for chunk in (None, 2):
        got = empirical_ntk(model, x1, x2, mode=mode, implementation=implementation, chunk_size=chunk)
        torch.testing.assert_close(got, _reduce(ref, mode), rtol=0, atol=1e-12)
        assert not got.requires_grad
    same = empirical_ntk(model, x1, mode=mode, implementation=implementation)
    torch.testing.assert_close(same, _reduce(torch.einsum("naf,mbf->nmab", j1, j1), mode), rtol=0, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # model untouched


def test_frozen_parameters_are_left_out_and_buffers_are_used():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double()
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2.0)
    model[0].bias.requires_grad_(False)
    model.eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    j = _explicit_jacobian(model, x)
    assert j.shape[-1] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    torch.testing.assert_close(empirical_ntk(model, x), torch.einsum("naf,mbf->nmab", j, j), rtol=0, atol=1e-12)


def test_scalar_output_model_gives_one_output():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1), nn.Flatten(0)).double()
    x = torch.randn(3, 2, dtype=torch.float64)
    full = empirical_ntk(model, x)
    assert full.shape == (3, 3, 1, 1)
    torch.testing.assert_close(full[..., 0, 0], empirical_ntk(model, x, mode="trace"))


def test_ntkmlp_is_the_papers_parametrisation():
    g = torch.Generator().manual_seed(0)
    m = NTKMLP([3, 5, 4, 2], beta=0.3, generator=g, dtype=torch.float64)
    assert [tuple(p.shape) for p in m.parameters()] == [(5, 3), (5,), (4, 5), (4,), (2, 4), (2,)]
    x = torch.randn(7, 3, dtype=torch.float64)
    h = x
    for i, layer in enumerate(m.layers):
        h = h @ layer.weight.T / math.sqrt(layer.weight.shape[1]) + 0.3 * layer.bias
        h = h.relu() if i < 2 else h
    torch.testing.assert_close(m(x), h, rtol=0, atol=1e-14)
    # parameters N(0, 1), same draw for the same generator seed
    big = NTKMLP([400, 500, 1], generator=torch.Generator().manual_seed(3))
    w = big.layers[0].weight
    assert abs(w.mean().item()) < 0.01 and abs(w.var().item() - 1) < 0.01
    again = NTKMLP([400, 500, 1], generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.layers[0].weight, w)
    assert NTKMLP([2, 3, 1], activation="identity")(torch.zeros(1, 2)).shape == (1, 1)


def test_limit_by_hand_depth_one_and_two():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    b = 0.1
    s1 = x @ x.T / 2 + b * b
    torch.testing.assert_close(limit_ntk_relu(x, x, depth=1, beta=b), s1)
    # depth 2: Theta = S1 * (pi - phi)/(2 pi) + sqrt(k k')/(2 pi) (sin phi + (pi - phi) cos phi) + b^2
    d = s1.diagonal()
    cos = (s1 / torch.sqrt(d[:, None] * d[None, :])).clamp(-1, 1)
    phi = torch.arccos(cos)
    s2 = torch.sqrt(d[:, None] * d[None, :]) / (2 * math.pi) * (torch.sin(phi) + (math.pi - phi) * cos) + b * b
    want = s1 * (math.pi - phi) / (2 * math.pi) + s2
    ntk, nngp = limit_ntk_relu(x, None, depth=2, beta=b, return_nngp=True)
    torch.testing.assert_close(ntk, want)
    torch.testing.assert_close(nngp, s2)
    # on the diagonal phi = 0: Theta^(2)(x, x) = S1/2 + S1/2 + b^2
    torch.testing.assert_close(ntk.diagonal(), d + b * b)


def test_limit_matches_neural_tangents(golden):
    assert len(golden["limit"]) == 12
    for rec in golden["limit"]:
        x1, x2 = golden["inputs"][rec["inputs"]]
        ntk, nngp = limit_ntk_relu(x1, x2, depth=rec["depth"], beta=rec["beta"], return_nngp=True)
        torch.testing.assert_close(ntk, rec["ntk"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(nngp, rec["nngp"], rtol=1e-10, atol=1e-12)


def test_empirical_ntk_of_ntkmlp_matches_neural_tangents(golden):
    emp = golden["empirical"]
    m = NTKMLP(emp["widths"], beta=emp["beta"], dtype=torch.float64)
    with torch.no_grad():
        for layer, (w, b) in zip(m.layers, emp["params"]):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    x1, x2 = golden["inputs"]["random"]
    torch.testing.assert_close(m(x1), emp["out"], rtol=1e-12, atol=1e-12)
    for impl in ("jacobian", "ntk-vp"):
        got = empirical_ntk(m, x1, x2, implementation=impl)
        torch.testing.assert_close(got, emp["jacobian"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got, emp["ntk_vp"], rtol=1e-10, atol=1e-12)


def test_wide_networks_approach_the_limit_on_the_circle():
    # paper Fig. 1 setting (x on the unit circle, beta = 0.1, ReLU); depth 3, width 1024, 3 draws
    x = _circle(8)
    lim = limit_ntk_relu(x, x, depth=3)
    draws = torch.stack([empirical_ntk(NTKMLP([2, 1024, 1024, 1], generator=torch.Generator().manual_seed(s),
                                              dtype=torch.float64), x, mode="trace") for s in range(3)])
    err = (draws.mean(0) - lim).abs().max() / lim.abs().max()
    assert err < 0.15, err  # finite-width bias and 3-draw noise (measured 0.09)
    narrow = torch.stack([empirical_ntk(NTKMLP([2, 16, 16, 1], generator=torch.Generator().manual_seed(s),
                                                dtype=torch.float64), x, mode="trace") for s in range(3)])
    # the spread around the limit shrinks with width
    assert (draws - lim).pow(2).mean() < (narrow - lim).pow(2).mean()


def test_nan_propagates():
    m = NTKMLP([2, 4, 1], dtype=torch.float64)
    with torch.no_grad():
        m.layers[0].weight[0, 0] = float("nan")
    assert torch.isnan(empirical_ntk(m, torch.ones(2, 2, dtype=torch.float64), mode="trace")).all()
    assert torch.isnan(limit_ntk_relu(torch.tensor([[float("nan"), 1.0]]), None, depth=2)).all()


@pytest.mark.parametrize("call, match", [
    (lambda m, x: empirical_ntk(m, x, mode="sum"), "Invalid mode"),
    (lambda m, x: empirical_ntk(m, x, implementation="vjp"), "Invalid implementation"),
    (lambda m, x: empirical_ntk(m, x, chunk_size=0), "Invalid chunk_size"),
    (lambda m, x: empirical_ntk(m, x, torch.ones(2, 3)), "Invalid x2"),
    (lambda m, x: empirical_ntk(m, torch.ones(0, 2)), "Invalid x1"),
    (lambda m, x: empirical_ntk(m.forward, x), "Invalid model"),
    (lambda m, x: empirical_ntk(m.requires_grad_(False), x), "Invalid model"),
    (lambda m, x: NTKMLP([2]), "Invalid widths"),
    (lambda m, x: NTKMLP([2, 0, 1]), "Invalid widths"),
    (lambda m, x: NTKMLP([2, 3, 1], beta=-0.1), "Invalid beta"),
    (lambda m, x: NTKMLP([2, 3, 1], activation="gelu"), "Invalid activation"),
    (lambda m, x: limit_ntk_relu(x, x, depth=0), "Invalid depth"),
    (lambda m, x: limit_ntk_relu(x, x, depth=2, beta=float("nan")), "Invalid beta"),
    (lambda m, x: limit_ntk_relu(x, torch.ones(2, 3), depth=2), "Invalid x2"),
    (lambda m, x: limit_ntk_relu(torch.ones(3), None, depth=2), "Invalid x1"),
])
def test_bad_input_raises_value_error(call, match):
    m = NTKMLP([2, 3, 1])
    with pytest.raises(ValueError, match=match):
        call(m, torch.ones(2, 2))
