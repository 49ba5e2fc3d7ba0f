"""OutputScale (Kumar et al.'s output-scale knob): centered and scaled output, the learning-rate pairing, and
lazy (large alpha: weights and tangent kernel stay put) versus rich (small alpha) training. The authors' code
(their supplementary notebook, JAX) could not be run here, so these tests check behaviour, not golden data."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwise.nn import OutputScale, output_scale_lr


def _net(seed=0, width=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 1))


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g)
    return x, torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:2])


def test_centered_output_is_zero_at_init_and_scaled_difference_after():
    net = _net()
    x, _ = _data()
    m = OutputScale(net, alpha=3.0)
    assert torch.equal(m(x), torch.zeros(32, 1))
    before = net(x).detach()
    with torch.no_grad():
        net[2].bias += 0.5
    torch.testing.assert_close(m(x), 3.0 * (net(x) - before))
    torch.testing.assert_close(OutputScale(net, 2.0, center=False)(x), 2.0 * net(x))
    m.recenter()
    assert torch.equal(m(x), torch.zeros(32, 1))
    assert len(list(m.parameters())) == len(list(net.parameters()))  # theta_0 is not trained
    assert set(m.state_dict()) >= {"initial.p0", "model.0.weight"}


def test_batch_norm_statistics_are_updated_once_per_call():
    torch.manual_seed(0)
    net, ref = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)), nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    ref.load_state_dict(net.state_dict())
    m = OutputScale(net, alpha=2.0)
    x, _ = _data()
    for _ in range(2):
        m(x)
        ref(x)
    assert int(net[1].num_batches_tracked) == 2
    torch.testing.assert_close(net[1].running_mean, ref[1].running_mean)
    torch.testing.assert_close(net[1].running_var, ref[1].running_var)
    assert torch.equal(m.eval()(x), torch.zeros(32, 8))  # weights unchanged: eval output is still centered


def test_gradient_of_the_output_is_alpha_times_the_models():
    net = _net()
    x, _ = _data()
    m = OutputScale(net, alpha=5.0)
    g_scaled = torch.autograd.grad(m(x).sum(), list(net.parameters()))
    g_plain = torch.autograd.grad(net(x).sum(), list(net.parameters()))
    for a, b in zip(g_scaled, g_plain):
        torch.testing.assert_close(a, 5.0 * b)


def test_lr_over_alpha_squared_equals_loss_over_alpha_squared_for_sgd():
    x, y = _data()
    alpha = 4.0
    runs = []
    for scale_lr in (True, False):
        m = OutputScale(_net(), alpha)
        lr = output_scale_lr(0.05, alpha) if scale_lr else 0.05
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for _ in range(5):
            loss = ((m(x) - y) ** 2).mean() * (1.0 if scale_lr else m.loss_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
        runs.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
    torch.testing.assert_close(runs[0], runs[1])


def _ntk(m, x):
    rows = []
    for i in range(x.shape[0]):
        g = torch.autograd.grad(m(x[i:i + 1]).sum(), list(m.parameters()))
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    j = torch.stack(rows)
    return j @ j.T


def _train(alpha, steps=100):
    x, y = _data()
    m = OutputScale(_net(), alpha)
    opt = torch.optim.SGD(m.parameters(), lr=output_scale_lr(0.05, alpha))
    k0 = _ntk(m, x)
    th0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    for _ in range(steps):
        loss = ((m(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    th = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    return ((th - th0).norm() / th0.norm()).item(), ((_ntk(m, x) - k0).norm() / k0.norm()).item(), loss.item()


def test_large_alpha_is_lazy_small_alpha_is_rich():
    move_lazy, kernel_lazy, loss_lazy = _train(10.0)
    move_rich, kernel_rich, loss_rich = _train(0.1)
    assert move_lazy < 0.03 and kernel_lazy < 0.01  # weights and tangent kernel stay near initialization
    assert move_rich > 0.5 and kernel_rich > 0.3  # features move
    assert move_rich > 30 * move_lazy
    assert loss_rich < loss_lazy  # feature learning fits this target faster than the initial kernel


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="alpha"):
        OutputScale(_net(), alpha=0.0)
    with pytest.raises(ValueError, match="model"):
        OutputScale(lambda x: x, alpha=1.0)
    with pytest.raises(ValueError, match="center"):
        OutputScale(_net(), center=1)
    with pytest.raises(ValueError, match="alpha"):
        output_scale_lr(0.1, -2.0)
    with pytest.raises(ValueError, match="lr"):
        output_scale_lr(float("nan"), 2.0)


def test_compiles():
    torch._dynamo.reset()
    m = OutputScale(_net(), alpha=2.0)
    x, _ = _data()
    with torch.no_grad():
        m.model[0].weight += 0.1
    torch.testing.assert_close(torch.compile(m, backend="eager")(x), m(x))
    torch._dynamo.reset()
