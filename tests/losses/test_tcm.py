"""TCM regularizer: golden values from pytorch-metric-learning, the pair loop, invariances, validation."""
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.losses import TCMLoss, tcm_loss
from loss_inputs import finite as _finite


DATA = Path(__file__).parents[1] / "data"
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOW_PRECISION = (torch.float32, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- TCM + OPIS


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
