"""The shared pieces compose: SPAM's spike clipping in front of AdaBelief, ⊥Grad in front of Lion."""
import pytest
import torch

import gradwise.optim as go
from gradwise.optim import _functional as F
from gradwise.optim.lion_k import KS
from optim_problem import make_params, set_grads


def _run(make, steps=40, grads=set_grads):
    params = make_params()
    opt = make(params)
    for t in range(steps):
        grads(params, t)
        opt.step()
    return params


def test_spike_clip_in_front_of_adabelief_is_clip_then_adabelief():
    thr, b2, delay = 50.0, 0.999, 3
    got = _run(lambda ps: go.AdaBelief(ps, lr=1e-2, grad_transforms=[go.SpikeClip(thr, b2, delay)]))

    # by hand: SPAM's clipping rule on our own EMA, then plain AdaBelief on the clipped gradients
    params = make_params()
    opt = go.AdaBelief(params, lr=1e-2)
    v = [torch.zeros_like(p) for p in params]
    for t in range(40):
        set_grads(params, t)
        g = [p.grad for p in params]
        if t + 1 >= delay:
            g = [torch.where(x * x > thr * s, x.sign() * (thr * s).sqrt(), x) for x, s in zip(g, v)]
        for s, x in zip(v, g):
            s.mul_(b2).addcmul_(x, x, value=1 - b2)
        for p, x in zip(params, g):
            p.grad = x.clone()
        opt.step()
    for a, b in zip(got, params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_spike_clip_tames_the_spikes():
    # the conformance problem spikes 500x at step 9: clipping keeps AdaBelief's step small there
    def step_norm_at_spike(transforms):
        params = make_params()
        opt = go.AdaBelief(params, lr=1e-2, rectify=False, grad_transforms=transforms)
        for t in range(10):
            set_grads(params, t)
            before = [p.detach().clone() for p in params]
            opt.step()
        return sum((p - b).norm() for p, b in zip(params, before))
    assert step_norm_at_spike([go.SpikeClip(threshold=5.0, clip_delay=2)]) < 0.5 * step_norm_at_spike([])


def test_perpendicular_grad_in_front_of_lion_matches_wrapper():
    a = _run(lambda ps: go.Lion(ps, lr=1e-3, weight_decay=0.1, grad_transforms=[go.PerpendicularGrad()]))
    b = _run(lambda ps: go.OrthoGrad(ps, go.Lion, lr=1e-3, weight_decay=0.1))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    plain = _run(lambda ps: go.Lion(ps, lr=1e-3, weight_decay=0.1))
    assert any(not torch.allclose(x, y) for x, y in zip(a, plain))


def test_perpendicular_is_orthogonal_and_keeps_norm():
    torch.manual_seed(1)
    w = [torch.randn(5, 7, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    g = [torch.randn(5, 7, dtype=torch.float64) + 2 * w[0], torch.randn(3, dtype=torch.float64)]
    out = F.perpendicular(w, g)
    for wi, gi, oi in zip(w, g, out):
        assert abs(torch.dot(wi.flatten(), oi.flatten())) < 1e-12 * wi.norm() * oi.norm()
        torch.testing.assert_close(oi.norm(), gi.norm())


def test_perpendicular_grad_stops_weight_norm_growth():
    # the paper's point: ⊥Grad removes the radial component, so under a pure scaling
    # gradient (g = -w, "naive loss minimization") the weights do not grow
    w = torch.nn.Parameter(torch.randn(10, 10, dtype=torch.float64))
    n0 = w.norm().item()
    opt = go.OrthoGrad([w], torch.optim.SGD, lr=0.1)
    for _ in range(50):
        w.grad = -w.detach().clone()
        opt.step()
    assert w.norm().item() < n0 * 1.01
    w2 = torch.nn.Parameter(w.detach().clone())
    sgd = torch.optim.SGD([w2], lr=0.1)
    for _ in range(50):
        w2.grad = -w2.detach().clone()
        sgd.step()
    assert w2.norm().item() > 10 * w.norm().item()


def test_orthograd_wrapper_state_dict_and_closure():
    params = make_params()
    opt = go.OrthoGrad(params, torch.optim.AdamW, lr=1e-2)
    set_grads(params, 0)
    opt.step()
    sd = opt.state_dict()
    assert "exp_avg" in sd["state"][0]  # the base optimizer's state is saved

    def closure():
        set_grads(params, 1)
        return torch.tensor(1.0)

    before = [p.detach().clone() for p in params]
    opt.step(closure)
    # the gradient the base optimizer saw was projected, even though a closure produced it
    for p, b in zip(params, before):
        assert abs(torch.dot(b.flatten(), p.grad.flatten())) < 1e-9 * b.norm() * p.grad.norm()


def test_orthograd_rejects_non_optimizer():
    with pytest.raises(ValueError, match="base_optimizer_cls"):
        go.OrthoGrad(make_params(), base_optimizer_cls=dict)


@pytest.mark.parametrize("wd,norm", [(2.0, "inf"), (2.0, "l2")])
def test_lion_k_solves_the_constrained_problem(wd, norm):
    # Lion-K with decay wd keeps x in {K*(wd x) < inf}: the l_inf box for K = l1, the l2 ball for K = l2
    target = torch.full((20,), 3.0, dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(20, dtype=torch.float64))
    opt = go.LionK([x], lr=1e-2, weight_decay=wd, k="l1" if norm == "inf" else "l2")
    for _ in range(2000):
        x.grad = (x.detach() - target)
        opt.step()
    bound = x.detach().abs().max() if norm == "inf" else x.detach().norm()
    assert bound <= 1 / wd + 2e-2
    assert bound >= 1 / wd - 5e-2  # the constraint is active: the optimum lies outside it


@pytest.mark.parametrize("k", sorted(KS))
def test_lion_k_direction_is_the_gradient_of_k(k):
    # the LionK docstring's claim: every grad K is the autograd gradient of its K (per tensor, away from kinks)
    grad_k, K, _ = KS[k]
    group = dict(p=1.5, delta=0.7, c=0.8, dead_zone=0.3)
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(4, 6), (7,), (2, 3, 2)]]
    want = []
    for x in xs:
        x = x.clone().requires_grad_(True)
        want.append(torch.autograd.grad(K(x, group), x)[0])
    got = grad_k([x.clone() for x in xs], group)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if k == "dead_zone":  # the boundary itself is inside the dead zone
        e = group["dead_zone"]
        edge = grad_k([torch.tensor([e, -e, 0.0, e * (1 + 1e-15), -2 * e], dtype=torch.float64)], group)[0]
        assert edge.tolist() == [0.0, 0.0, 0.0, 1.0, -1.0]
    if k in ("lp", "l2"):  # a zero tensor has direction 0, not NaN
        assert torch.equal(grad_k([torch.zeros(5, dtype=torch.float64)], group)[0], torch.zeros(5, dtype=torch.float64))
