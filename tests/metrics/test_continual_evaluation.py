import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradwise.metrics import (ContinualEvaluator, avg_min_acc, call_callbacks, continual_metrics,
                              final_average_accuracy, min_acc_per_task, stability_gap, wc_acc, windowed_forgetting,
                              windowed_plasticity)

GOLDEN = Path(__file__).parents[1] / "data" / "continual_eval_golden.pt"
NAN = math.nan


@pytest.mark.parametrize("case", ["skip_unseen", "all_tasks"])
def test_matches_authors_plugins(case):
    c = torch.load(GOLDEN, weights_only=True)["cases"][case]
    acc, cur = c["acc"], c["current_task"]
    ours = {"avg_min_acc": avg_min_acc(acc, cur), "wc_acc": wc_acc(acc, cur)}
    for w in (3, 10):
        ours[f"wf{w}"] = torch.nanmean(windowed_forgetting(acc, w), 0)
        ours[f"wp{w}"] = torch.nanmean(windowed_plasticity(acc, w), 0)
    for key, value in ours.items():
        # their task averages go through torch.tensor(list of floats): float32, hence the tolerance
        torch.testing.assert_close(value, c[key], rtol=1e-6, atol=1e-6, equal_nan=True, msg=key)
    mins = min_acc_per_task(acc, cur)[:, -1]
    assert {t: float(mins[t]) for t in range(4) if not math.isnan(mins[t])} == pytest.approx(c["min_acc_final"])
    wf3 = windowed_forgetting(acc, 3)[:, -1]
    assert {t: float(wf3[t]) for t in range(4) if not math.isnan(wf3[t])} == pytest.approx(c["wf3_final"])


def record():
    # task 0 trains for steps 0-2, task 1 for steps 3-5; task 1 unseen (NaN) before
    acc = torch.tensor([[0.5, 0.7, 0.9, 0.4, 0.6, 0.8],
                        [NAN, NAN, NAN, 0.3, 0.6, 0.7]], dtype=torch.float64)
    return acc, torch.tensor([0, 0, 0, 1, 1, 1])


def test_min_acc_and_wc_acc_by_hand():
    acc, cur = record()
    mins = min_acc_per_task(acc, cur)
    assert torch.isnan(mins[0, :3]).all() and mins[0, 3:].tolist() == [0.4, 0.4, 0.4]
    assert torch.isnan(mins[1]).all()  # task 1 never evaluated while another trains
    torch.testing.assert_close(wc_acc(acc, cur)[3:], torch.tensor([0.35, 0.5, 0.55], dtype=torch.float64))
    torch.testing.assert_close(wc_acc(acc, cur)[:3], acc[0, :3])  # k = 1: WC-ACC is the current accuracy
    # paper Eq. 6 with k = 2: (1/k) A_current + (1 - 1/k) avg-min-ACC
    torch.testing.assert_close(wc_acc(acc, cur)[3:], 0.5 * acc[1, 3:] + 0.5 * avg_min_acc(acc, cur)[3:])


def test_windowed_forgetting_and_gap_by_hand():
    acc, cur = record()
    wf2 = windowed_forgetting(acc, 2)
    assert wf2[0].tolist() == pytest.approx([0, 0, 0, 0.5, 0.5, 0.5])  # 0.9 -> 0.4, adjacent
    wf = windowed_forgetting(acc, 10)[0, -1]
    assert float(wf) == pytest.approx(0.5)
    assert windowed_forgetting(acc, 1)[0].tolist() == [0.0] * 6
    gap = stability_gap(acc, cur)
    assert float(gap[0]) == pytest.approx(0.5) and math.isnan(gap[1])
    assert float(stability_gap(acc, cur, window=1)[0]) == pytest.approx(0.5)
    assert float(final_average_accuracy(acc)) == pytest.approx(0.75)
    assert float(final_average_accuracy(acc, torch.tensor([3.0, 1.0]))) == pytest.approx(0.775)
    m = continual_metrics(acc, cur, windows=(2,))
    assert m["wf2"] == pytest.approx(0.25) and m["avg_min_acc"] == pytest.approx(0.4)


def test_bad_records():
    acc, cur = record()
    with pytest.raises(ValueError, match="acc"):
        avg_min_acc(acc[0], cur)
    with pytest.raises(ValueError, match="current_task"):
        wc_acc(acc, torch.tensor([0, 0, 2, 1, 1, 1]))
    with pytest.raises(ValueError, match="current_task"):
        wc_acc(acc, cur[:-1])
    with pytest.raises(ValueError, match="window"):
        windowed_forgetting(acc, 0)
    with pytest.raises(ValueError, match="acc"):
        final_average_accuracy(acc[:, :2])
    with pytest.raises(ValueError, match="weights"):
        final_average_accuracy(acc, torch.tensor([1.0]))


def cluster_tasks():
    # two tasks of 5 classes each (0-4, then 5-9), Gaussian clusters around random centres in 64 dimensions
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(10, 64, generator=g)
    tasks = []
    for classes in (torch.arange(0, 5), torch.arange(5, 10)):
        y = classes[torch.randint(0, 5, (400,), generator=g)]
        tasks.append((centres[y] + torch.randn(400, 64, generator=g), y))
    return tasks


def test_evaluator_on_a_training_loop():
    torch.manual_seed(0)
    tasks = cluster_tasks()
    eval_loaders = [[(xt[i:i + 100], yt[i:i + 100]) for i in range(0, 200, 100)] for xt, yt in tasks]
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ev = ContinualEvaluator(eval_loaders, every=2)
    every_task = ContinualEvaluator(eval_loaders, every=3, skip_unseen_tasks=False)
    step = 0
    for k, (xt, yt) in enumerate(tasks):
        for i in range(6):
            xb, yb = xt[i * 32:(i + 1) * 32], yt[i * 32:(i + 1) * 32]
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            call_callbacks([ev, every_task], "on_step", step, model=model, loss=loss, task=k)
            step += 1
    ev.on_eval(step, model=model, task=1)  # after the last step too
    assert model.training  # evaluation restored the training mode
    acc = ev.accuracy
    assert acc.shape == (2, 7) and ev.steps.tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert ev.current_task.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert torch.isnan(acc[1, :3]).all() and torch.isfinite(acc[:, 3:]).all()
    model.eval()
    with torch.no_grad():
        direct = [float((model(xt[:200]).argmax(1) == yt[:200]).double().mean()) for xt, yt in tasks]
    assert acc[:, -1].tolist() == pytest.approx(direct)
    assert acc[0, 2] > 0.5  # task 0 was learned
    m = ev.metrics()
    assert m["avg_min_acc"] == pytest.approx(float(acc[0, 3:].min()))
    assert ev.history[-1][1]["wc_acc"] == pytest.approx(m["wc_acc"])
    for e in (ev, every_task):  # the per-step values kept as it goes are the functions' on the whole record
        for key, fn in (("avg_min_acc", avg_min_acc), ("wc_acc", wc_acc)):
            full = fn(e.accuracy, e.current_task).tolist()
            assert [h[1][key] for h in e.history] == pytest.approx(full, nan_ok=True), key


def test_evaluator_bad_input():
    with pytest.raises(ValueError, match="eval_loaders"):
        ContinualEvaluator([])
    ev = ContinualEvaluator([[]], every=1)
    with pytest.raises(ValueError, match="task"):
        ev.on_step(0, model=nn.Linear(2, 2), task=3)
    with pytest.raises(ValueError, match="model"):
        ev.on_step(0, model=None, task=0)
    with pytest.raises(ValueError, match="state"):
        ev.metrics()
