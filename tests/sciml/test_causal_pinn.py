"""Causal PINN weights, loss and epsilon schedule: against the authors' Allen-Cahn notebook and KS script
(tests/data/causal_pinn_golden.pt, made by tools/golden/make_causal_pinn_golden.py) and by hand."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.sciml import CausalEpsilonSchedule, causal_loss, causal_weights

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "causal_pinn_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


# --- the authors' Allen-Cahn PINN, rebuilt in torch (float64) to run their loss through causal_loss -----------
def _net(params, t, x, M):
    # their MLP: input [t, 1, cos(k w x), sin(k w x)] with w = 2 pi / L, L = 2; tanh hidden layers
    k = torch.arange(1, M + 1, dtype=torch.float64)
    w = 2.0 * math.pi / 2.0
    h = torch.cat([t[:, None], torch.ones_like(t)[:, None], torch.cos(k * w * x[:, None]),
                   torch.sin(k * w * x[:, None])], dim=1)
    for W, b in params[:-1]:
        h = torch.tanh(h @ W + b)
    W, b = params[-1]
    return (h @ W + b)[:, 0]


def _ac_loss(params, golden, eps):
    cfg = golden["config"]
    n_t, n_x, M, nu = cfg["n_t"], cfg["n_x"], cfg["M"], cfg["nu"]
    t_r = torch.linspace(0.0, 1.0, n_t, dtype=torch.float64)
    x_r = torch.linspace(-1.0, 1.0, n_x, dtype=torch.float64)
    t = t_r.repeat_interleave(n_x).requires_grad_(True)  # row i: time t_r[i], all x
    x = x_r.repeat(n_t).requires_grad_(True)
    u = _net(params, t, x, M)
    u_t, u_x = torch.autograd.grad(u.sum(), (t, x), create_graph=True)
    u_xx = torch.autograd.grad(u_x.sum(), x, create_graph=True)[0]
    r = (u_t + 5 * u ** 3 - 5 * u - nu * u_xx).reshape(n_t, n_x)
    L_t = (r ** 2).mean(dim=1)
    x_ic = golden["x_star"]
    u0 = _net(params, torch.zeros_like(x_ic), x_ic, M)
    loss_ics = ((golden["state0"] - u0) ** 2).mean()
    out = causal_loss(L_t, eps)
    return out.loss + 100 * loss_ics, L_t, out.weights


def _params(tree):
    return [(W.clone().requires_grad_(True), b.clone().requires_grad_(True)) for W, b in tree]


@pytest.mark.parametrize("which", ["init", "after"])
@pytest.mark.parametrize("case", range(4))
def test_allen_cahn_loss_weights_and_gradients_match_authors(golden, case, which):
    rec = golden["ac"][case]
    point = rec[which]
    params = _params(point["params"])
    loss, L_t, W = _ac_loss(params, golden, rec["tol"])
    torch.testing.assert_close(L_t.detach(), point["L_t"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(W, point["W"], rtol=1e-10, atol=1e-300)
    assert loss.item() == pytest.approx(point["loss"], rel=1e-10)
    grads = torch.autograd.grad(loss, [p for pair in params for p in pair])
    want = [g for pair in point["grads"] for g in pair]
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert not W.requires_grad


def test_adam_trajectory_matches_their_optimizer(golden):
    # their optimizers.adam with exponential_decay(1e-3, 5000, 0.9) is torch's Adam (eps 1e-8) with that decay
    rec = next(r for r in golden["ac"] if r["traj"])
    params = _params(rec["init"]["params"])
    flat = [p for pair in params for p in pair]
    opt = torch.optim.Adam(flat, lr=1e-3, eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.9 ** (i / 5000))
    for want in rec["traj"]:
        opt.zero_grad()
        _ac_loss(params, golden, rec["tol"])[0].backward()
        opt.step()
        sched.step()
        for p, w in zip(flat, [t for pair in want for t in pair]):
            torch.testing.assert_close(p.detach(), w, rtol=1e-9, atol=1e-12)


def test_initial_loss_weights_match_ks_script(golden):
    for c in golden["ks"]:
        L_t = (c["r"] ** 2).mean(dim=1)
        torch.testing.assert_close(L_t, c["L_t"], rtol=1e-12, atol=0)
        w = causal_weights(L_t, c["tol"], initial_loss=1e3 * c["loss_ics"])
        torch.testing.assert_close(w, c["W"], rtol=1e-10, atol=1e-300)
        assert 1e3 * c["loss_ics"] == pytest.approx(c["L_0"], rel=1e-12)


# --- by hand ------------------------------------------------------------------------------------------------
def test_weights_are_exclusive_cumulative_and_detached():
    L = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64, requires_grad=True)
    w = causal_weights(L, 2.0)
    torch.testing.assert_close(w, torch.exp(-2.0 * torch.tensor([0.0, 0.5, 1.5, 3.5], dtype=torch.float64)))
    assert w[0].item() == 1.0 and not w.requires_grad
    w0 = causal_weights(L, 2.0, initial_loss=torch.tensor(0.1, dtype=torch.float64))
    torch.testing.assert_close(w0, w * math.exp(-0.2))
    assert torch.equal(causal_weights(L, 0.0), torch.ones(4, dtype=torch.float64))


def test_loss_gradient_is_weights_over_n():
    L = torch.tensor([0.3, 0.2, 0.1], requires_grad=True)
    out = causal_loss(L, 1.0)
    out.loss.backward()
    torch.testing.assert_close(L.grad, out.weights / 3)
    assert out.loss.dtype == torch.float32 and out.weights.dtype == torch.float32


def test_nan_propagates_to_later_weights_only():
    L = torch.tensor([0.1, float("nan"), 0.2, 0.3])
    w = causal_weights(L, 1.0)
    assert not torch.isnan(w[:2]).any() and torch.isnan(w[2:]).all()
    assert torch.isnan(causal_loss(L, 1.0).loss)


@pytest.mark.parametrize("bad, match", [
    (dict(eps=-1.0), "eps"), (dict(eps=float("nan")), "eps"), (dict(eps=float("inf")), "eps"),
    (dict(chunk_losses=torch.ones(2, 3)), "chunk_losses"), (dict(chunk_losses=torch.ones(0)), "chunk_losses"),
    (dict(chunk_losses=[1.0, 2.0]), "chunk_losses"), (dict(chunk_losses=torch.ones(3, dtype=torch.long)), "chunk_losses"),
    (dict(initial_loss=torch.ones(2)), "initial_loss"), (dict(initial_loss="x"), "initial_loss"),
])
def test_bad_input_names_the_argument(bad, match):
    kw = dict(chunk_losses=torch.ones(3), eps=1.0) | bad
    with pytest.raises(ValueError, match=match):
        causal_loss(kw.pop("chunk_losses"), kw.pop("eps"), **kw)


def test_schedule_moves_on_when_min_weight_passes_and_finishes():
    s = CausalEpsilonSchedule((0.1, 1.0), min_weight=0.9)
    assert s.eps == 0.1 and not s.done
    assert not s.update(torch.tensor([1.0, 0.5]))
    assert not s.update(torch.tensor([1.0, float("nan")]))
    assert s.update(torch.tensor([1.0, 0.95])) and s.eps == 1.0 and s.stage == 1
    assert s.update(torch.tensor([0.99])) and s.done and s.eps == 1.0
    assert not s.update(torch.tensor([1.0]))
    t = CausalEpsilonSchedule((0.1, 1.0), min_weight=0.9)
    t.load_state_dict(s.state_dict())
    assert t.done and t.eps == 1.0
    assert CausalEpsilonSchedule().eps == 1e-2 and CausalEpsilonSchedule().min_weight == 0.99


@pytest.mark.parametrize("kw", [dict(eps=()), dict(eps=(1.0, -1.0)), dict(eps="1"), dict(min_weight=1.0),
                                dict(min_weight=0.0)])
def test_schedule_bad_input(kw):
    with pytest.raises(ValueError, match="eps|min_weight"):
        CausalEpsilonSchedule(**kw)
    with pytest.raises(ValueError, match="weights"):
        CausalEpsilonSchedule().update(torch.ones(2, 2))
