"""AMCL: the paper's equations as loops, the temperature network, the authors' v2 release."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.losses import AMCLLoss, AMCLTemperature, amcl_loss
from loss_inputs import finite as _finite


DATA = Path(__file__).parents[1] / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)
F64 = torch.float64


# ----------------------------------------------------------------------------------------------- AMCL
def _nt_xent_loop(z1, z2, tau):
    """SimCLR's NT-Xent, anchor by anchor: -log exp(s_pos/tau) / sum_{k != i} exp(s_ik/tau), mean over 2N."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        p = (i + n2 // 2) % n2
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[p]) / tau) / den)
    return total / n2


def test_amcl_one_head_fixed_temperature_is_nt_xent():
    g = torch.Generator().manual_seed(6)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, 5, generator=g, dtype=F64)
    for tau in (0.07, 0.5, 2.0):
        got = amcl_loss(z1, z2, tau, negatives="logsumexp", beta=0.3)  # Omega(tau+) - Omega(tau-) = 0
        assert math.isclose(float(got), _nt_xent_loop(z1, z2, tau), rel_tol=1e-12)
        # and torch's cross entropy on the [2N, 2N] logits without the diagonal (the usual implementation)
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = (z @ z.T / tau).fill_diagonal_(-math.inf)
        target = (torch.arange(12) + 6) % 12
        torch.testing.assert_close(got, F.cross_entropy(logits, target), rtol=1e-12, atol=0)
    # with a [C, 1, 1] tensor of per-head constants, heads add up
    two = amcl_loss(torch.stack([z1, z2]), torch.stack([z2, z1]), torch.tensor([0.5, 0.2], dtype=F64)[:, None, None],
                    negatives="logsumexp")
    torch.testing.assert_close(two, amcl_loss(z1, z2, 0.5, negatives="logsumexp")
                               + amcl_loss(z2, z1, 0.2, negatives="logsumexp"), rtol=1e-12, atol=0)


def _amcl_loop(z1, z2, tau, beta, d):
    """Eq. 2.1, anchor by anchor and head by head, with per-pair temperatures tau[c, i, j]."""
    C, N, _ = z1.shape
    omega = lambda t: 1 / t + d / 2 * math.log(t)  # noqa: E731
    per_image = [0.0] * N
    for c in range(C):
        z = F.normalize(torch.cat([z1[c], z2[c]]), dim=1)
        for i in range(2 * N):
            p = (i + N) % (2 * N)
            negs = [j for j in range(2 * N) if j not in (i, p)]
            n_star = max(negs, key=lambda j: float(z[i] @ z[j]))
            tp, tn = float(tau[c, i, p]), float(tau[c, i, n_star])
            term = -float(z[i] @ z[p]) / tp + float(z[i] @ z[n_star]) / tn + beta * (omega(tp) - omega(tn))
            per_image[i % N] += 0.5 * term
    return per_image


@FAST
@given(seed=st.integers(0, 10**6), heads=st.integers(1, 3), n=st.integers(2, 5), beta=st.floats(0.0, 2.0))
def test_amcl_equals_eq_2_1_loop_with_pair_temperatures(seed, heads, n, beta):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(heads, n, 4, generator=g, dtype=F64), torch.randn(heads, n, 4, generator=g, dtype=F64)
    tau = 0.05 + torch.rand(heads, 2 * n, 2 * n, generator=g, dtype=F64)
    got = amcl_loss(z1, z2, tau, beta=beta, negatives="max", reduction="none")
    torch.testing.assert_close(got, torch.tensor(_amcl_loop(z1, z2, tau, beta, 4), dtype=F64), rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(amcl_loss(z1, z2, tau, beta=beta, negatives="max"), got.mean())
    torch.testing.assert_close(amcl_loss(z1, z2, tau, beta=beta, negatives="max", reduction="sum"), got.sum())
    # batch order: permuting the images (and the temperature matrix with them) permutes the per-image losses
    perm = torch.randperm(n, generator=g)
    both = torch.cat([perm, perm + n])
    torch.testing.assert_close(amcl_loss(z1[:, perm], z2[:, perm], tau[:, both][:, :, both], beta=beta, negatives="max",
                                         reduction="none"), got[perm], rtol=1e-12, atol=1e-12)


def test_amcl_positive_temperature_is_the_gaussian_ml_variance():
    # beta = 1: the positive pair's terms are the Gaussian NLL (1 - s)/tau + (d/2) log tau of ||z - z+||^2 = 2 - 2s,
    # minimized at the ML variance tau = 2 (1 - s) / d; elsewhere the gradient in tau+ has the sign of tau - tau*
    g = torch.Generator().manual_seed(7)
    d = 6
    z1, z2 = torch.randn(1, 4, d, generator=g, dtype=F64), torch.randn(1, 4, d, generator=g, dtype=F64)
    z = F.normalize(torch.cat([z1[0], z2[0]]), dim=1)
    s_pos = (z * z.roll(4, 0)).sum(1)  # [8], the positive similarity of each anchor
    idx = torch.arange(8)
    for factor, sign in ((1.0, 0), (0.5, -1), (2.0, 1)):
        tau = torch.full((1, 8, 8), 0.3, dtype=F64)
        tau[0, idx, (idx + 4) % 8] = factor * 2 * (1 - s_pos) / d
        tau.requires_grad_()
        amcl_loss(z1, z2, tau, beta=1.0, negatives="max", reduction="sum").backward()
        g_pos = tau.grad[0, idx, (idx + 4) % 8]
        if sign == 0:
            torch.testing.assert_close(g_pos, torch.zeros_like(g_pos), atol=1e-10, rtol=0)
        else:
            assert bool((torch.sign(g_pos) == sign).all())


def _mlp_temperature_loop(t, z1, z2, c, i, j):
    """The first release's AdaptiveTemperature for one pair: Linear(2D,h) -> ReLU -> Linear(h,1) -> sigmoid."""
    z = torch.cat([z1[c], z2[c]])
    m = 0 if t.shared else c
    h = F.relu(torch.cat([z[i], z[j]]) @ t.w1[m] + t.b1[m])
    return t.tau_min + (t.tau_max - t.tau_min) * torch.sigmoid(h @ t.w2[m] + t.b2[m])


@pytest.mark.parametrize("shared", [False, True])
def test_amcl_temperature_network_is_the_pairwise_mlp(shared):
    torch.manual_seed(8)
    t = AMCLTemperature(5, num_heads=2, hidden=7, form="concat", shared=shared).double()
    z1, z2 = torch.randn(2, 3, 5, dtype=F64), torch.randn(2, 3, 5, dtype=F64)
    tau = t(z1, z2)
    assert tau.shape == (2, 6, 6) and bool((tau > t.tau_min).all() & (tau < t.tau_max).all())
    for c in range(2):
        for i in range(6):
            for j in range(6):
                torch.testing.assert_close(tau[c, i, j], _mlp_temperature_loop(t, z1, z2, c, i, j), rtol=1e-12,
                                           atol=1e-14)
    assert (t.w1.shape[0] == 1) == shared
    loss = amcl_loss(z1, z2, tau, negatives="max")
    loss.backward()
    assert all(p.grad is not None and _finite(p.grad) for p in t.parameters())


def _topk_loop(z1, z2, tau, beta, k, d):
    """Eq. (5) as the v2.0 code computes it, anchor by anchor: the mean of s/tau over the k most similar
    negatives, beta*Omega(tau+) for the positive and -beta*sum(log tau + 1/tau) over those negatives."""
    C, N, _ = z1.shape
    per_image = [0.0] * N
    for c in range(C):
        z = F.normalize(torch.cat([z1[c], z2[c]]), dim=1)
        for i in range(2 * N):
            p = (i + N) % (2 * N)
            negs = sorted((j for j in range(2 * N) if j not in (i, p)), key=lambda j: -float(z[i] @ z[j]))[:k]
            tp = float(tau[c, i, p])
            term = -float(z[i] @ z[p]) / tp + beta * (1 / tp + d / 2 * math.log(tp))
            term += sum(float(z[i] @ z[j]) / float(tau[c, i, j]) for j in negs) / len(negs)
            term -= beta * sum(math.log(float(tau[c, i, j])) + 1 / float(tau[c, i, j]) for j in negs)
            per_image[i % N] += 0.5 * term
    return per_image


@FAST
@given(seed=st.integers(0, 10**6), heads=st.integers(1, 3), n=st.integers(2, 5), beta=st.floats(0.0, 2.0),
       k=st.integers(1, 10))
def test_amcl_topk_equals_eq_5_loop(seed, heads, n, beta, k):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(heads, n, 4, generator=g, dtype=F64), torch.randn(heads, n, 4, generator=g, dtype=F64)
    tau = 0.05 + torch.rand(heads, 2 * n, 2 * n, generator=g, dtype=F64)
    got = amcl_loss(z1, z2, tau, beta=beta, negatives="topk", topk=k, reduction="none")
    torch.testing.assert_close(got, torch.tensor(_topk_loop(z1, z2, tau, beta, k, 4), dtype=F64), rtol=1e-10,
                               atol=1e-10)


def test_amcl_topk_one_differs_from_max_only_in_the_negative_regularizer():
    # v2.0's Top-k regularizer has no d/2: topk=1 = eq. (2.1) + beta (d/2 - 1) log tau(n*)
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(2, 5, 6, generator=g, dtype=F64), torch.randn(2, 5, 6, generator=g, dtype=F64)
    tau = 0.05 + torch.rand(2, 10, 10, generator=g, dtype=F64)
    beta = 0.7
    top1 = amcl_loss(z1, z2, tau, beta=beta, negatives="topk", topk=1, reduction="none")
    mx = amcl_loss(z1, z2, tau, beta=beta, negatives="max", reduction="none")
    torch.testing.assert_close(amcl_loss(z1, z2, tau, beta=0.0, negatives="topk", topk=1, reduction="none"),
                               amcl_loss(z1, z2, tau, beta=0.0, negatives="max", reduction="none"))
    z = F.normalize(torch.cat([z1, z2], 1), dim=-1)
    sim = z @ z.transpose(1, 2)
    idx = torch.arange(10)
    sim[:, idx, idx] = -math.inf
    sim[:, idx, (idx + 5) % 10] = -math.inf
    t_hard = tau.gather(-1, sim.argmax(-1, keepdim=True)).squeeze(-1)  # [2, 10]
    extra = (beta * (6 / 2 - 1) * torch.log(t_hard)).sum(0)
    torch.testing.assert_close(top1 - mx, 0.5 * (extra[:5] + extra[5:]), rtol=1e-10, atol=1e-12)
    # topk >= 2N - 2 uses every negative
    torch.testing.assert_close(amcl_loss(z1, z2, tau, negatives="topk", topk=8),
                               amcl_loss(z1, z2, tau, negatives="topk", topk=100))


def _dot_temperature_loop(t, z1, z2, c, i, j):
    """Eq. (3) as the v2.0 TemperatureHead computes it: tau_min + (tau_max - tau_min) sigmoid(-phi(zi).phi(zj))."""
    z = F.normalize(torch.cat([z1[c], z2[c]]), dim=1)
    m = 0 if t.shared else c
    phi = lambda x: F.relu(x @ t.w1[m] + t.b1[m]) @ t.w2[m] + t.b2[m]  # noqa: E731
    return t.tau_min + (t.tau_max - t.tau_min) * torch.sigmoid(-(phi(z[i]) @ phi(z[j])))


@pytest.mark.parametrize("shared", [True, False])
def test_amcl_temperature_default_is_eq_3_inverse_sigmoid_of_a_pair_score(shared):
    torch.manual_seed(9)
    t = AMCLTemperature(5, num_heads=2, hidden=7, shared=shared).double()
    assert t.form == "dot" and AMCLTemperature(5).shared  # one map for all heads by default, as in v2.0
    z1, z2 = torch.randn(2, 3, 5, dtype=F64), torch.randn(2, 3, 5, dtype=F64)
    tau = t(z1, z2)
    assert tau.shape == (2, 6, 6) and bool((tau > t.tau_min).all() & (tau < t.tau_max).all())
    torch.testing.assert_close(tau, tau.transpose(1, 2))  # a symmetric pair score
    for c in range(2):
        for i in range(6):
            for j in range(6):
                torch.testing.assert_close(tau[c, i, j], _dot_temperature_loop(t, z1, z2, c, i, j), rtol=1e-12,
                                           atol=1e-14)
    # the features are normalized first: rescaling a view does not change any temperature
    torch.testing.assert_close(t(3.0 * z1, z2), tau, rtol=1e-12, atol=1e-14)
    # a higher score, a lower temperature (the inverse sigmoid): doubling phi quadruples r_ii = ||phi(z_i)||^2
    with torch.no_grad():
        t.w2.mul_(2.0)
        t.b2.mul_(2.0)
    assert bool((t(z1, z2).diagonal(dim1=1, dim2=2) < tau.diagonal(dim1=1, dim2=2)).all())
    assert (t.w1.shape[0] == 1) == shared


def test_amcl_matches_the_authors_v2_release():
    # golden values from LeiWangR/cl @ 755799db AMCLNTXentLoss (tools/golden/make_amcl_golden.py): loss and gradients
    # w.r.t. both views and the shared temperature map phi, float32
    cases = torch.load(DATA / "amcl_golden.pt", weights_only=True)
    assert len(cases) == 4
    for c in cases:
        t = AMCLTemperature(c["dim"], c["heads"], hidden=c["hidden"], tau_min=c["tau_min"], tau_max=c["tau_max"])
        with torch.no_grad():  # their phi = Sequential(Linear(D, h), ReLU, Linear(h, D)); ours stores W^T
            t.w1.copy_(c["phi"]["0.weight"].T[None])
            t.b1.copy_(c["phi"]["0.bias"][None])
            t.w2.copy_(c["phi"]["2.weight"].T[None])
            t.b2.copy_(c["phi"]["2.bias"][None])
        z1 = c["z1"].transpose(0, 1).clone().requires_grad_()  # theirs [batch, heads, dim], ours [heads, batch, dim]
        z2 = c["z2"].transpose(0, 1).clone().requires_grad_()
        loss = amcl_loss(z1, z2, t(z1, z2), beta=c["beta"], negatives="topk", topk=c["topk"])
        loss.backward()
        torch.testing.assert_close(loss, c["loss"], rtol=2e-6, atol=1e-6)
        torch.testing.assert_close(z1.grad.transpose(0, 1), c["grad_z1"], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(z2.grad.transpose(0, 1), c["grad_z2"], rtol=1e-4, atol=1e-6)
        for ours, key in ((t.w1.grad[0].T, "0.weight"), (t.b1.grad[0], "0.bias"), (t.w2.grad[0].T, "2.weight"),
                          (t.b2.grad[0], "2.bias")):
            torch.testing.assert_close(ours, c["grad_phi"][key], rtol=1e-4, atol=1e-6)


def test_amcl_default_beta_is_the_v2_reference_value():
    # beta = 1e-4 (v2.0's SimCLR/MoCo setting; the first release used 0.1)
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    tau = torch.rand(2, 8, 8, generator=g) + 0.1
    assert torch.equal(amcl_loss(z1, z2, tau), amcl_loss(z1, z2, tau, beta=1e-4, negatives="topk", topk=100))
    assert not torch.allclose(amcl_loss(z1, z2, tau), amcl_loss(z1, z2, tau, beta=0.1))


@FAST
@given(scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6),
       negatives=st.sampled_from(["max", "topk", "logsumexp"]), form=st.sampled_from(["dot", "concat"]))
def test_amcl_finite_for_extreme_inputs(scale, dtype, seed, negatives, form):
    torch.manual_seed(seed)
    t = AMCLTemperature(8, num_heads=2, hidden=16, form=form)
    z1 = (torch.randn(2, 6, 8) * scale).to(dtype).requires_grad_()
    z2 = (torch.randn(2, 6, 8) * scale).to(dtype).requires_grad_()
    with torch.no_grad():
        if form == "concat":
            t.b2.fill_(-30.0 if seed % 2 else 30.0)  # temperatures at the range ends: 1e-5 or 2
        else:
            t.b2.fill_(30.0 if seed % 2 else 0.0)  # scores ~ 900 D: temperatures at 1e-5
    loss = amcl_loss(z1, z2, t(z1.float(), z2.float()), negatives=negatives, topk=3, beta=0.1)
    loss.backward()
    assert loss.dtype == dtype and _finite(loss) and _finite(z1.grad) and _finite(z2.grad)
    assert all(_finite(p.grad) for p in t.parameters())


def test_amcl_module_twin():
    z1, z2 = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    tau = torch.rand(2, 8, 8) + 0.1
    assert torch.equal(AMCLLoss(beta=0.5, negatives="logsumexp")(z1, z2, tau),
                       amcl_loss(z1, z2, tau, beta=0.5, negatives="logsumexp"))


@pytest.mark.parametrize("args, kwargs, name", [
    ((torch.randn(2, 4, 3), torch.randn(2, 4, 2), 0.1), {}, "z2"),
    ((torch.randn(4), torch.randn(4), 0.1), {}, "z1"),
    ((torch.randn(2, 1, 3), torch.randn(2, 1, 3), 0.1), {}, "z1"),
    ((torch.randint(0, 3, (4, 3)), torch.randn(4, 3), 0.1), {}, "z1"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.0), {}, "tau"),
    ((torch.randn(4, 3), torch.randn(4, 3), torch.rand(1, 4, 4)), {}, "tau"),
    ((torch.randn(4, 3), torch.randn(4, 3), -torch.rand(1, 8, 8)), {}, "tau"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(beta=-1.0), "beta"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(negatives="mean"), "negatives"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(negatives="topk", topk=0), "topk"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(topk=2.0), "topk"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(omega_dim=0), "omega_dim"),
    ((torch.randn(4, 3), torch.randn(4, 3), 0.1), dict(reduction="avg"), "reduction"),
])
def test_amcl_rejects_bad_inputs(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        amcl_loss(*args, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(dim=0), "dim"), (dict(num_heads=0), "num_heads"), (dict(hidden=0), "hidden"),
    (dict(tau_min=0.0), "tau_min"), (dict(tau_min=3.0), "tau_min"), (dict(form="mlp"), "form"),
    (dict(shared=1), "shared"),
])
def test_amcl_temperature_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AMCLTemperature(**(dict(dim=4) | kwargs))
    with pytest.raises(ValueError, match="z1"):
        AMCLTemperature(4, num_heads=2)(torch.randn(3, 5, 4), torch.randn(3, 5, 4))
