"""UNPG: golden values from the authors' code, the box-and-whisker mask, reductions, validation."""
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.losses import UNPGLoss, box_and_whisker_mask, unpg_loss
from loss_inputs import finite as _finite


DATA = Path(__file__).parents[1] / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- UNPG


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
