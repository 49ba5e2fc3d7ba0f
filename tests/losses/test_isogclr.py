"""iSogCLR: golden values from LibAUC, gradients, moving averages, state round trip, validation."""
import copy
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.losses import ISogCLRLoss
from loss_inputs import finite as _finite


DATA = Path(__file__).parents[1] / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- iSogCLR


def _isogclr_from_libauc_kwargs(n, kw, **extra):
    return ISogCLRLoss(n, tau_init=kw["tau"], gamma=kw["gamma"], tau_min=kw["tau_min"], tau_max=kw["tau_max"],
                       rho=kw["rho"], eta=kw["eta"], beta=kw["beta"], dtype=torch.float64, **extra)


def test_isogclr_matches_libauc_golden():
    golden = torch.load(DATA / "isogclr_golden.pt", weights_only=True)
    clamped = False
    for case in golden:
        m = _isogclr_from_libauc_kwargs(case["N"], case["kwargs"])
        for s in case["steps"]:
            z1 = s["z1"].clone().requires_grad_()
            z2 = s["z2"].clone().requires_grad_()
            loss = m(z1, z2, s["index"])
            loss.backward()
            torch.testing.assert_close(loss, s["loss"], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(z1.grad, s["grad_z1"], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(z2.grad, s["grad_z2"], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(m.u, s["u"], rtol=1e-10, atol=0.0)
            torch.testing.assert_close(m.tau, s["tau"], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(m.grad_tau, s["grad_tau"], rtol=1e-9, atol=1e-12)
        clamped |= bool((m.tau == m.tau_min).any() or (m.tau == m.tau_max).any())
    assert clamped  # the golden cases exercise the projection onto [tau_min, tau_max]


def _rgcl_objective_loop(z1, z2, tau):
    """Brute force: sum over the two views of tau_i log mean_{z in S_i^-} exp(h_i(z)/tau_i), batch mean."""
    a = torch.nn.functional.normalize(z1, dim=1)
    b = torch.nn.functional.normalize(z2, dim=1)
    B = a.shape[0]
    total = 0.0
    for i in range(B):
        for anchor, other, same in ((a[i], b, a), (b[i], a, b)):
            pos = anchor @ other[i]
            terms = [torch.exp((anchor @ other[j] - pos) / tau[i]) for j in range(B) if j != i]
            terms += [torch.exp((anchor @ same[j] - pos) / tau[i]) for j in range(B) if j != i]
            total = total + tau[i] * torch.log(sum(terms) / len(terms))
    return total / B


def test_isogclr_gradient_is_the_rgcl_gradient_on_first_visit():
    # first visit: u = the batch estimate, so the surrogate's gradient is exactly grad of tau_i log mean exp(h/tau_i)
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    m = ISogCLRLoss(10, tau_init=0.3, dtype=torch.float64)
    m(z1, z2, torch.arange(5)).backward()
    y1 = z1.detach().clone().requires_grad_()
    y2 = z2.detach().clone().requires_grad_()
    _rgcl_objective_loop(y1, y2, torch.full((5,), 0.3, dtype=torch.float64)).backward()
    torch.testing.assert_close(z1.grad, y1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z2.grad, y2.grad, rtol=1e-10, atol=1e-12)


def test_isogclr_tau_gradient_is_d_dtau_of_the_objective():
    # with u = the batch estimate, g_i = d/dtau_i [tau_i log mean exp(l/tau_i) + tau_i rho] (mean over the views)
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    rho = 0.7
    m = ISogCLRLoss(4, tau_init=0.25, rho=rho, beta=1.0, eta=0.0, dtype=torch.float64)
    m(z1, z2, torch.arange(4))
    tau = torch.full((4,), 0.25, dtype=torch.float64, requires_grad=True)
    a, b = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    obj = 0.0
    for i in range(4):
        for anchor, other, same in ((a[i], b, a), (b[i], a, b)):
            l = torch.stack([anchor @ other[j] for j in range(4) if j != i] + [anchor @ same[j] for j in range(4)
                                                                                if j != i])
            obj = obj + 0.5 * (tau[i] * torch.log(torch.exp(l / tau[i]).mean()) + tau[i] * rho)
    obj.backward()
    torch.testing.assert_close(m.grad_tau, tau.grad, rtol=1e-10, atol=1e-12)
    assert bool((m.tau == 0.25).all())  # eta = 0 leaves tau


def test_isogclr_moving_average_and_tau_step_rules():
    g = torch.Generator().manual_seed(3)
    m = ISogCLRLoss(6, tau_init=0.2, gamma=0.25, beta=0.5, eta=0.1, dtype=torch.float64)
    idx = torch.tensor([4, 1, 3])
    z = [torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    m(z[0], z[1], idx)
    u0, m0, t0 = m.u[idx].clone(), m.grad_tau[idx].clone(), m.tau[idx].clone()
    fresh = ISogCLRLoss(6, tau_init=0.2, gamma=0.25, beta=0.5, eta=0.1, dtype=torch.float64)
    fresh.tau[idx] = t0
    fresh(z[2], z[3], idx)  # first visit: u = the batch estimate at the same temperatures
    m(z[2], z[3], idx)
    torch.testing.assert_close(m.u[idx], 0.75 * u0 + 0.25 * fresh.u[idx], rtol=1e-12, atol=0)
    torch.testing.assert_close(m.tau[idx], (t0 - 0.1 * m.grad_tau[idx]).clamp(0.05, 0.7), rtol=1e-12, atol=0)
    untouched = torch.tensor([0, 2, 5])
    assert bool(torch.isinf(m.log_u[untouched]).all()) and bool((m.tau[untouched] == 0.2).all())
    assert not torch.equal(m0, m.grad_tau[idx])


def test_isogclr_learn_tau_false_is_sogclr_with_constant_tau():
    g = torch.Generator().manual_seed(4)
    m = ISogCLRLoss(8, tau_init=0.15, learn_tau=False)
    for _ in range(3):
        m(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randperm(8, generator=g)[:4])
    assert bool((m.tau == 0.15).all()) and bool((m.grad_tau == 0).all())


def test_isogclr_state_dict_round_trip_continues_bit_identically():
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.randperm(10, generator=g)[:4])
               for _ in range(6)]
    a = ISogCLRLoss(10)
    for z1, z2, i in batches[:3]:
        a(z1, z2, i)
    b = ISogCLRLoss(10)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for z1, z2, i in batches[3:]:
        assert torch.equal(a(z1, z2, i), b(z1, z2, i))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@FAST
@given(scale=st.sampled_from([1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6),
       tau_min=st.sampled_from([0.005, 0.05]))
def test_isogclr_finite_for_extreme_inputs(scale, dtype, seed, tau_min):
    g = torch.Generator().manual_seed(seed)
    z1 = (torch.randn(6, 8, generator=g) * scale).to(dtype).requires_grad_()
    z2 = (torch.randn(6, 8, generator=g) * scale).to(dtype).requires_grad_()
    m = ISogCLRLoss(12, tau_init=tau_min, tau_min=tau_min, eta=1.0)
    for _ in range(2):
        loss = m(z1, z2, torch.randperm(12, generator=g)[:6])
        loss.backward()
        assert loss.dtype == dtype and _finite(loss) and _finite(z1.grad) and _finite(z2.grad)
        assert _finite(m.tau) and _finite(m.grad_tau) and _finite(m.log_u[m.seen])


@FAST
@given(seed=st.integers(0, 10**6))
def test_isogclr_invariant_to_batch_order(seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    idx = torch.randperm(9, generator=g)[:5]
    perm = torch.randperm(5, generator=g)
    a = ISogCLRLoss(9, reduction="none", dtype=torch.float64)
    b = ISogCLRLoss(9, reduction="none", dtype=torch.float64)
    for _ in range(2):
        la, lb = a(z1, z2, idx), b(z1[perm], z2[perm], idx[perm])
        torch.testing.assert_close(la[perm], lb, rtol=1e-12, atol=1e-12)
    for k in ("tau", "log_u", "grad_tau"):
        torch.testing.assert_close(getattr(a, k), getattr(b, k), rtol=1e-12, atol=1e-12)


def test_isogclr_reductions():
    g = torch.Generator().manual_seed(6)
    z1, z2, i = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g), torch.arange(4)
    none = ISogCLRLoss(4, reduction="none")(z1, z2, i)
    assert none.shape == (4,)
    torch.testing.assert_close(ISogCLRLoss(4, reduction="sum")(z1, z2, i), none.sum())
    torch.testing.assert_close(ISogCLRLoss(4)(z1, z2, i), none.mean())


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=0), "num_samples"), (dict(tau_min=0.0), "tau_min"), (dict(tau_init=0.9), "tau_init"),
    (dict(rho=-1.0), "rho"), (dict(eta=-0.1), "eta"), (dict(beta=1.5), "beta"), (dict(gamma=0.0), "gamma"),
    (dict(grad_clip=0.0), "grad_clip"), (dict(reduction="avg"), "reduction"), (dict(dtype=torch.int64), "dtype"),
])
def test_isogclr_rejects_bad_hyperparameters(kwargs, name):
    kw = dict(num_samples=10) | kwargs
    n = kw.pop("num_samples")
    with pytest.raises(ValueError, match=name):
        ISogCLRLoss(n, **kw)


@pytest.mark.parametrize("args, name", [
    ((torch.randn(4, 3), torch.randn(4, 2), torch.arange(4)), "z2"),
    ((torch.randn(4), torch.randn(4), torch.arange(4)), "z1"),
    ((torch.randn(1, 3), torch.randn(1, 3), torch.arange(1)), "z1"),
    ((torch.randn(4, 3), torch.randn(4, 3), torch.arange(3)), "index"),
    ((torch.randn(4, 3), torch.randn(4, 3), torch.arange(4.0)), "index"),
    ((torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 10])), "index"),
    ((torch.randint(0, 3, (4, 3)), torch.randn(4, 3), torch.arange(4)), "z1"),
])
def test_isogclr_rejects_bad_inputs(args, name):
    with pytest.raises(ValueError, match=name):
        ISogCLRLoss(10)(*args)
