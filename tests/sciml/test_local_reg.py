"""local_regularizer and solve_ode's "local" / "local-biased" modes (seed 242, after LocalRegNeuralDE.jl@12a261e
``src/layers/neural_ode.jl`` and ``src/perform_step.jl``)."""
import pytest
import torch

from gradwise.sciml import local_regularizer, rk_step, solve_ode


def _problem():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    y0 = torch.randn(8, 2, generator=g, dtype=torch.float64)
    return net, (lambda t, y: net(y)), y0


def test_local_regularizer_is_eest_times_the_fresh_integrators_first_step():
    net, f, y0 = _problem()
    y1 = y0 + 0.3
    reg, nfe = local_regularizer(f, 0.4, y1, span=1.0)
    # by hand: Hairer's first step (one evaluation, capped at the span), then one tsit5 step
    from gradwise.sciml._rk import initial_step
    f0 = f(None, y1).detach()
    dt = initial_step(f, 0.4, y1, f0, 4, 1e-3, 1e-6, cap=1.0)
    out = rk_step(f, 0.4, y1, dt, f0=f0)
    torch.testing.assert_close(reg, out.error_ratio * dt, rtol=1e-12, atol=0)
    assert nfe == 1 + 1 + 6
    g = torch.autograd.grad(reg, list(net.parameters()))
    assert sum(x.abs().sum() for x in g) > 0


def test_local_modes_in_solve_ode_are_seeded_and_cost_one_extra_step():
    net, f, y0 = _problem()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    plain = solve_ode(f, y0, t)
    for mode in ("local", "local-biased"):
        a = solve_ode(f, y0, t, regularize=mode, generator=torch.Generator().manual_seed(3))
        b = solve_ode(f, y0, t, regularize=mode, generator=torch.Generator().manual_seed(3))
        assert a.reg.item() == b.reg.item() > 0
        torch.testing.assert_close(a.ys, plain.ys, rtol=0, atol=0)  # the solve itself is unchanged
        assert plain.nfe + 7 <= a.nfe <= plain.nfe + 8
        (g,) = torch.autograd.grad(a.reg, [net[0].weight])
        assert g.abs().sum() > 0
    regs = {solve_ode(f, y0, t, regularize="local", generator=torch.Generator().manual_seed(s)).reg.item()
            for s in range(4)}
    assert len(regs) == 4  # t1 is drawn afresh


def test_local_state_carries_no_gradient_to_the_initial_value():
    _, f, y0 = _problem()
    y0 = y0.clone().requires_grad_(True)
    sol = solve_ode(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), regularize="local-biased",
                    generator=torch.Generator().manual_seed(0))
    assert not sol.reg.requires_grad or torch.autograd.grad(sol.reg, y0, allow_unused=True)[0] is None


def test_bad_input():
    _, f, y0 = _problem()
    with pytest.raises(ValueError, match="span"):
        local_regularizer(f, 0.0, y0, span=0.0)
    with pytest.raises(ValueError, match="method"):
        local_regularizer(f, 0.0, y0, span=1.0, method="euler")
    with pytest.raises(ValueError, match="rtol"):
        local_regularizer(f, 0.0, y0, span=1.0, rtol=-1)
    with pytest.raises(ValueError, match="f0"):
        local_regularizer(f, 0.0, y0, span=1.0, f0=torch.ones(3))
