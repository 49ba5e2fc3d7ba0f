import copy
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.continual import TAME, LossShiftDetector
from gradwise.registry import get

GOLDEN = Path(__file__).parents[1] / "data" / "tame_golden.pt"


def _sgd(params):  # the authors' expert optimizer
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)


def _mlp(d_in=4, width=2):
    return nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, width), nn.Sigmoid())


def test_matches_authors_train_all_experts():
    g = torch.load(GOLDEN, weights_only=True)
    states = list(g["initial_states"])

    def factory():
        net = _mlp()
        net.load_state_dict(states.pop(0))
        return net

    tame = TAME(factory, _sgd, window=g["window"], smoothing=g["smoothing"])
    for x, y in zip(g["x"], g["y"]):
        tame.step(x, y)
    assert tame.switches == [tuple(e) for e in g["events"]]
    assert tame.boundaries == [s for i, (s, e, _) in enumerate(g["events"])
                               if e != ([0] + [ev[1] for ev in g["events"]])[i]]
    assert len(tame.experts) == len(g["experts"])
    for det, theirs in zip(tame.detectors, g["experts"]):
        # their losses are float32 numpy scalars of a float32 network (kernels round per CPU capability, so not
        # bit for bit); the EWMAs here run in float64
        torch.testing.assert_close(torch.tensor(det.losses, dtype=torch.float64), theirs["window"], rtol=1e-5, atol=1e-6)
        assert det.smoothed == pytest.approx(float(theirs["all_smoothed"][-1]), rel=1e-6)
        assert det.active_smoothed == pytest.approx(float(theirs["active_smoothed"][-1]), rel=1e-6)
        assert det.current_limit == pytest.approx(float(theirs["thresholds"][-1]), rel=1e-6)
        assert det.active == theirs["is_active"]


def test_equations_by_hand():
    det = LossShiftDetector(threshold=3.0, window=4, smoothing=0.2, initial_loss=math.log(2))
    losses = [0.9, 0.7, 0.6, 0.5, 0.45]
    ewma = None
    for loss in losses:
        det.observe(loss)
        det.record(loss)
        ewma = loss if ewma is None else 0.2 * loss + 0.8 * ewma
    assert det.smoothed == pytest.approx(ewma) and det.active_smoothed == pytest.approx(ewma)
    w = torch.tensor([math.log(2)] + losses, dtype=torch.float64)[-4:]  # the window keeps the last 4
    assert det.losses == pytest.approx(w.tolist())
    assert det.limit() == pytest.approx(float(w.mean() + 3 * w.std(correction=0)))  # Eq. (1)
    assert det.fits(0.5) == (0.2 * 0.5 + 0.8 * ewma < det.current_limit)  # Eq. (2)
    flat = LossShiftDetector(window=3, initial_loss=1.0)
    flat.record(1.0)
    assert flat.limit() == pytest.approx(1.0 + 3 * 0.005)  # the floor on sigma
    det.active = False  # inactive: the limit is frozen, records are ignored
    frozen = det.current_limit
    det.record(10.0)
    assert det.limit() == frozen and det.losses == pytest.approx(w.tolist())


def test_detector_fires_at_the_shifts_of_a_loss_stream():
    """Four segments, each a loss decaying from 2.0 to 0.3 with noise: it fires at the three jumps only."""
    gen = torch.Generator().manual_seed(0)
    seg = 150
    t = torch.arange(seg, dtype=torch.float64)
    stream = torch.cat([0.3 + 1.7 * torch.exp(-t / 15) + 0.02 * torch.randn(seg, generator=gen, dtype=torch.float64)
                        for _ in range(4)])
    det = LossShiftDetector(threshold=3.0, window=35)
    fired = [i for i, loss in enumerate(stream.tolist()) if det.update(loss)]
    assert len(fired) == 3
    for shift, at in zip((150, 300, 450), fired):
        assert shift <= at <= shift + 3, fired


def test_tame_creates_an_expert_per_task_and_returns_to_a_seen_one():
    """Tasks A, B (A's labels swapped), A: a new expert for B, the first one again for A."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=gen)

    def batch(flip):
        x = torch.randn(64, 4, generator=gen)
        y = (x @ w > 0).long()
        return x, 1 - y if flip else y

    tame = TAME(lambda: _mlp()[:-1], lambda p: torch.optim.SGD(p, lr=0.5), window=35)
    used = [tame.step(*batch(flip)) for flip in [False] * 60 + [True] * 60 + [False] * 60]
    assert used == [0] * 60 + [1] * 60 + [0] * 60
    assert tame.boundaries == [60, 120] and tame.switches[:2] == [(60, 1, True), (120, 0, False)]
    # after the return, expert 0's all-batch EWMA still holds its task-B losses: it re-detects and re-picks
    # itself for a few batches (their behaviour), never another expert
    assert all(e == 0 and not c for _, e, c in tame.switches[2:])
    assert tame(torch.zeros(2, 4)).shape == (2, 2) and tame(torch.zeros(2, 4), expert=1).shape == (2, 2)


def test_state_dict_and_deepcopy_continue_identically():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 4, generator=gen), torch.randint(0, 2, (16,), generator=gen)) for _ in range(30)]
    tame = TAME(lambda: _mlp(), _sgd, window=5)
    for x, y in data[:20]:
        tame.step(x, y)
    twin = copy.deepcopy(tame)
    fresh = TAME(lambda: _mlp(), _sgd, window=5)
    fresh.load_state_dict(tame.state_dict())
    for model in (twin, fresh):
        assert len(model.experts) == len(tame.experts) and model.active == tame.active
        assert model.switches == tame.switches
    for x, y in data[20:]:
        a, b, c = tame.step(x, y), twin.step(x, y), fresh.step(x, y)
        assert a == b == c
    probe = torch.randn(3, 4, generator=gen)
    for model in (twin, fresh):
        torch.testing.assert_close(model(probe), tame(probe), rtol=0, atol=0)
        assert [d.state_dict() for d in model.detectors] == [d.state_dict() for d in tame.detectors]


@pytest.mark.parametrize("kwargs, name", [
    (dict(threshold=-1.0), "threshold"), (dict(window=0), "window"), (dict(smoothing=0.0), "smoothing"),
    (dict(smoothing=1.5), "smoothing"), (dict(min_std=-1.0), "min_std"), (dict(initial_loss=-1.0), "initial_loss"),
])
def test_bad_detector_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LossShiftDetector(**kwargs)
    if name != "min_std":
        with pytest.raises(ValueError, match=name):
            TAME(_mlp, _sgd, **kwargs)


def test_bad_tame_input():
    with pytest.raises(ValueError, match="expert_factory"):
        TAME(None, _sgd)
    with pytest.raises(ValueError, match="optimizer_factory"):
        TAME(_mlp, 3)
    tame = TAME(_mlp, _sgd)
    with pytest.raises(ValueError, match="expert"):
        tame(torch.zeros(1, 4))  # no expert yet
    with pytest.raises(ValueError, match="x, y"):
        tame.step(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    assert tame.steps == 0 and len(tame.experts) == 0  # nothing was created by the bad call
    with pytest.raises(ValueError, match="expert_factory"):
        TAME(lambda: "not a module", _sgd).step(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


def test_registered_under_exact_title():
    rec = get("TAME")
    assert rec.paper == "TAME: Task Agnostic Continual Learning using Multiple Experts"
    assert rec.arxiv == "2210.03869" and rec.kind == "continual-learning" and rec.load() is TAME
