"""Learned proximal networks: the network, proximal matching loss and schedule against the authors' modules
(tests/data/lpn_golden.pt, made by tools/golden/make_lpn_golden.py), the regulariser and PnP-ADMM by their
defining properties, and bad input."""
from pathlib import Path

import pytest
import torch

from gradwise.sciml import LPN, lpn_regularizer, pnp_admm, proximal_matching_gamma, proximal_matching_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead on a shared CPU
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "lpn_golden.pt"
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def _model(cfg, state):
    in_dim, hidden, layers, beta = cfg
    m = LPN(in_dim, hidden, layers=layers, beta=beta).double()
    m.load_state_dict(state)  # their parameter names load as they are
    return m


@pytest.mark.parametrize("case", range(3))
def test_forward_matches_their_network(golden, case):
    rec = golden["forward"][case]
    m = _model(rec["config"], rec["state"])
    x = rec["x"].clone()
    torch.testing.assert_close(m.scalar(x), rec["scalar"], **TOL)
    out = m(x)
    torch.testing.assert_close(out, rec["prox"], **TOL)
    assert out.requires_grad and not x.requires_grad  # graph kept, the caller's input untouched


@pytest.mark.parametrize("case", range(4))
def test_losses_and_gradients_match_theirs(golden, case):
    rec = golden["losses"][case]
    m = _model(golden["forward"][rec["model"]]["config"], rec["state"])
    out = m(rec["input"])
    if rec["kind"] == "l1":
        loss = torch.nn.functional.l1_loss(out, rec["target"])
    else:  # their ExpDiracSrgt, and the notebook's elementwise exp_func on 1-D samples: the same per-sample loss
        loss = proximal_matching_loss(out, rec["target"], rec["sigma"])
    assert loss.item() == pytest.approx(rec["loss"].item(), rel=1e-10)
    names = [k for k, _ in m.named_parameters()]
    grads = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True, materialize_grads=True)
    for k, g in zip(names, grads):
        torch.testing.assert_close(g, rec["grads"][k], rtol=1e-9, atol=1e-13, msg=k)


def test_training_steps_with_schedule_and_clipping_match_theirs(golden):
    tr = golden["train"]
    m = _model(golden["forward"][tr["model"]]["config"], tr["state0"])
    opt = torch.optim.Adam(m.parameters())
    for step, rec in enumerate(tr["steps"]):
        gamma = proximal_matching_gamma(step, total=10, pretrain=3, stages=3, gamma_min=0.3)
        assert (gamma is None) == (rec["type"] == "l1")
        if gamma is not None:
            assert gamma == pytest.approx(rec["sigma"], rel=1e-15)
        lr = 1e-2 if gamma is None else 1e-3
        for g in opt.param_groups:
            g["lr"] = lr
        out = m(rec["input"])
        loss = torch.nn.functional.l1_loss(out, rec["target"]) if gamma is None else \
            proximal_matching_loss(out, rec["target"], gamma)
        assert loss.item() == pytest.approx(rec["loss"].item(), rel=1e-9)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.clip_weights_()
        for k, v in m.state_dict().items():
            torch.testing.assert_close(v, rec["state"][k], rtol=1e-9, atol=1e-12, msg=f"step {step} {k}")


def test_schedule_matches_their_table(golden):
    for rec in golden["contract"]["schedule"]:
        step, total, pre, stages, gmin = rec["args"]
        got = proximal_matching_gamma(step, total=total, pretrain=pre, stages=stages, gamma_min=gmin)
        if rec["type"] == "l1":
            assert got is None
        else:
            assert got == pytest.approx(rec["sigma"], rel=1e-15)


def test_gradient_is_finite_where_theirs_is_nan(golden):
    c = golden["contract"]
    assert torch.isnan(c["their_grad_at_zero"][0]).all()
    p = c["pred"].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(proximal_matching_loss(p, c["target"], 1.0), p)
    torch.testing.assert_close(g[0], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(g[1], c["their_grad_at_zero"][1], **TOL)  # same elsewhere
    assert c["their_forward_sets_requires_grad"]  # theirs mutates the input; ours does not (test above)


def test_psi_is_convex_after_clipping_and_alpha_adds_strong_convexity():
    torch.manual_seed(0)
    m = LPN(2, 16, layers=2, beta=3.0, alpha=0.5).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    m.clip_weights_()
    assert all((c.weight >= 0).all() for c in m.lin[1:])
    a, b = torch.randn(200, 2, dtype=torch.float64), torch.randn(200, 2, dtype=torch.float64)
    mid = m.scalar(0.5 * (a + b))
    chord = 0.5 * (m.scalar(a) + m.scalar(b))
    # alpha-strong convexity: psi((a+b)/2) <= (psi(a)+psi(b))/2 - alpha/4 |a-b|^2
    assert (mid <= chord - 0.5 / 4 * (a - b).pow(2).sum(1, keepdim=True) + 1e-12).all()
    # the prox is monotone: <f(a) - f(b), a - b> >= 2 alpha |a - b|^2
    with torch.no_grad():
        mono = ((m(a) - m(b)) * (a - b)).sum(1)
    assert (mono >= 2 * 0.5 * (a - b).pow(2).sum(1) - 1e-10).all()


def test_init_weights_and_no_grad_forward():
    m = LPN(3, 5, layers=1).init_weights_(generator=torch.Generator().manual_seed(0))
    w = torch.cat([c.weight.flatten() for c in m.lin[1:]])
    assert (w > 0).all() and w.max() < 1e-4  # exp(N(-10, 0.1))
    with torch.no_grad():
        out = m(torch.randn(4, 3))
    assert not out.requires_grad and out.shape == (4, 3)


def test_regularizer_recovers_the_prox_of_abs():
    # psi(y) = Huber-like: prox of |x| is soft thresholding, so psi'(y) = sign(y) max(|y| - 1, 0) gives R = |x| + c.
    class Soft(torch.nn.Module):
        def scalar(self, y):
            a = (y.abs() - 1).clamp(min=0)
            return 0.5 * a.pow(2).sum(1, keepdim=True)

    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    r = lpn_regularizer(Soft(), x, steps=800)
    torch.testing.assert_close(r - r[3], x[:, 0].abs(), rtol=0, atol=1e-3)


def test_regularizer_leaves_the_model_alone():
    m = LPN(2, 8).double()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = lpn_regularizer(m, torch.randn(3, 2, dtype=torch.float64), steps=5)
    assert r.shape == (3,) and not r.requires_grad
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_pnp_admm_with_soft_threshold_prox_solves_the_lasso():
    # f = soft threshold at 1/rho... here the prox of lam |x| with lam = 0.1 and rho = 1 (R = lam |x|, scale 1/rho)
    class Soft(torch.nn.Module):
        def forward(self, v):
            return torch.sign(v) * (v.abs() - 0.1).clamp(min=0)

        def scalar(self, v):  # pragma: no cover - only the prox is used
            raise NotImplementedError

    torch.manual_seed(0)
    M = torch.randn(12, 8, dtype=torch.float64)
    xs = torch.zeros(1, 8, dtype=torch.float64)
    xs[0, [1, 5]] = torch.tensor([2.0, -1.5], dtype=torch.float64)
    y = xs @ M.T
    res = pnp_admm(Soft(), lambda v: v @ M.T, lambda w: w @ M, y, rho=1.0, iters=300, cg_tol=1e-12)
    assert res.residual[-1] < 1e-8 and res.residual[-1] < res.residual[0]
    # lasso optimality: M^T (y - M x) in 0.1 * subdifferential of |x|
    g = ((y - res.z @ M.T) @ M)[0]
    on = res.z[0] != 0
    torch.testing.assert_close(g[on], 0.1 * torch.sign(res.z[0, on]), rtol=0, atol=1e-6)
    assert (g[~on].abs() <= 0.1 + 1e-6).all()


def test_bad_input():
    with pytest.raises(ValueError, match="in_dim"):
        LPN(0, 4)
    with pytest.raises(ValueError, match="beta"):
        LPN(1, 4, beta=0)
    with pytest.raises(ValueError, match="alpha"):
        LPN(1, 4, alpha=-1.0)
    m = LPN(2, 4)
    with pytest.raises(ValueError, match="Invalid x"):
        m(torch.randn(3, 5))
    p, t = torch.randn(4, 2), torch.randn(4, 2)
    for g in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            proximal_matching_loss(p, t, g)
    with pytest.raises(ValueError, match="pred/target"):
        proximal_matching_loss(p, torch.randn(4, 3), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        proximal_matching_loss(p, t, 1.0, reduction="max")
    with pytest.raises(ValueError, match="gamma_min"):
        proximal_matching_gamma(0, total=10, pretrain=2, gamma_min=0.0)
    with pytest.raises(ValueError, match="total"):
        proximal_matching_gamma(0, total=4, pretrain=2, stages=4, gamma_min=1.0)
    with pytest.raises(ValueError, match="model"):
        lpn_regularizer(torch.nn.Linear(2, 2), p)
    with pytest.raises(ValueError, match="rho"):
        pnp_admm(m, lambda v: v, lambda v: v, p, rho=0.0, iters=3)
    with pytest.raises(ValueError, match="x0"):
        pnp_admm(m, lambda v: v, lambda v: v, p, rho=1.0, iters=3, x0=torch.zeros(4, 3))


def test_nan_propagates():
    p = torch.tensor([[float("nan"), 0.0], [1.0, 1.0]])
    out = proximal_matching_loss(p, torch.zeros(2, 2), 1.0, reduction="none")
    assert torch.isnan(out[0]) and not torch.isnan(out[1])
