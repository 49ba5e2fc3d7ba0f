from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.rl import ActivationRecorder, AdaptiveReplayRatio, fraction_active_units

GOLDEN = Path(__file__).parents[1] / "data" / "adaptive_rr_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def test_fau_matches_authors_critic(golden):
    for c in golden["fau"].values():
        fau = fraction_active_units(c["activations"])
        assert fau.dtype == torch.float64 and fau.dim() == 0
        assert abs(fau.item() - c["rate"]) < 1e-15


@pytest.mark.parametrize("name", ["schedule_default", "schedule_short"])
def test_schedule_matches_authors_train_loop(golden, name):
    c = golden[name]
    arr = AdaptiveReplayRatio(c["check_freq"], c["phi_gap"])
    for ep, faus in enumerate(c["faus"]):
        for f in faus:
            arr.observe(torch.tensor(f, dtype=torch.float64))
        arr.end_episode()
        every, rr, last = c["trace"][ep].tolist()
        assert arr.replay_ratio == rr / every, ep
        if arr.last_average is not None:
            assert abs(float(arr.last_average) - last) < 1e-12, ep
    switched = int(c["trace"][:, 1].argmax()) + 1
    assert arr.switched_at == switched


def test_updates_at_and_switch_once():
    arr = AdaptiveReplayRatio(2, 0.01)
    assert [arr.updates_at(s) for s in range(4)] == [1, 0, 1, 0]
    assert not arr.end_episode()  # episode 1, no update yet: not checked
    arr.observe(0.5), arr.observe(0.2)  # the first value is the reference
    assert not arr.end_episode() and arr.last_average == pytest.approx(0.35)  # episode 2: |0.35 - 0.5| > gap
    arr.observe(0.9)
    assert not arr.end_episode()  # episode 3 = check_every - 1 (mod 2): the sum is reset, 0.9 is dropped
    arr.observe(0.355)
    assert arr.end_episode() and arr.switched_at == 4
    assert [arr.updates_at(s) for s in range(3)] == [2, 2, 2]
    arr.observe(0.1)
    arr.end_episode(), arr.observe(0.9)
    assert not arr.end_episode() and arr.replay_ratio == 2.0
    state = arr.state_dict()
    other = AdaptiveReplayRatio(2, 0.01)
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_recorder_collects_relu_outputs():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(5, 4)
    with ActivationRecorder(net) as rec:
        net(x)
    assert [o.shape for o in rec.outputs] == [(5, 8), (5, 8)]
    h1 = torch.relu(net[0](x))
    h2 = torch.relu(net[2](h1))
    expected = ((h1 > 0).sum() + (h2 > 0).sum()) / 80
    torch.testing.assert_close(fraction_active_units(rec.outputs), expected.double())
    net(x)
    assert len(rec.outputs) == 2  # hooks removed on exit


@pytest.mark.parametrize("call, match", [
    (lambda: AdaptiveReplayRatio(0, 0.001), "check_every"),
    (lambda: AdaptiveReplayRatio(5, -1.0), "phi_gap"),
    (lambda: AdaptiveReplayRatio(5, 0.001, low=0.3), "low"),
    (lambda: AdaptiveReplayRatio(5, 0.001, high=2.5), "high"),
    (lambda: AdaptiveReplayRatio(5, 0.001).observe(torch.zeros(2)), "fau"),
    (lambda: fraction_active_units([]), "activations"),
    (lambda: fraction_active_units(torch.zeros(0)), "activations"),
    (lambda: ActivationRecorder(nn.Linear(2, 2)), "layer_types"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
