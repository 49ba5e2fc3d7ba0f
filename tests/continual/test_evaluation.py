import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwise.metrics as metrics
from gradwise.continual import (ContinualEvaluator, lca, learning_curves, min_acc, min_acc_per_task, wc_acc,
                                windowed_forgetting, windowed_plasticity)

GOLDEN = Path(__file__).parents[1] / "data" / "lca_golden.pt"
NAN = math.nan


def test_metric_names_are_the_metrics_family_functions():
    assert min_acc is metrics.avg_min_acc and min_acc_per_task is metrics.min_acc_per_task
    assert wc_acc is metrics.wc_acc and windowed_forgetting is metrics.windowed_forgetting
    assert windowed_plasticity is metrics.windowed_plasticity
    assert issubclass(ContinualEvaluator, metrics.ContinualEvaluator)


@pytest.mark.parametrize("beta", [3, 5])
def test_lca_matches_mattdl_plugin(beta):
    c = torch.load(GOLDEN, weights_only=True)["mattdl"]
    acc, cur, theirs = c["acc"], c["current_task"], c[f"lca{beta}"]
    assert torch.isnan(theirs[:beta - 1]).all() and torch.isfinite(theirs[-1])
    for s in range(acc.shape[1]):
        ours = lca(learning_curves(acc[:, :s + 1], cur[:s + 1]), beta - 1)  # their beta counts values
        # theirs averages through torch.tensor(list of floats): float32
        torch.testing.assert_close(ours, theirs[s], rtol=1e-6, atol=1e-7, equal_nan=True, msg=f"step {s}")


def test_lca_trapezoid_matches_agem_notebook():
    c = torch.load(GOLDEN, weights_only=True)["agem"]
    for key, acc in c["acc"].items():
        for run in range(acc.shape[0]):
            curves = torch.diagonal(acc[run], dim1=0, dim2=2).T  # [task, batch]: a[k, b, k]
            ours = torch.stack([lca(curves, b, rule="trapezoid") for b in range(11)])
            # their b-shot averages are float32 arrays
            torch.testing.assert_close(ours, c["area_trapz"][key][run], rtol=1e-6, atol=1e-7, msg=key)


def test_lca_by_hand():
    curves = torch.tensor([[0.0, 0.4, 0.8, 1.0],
                           [0.2, 0.6, 0.6, NAN]], dtype=torch.float64)
    # Z = 0.1, 0.5, 0.7 over both tasks; beta 3 counts task 0 only
    assert float(lca(curves, 0)) == pytest.approx(0.1)
    assert float(lca(curves, 2)) == pytest.approx((0.1 + 0.5 + 0.7) / 3)
    assert float(lca(curves, 2, rule="trapezoid")) == pytest.approx(((0.1 + 0.5) / 2 + (0.5 + 0.7) / 2) / 2)
    assert float(lca(curves, 3)) == pytest.approx(0.55)
    assert math.isnan(float(lca(curves, 4)))
    # faster learning, larger area
    slow = torch.tensor([[0.0, 0.1, 0.2, 0.3]], dtype=torch.float64)
    assert float(lca(slow, 3)) < float(lca(curves[:1], 3))


def test_learning_curves():
    acc = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.8],
                        [NAN, NAN, 0.0, 0.4, 0.5]], dtype=torch.float64)
    cur = torch.tensor([0, 0, 0, 1, 1])
    out = learning_curves(acc, cur)
    torch.testing.assert_close(out, torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, NAN]], dtype=torch.float64),
                               equal_nan=True)


@pytest.mark.parametrize("call, word", [
    (lambda: lca(torch.zeros(3), 1), "curves"),
    (lambda: lca(torch.zeros(2, 3, dtype=torch.long), 1), "curves"),
    (lambda: lca(torch.zeros(2, 3), -1), "beta"),
    (lambda: lca(torch.zeros(2, 3), 1, rule="simpson"), "rule"),
    (lambda: learning_curves(torch.zeros(2, 3), [0, 2, 1]), "current_task"),
])
def test_lca_bad_input(call, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        call()


class Counting(nn.Module):
    """A linear classifier that counts its forward calls."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x)


def _sets():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 2, generator=g) for _ in range(3)]
    return [(x, (x[:, 0] > 0).long()) for x in xs]


def test_evaluator_front_tracks_every_and_matches_base():
    model = Counting()
    sets = _sets()
    ev = ContinualEvaluator(model, sets, every=2)
    base = metrics.ContinualEvaluator([[s] for s in sets], every=2)
    steps = [(s, 0) for s in range(4)] + [(s, 1) for s in range(4, 8)] + [(s, 2) for s in range(8, 10)]
    for step, task in steps:
        with torch.no_grad():
            model.lin.weight.add_(0.3 * torch.eye(2))
        before = model.calls
        col = ev.track(step, task)
        if step % 2:
            assert col is None and model.calls == before  # not due: no evaluation
        else:
            # one pass per seen task's set, nothing more
            assert col is not None and model.calls == before + len({t for s, t in steps if s <= step})
        base.on_step(step, model=model, task=task)
    torch.testing.assert_close(ev.accuracy, base.accuracy, equal_nan=True)
    assert torch.equal(ev.current_task, base.current_task) and ev.steps.tolist() == [0, 2, 4, 6, 8]
    assert ev.metrics(windows=(2,)) == pytest.approx(base.metrics(windows=(2,)), nan_ok=True)
    assert model.training  # the mode is restored
    col = ev.evaluate_now(9, 2)
    assert ev.accuracy.shape[1] == 6 and torch.equal(col, ev.accuracy[:, -1])
    assert torch.isfinite(ev.lca(0))


def test_evaluator_batches_and_loaders():
    model = Counting()
    sets = _sets()
    ev = ContinualEvaluator(model, sets, batch_size=3)
    ev.track(0, 0)
    assert model.calls == 3  # 8 rows in batches of 3
    loaders = ContinualEvaluator(model, [[s] for s in sets])
    loaders.track(0, 0)
    torch.testing.assert_close(loaders.accuracy, ev.accuracy, equal_nan=True)


@pytest.mark.parametrize("make, word", [
    (lambda: ContinualEvaluator("model", _sets()), "model"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), []), "eval_sets"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), [(torch.zeros(3, 2), torch.zeros(2).long())]), "eval_sets"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), [5]), "eval_sets"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), _sets(), every=0), "every"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), _sets(), batch_size=0), "batch_size"),
    (lambda: ContinualEvaluator(nn.Linear(2, 2), _sets()).track(0, 3), "task"),
])
def test_evaluator_bad_input(make, word):
    with pytest.raises(ValueError, match=f"Invalid {word}"):
        make()
