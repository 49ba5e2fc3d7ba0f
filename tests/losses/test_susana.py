"""SuSana losses (Proto-Triplet, ICNN): golden values from the authors' code, loops, invariances."""
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.losses import ICNNLoss, ProtoTripletLoss, icnn_loss, proto_triplet_loss
from loss_inputs import finite as _finite


DATA = Path(__file__).parents[1] / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)
F64 = torch.float64


def _d(a, b):
    return math.sqrt(float(((a - b) ** 2).sum()) + 1e-6)


def _episode(g, way, shot, query, dim, spread=1.0, sep=1.5, dtype=F64):
    centers = torch.randn(way, dim, generator=g, dtype=dtype) * sep
    ids = torch.randperm(50, generator=g)[:way]  # arbitrary class ids
    s = centers.repeat_interleave(shot, 0) + spread * torch.randn(way * shot, dim, generator=g, dtype=dtype)
    q = centers.repeat_interleave(query, 0) + spread * torch.randn(way * query, dim, generator=g, dtype=dtype)
    ys, yq = ids.repeat_interleave(shot), ids.repeat_interleave(query)
    ps, pq = torch.randperm(len(ys), generator=g), torch.randperm(len(yq), generator=g)
    return s[ps], ys[ps], q[pq], yq[pq]


# ----------------------------------------------------------------------------------------------- Proto-Triplet
def test_proto_triplet_matches_authors_golden():
    cases = torch.load(DATA / "susana_golden.pt", weights_only=True)["proto_triplet"]
    assert any(float(c["loss"]) > 0 for c in cases) and any(float(c["loss"]) == 0 for c in cases)
    for c in cases:
        s, q = c["support"].clone().requires_grad_(), c["queries"].clone().requires_grad_()
        loss = proto_triplet_loss(s, c["support_labels"], q, c["query_labels"], margin=c["margin"])
        loss.backward()
        torch.testing.assert_close(loss, c["loss"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s.grad, c["grad_support"], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(q.grad, c["grad_queries"], rtol=1e-10, atol=1e-14)


def _proto_triplet_loop(s, ys, q, yq, margin):
    protos = {int(c): s[ys == c].mean(0) for c in set(ys.tolist())}
    out = []
    for x, y in zip(q, yq.tolist()):
        d_pos = _d(x, protos[y])
        d_neg = min(_d(x, p) for c, p in protos.items() if c != y)
        out.append(max(0.0, d_pos - d_neg + margin))
    return out


@FAST
@given(seed=st.integers(0, 10**6), way=st.integers(2, 5), shot=st.integers(1, 4), query=st.integers(1, 3),
       margin=st.floats(0.0, 3.0))
def test_proto_triplet_equals_loop_and_is_permutation_invariant(seed, way, shot, query, margin):
    g = torch.Generator().manual_seed(seed)
    s, ys, q, yq = _episode(g, way, shot, query, 4)
    none = proto_triplet_loss(s, ys, q, yq, margin=margin, reduction="none")
    expect = torch.tensor(_proto_triplet_loop(s, ys, q, yq, margin), dtype=F64)
    torch.testing.assert_close(none, expect, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(proto_triplet_loss(s, ys, q, yq, margin=margin), none.mean())
    torch.testing.assert_close(proto_triplet_loss(s, ys, q, yq, margin=margin, reduction="sum"), none.sum())
    ps, pq = torch.randperm(len(ys), generator=g), torch.randperm(len(yq), generator=g)
    torch.testing.assert_close(proto_triplet_loss(s[ps], ys[ps], q[pq], yq[pq], margin=margin, reduction="none"),
                               none[pq], rtol=1e-12, atol=1e-12)


def test_proto_triplet_hinge_vanishes_once_classes_separate_by_the_margin():
    g = torch.Generator().manual_seed(3)
    centers = torch.randn(4, 6, generator=g, dtype=F64)
    noise_s, noise_q = torch.randn(8, 6, generator=g, dtype=F64), torch.randn(12, 6, generator=g, dtype=F64)
    ys, yq = torch.arange(4).repeat_interleave(2), torch.arange(4).repeat_interleave(3)
    losses = []
    for sep in (0.0, 0.3, 0.6, 30.0):
        s = sep * centers.repeat_interleave(2, 0) + 0.3 * noise_s
        q = (sep * centers.repeat_interleave(3, 0) + 0.3 * noise_q).requires_grad_()
        loss = proto_triplet_loss(s, ys, q, yq, margin=0.5)
        loss.backward()
        losses.append(float(loss.detach()))
    assert losses[0] > losses[1] > losses[2] and losses[3] == 0.0 and bool((q.grad == 0).all())
    # one query on top of its prototype with the other prototype at distance 0.2: hinge = 0.5 - 0.2 (+ eps terms)
    s = torch.tensor([[0.0, 0.0], [0.2, 0.0]], dtype=F64)
    got = proto_triplet_loss(s, torch.tensor([0, 1]), s[:1], torch.tensor([0]))
    assert math.isclose(float(got), math.sqrt(1e-6) - math.sqrt(0.04 + 1e-6) + 0.5, rel_tol=1e-12)


@FAST
@given(scale=st.sampled_from([1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6))
def test_proto_triplet_finite_for_extreme_inputs(scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    s, ys, q, yq = _episode(g, 5, 2, 3, 16, dtype=torch.float32)
    s, q = (s * scale).to(dtype).requires_grad_(), (q * scale).to(dtype).requires_grad_()
    loss = proto_triplet_loss(s, ys, q, yq)
    loss.backward()
    assert loss.dtype == dtype and _finite(loss) and _finite(s.grad) and _finite(q.grad)


def test_proto_triplet_module_twin():
    g = torch.Generator().manual_seed(4)
    s, ys, q, yq = _episode(g, 3, 2, 2, 5)
    assert torch.equal(ProtoTripletLoss(margin=1.0, reduction="sum")(s, ys, q, yq),
                       proto_triplet_loss(s, ys, q, yq, margin=1.0, reduction="sum"))


@pytest.mark.parametrize("args, kwargs, name", [
    ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3), torch.tensor([0, 2])), {}, "query_labels"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 0, 0]), torch.randn(2, 3), torch.tensor([0, 0])), {}, "support_labels"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 1]), torch.randn(2, 3), torch.tensor([0, 1])), {}, "support_labels"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 4), torch.tensor([0, 1])), {}, "queries"),
    ((torch.randn(4), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3), torch.tensor([0, 1])), {}, "support"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1.0]), torch.randn(2, 3), torch.tensor([0, 1])), {},
     "support_labels"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3), torch.tensor([0, 1])), dict(margin=-1.0),
     "margin"),
    ((torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3), torch.tensor([0, 1])),
     dict(reduction="avg"), "reduction"),
])
def test_proto_triplet_rejects_bad_inputs(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        proto_triplet_loss(*args, **kwargs)


# ----------------------------------------------------------------------------------------------- ICNN
def test_icnn_matches_authors_golden():
    cases = torch.load(DATA / "susana_golden.pt", weights_only=True)["icnn"]
    for c in cases:
        x = c["embeddings"].clone().requires_grad_()
        loss = icnn_loss(x, c["labels"], k=c["k"], neighbors=c["neighbors"])
        loss.backward()
        torch.testing.assert_close(loss, c["loss"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(x.grad, c["grad"], rtol=1e-10, atol=1e-14)
    assert any(float(c["loss"]) == 0 for c in cases) and any(float(c["loss"]) > 0.3 for c in cases)


def _icnn_loop(x, y, k, neighbors):
    """Brute force, row by row, from the docstring's definition."""
    n, eps = len(y), 1e-7
    k = n - 2 if k + 2 >= n else k
    p = k + 1 if neighbors is None else neighbors
    rows = []
    for i in range(n):
        cand = sorted((_d(x[i], x[j]), j) for j in range(n) if j != i)[:p]
        dists = [d for d, _ in cand]
        same = [bool(y[j] == y[i]) for _, j in cand]
        diffs = [d for d, s in zip(dists, same) if not s]
        u = min(diffs) if diffs else None
        r = [d / (u + eps) if u is not None else 0.0 for d in dists[:k]]
        top = max(1.0, max(r))
        rows.append(([v / top for v in r], dists[:k], same[:k]))
    intra = [sum(v for v, s in zip(r, sm) if s) / (sum(sm) + eps) for r, _, sm in rows]
    n_with_same = sum(1 for _, _, sm in rows if any(sm))
    lam_s = 1 - sum(intra) / (n_with_same + eps)
    all_diff = [d for _, ds, sm in rows for d, s in zip(ds, sm) if not s]
    if all_diff:
        top = max(all_diff) + eps
        inter = [sum(d / top for d, s in zip(ds, sm) if not s) / (sum(not s for s in sm) + eps) for _, ds, sm in rows]
        lam_d = sum(inter) / (sum(1 for _, _, sm in rows if not all(sm)) + eps)
    else:
        lam_d = 1.0
    gamma = sum(sum(sm) / k for _, _, sm in rows) / n if k + 2 < n else 1.0
    return -math.log(((lam_s + lam_d) / 2 + gamma) / 2)


@FAST
@given(seed=st.integers(0, 10**6), n=st.integers(3, 14), classes=st.integers(1, 4), k=st.integers(1, 6),
       extra=st.integers(0, 4), use_default=st.booleans())
def test_icnn_equals_loop(seed, n, classes, k, extra, use_default):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=F64)
    y = torch.randint(0, classes, (n,), generator=g) * 7 + 3  # arbitrary ids
    k_eff = n - 2 if k + 2 >= n else k
    neighbors = None if use_default else min(k_eff + extra, n - 1)
    got = float(icnn_loss(x, y, k=k, neighbors=neighbors))
    assert math.isclose(got, _icnn_loop(x, y, k, neighbors), rel_tol=1e-10, abs_tol=1e-12)


def test_icnn_zero_for_coincident_classes_and_decreasing_with_separation():
    g = torch.Generator().manual_seed(5)
    centers = torch.randn(4, 5, generator=g, dtype=F64)
    y = torch.arange(4).repeat_interleave(4)
    # every class collapsed onto one point: its neighbours are its own class, the score is 1
    x = centers.repeat_interleave(4, 0).requires_grad_()
    loss = icnn_loss(x, y, k=3, neighbors=3)
    loss.backward()
    assert float(loss.detach()) == 0.0 and bool((x.grad == 0).all())
    # with a 4th neighbour (another class, at u_i) in view, the intra term sees the ratio sqrt(1e-6) / u_i
    u = torch.cdist(centers, centers).masked_fill(torch.eye(4, dtype=torch.bool), math.inf).amin(1)
    r = (1e-3 / (u + 1e-7)).repeat_interleave(4)
    lam_s = 1 - float((3 * r / (3 + 1e-7)).sum()) / (16 + 1e-7)
    expect = -math.log(((lam_s + 1.0) / 2 + 1.0) / 2)
    assert math.isclose(float(icnn_loss(x.detach(), y, k=3)), expect, rel_tol=1e-6) and 0 < expect < 1e-3
    noise = torch.randn(16, 5, generator=g, dtype=F64)
    losses = [float(icnn_loss(sep * centers.repeat_interleave(4, 0) + noise, y, k=3)) for sep in (0.0, 1.0, 3.0, 10.0)]
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[0] > 0.2


@FAST
@given(seed=st.integers(0, 10**6))
def test_icnn_invariances(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=g, dtype=F64)
    y = torch.randint(0, 3, (12,), generator=g)
    base = icnn_loss(x, y, k=3, neighbors=5)
    perm = torch.randperm(12, generator=g)
    torch.testing.assert_close(icnn_loss(x[perm], y[perm], k=3, neighbors=5), base, rtol=1e-12, atol=1e-14)
    shift = torch.randn(4, generator=g, dtype=F64)
    torch.testing.assert_close(icnn_loss(x + shift, y * 5 + 100, k=3, neighbors=5), base, rtol=1e-9, atol=1e-12)


@FAST
@given(scale=st.sampled_from([1e-6, 1.0, 1e4]), dtype=st.sampled_from(LOW_PRECISION), seed=st.integers(0, 10**6))
def test_icnn_finite_for_extreme_inputs(scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(20, 16, generator=g) * scale).to(dtype).requires_grad_()
    y = torch.randint(0, 5, (20,), generator=g)
    loss = icnn_loss(x, y, k=4, neighbors=6)
    loss.backward()
    assert loss.dtype == dtype and _finite(loss) and _finite(x.grad) and float(loss.detach()) >= 0


def test_icnn_module_twin():
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    assert torch.equal(ICNNLoss(k=2, neighbors=4)(x, y), icnn_loss(x, y, k=2, neighbors=4))


@pytest.mark.parametrize("args, kwargs, name", [
    ((torch.randn(2, 3), torch.tensor([0, 1])), {}, "embeddings"),
    ((torch.randn(6, 3), torch.arange(5)), {}, "labels"),
    ((torch.randn(6, 3), torch.arange(6.0)), {}, "labels"),
    ((torch.randn(6, 3), torch.arange(6)), dict(k=0), "k"),
    ((torch.randn(6, 3), torch.arange(6)), dict(k=2, neighbors=6), "neighbors"),
    ((torch.randn(6, 3), torch.arange(6)), dict(k=3, neighbors=2), "neighbors"),
])
def test_icnn_rejects_bad_inputs(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        icnn_loss(*args, **kwargs)
