"""rk_step and solve_ode (seed 234): dopri5 steps against torchdiffeq 0.2.5's ``_runge_kutta_step``, the
torchdiffeq controller against ``odeint`` (steps, NFE, outputs), tsit5 against torchode 1.0.1, the R_E / R_S
regularisers' gradients, and bad input."""
import math

import pytest
import torch

from gradwise.sciml import ODESolution, rk_step, solve_ode


def _net(seed=0, dim=3):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, dim)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return net


@pytest.fixture
def problem():
    net = _net()
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def f(t, y):  # time-dependent, so the stage times matter
        return net(y) + torch.sin(t) * y

    return net, f, y0


class _Counted(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.n, self.accepted = f, 0, 0

    def forward(self, t, y, perturb=None):
        self.n += 1
        return self.f(t, y)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1


@pytest.mark.parametrize("dt", [0.3, -0.2, 1e-3])
def test_dopri5_step_equals_torchdiffeq_runge_kutta_step(problem, dt):
    tdq = pytest.importorskip("torchdiffeq._impl.rk_common")
    from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU as TAB
    from torchdiffeq._impl.misc import _compute_error_ratio, _rms_norm
    _, f, y0 = problem
    t0 = torch.tensor(0.1, dtype=torch.float64)
    h = torch.tensor(dt, dtype=torch.float64)
    f0 = f(t0, y0)
    y1, f1, err, _ = tdq._runge_kutta_step(_Counted(f), y0, f0, t0, h, t0 + h, TAB)
    mine = rk_step(f, 0.1, y0, dt, method="dopri5", f0=f0)
    ratio = _compute_error_ratio(err, torch.tensor(1e-3, dtype=torch.float64), torch.tensor(1e-6, dtype=torch.float64),
                                 y0, y1, _rms_norm)
    torch.testing.assert_close(mine.y1, y1, rtol=0, atol=1e-12)
    torch.testing.assert_close(mine.f1, f1, rtol=0, atol=1e-12)
    torch.testing.assert_close(mine.error_ratio, ratio, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_torchdiffeq_controller_reproduces_odeint_steps_nfe_and_outputs(problem, reverse):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    _, f, y0 = problem
    t = torch.linspace(0.0, 2.0, 6, dtype=torch.float64)
    if reverse:
        t = t.flip(0)
    ref = _Counted(f)
    ys = torchdiffeq.odeint(ref, y0, t, method="dopri5", rtol=1e-4, atol=1e-7)
    sol = solve_ode(f, y0, t, method="dopri5", rtol=1e-4, atol=1e-7, controller="torchdiffeq")
    assert isinstance(sol, ODESolution)
    assert sol.nfe == ref.n and sol.n_steps == ref.accepted > 2
    torch.testing.assert_close(sol.ys, ys, rtol=1e-11, atol=1e-12)  # same steps; rounding only
    # with a given first step too
    ref2 = _Counted(f)
    ys2 = torchdiffeq.odeint(ref2, y0, t, method="dopri5", rtol=1e-3, atol=1e-6, options={"first_step": 0.05})
    sol2 = solve_ode(f, y0, t, method="dopri5", first_step=0.05, controller="torchdiffeq")
    assert sol2.nfe == ref2.n and sol2.n_steps == ref2.accepted
    torch.testing.assert_close(sol2.ys, ys2, rtol=1e-11, atol=1e-12)


def test_tsit5_step_and_solve_agree_with_torchode(problem):
    to = pytest.importorskip("torchode")
    _, f, y0 = problem
    y0 = y0[:1]
    term = to.ODETerm(lambda t, y: f(t, y))
    m = to.Tsit5(term=term)
    stats = {"n_f_evals": torch.zeros(1, dtype=torch.long)}
    prob = to.InitialValueProblem(y0=y0, t_start=torch.tensor([0.1], dtype=torch.float64),
                                  t_end=torch.tensor([1.0], dtype=torch.float64))
    state = m.init(term, prob, None, stats=stats, args=None)
    res, _, _, _ = m.step(term, torch.ones(1, dtype=torch.bool), y0, torch.tensor([0.1], dtype=torch.float64),
                          torch.tensor([0.3], dtype=torch.float64), state, stats=stats, args=None)
    mine = rk_step(f, 0.1, y0, 0.3)
    torch.testing.assert_close(mine.y1, res.y, rtol=0, atol=1e-12)
    scale = 1e-6 + 1e-3 * torch.maximum(y0.abs(), res.y.abs())
    torch.testing.assert_close(mine.error_ratio, (res.error_estimate / scale).pow(2).mean().sqrt(), rtol=1e-6, atol=0)
    # whole solve: torchode's controller differs (it may shrink after an accepted step; it interpolates at
    # the outputs), so the solutions agree to the tolerance, not to rounding
    solver = to.AutoDiffAdjoint(m, to.IntegralController(atol=1e-8, rtol=1e-6, term=term))
    t_eval = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    ref = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval[None])).ys[0]
    sol = solve_ode(f, y0, t_eval, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(sol.ys[:, 0], ref, rtol=0, atol=1e-5)


def test_linear_ode_accuracy_and_landing_on_outputs():
    lam = -1.3
    t = torch.tensor([0.0, 0.5, 0.7, 2.0], dtype=torch.float64)
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    for method in ("tsit5", "dopri5"):
        sol = solve_ode(lambda s, y: lam * y, y0, t, method=method, rtol=1e-8, atol=1e-10)
        exact = y0 * torch.exp(lam * t)[:, None]
        torch.testing.assert_close(sol.ys, exact, rtol=1e-7, atol=1e-9)
        assert sol.ys[0].data_ptr() == y0.data_ptr() or torch.equal(sol.ys[0], y0)
        assert (sol.nfe - 2) % 6 == 0 and sol.nfe >= 2 + 6 * sol.n_steps


def test_error_regularizer_is_sum_of_error_ratio_times_step_and_differentiable(problem):
    net, f, y0 = problem
    t = torch.tensor([0.0, 1.5], dtype=torch.float64)
    sol = solve_ode(f, y0, t, regularize="error")
    # replay the accepted steps by hand: R_E = sum EEst_j |h_j|
    h_sum = []
    tt, y, fy = 0.0, y0, f(torch.tensor(0.0, dtype=torch.float64), y0)
    from gradwise.sciml._rk import TABLEAUX, initial_step, next_step_size, step
    dt = initial_step(f, 0.0, y0, fy, 4, 1e-3, 1e-6, cap=1.5)
    while tt < 1.5:
        h, t1 = dt, tt + dt
        if t1 >= 1.5:
            t1, h = 1.5, 1.5 - tt
        out = step(f, tt, y, h, fy, TABLEAUX["tsit5"], 1e-3, 1e-6, t1=t1)
        r = float(out.error_ratio.detach())
        if r <= 1:
            h_sum.append(out.error_ratio * h)
            tt, y, fy = t1, out.y1, out.f1
        dt = next_step_size(h, r, 5)
    assert len(h_sum) == sol.n_steps
    torch.testing.assert_close(sol.reg, sum(h_sum), rtol=1e-12, atol=0)
    g = torch.autograd.grad(sol.reg, list(net.parameters()))
    assert all(torch.isfinite(x).all() for x in g) and sum(x.abs().sum() for x in g) > 0


def test_stiffness_regularizer_tracks_the_jacobian_eigenvalue():
    # y' = lam * y: k7 - k6 = lam (y1 - g6) exactly, so each estimate is |lam|
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    lam = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    sol = solve_ode(lambda s, y: lam * y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), regularize="stiffness")
    assert sol.reg.item() == pytest.approx(4.0 * sol.n_steps, rel=1e-9)
    (g,) = torch.autograd.grad(sol.reg, lam)
    assert g.item() == pytest.approx(-sol.n_steps, rel=1e-9)


def test_discrete_adjoint_gradient_matches_finite_differences():
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def f(t, y):
        return torch.stack([y[1], -a * y[0]])

    t = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    sol = solve_ode(f, y0, t, first_step=0.1, rtol=1e-9, atol=1e-12)
    (g,) = torch.autograd.grad(sol.ys[-1, 0], a)
    eps = 1e-6
    with torch.no_grad():
        a += eps
        up = solve_ode(f, y0, t, first_step=0.1, rtol=1e-9, atol=1e-12).ys[-1, 0]
        a -= 2 * eps
        dn = solve_ode(f, y0, t, first_step=0.1, rtol=1e-9, atol=1e-12).ys[-1, 0]
        a += eps
    # exact: y = cos(sqrt(a) t); d/da at t=2 is -sin(2 sqrt a) * 2 / (2 sqrt a)
    w = math.sqrt(0.7)
    assert g.item() == pytest.approx(-math.sin(2 * w) / w, rel=1e-6)
    assert g.item() == pytest.approx(((up - dn) / (2 * eps)).item(), rel=1e-4)


def test_float32_state_and_no_regularizer_gives_zero_reg():
    y0 = torch.ones(4)
    sol = solve_ode(lambda s, y: -y, y0, torch.tensor([0.0, 1.0]))
    assert sol.ys.dtype == torch.float32 and sol.reg.item() == 0.0
    assert abs(sol.ys[-1, 0].item() - math.exp(-1)) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    ({"rtol": 0.0}, "rtol"), ({"atol": -1e-6}, "atol"), ({"rtol": float("nan")}, "rtol"),
    ({"method": "rk4"}, "method"), ({"controller": "pid"}, "controller"), ({"regularize": "jacobian"}, "regularize"),
    ({"max_steps": 0}, "max_steps"), ({"first_step": -0.1}, "first_step"), ({"generator": 3}, "generator"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve_ode(lambda s, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), **kwargs)


@pytest.mark.parametrize("t", [torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.5]), torch.tensor([0.0]),
                               torch.zeros(2, 2), torch.tensor([0.0, float("inf")])])
def test_times_not_strictly_monotone_raise(t):
    with pytest.raises(ValueError, match="Invalid t"):
        solve_ode(lambda s, y: -y, torch.ones(2), t)


def test_rk_step_bad_input_and_nan_propagates():
    with pytest.raises(ValueError, match="atol"):
        rk_step(lambda s, y: -y, 0.0, torch.ones(2), 0.1, atol=0)
    with pytest.raises(ValueError, match="dt"):
        rk_step(lambda s, y: -y, 0.0, torch.ones(2), 0.0)
    with pytest.raises(ValueError, match="f0"):
        rk_step(lambda s, y: -y, 0.0, torch.ones(2), 0.1, f0=torch.ones(3))
    out = rk_step(lambda s, y: -y, 0.0, torch.tensor([1.0, float("nan")]), 0.1)
    assert math.isnan(out.error_ratio.item()) and math.isnan(out.y1[1].item())


def test_max_steps_and_non_finite_state_raise_runtime_error():
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_ode(lambda s, y: -50 * y, torch.ones(2), torch.tensor([0.0, 10.0]), max_steps=3)
    with pytest.raises(RuntimeError, match="non-finite"):
        solve_ode(lambda s, y: -y, torch.tensor([1.0, float("nan")]), torch.tensor([0.0, 1.0]))
