"""The continual study's pieces at a tiny size: each method's run and record, ER's reservoir, EWC's Fisher and
penalty, PRD's loss terms and prediction, and the claim's verdict. (Its smallest command line runs in
tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from gradwise.arena import continual_study as cs

torch.set_num_threads(1)

CFG = dataclasses.replace(cs.Config(), steps_per_task=4, batch_size=8, buffer_size=12, hidden=(16,), proj_dim=8,
                          eval_every=3, lca_beta=2, wf_window=3)


def _task(n_per_class=12, d=6):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(n_per_class)
    x = torch.randn(len(y), d, generator=g) + F.one_hot(y % d, d) * 2.0
    split = [(x[(y // 2) == k], y[(y // 2) == k]) for k in range(cs.N_TASKS)]
    return dict(train=split, test=[(a[:6], b[:6]) for a, b in split], num_features=d, num_classes=10)


@pytest.mark.parametrize("method", list(cs.METHODS))
def test_each_method_runs_and_its_record_is_consistent(method):
    row = cs.train_one(_task(), CFG, method, seed=0)
    for k in ("final_acc", "boundary_min_acc", "avg_min_acc", "wc_acc", "wf10", "lca", "stability_gap"):
        assert 0.0 <= row[k] <= 1.0, (k, row[k])
    # the per-iteration record holds the boundary evaluations, so its minimum can only be lower
    assert row["hidden_dip"] >= 0 and math.isclose(row["hidden_dip"], row["boundary_min_acc"] - row["avg_min_acc"])
    assert math.isclose(row["final_minus_min"], row["final_acc"] - row["avg_min_acc"])
    # one pre-task evaluation per task, every 3rd step, and each task's last step when not a multiple of 3
    total = cs.N_TASKS * CFG.steps_per_task
    due = set(range(3, total + 1, 3)) | {CFG.steps_per_task * (k + 1) for k in range(cs.N_TASKS)}
    assert len(row["curve_steps"]) == cs.N_TASKS + len(due) == len(row["task1_curve"])
    assert len(row["boundary_acc"]) == cs.N_TASKS
    # task 1 is evaluated from its start; later tasks are NaN in the boundary rows until trained
    assert all(math.isfinite(a) for a in row["task1_curve"])
    assert math.isnan(row["boundary_acc"][0][1]) and math.isfinite(row["boundary_acc"][1][1])
    # a seed's run is reproducible
    again = cs.train_one(_task(), CFG, method, seed=0)
    assert again["task1_curve"] == row["task1_curve"]


def test_replay_buffer_is_a_reservoir_over_the_whole_stream():
    task = _task()
    learner = cs.METHODS["ER"](CFG, task["num_features"], task["num_classes"], torch.Generator().manual_seed(0))
    for k, (x, y) in enumerate(task["train"]):
        for _ in range(5):
            learner.step(x[:8], y[:8], k)
    assert learner.filled == CFG.buffer_size and learner.seen == cs.N_TASKS * 5 * 8
    # early tasks keep a share of the buffer after later ones (reservoir, not FIFO)
    tasks_in_buffer = set((learner.buf_y // 2).tolist())
    assert 0 in tasks_in_buffer or 1 in tasks_in_buffer
    assert len(tasks_in_buffer) >= 3


def test_ewc_fisher_is_the_mean_squared_per_sample_gradient_and_penalizes_moving():
    task = _task()
    cfg = dataclasses.replace(CFG, ewc_lambda=10.0)
    learner = cs.METHODS["EWC"](cfg, task["num_features"], task["num_classes"], torch.Generator().manual_seed(0))
    x, y = task["train"][0]
    learner.end_task(0, x, y)
    fisher, anchor = learner.anchors[0]
    model = learner.model
    expect = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):  # the per-sample loop the vmap replaces
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            expect[n] += p.grad ** 2 / len(y)
    for n in expect:
        torch.testing.assert_close(fisher[n], expect[n], rtol=1e-4, atol=1e-7)
    plain = F.cross_entropy(model(x[:8]), y[:8])
    torch.testing.assert_close(learner.loss(x[:8], y[:8], 1), plain)  # at the anchor: no penalty
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert learner.loss(x[:8], y[:8], 1) > F.cross_entropy(model(x[:8]), y[:8]) + 1e-4


def test_prd_distills_only_after_the_first_task_and_predicts_by_cosine(monkeypatch):
    task = _task()
    learner = cs.METHODS["PRD"](CFG, task["num_features"], task["num_classes"], torch.Generator().manual_seed(0))
    x, y = task["train"][0]
    assert learner.old_encoder is None
    learner.step(x[:8], y[:8], 0)
    learner.end_task(0, x, y)
    old = [p.detach().clone() for p in learner.old_encoder.parameters()]
    x1, y1 = task["train"][1]
    import gradwise.continual as gc

    calls, real = [], gc.prd_loss
    monkeypatch.setattr(gc, "prd_loss", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    learner.step(x[:8], y[:8], 0)
    assert calls == []  # no earlier task: no distillation
    learner.step(x1[:8], y1[:8], 1)
    assert calls == [1]  # task 2: distilled over task 1's prototypes
    assert all(torch.equal(a, b) for a, b in zip(old, learner.old_encoder.parameters()))  # the copy stays frozen
    logits = learner.predict(learner.model, task["test"][0][0])
    assert logits.shape == (6, 10) and bool((logits.abs() <= 1 + 1e-5).all())


def _summary(dip, half, gap=0.1, gap_half=0.05):
    return [dict(method="ER", hidden_dip_mean=dip, hidden_dip_ci=half, final_minus_min_mean=gap,
                 final_minus_min_ci=gap_half, avg_min_acc_mean=0.7, boundary_min_acc_mean=0.7 + dip,
                 final_acc_mean=0.7 + gap)]


def test_claim_verdict_says_shown_or_not_shown():
    assert "SHOWN" in cs.claim_verdict(_summary(0.08, 0.03)) and "NOT" not in cs.claim_verdict(_summary(0.08, 0.03))
    assert "NOT SHOWN" in cs.claim_verdict(_summary(0.01, 0.001))   # too small
    assert "NOT SHOWN" in cs.claim_verdict(_summary(0.05, 0.06))    # interval reaches 0
    assert "NOT SHOWN" in cs.claim_verdict(_summary(0.05, 0.01, gap=0.03, gap_half=0.04))  # final ACC not clear
    assert "NOT SHOWN" in cs.claim_verdict(_summary(0.05, 0.01, gap=-0.02, gap_half=0.01))  # min above final
    assert "not run" in cs.claim_verdict([])


def test_issue_17_continual_methods_are_all_runnable():
    assert not cs.NOT_YET and {"finetune", "ER", "EWC", "PRD", "IBCL", "TAME"} <= set(cs.METHODS)


def test_ibcl_learner_measures_zero_shot_against_trained_per_preference():
    cfg = dataclasses.replace(CFG, ibcl_prefs=2)
    row = cs.train_one(_task(), cfg, "IBCL", seed=0)
    assert len(row["prefs"]) == 2 and all(math.isclose(sum(w), 1.0) and min(w) >= 0 for w in row["prefs"])
    for k in ("pref_zero_shot", "pref_trained"):
        assert 0.0 <= row[k] <= 1.0 and len(row[k + "_each"]) == 2
    assert math.isclose(row["pref_gap"], row["pref_zero_shot"] - row["pref_trained"])
    assert math.isclose(row["pref_zero_shot"], sum(row["pref_zero_shot_each"]) / 2)
    # what the evaluator saw at the end: the uniform preference's zero-shot model over the 5 tasks
    learner = cs.METHODS["IBCL"](cfg, 6, 10, torch.Generator().manual_seed(0))
    for k, (x, y) in enumerate(_task()["train"]):
        learner.start_task(k)
        learner.step(x[:8], y[:8], k)
        learner.end_task(k, x, y)
    assert len(learner.ibcl.tasks) == cs.N_TASKS and len(learner.ibcl.buffer) == cs.N_TASKS * cfg.ibcl_extremes
    x = _task()["test"][0][0]
    torch.testing.assert_close(learner.predict(learner.model, x), learner.ibcl.model_for([0.2] * 5)(x))


def _ibcl_summary(gap, half):
    return [dict(method="IBCL", pref_gap_mean=gap, pref_gap_ci=half, pref_zero_shot_mean=0.8 + gap,
                 pref_trained_mean=0.8)]


def test_ibcl_verdict_says_shown_or_not_shown():
    assert "NOT" not in cs.ibcl_verdict(_ibcl_summary(0.01, 0.02))       # better, interval above -2 points
    assert "NOT" not in cs.ibcl_verdict(_ibcl_summary(-0.005, 0.01))     # slightly below, within the margin
    assert "NOT SHOWN" in cs.ibcl_verdict(_ibcl_summary(-0.01, 0.02))    # interval reaches below -2 points
    assert "NOT SHOWN" in cs.ibcl_verdict(_ibcl_summary(0.05, math.nan))  # one seed: no interval
    assert "not run" in cs.ibcl_verdict([dict(method="ER")])


def test_tame_boundary_scores_and_verdict():
    from types import SimpleNamespace
    fake = SimpleNamespace(model=SimpleNamespace(boundaries=[0, 100, 205, 300], experts=[0] * 5))
    got = cs.boundary_scores(fake, 100, 5)  # true: 100, 200, 300, 400; 0 is spurious, 205 within 10 of 200
    assert got["boundary_precision"] == 0.75 and got["boundary_recall"] == 0.75 and got["n_experts"] == 5
    none = cs.boundary_scores(SimpleNamespace(model=SimpleNamespace(boundaries=[], experts=[0])), 100, 5)
    assert none["boundary_precision"] == 0.0 and none["boundary_recall"] == 0.0
    assert math.isnan(cs.boundary_scores(SimpleNamespace(model=torch.nn.Linear(1, 1)), 100, 5)["boundary_recall"])
    row = dict(method="TAME", boundary_precision_mean=1.0, boundary_precision_ci=0.0, boundary_recall_mean=0.95,
               boundary_recall_ci=0.1, n_experts_mean=5.0)
    assert "SHOWN" in cs.tame_verdict([row], 5) and "NOT" not in cs.tame_verdict([row], 5)
    assert "NOT SHOWN" in cs.tame_verdict([{**row, "boundary_recall_mean": 0.5}], 5)
    assert "not run" in cs.tame_verdict([], 5)
