import pytest
import torch
from torch import nn

from gradwise.metrics import OpposingSignalTracker, call_callbacks, opposing_signal_groups


def test_groups_by_sign_and_size():
    before = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    after = torch.tensor([3.0, 0.2, 1.5, 0.9, 1.0, 0.5])
    g = opposing_signal_groups(before, after, k=2)
    assert g.rising.tolist() == [0, 2] and g.falling.tolist() == [1, 5]
    torch.testing.assert_close(g.delta, after - before)
    g = opposing_signal_groups(before, after, k=10)
    assert g.rising.tolist() == [0, 2] and g.falling.tolist() == [1, 5, 3]  # unchanged sample 4 in neither
    assert set(g.rising.tolist()).isdisjoint(g.falling.tolist())


def test_bad_input():
    x = torch.ones(3)
    with pytest.raises(ValueError, match="k"):
        opposing_signal_groups(x, x, k=0)
    with pytest.raises(ValueError, match="loss_after"):
        opposing_signal_groups(x, torch.ones(4))
    with pytest.raises(ValueError, match="loss_before"):
        opposing_signal_groups(torch.ones(3, 1), x)
    with pytest.raises(ValueError, match="targets"):
        OpposingSignalTracker(torch.ones(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="Invalid inputs: shape \\(0, 2\\)"):
        OpposingSignalTracker(torch.ones(0, 2), torch.ones(0))


def test_tracker_on_a_training_loop():
    torch.manual_seed(0)
    # two opposing groups: a huge shared feature (column 0) with labels 0 vs 1, plus ordinary samples
    x = torch.randn(60, 5)
    x[:10, 0], x[10:20, 0] = 8.0, 8.0
    y = torch.randint(0, 3, (60,))
    y[:10], y[10:20] = 0, 1
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = OpposingSignalTracker(x, y, k=10)
    for step in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        call_callbacks([tracker], "on_step", step, model=model, loss=loss)
    assert tracker.losses.shape == (8, 60) and len(tracker.history) == 7
    step, last = tracker.history[-1]
    delta = tracker.losses[-1] - tracker.losses[-2]
    assert last["max_abs_change"] == pytest.approx(float(delta.abs().max()))
    assert last["rising"] == opposing_signal_groups(tracker.losses[-2], tracker.losses[-1], 10).rising.tolist()
    # the outlier samples move most: they fill most of the groups summed over the run
    assert tracker.counts[:, :20].sum() > tracker.counts[:, 20:].sum()
