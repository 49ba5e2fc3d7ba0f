"""SSO (target-based surrogates): the authors' SGD_FMDOpt + LSOpt trajectories, the special cases the method
reduces to, state_dict and bad inputs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.optim import SSO, create
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).resolve().parents[1] / "data" / "sso_golden.pt", weights_only=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_out))


MODELS = {"linear_mse": lambda: nn.Linear(6, 2), "mlp_ce": lambda: _mlp(5, 7, 3), "mlp_mse_m1": lambda: _mlp(5, 7, 3)}
LOSSES = {"linear_mse": nn.MSELoss(reduction="sum"), "mlp_ce": nn.CrossEntropyLoss(reduction="sum"),
          "mlp_mse_m1": nn.MSELoss(reduction="sum")}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_matches_the_authors_sgd_fmdopt_with_lsopt(case):
    run = GOLDEN[case]
    s = run["settings"]
    model = MODELS[case]().double()
    model.load_state_dict(run["init"])
    opt = SSO(model.parameters(), lr=s["stepsize"], inner_steps=s["m"], c=s["c"], beta=s["beta_update"],
              expand_coeff=s["expand_coeff"], n_batches_per_epoch=s["n"] / s["batch_size"])
    loss_fn = LOSSES[case]
    for t, (state, returned, inner) in enumerate(zip(run["states"], run["returned"], run["inner_step_sizes"])):
        x, y = run["batches"][t % len(run["batches"])]
        with torch.no_grad():
            expected_loss = loss_fn(model(x), y)
        loss = opt.step(lambda: model(x), lambda out: loss_fn(out, y))
        torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=1e-9, atol=1e-10, msg=f"{case} step {t} {k}")
        assert opt.state["sso"]["surrogate"] == pytest.approx(returned, rel=1e-9, abs=1e-12)
        assert opt.state["sso"]["step_size"] == pytest.approx(inner, rel=1e-9)
    assert opt.state["sso"]["outer_steps"] == len(run["states"])


def _data(n=12, d=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    return x, y


def _mse(out, y):
    return (out - y).pow(2).sum()


def test_one_inner_step_without_line_search_is_sgd_with_a_scaled_step():
    # the surrogate's gradient at theta_t is the loss gradient times lr / numel(z)
    x, y = _data()
    torch.manual_seed(0)
    a = _mlp(3, 5, 2).double()
    b = copy.deepcopy(a)
    lr, inner_lr = 0.3, 4.0
    sso = SSO(a.parameters(), lr=lr, inner_steps=1, inner_lr=inner_lr, line_search=False)
    sgd = torch.optim.SGD(b.parameters(), lr=inner_lr * lr / (12 * 2))
    for _ in range(3):
        sso.step(lambda: a(x), lambda out: _mse(out, y))
        sgd.zero_grad()
        _mse(b(x), y).backward()
        sgd.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13)


def test_many_inner_steps_on_a_linear_model_project_the_target_space_step():
    # f(theta) = X W + b: the surrogate is a least-squares problem whose solution maps to the projection of
    # the target-space SGD step z_t - (lr/2) g_t onto the model's outputs
    x, y = _data(n=12, d=3, k=2)
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    lr = 0.25
    with torch.no_grad():
        z = model(x)
    target = z - lr / 2 * 2 * (z - y)  # g_t of the summed squared loss is 2 (z - y)
    design = torch.cat([x, torch.ones(12, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, target).solution
    opt = SSO(model.parameters(), lr=lr, inner_steps=400, inner_lr=10.0)
    opt.step(lambda: model(x), lambda out: _mse(out, y))
    torch.testing.assert_close(model.weight.detach(), solution[:3].T, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.bias.detach(), solution[3], rtol=0, atol=1e-6)


def test_a_squared_loss_with_enough_inner_steps_decreases_the_loss():
    x, y = _data(n=16, d=4, k=3, seed=2)
    torch.manual_seed(2)
    model = _mlp(4, 8, 3).double()
    opt = SSO(model.parameters(), lr=0.25, inner_steps=10)
    losses = [float(opt.step(lambda: model(x), lambda out: _mse(out, y))) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))  # full batch: a majorization-minimization


def test_state_dict_round_trip_continues_identically():
    x, y = _data()
    torch.manual_seed(3)
    a = _mlp(3, 5, 2).double()
    opt = SSO(a.parameters(), lr=0.5, inner_steps=3)
    for _ in range(2):
        opt.step(lambda: a(x), lambda out: _mse(out, y))
    b = copy.deepcopy(a)
    opt_b = SSO(b.parameters())
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt_b.param_groups[0]["lr"] == 0.5 and opt_b.param_groups[0]["inner_steps"] == 3
    assert opt_b.state["sso"]["outer_steps"] == 2
    for _ in range(2):
        opt.step(lambda: a(x), lambda out: _mse(out, y))
        opt_b.step(lambda: b(x), lambda out: _mse(out, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert opt_b.state["sso"]["outer_steps"] == 4


def test_frozen_parameters_and_grads_are_left_alone():
    x, y = _data()
    torch.manual_seed(4)
    model = _mlp(3, 5, 2).double()
    model[0].requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    before = model[2].weight.detach().clone()
    opt = SSO(model.parameters(), lr=0.5, inner_steps=2)
    opt.step(lambda: model(x), lambda out: _mse(out, y))
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, before)
    assert all(p.grad is None for p in model.parameters())


def test_lr_schedulers_drive_the_target_space_step():
    model = nn.Linear(2, 1)
    opt = SSO(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (t + 1) ** 0.5)  # the authors' "stochastic"
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2 ** -0.5)


@pytest.mark.parametrize("arg,bad", [("lr", 0.0), ("lr", float("nan")), ("inner_steps", 0), ("inner_steps", 2.0),
                                     ("inner_lr", -1.0), ("line_search", 1), ("c", 0.0), ("beta", 1.0),
                                     ("expand_coeff", 0.5), ("n_batches_per_epoch", 0)])
def test_bad_hyperparameters_are_refused_naming_them(arg, bad):
    with pytest.raises(ValueError, match=rf"Invalid {arg}\b.*accepted"):
        SSO(nn.Linear(2, 1).parameters(), **{arg: bad})


def test_groups_must_share_the_hyperparameters():
    model = nn.Linear(2, 1)
    opt = SSO([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}])
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"Invalid lr: parameter group 1"):
        opt.step(lambda: model(x), lambda out: out.sum())


def test_bad_step_arguments_are_refused():
    model = nn.Linear(2, 1)
    x = torch.randn(4, 2)
    opt = SSO(model.parameters())
    with pytest.raises(TypeError, match="Invalid forward"):
        opt.step(model(x), lambda out: out.sum())
    with pytest.raises(TypeError, match="Invalid loss_fn"):
        opt.step(lambda: model(x), None)
    with pytest.raises(TypeError, match="Invalid forward: it returned tuple"):
        opt.step(lambda: (model(x),), lambda out: out.sum())
    with pytest.raises(ValueError, match=r"Invalid loss_fn: it returned Tensor of shape \(4, 1\)"):
        opt.step(lambda: model(x), lambda out: out)
    assert opt.state["sso"]["outer_steps"] == 0


def test_registry_record():
    rec = get("SSO")
    assert rec.load() is SSO and rec.family == "optim" and rec.arxiv == "2302.02607"
    assert rec.paper == "Target-based Surrogates for Stochastic Optimization"
    with pytest.raises(ValueError, match="training-helper, not an optimizer"):  # its step is not step(closure)
        create("sso", nn.Linear(2, 1))
