import pytest
import torch
from torch import nn
from torch.func import functional_call

from gradwise.metrics import HessianTraceCallback, call_callbacks, hessian_trace


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    return model, (x, y)


def ce(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def exact_trace(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, parts, (batch[0],)), batch[1])
    return torch.autograd.functional.hessian(f, flat).diagonal().sum()


def test_unbiased_against_the_exact_trace():
    model, batch = tiny()
    exact = exact_trace(model, batch)
    samples = hessian_trace(model, ce, batch, n_samples=2000, generator=torch.Generator().manual_seed(1),
                            return_samples=True)
    stderr = samples.std() / samples.numel() ** 0.5
    assert abs(samples.mean() - exact) < 4 * stderr  # unbiased: the mean is within 4 standard errors
    assert stderr < 0.1 * exact.abs()  # and the test is not vacuous
    assert not any(p.grad is not None for p in model.parameters())


def test_exact_for_a_diagonal_hessian_and_seeded():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    holder = nn.Module()
    holder.w = w
    a = torch.tensor([2.0, 5.0, -1.0], dtype=torch.float64)

    def quad(model, batch):
        return 0.5 * (a * model.w ** 2).sum()  # Hessian diag(a): v^T H v = tr H for every Rademacher v
    t = hessian_trace(holder, quad, None, n_samples=3)
    assert float(t) == pytest.approx(6.0)
    model, batch = tiny()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(hessian_trace(model, ce, batch, 4, g1), hessian_trace(model, ce, batch, 4, g2))


def test_zero_for_a_loss_linear_in_some_or_all_parameters():
    lin = nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert float(hessian_trace(lin, lambda m, b: m(b).sum(), x, n_samples=3)) == 0.0  # linear: H = 0
    # the bias enters linearly (no graph in its gradient), the weight quadratically: tr H = 2 * sum(x^2)
    t = hessian_trace(lin, lambda m, b: (m.weight ** 2 * (b ** 2).sum(0)).sum() + m.bias.sum(), x, n_samples=2)
    assert float(t) == pytest.approx(2 * float((x ** 2).sum()))


def test_callback_on_a_training_loop():
    model, batch = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    cb = HessianTraceCallback(ce, batch, every=2, n_samples=20)
    for step in range(5):
        loss = ce(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        call_callbacks([cb], "on_step", step, model=model, loss=loss)
    assert [s for s, _ in cb.history] == [0, 2, 4]
    gen = torch.Generator().manual_seed(0)
    assert cb.latest == pytest.approx(float(hessian_trace(model, ce, batch, 20, gen)))


def test_bad_input():
    model, batch = tiny()
    with pytest.raises(ValueError, match="n_samples"):
        hessian_trace(model, ce, batch, n_samples=0)
    with pytest.raises(ValueError, match="model"):
        hessian_trace(lambda x: x, ce, batch)
    with pytest.raises(ValueError, match="loss_fn"):
        hessian_trace(model, lambda m, b: m(b[0]), batch)
    with pytest.raises(ValueError, match="generator"):
        hessian_trace(model, ce, batch, generator=0)


# ---------------------------------------------------------------- top eigenvalue by power iteration

def _quadratic(eigs, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    holder = nn.Module()
    holder.w = nn.Parameter(torch.randn(len(eigs), generator=g, dtype=torch.float64))
    return holder, a, q


def test_top_eigenvalue_of_a_quadratic_with_known_spectrum():
    from gradwise.metrics import hessian_top_eigenvalue

    holder, a, q = _quadratic([5.0, -1.0, 2.0, 0.5, 3.0])
    quad = lambda m, b: 0.5 * m.w @ a @ m.w  # noqa: E731 - Hessian a
    lam, vec = hessian_top_eigenvalue(holder, quad, None, iters=500, tol=0.0,
                                      generator=torch.Generator().manual_seed(1), return_vector=True)
    assert float(lam) == pytest.approx(5.0, rel=1e-10)
    assert abs(float(vec[0] @ q[:, 0])) == pytest.approx(1.0, rel=1e-8)  # the eigenvector of 5
    assert holder.w.grad is None
    # the largest magnitude wins, its sign kept
    neg, a2, _ = _quadratic([-7.0, 3.0, 1.0])
    got = hessian_top_eigenvalue(neg, lambda m, b: 0.5 * m.w @ a2 @ m.w, None, iters=300, tol=0.0)
    assert float(got) == pytest.approx(-7.0, rel=1e-10)


def test_top_eigenvalue_of_a_network_matches_the_exact_hessian():
    from gradwise.metrics import hessian_top_eigenvalue

    model, batch = tiny()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return nn.functional.cross_entropy(functional_call(model, parts, (batch[0],)), batch[1])
    ev = torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat))
    want = ev[ev.abs().argmax()]
    got = hessian_top_eigenvalue(model, ce, batch, iters=1000, tol=1e-12, generator=torch.Generator().manual_seed(0))
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # the default stopping rule is close too, and a seeded start repeats exactly
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a, b = hessian_top_eigenvalue(model, ce, batch, generator=g1), hessian_top_eigenvalue(model, ce, batch, generator=g2)
    assert torch.equal(a, b) and float(a) == pytest.approx(float(want), rel=1e-2)


def test_top_eigenvalue_is_zero_for_a_linear_loss_and_refuses_bad_arguments():
    from gradwise.metrics import hessian_top_eigenvalue

    lin = nn.Linear(3, 1).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    assert float(hessian_top_eigenvalue(lin, lambda m, b: m(b).sum(), x)) == 0.0
    with pytest.raises(ValueError, match="Invalid iters"):
        hessian_top_eigenvalue(lin, lambda m, b: m(b).sum(), x, iters=0)
    with pytest.raises(ValueError, match="Invalid tol"):
        hessian_top_eigenvalue(lin, lambda m, b: m(b).sum(), x, tol=-1.0)
    with pytest.raises(ValueError, match="Invalid loss_fn"):
        hessian_top_eigenvalue(lin, lambda m, b: m(b), x)  # not a scalar
