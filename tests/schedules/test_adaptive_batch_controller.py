"""AdAdaGrad's batch-size controller, growing batch sampler and micro-batch split."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradwise.schedules import (AdaptiveBatchSize, GrowingBatchSampler, accumulation_chunks,
                                inner_product_test, norm_test, orthogonality_test, per_sample_grads)


def _noisy_grads(batch, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.ones(4, 3, dtype=torch.float64)
    return [mean + scale * torch.randn(batch, 4, 3, generator=g, dtype=torch.float64),
            0.5 + scale * torch.randn(batch, 5, generator=g, dtype=torch.float64)]


def test_matches_norm_test_by_hand_and_grows_monotonically_to_the_cap():
    ctrl = AdaptiveBatchSize("norm", 0.1, initial=8, max_batch_size=500)
    sizes = [ctrl.batch_size]
    for k, scale in enumerate([3.0, 0.01, 2.0, 5.0, 50.0]):
        if not ctrl.due:
            break
        grads = _noisy_grads(ctrl.batch_size, scale, seed=k)
        expected = min(500, max(ctrl.batch_size, math.ceil(norm_test(grads, 0.1))))
        assert ctrl.update(grads) == expected == ctrl.batch_size
        assert ctrl.last_suggestion == norm_test(grads, 0.1)
        sizes.append(ctrl.batch_size)
    assert sizes == sorted(sizes) and sizes[-1] == 500 and sizes[1] > 8
    # once capped, the test is no longer due and no gradients are needed
    assert not ctrl.due and ctrl.update() == 500


@pytest.mark.parametrize("test,threshold,fns", [
    ("inner_product", 0.1, [(inner_product_test, 0.1)]),
    ("orthogonality", 0.2, [(orthogonality_test, 0.2)]),
    ("augmented", (0.1, 0.2), [(inner_product_test, 0.1), (orthogonality_test, 0.2)]),
])
def test_other_tests(test, threshold, fns):
    ctrl = AdaptiveBatchSize(test, threshold, initial=4, max_batch_size=10 ** 6)
    grads = _noisy_grads(4, 1.0)
    assert ctrl.update(grads) == max(4, math.ceil(max(f(grads, p) for f, p in fns)))


def test_interval_and_model_path():
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    ctrl = AdaptiveBatchSize("norm", 0.05, initial=6, max_batch_size=10 ** 6, test_interval=3)
    grads = per_sample_grads(model, nn.functional.cross_entropy, x, y)
    assert ctrl.due
    b = ctrl.update(model=model, loss_fn=nn.functional.cross_entropy, inputs=x, targets=y)
    assert b == max(6, math.ceil(norm_test(grads, 0.05)))
    assert not ctrl.due and ctrl.update() == b and not ctrl.due and ctrl.update() == b
    assert ctrl.due  # iteration 3
    with pytest.raises(ValueError, match="the test is due"):
        ctrl.update()


def test_a_one_sample_batch_skips_the_due_test_and_counts_the_iteration():
    """The remainder of an epoch can be one sample: no variance, so no test (the size is kept), by both paths."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x, y = torch.randn(1, 3, dtype=torch.float64), torch.randint(0, 2, (1,))
    ctrl = AdaptiveBatchSize("norm", 0.05, initial=4, max_batch_size=100)
    assert ctrl.update(model=model, loss_fn=nn.functional.cross_entropy, inputs=x, targets=y) == 4
    assert ctrl.steps == 1 and ctrl.last_suggestion is None
    assert ctrl.update(_noisy_grads(1, 1.0)) == 4 and ctrl.steps == 2
    # the next two-sample batch is tested again
    assert ctrl.update(_noisy_grads(2, 1.0)) == min(100, max(4, math.ceil(norm_test(_noisy_grads(2, 1.0), 0.05))))
    assert ctrl.last_suggestion is not None


def test_state_dict_round_trip():
    ctrl = AdaptiveBatchSize("norm", 0.1, initial=8, max_batch_size=1000, test_interval=2)
    ctrl.update(_noisy_grads(8, 2.0))
    ctrl.update()
    other = AdaptiveBatchSize("norm", 0.1, initial=8, max_batch_size=1000, test_interval=2)
    other.load_state_dict(ctrl.state_dict())
    assert other.state_dict() == ctrl.state_dict() and other.batch_size > 8
    grads = _noisy_grads(ctrl.batch_size, 3.0, seed=5)
    assert other.update(grads) == ctrl.update(grads)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict({**ctrl.state_dict(), "batch_size": 5000})
    with pytest.raises(ValueError, match="Invalid state"):
        other.load_state_dict({"batch_size": 8})


class _Fixed:
    def __init__(self, sizes):
        self.sizes, self.batch_size = list(sizes), sizes[0]


def test_sampler_covers_every_index_with_sizes_following_the_controller():
    ctrl = _Fixed([3, 5, 7, 100])
    sampler = GrowingBatchSampler(20, ctrl, generator=torch.Generator().manual_seed(0))
    seen, sizes = [], []
    for k, batch in enumerate(sampler):
        seen += batch
        sizes.append(len(batch))
        ctrl.batch_size = ctrl.sizes[min(k + 1, 3)]
    assert sorted(seen) == list(range(20)) and sizes == [3, 5, 7, 5]
    # a new shuffle each epoch
    ctrl.batch_size = 20
    assert sorted(next(iter(sampler))) == list(range(20)) and next(iter(sampler)) != next(iter(sampler))
    ctrl.batch_size = 6
    assert len(sampler) == 4
    dropped = GrowingBatchSampler(20, ctrl, generator=torch.Generator().manual_seed(1), drop_last=True)
    assert [len(b) for b in dropped] == [6, 6, 6] and len(dropped) == 3


def test_sampler_in_a_dataloader_with_the_controller():
    ds = TensorDataset(torch.arange(50))
    ctrl = AdaptiveBatchSize("norm", 0.1, initial=4, max_batch_size=16)
    loader = DataLoader(ds, batch_sampler=GrowingBatchSampler(50, ctrl, generator=torch.Generator().manual_seed(0)))
    seen, sizes = [], []
    for (xb,) in loader:
        seen += xb.tolist()
        sizes.append(len(xb))
        if ctrl.due:
            ctrl.update(_noisy_grads(len(xb), 3.0, seed=len(sizes)))
        else:
            ctrl.update()
    assert sorted(seen) == list(range(50))
    assert sizes[0] == 4 and sizes == sorted(sizes[:-1]) + sizes[-1:] and 16 in sizes


@pytest.mark.parametrize("batch,cap", [(1, 1), (10, 3), (12, 4), (7, 100), (1000, 7)])
def test_accumulation_chunks(batch, cap):
    chunks = accumulation_chunks(batch, cap)
    assert sum(chunks) == batch and all(1 <= c <= cap for c in chunks)
    assert len(chunks) == math.ceil(batch / cap) and max(chunks) - min(chunks) <= 1


def test_accumulated_gradient_equals_full_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x, y = torch.randn(11, 4, dtype=torch.float64), torch.randint(0, 2, (11,))
    nn.functional.cross_entropy(model(x), y).backward()
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    start = 0
    for micro in accumulation_chunks(len(x), 4):
        xb, yb = x[start:start + micro], y[start:start + micro]
        (nn.functional.cross_entropy(model(xb), yb) * (micro / len(x))).backward()
        start += micro
    for p, g in zip(model.parameters(), full):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


def test_bad_arguments():
    ok = dict(initial=8, max_batch_size=64)
    with pytest.raises(ValueError, match="Invalid test"):
        AdaptiveBatchSize("variance", 0.1, **ok)
    with pytest.raises(ValueError, match="Invalid threshold"):
        AdaptiveBatchSize("norm", 0.0, **ok)
    with pytest.raises(ValueError, match="Invalid threshold"):
        AdaptiveBatchSize("augmented", 0.1, **ok)
    with pytest.raises(ValueError, match="Invalid initial"):
        AdaptiveBatchSize("norm", 0.1, initial=0, max_batch_size=64)
    with pytest.raises(ValueError, match="Invalid max_batch_size"):
        AdaptiveBatchSize("norm", 0.1, initial=8, max_batch_size=4)
    with pytest.raises(ValueError, match="Invalid test_interval"):
        AdaptiveBatchSize("norm", 0.1, test_interval=0, **ok)
    ctrl = AdaptiveBatchSize("norm", 0.1, **ok)
    with pytest.raises(ValueError, match="not both"):
        ctrl.update(_noisy_grads(8, 1.0), model=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid data_len"):
        GrowingBatchSampler(0, ctrl)
    with pytest.raises(ValueError, match="Invalid controller"):
        GrowingBatchSampler(10, 32)
    with pytest.raises(ValueError, match="Invalid generator"):
        GrowingBatchSampler(10, ctrl, generator=0)
    with pytest.raises(ValueError, match="Invalid drop_last"):
        GrowingBatchSampler(10, ctrl, drop_last=1)
    with pytest.raises(ValueError, match="Invalid batch_size"):
        accumulation_chunks(0, 4)
    with pytest.raises(ValueError, match="Invalid max_micro_batch"):
        accumulation_chunks(4, True)
