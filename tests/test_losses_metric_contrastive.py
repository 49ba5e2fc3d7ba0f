"""Metric-learning and contrastive objectives: iSogCLR, TCM + OPIS, UNPG, DBPM, SuSana distances, AMCL.

Golden data (tests/data/*_golden.pt) were made by running the authors' code;
tests/data/README.md says which commit and how to regenerate them.
"""
import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DATA = Path(__file__).parent / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)


def _finite(t):
    return bool(torch.isfinite(t).all())


# ----------------------------------------------------------------------------------------------- iSogCLR
from gradwise.losses import ISogCLRLoss  # noqa: E402


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


# ----------------------------------------------------------------------------------------------- TCM + OPIS
from gradwise.losses import TCMLoss, opis, tcm_loss  # noqa: E402


def test_tcm_matches_pytorch_metric_learning_golden():
    for case in torch.load(DATA / "tcm_golden.pt", weights_only=True):
        e = case["embeddings"].clone().requires_grad_()
        loss = tcm_loss(e, case["labels"], **case["kwargs"])
        loss.backward()
        torch.testing.assert_close(loss, case["loss"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e.grad, case["grad"], rtol=1e-10, atol=1e-12)


def _tcm_loop(e, y, mp, mn, lp, ln):
    e = torch.nn.functional.normalize(e, dim=1)
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            s = float(e[i] @ e[j])
            if y[i] == y[j] and s <= mp:
                pos.append(mp - s)
            if y[i] != y[j] and s >= mn:
                neg.append(s - mn)
    return lp * (sum(pos) / len(pos) if pos else 0.0) + ln * (sum(neg) / len(neg) if neg else 0.0)


@FAST
@given(seed=st.integers(0, 10**6), mp=st.floats(-0.5, 1.0), mn=st.floats(-1.0, 0.8))
def test_tcm_equals_pair_loop(seed, mp, mn):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(7, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=g)
    got = tcm_loss(e, y, margin_pos=mp, margin_neg=mn, lambda_pos=0.7, lambda_neg=1.3)
    assert math.isclose(float(got), _tcm_loop(e, y, mp, mn, 0.7, 1.3), rel_tol=1e-10, abs_tol=1e-12)


def test_tcm_is_zero_without_hard_pairs_and_module_twin_matches():
    e = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.02, 1.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    loss = tcm_loss(e, y, margin_pos=0.9, margin_neg=0.5)
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool((e.grad == 0).all())
    x = torch.randn(9, 4)
    z = torch.randint(0, 3, (9,))
    assert torch.equal(TCMLoss(margin_pos=0.8, lambda_neg=2.0)(x, z), tcm_loss(x, z, margin_pos=0.8, lambda_neg=2.0))


@FAST
@given(scale=st.sampled_from([1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6))
def test_tcm_finite_and_permutation_invariant(scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    e = (torch.randn(10, 6, generator=g) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, 3, (10,), generator=g)
    loss = tcm_loss(e, y, margin_neg=0.0)
    loss.backward()
    assert loss.dtype == dtype and _finite(loss) and _finite(e.grad)
    perm = torch.randperm(10, generator=g)
    e64 = e.detach().double()
    torch.testing.assert_close(tcm_loss(e64[perm], y[perm]), tcm_loss(e64, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args, kwargs, name", [
    ((torch.randn(4, 3), torch.arange(3)), {}, "labels"),
    ((torch.randn(4, 3), torch.arange(4.0)), {}, "labels"),
    ((torch.randn(4), torch.arange(4)), {}, "embeddings"),
    ((torch.randn(4, 3), torch.arange(4)), dict(margin_pos=1.5), "margin_pos"),
    ((torch.randn(4, 3), torch.arange(4)), dict(margin_neg=-2.0), "margin_neg"),
    ((torch.randn(4, 3), torch.arange(4)), dict(lambda_pos=-1.0), "lambda_pos"),
])
def test_tcm_rejects_bad_inputs(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        tcm_loss(*args, **kwargs)


def _opis_loop(e, y, lo, hi, k, reference):
    e = torch.nn.functional.normalize(e.double(), dim=1)
    n = len(y)
    pairs = [(i, j, math.sqrt(max(2.0 - 2.0 * float(e[i] @ e[j]), 0.0))) for i in range(n) for j in range(i + 1, n)]
    neg = torch.tensor([d for i, j, d in pairs if y[i] != y[j]], dtype=torch.float64)
    d_lo, d_hi = (float(v) for v in torch.quantile(neg, torch.tensor([lo, hi], dtype=torch.float64)))
    thr = [d_lo + (d_hi - d_lo) * t / (k - 1) for t in range(k)]

    def util(pos_d, neg_d, t):
        tar = sum(d <= t for d in pos_d) / len(pos_d)
        trr = sum(d > t for d in neg_d) / len(neg_d)
        return 0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr)

    us = {}
    for c in sorted(set(y.tolist())):
        pos_d = [d for i, j, d in pairs if y[i] == c and y[j] == c]
        neg_d = [d for i, j, d in pairs if (y[i] == c) != (y[j] == c)]
        if pos_d and neg_d:
            us[c] = [util(pos_d, neg_d, t) for t in thr]
    if reference == "overall":
        all_pos = [d for i, j, d in pairs if y[i] == y[j]]
        ref = [util(all_pos, neg.tolist(), t) for t in thr]
    else:
        ref = [sum(u[m] for u in us.values()) / len(us) for m in range(k)]
    return sum((u[m] - ref[m]) ** 2 for u in us.values() for m in range(k)) / (len(us) * k)


@FAST
@given(seed=st.integers(0, 10**6), reference=st.sampled_from(["overall", "class_mean"]))
def test_opis_equals_brute_force_loop(seed, reference):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(14, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (14,), generator=g)
    if len(set(y.tolist())) < 2 or len(set(y.tolist())) == 14:
        y[:2] = torch.tensor([0, 0]); y[2] = 1
    got = float(opis(e, y, far_range=(0.0537, 0.6131), num_thresholds=7, reference=reference))
    assert math.isclose(got, _opis_loop(e, y, 0.0537, 0.6131, 7, reference), rel_tol=1e-9, abs_tol=1e-14)


def test_opis_zero_for_identical_class_geometry_and_positive_otherwise():
    # 3 classes on the circle, each a pair (a, a + delta); a rotation by 120 degrees maps class c to c + 1,
    # so every class has the same operating curve (negatives at several distances)
    def config(deltas):
        ang = []
        for c, dl in enumerate(deltas):
            ang += [2 * math.pi * c / 3, 2 * math.pi * c / 3 + dl]
        ang = torch.tensor(ang, dtype=torch.float64)
        return torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for ref in ("overall", "class_mean"):
        assert float(opis(config([0.5, 0.5, 0.5]), y, far_range=(0.2, 0.75), num_thresholds=37, reference=ref)) < 1e-25
        # one class spread wider: its true-accept rate lags inside the calibration range
        assert float(opis(config([0.5, 0.5, 1.5]), y, far_range=(0.2, 0.75), num_thresholds=37, reference=ref)) > 1e-3


def test_opis_invariances():
    g = torch.Generator().manual_seed(7)
    e = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (30,), generator=g)
    base = opis(e, y)
    perm = torch.randperm(30, generator=g)
    torch.testing.assert_close(opis(e[perm], y[perm]), base, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opis(3.0 * e, y + 100), base, rtol=1e-12, atol=1e-15)  # scale, relabel


@pytest.mark.parametrize("kwargs, name", [
    (dict(far_range=(0.5, 0.1)), "far_range"), (dict(num_thresholds=1), "num_thresholds"),
    (dict(reference="median"), "reference"),
])
def test_opis_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        opis(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), **kwargs)
    with pytest.raises(ValueError, match="labels"):
        opis(torch.randn(3, 3), torch.tensor([0, 1, 2]))


# ----------------------------------------------------------------------------------------------- UNPG
from gradwise.losses import UNPGLoss, box_and_whisker_mask, unpg_loss  # noqa: E402


def test_unpg_matches_authors_golden():
    filtered = False
    for case in torch.load(DATA / "unpg_golden.pt", weights_only=True):
        e = case["embeddings"].clone().requires_grad_()
        w = case["weight"].clone().requires_grad_()
        loss = unpg_loss(e, case["labels"], w, **case["kwargs"])
        loss.backward()
        torch.testing.assert_close(loss, case["loss"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e.grad, case["grad_embeddings"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(w.grad, case["grad_weight"], rtol=1e-10, atol=1e-12)
        filtered |= case["num_kept"] < case["num_neg"]
    assert filtered  # the golden cases exercise the box-and-whisker filter


@FAST
@given(seed=st.integers(0, 10**6), n=st.integers(1, 40), whisker=st.sampled_from([0.0, 0.5, 1.5]))
def test_box_and_whisker_matches_sorted_reference(seed, n, whisker):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64) ** 3
    valid = torch.rand(n, generator=g) < 0.7
    valid[0] = True
    x = torch.sort(v[valid]).values
    l = x.numel()
    q1, q3 = x[int(0.25 * l)], x[int(0.75 * l)]
    lo, hi = q1 - whisker * (q3 - q1), q3 + whisker * (q3 - q1)
    expect = valid & (v >= lo) & (v <= hi)
    assert torch.equal(box_and_whisker_mask(v, valid, whisker), expect)


@pytest.mark.parametrize("margin_type", ["arcface", "cosface"])
def test_unpg_without_negative_pairs_is_the_margin_softmax(margin_type):
    g = torch.Generator().manual_seed(8)
    e, w = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.full((5,), 2)
    cos = torch.nn.functional.normalize(e, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    tgt = torch.cos(torch.acos(cos[:, 2]) + 0.4) if margin_type == "arcface" else cos[:, 2] - 0.4
    logits = cos.clone()
    logits[:, 2] = tgt
    expect = torch.nn.functional.cross_entropy(10.0 * logits, y)
    torch.testing.assert_close(unpg_loss(e, y, w, margin_type=margin_type, s=10.0, m=0.4), expect)


def test_unpg_adds_kept_pairs_to_every_denominator():
    g = torch.Generator().manual_seed(9)
    e, w = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    x = torch.nn.functional.normalize(e, dim=1)
    cos = x @ torch.nn.functional.normalize(w, dim=1).T
    logits = cos.clone()
    logits[range(6), y] = cos[range(6), y] - 0.3
    pairs = torch.stack([x[a] @ x[b] for a in range(6) for b in range(a + 1, 6) if y[a] != y[b]])
    full = torch.cat([logits, pairs.expand(6, -1)], 1)  # whisker = inf keeps every pair
    expect = torch.nn.functional.cross_entropy(5.0 * full, y, reduction="none")
    got = unpg_loss(e, y, w, margin_type="cosface", s=5.0, m=0.3, whisker=math.inf, reduction="none")
    torch.testing.assert_close(got, expect)


@FAST
@given(scale=st.sampled_from([1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6),
       margin_type=st.sampled_from(["arcface", "cosface"]))
def test_unpg_finite_and_permutation_invariant(scale, dtype, seed, margin_type):
    g = torch.Generator().manual_seed(seed)
    e = (torch.randn(12, 5, generator=g) * scale).to(dtype).requires_grad_()
    w = (torch.randn(4, 5, generator=g) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, 4, (12,), generator=g)
    loss = unpg_loss(e, y, w, margin_type=margin_type)
    loss.backward()
    assert loss.dtype == dtype and _finite(loss) and _finite(e.grad) and _finite(w.grad)
    perm = torch.randperm(12, generator=g)
    e64, w64 = e.detach().double(), w.detach().double()
    torch.testing.assert_close(unpg_loss(e64[perm], y[perm], w64, reduction="none"),
                               unpg_loss(e64, y, w64, reduction="none")[perm], rtol=1e-10, atol=1e-10)


def test_unpg_reductions_ignore_index_and_module():
    g = torch.Generator().manual_seed(10)
    e, w = torch.randn(8, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 1, 2, -100, 0, 1, -100, 2])
    none = unpg_loss(e, y, w, reduction="none")
    keep = y != -100
    assert bool((none[~keep] == 0).all())
    torch.testing.assert_close(unpg_loss(e, y, w, reduction="sum"), none.sum())
    torch.testing.assert_close(unpg_loss(e, y, w), none[keep].mean())
    torch.testing.assert_close(unpg_loss(e[keep], y[keep], w, reduction="none"), none[keep])  # ignored: no pairs
    mod = UNPGLoss(3, 4, s=16.0, m=0.2)
    torch.testing.assert_close(mod(e, y), unpg_loss(e, y, mod.weight, s=16.0, m=0.2))


@pytest.mark.parametrize("args, kwargs, name", [
    ((torch.randn(4, 3), torch.arange(4), torch.randn(3, 2)), {}, "weight"),
    ((torch.randn(4, 3), torch.tensor([0, 1, 2, 5]), torch.randn(3, 3)), {}, "labels"),
    ((torch.randn(4, 3), torch.arange(3), torch.randn(4, 3)), {}, "labels"),
    ((torch.randn(4, 3), torch.arange(4), torch.randn(4, 3)), dict(margin_type="sphereface"), "margin_type"),
    ((torch.randn(4, 3), torch.arange(4), torch.randn(4, 3)), dict(s=0.0), "s"),
    ((torch.randn(4, 3), torch.arange(4), torch.randn(4, 3)), dict(m=-0.1), "m"),
    ((torch.randn(4, 3), torch.arange(4), torch.randn(4, 3)), dict(whisker=-1.0), "whisker"),
    ((torch.randn(4, 3), torch.arange(4), torch.randn(4, 3)), dict(reduction="avg"), "reduction"),
])
def test_unpg_rejects_bad_inputs(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        unpg_loss(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- DBPM
from gradwise.losses import DBPM, dbpm_weights  # noqa: E402


def _dbpm_authors_replay(losses, batches, max_epochs, warm, cut_np, cut_fp):
    """The authors' fit loop (models/dbpm_model.py) on given per-pair losses, with dicts and lists."""
    memory = {k: [] for k in range(max(max(b) for e in batches for b in e) + 1)}
    out = []
    for epoch, epoch_batches in enumerate(batches):
        if epoch >= warm:
            ew = [(1 + i) / max_epochs for i in range(epoch)]
            means = {k: sum(v_ * w_ for v_, w_ in zip(v, ew)) / len(v) for k, v in memory.items()}
            vals = list(means.values())
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / len(vals))
            np_idx = {k for k, v in means.items() if v <= mu - cut_np * sd}
            fp_idx = {k for k, v in means.items() if v >= mu + cut_fp * sd}
        for b, index in enumerate(epoch_batches):
            pos = [float(x) for x in losses[epoch][b]]
            for i, k in enumerate(index):
                memory[k].append(pos[i])
            if epoch >= warm:
                for i, k in enumerate(index):
                    if k in np_idx or k in fp_idx:
                        pos[i] *= math.exp(-0.5 * ((pos[i] - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
            out.append(sum(pos) / len(pos))
    return out


def test_dbpm_matches_the_authors_loop():
    g = torch.Generator().manual_seed(11)
    n, bs, max_epochs, warm = 24, 6, 7, 3
    base = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 1
    base[3], base[17], base[8] = 0.01, 9.0, 8.5  # a noisy (too easy) and two faulty (too hard) pairs
    batches, losses = [], []
    for _ in range(max_epochs):
        perm = torch.randperm(n, generator=g).tolist()
        batches.append([perm[i:i + bs] for i in range(0, n, bs)])
        losses.append([base[perm[i:i + bs]] + 0.05 * torch.rand(bs, generator=g, dtype=torch.float64)
                       for i in range(0, n, bs)])
    expect = _dbpm_authors_replay(losses, batches, max_epochs, warm, cut_np=1.0, cut_fp=1.5)
    dbpm = DBPM(n, max_epochs, warm_epochs=warm, cut_np=1.0, cut_fp=1.5)
    got, flagged = [], 0
    for epoch in range(max_epochs):
        for index, l in zip(batches[epoch], losses[epoch]):
            got.append(float(dbpm(l, torch.tensor(index), epoch)))
            flagged += int((dbpm.weights(l, torch.tensor(index)) != 1).sum()) if epoch >= warm else 0
    assert flagged > 0
    for a, b in zip(got, expect):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def test_dbpm_weights_rules():
    all_means = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 30.0], dtype=torch.float64)
    mu, sd = float(all_means.mean()), float(all_means.std(correction=0))
    loss = torch.tensor([0.5, 2.0, 30.0, 3.0], dtype=torch.float64)
    sample_mean = torch.tensor([mu - 0.2 * sd, mu, 30.0, mu + 0.5 * sd], dtype=torch.float64)
    w = dbpm_weights(loss, sample_mean, all_means, cut_np=0.2, cut_fp=0.5)  # boundaries are inclusive
    pdf = torch.exp(-0.5 * ((loss - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    torch.testing.assert_close(w, torch.stack([pdf[0], torch.tensor(1.0, dtype=torch.float64), pdf[2], pdf[3]]))
    # no outliers possible when every mean is equal; no history (NaN) means weight 1
    flat = dbpm_weights(loss, torch.full((4,), 2.0, dtype=torch.float64), torch.full((6,), 2.0, dtype=torch.float64))
    assert bool((flat == 1).all())
    nan = dbpm_weights(loss, torch.full((4,), math.nan, dtype=torch.float64), all_means, cut_np=0.0, cut_fp=0.0)
    assert bool((nan == 1).all())


def test_dbpm_weights_are_constants_and_warmup_is_plain_mean():
    dbpm = DBPM(4, 3, warm_epochs=1, cut_np=0.0, cut_fp=0.0, reduction="none")
    l0 = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    out0 = dbpm(l0, torch.arange(4), 0)
    assert torch.equal(out0, l0)  # warm-up: weight 1
    l1 = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    out1 = dbpm(l1, torch.arange(4), 1)
    out1.sum().backward()
    w = dbpm.weights(l1.detach(), torch.arange(4))
    torch.testing.assert_close(l1.grad, w)  # d(w * l)/dl = w: no gradient through the density
    assert bool((w != 1).all())  # cut 0: every pair is on one side of mu


def test_dbpm_state_dict_round_trip():
    g = torch.Generator().manual_seed(12)
    a = DBPM(10, 5, warm_epochs=2)
    steps = [(torch.rand(5, generator=g), torch.randperm(10, generator=g)[:5], e) for e in range(5) for _ in range(2)]
    for l, i, e in steps[:5]:
        a(l, i, e)
    b = DBPM(10, 5, warm_epochs=2)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for l, i, e in steps[5:]:
        assert torch.equal(a(l, i, e), b(l, i, e))


def test_dbpm_loading_an_older_state_recomputes_its_statistics():
    g = torch.Generator().manual_seed(13)
    steps = [(torch.rand(5, generator=g), torch.randperm(10, generator=g)[:5], e) for e in range(5) for _ in range(2)]
    older, newer = DBPM(10, 5, warm_epochs=2), DBPM(10, 5, warm_epochs=2)
    for l, i, e in steps[:4]:      # epochs 0, 1
        older(l, i, e)
    for l, i, e in steps[:8]:      # epochs 0 .. 3: holds the statistics of epoch 3
        newer(l, i, e)
    newer.load_state_dict(copy.deepcopy(older.state_dict()))
    fresh = DBPM(10, 5, warm_epochs=2)
    fresh.load_state_dict(copy.deepcopy(older.state_dict()))
    l, i, _ = steps[8]
    l = l * 10                      # outliers, so the statistics in use show in the weights
    assert torch.equal(newer(l, i, 3), fresh(l, i, 3))
    assert int(newer.stats_epoch) == 3


def test_dbpm_reads_no_tensor_values_with_validate_false(monkeypatch):
    d = DBPM(10, 4, warm_epochs=1, validate=False)
    g = torch.Generator().manual_seed(14)
    d(torch.rand(5, generator=g), torch.arange(5), 0)
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name: reads.append(_n) or _o(self, *a))
    for _ in range(2):              # the first call of epoch 1 computes the statistics, the second reuses them
        d(torch.rand(5, generator=g), torch.arange(5, 10), 1)
    assert reads == []
    monkeypatch.undo()
    assert int(d.stats_epoch) == 1 and torch.isfinite(d.sd)


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=0), "num_samples"), (dict(max_epochs=0), "max_epochs"), (dict(warm_epochs=0), "warm_epochs"),
    (dict(cut_np=-1.0), "cut_np"), (dict(cut_fp=math.inf), "cut_fp"), (dict(reduction="avg"), "reduction"),
])
def test_dbpm_rejects_bad_arguments(kwargs, name):
    kw = dict(num_samples=10, max_epochs=5, warm_epochs=2) | kwargs
    with pytest.raises(ValueError, match=name):
        DBPM(kw.pop("num_samples"), kw.pop("max_epochs"), **kw)
    d = DBPM(10, 5, warm_epochs=2)
    with pytest.raises(ValueError, match="index"):
        d(torch.rand(3), torch.tensor([0, 1, 10]), 0)
    with pytest.raises(ValueError, match="epoch"):
        d(torch.rand(3), torch.tensor([0, 1, 2]), 5)
    with pytest.raises(ValueError, match="pair_loss"):
        d(torch.rand(3, 1), torch.tensor([0, 1, 2]), 0)
    with pytest.raises(ValueError, match="sample_mean"):
        dbpm_weights(torch.rand(3), torch.rand(2), torch.rand(5))
