"""Golden data for the continual-evaluation metrics, made by running the authors' metric plugins.

Repository: github.com/Mattdl/ContinualEvaluation, commit 7ffa3689af3aecb2b724b0cb13ef7da83bd87d90
("Update README.md"). Their files are not part of this repository: point REPO at a git directory of theirs
(a clone, or the mirror the search tool's ``fetch`` brings) and run from the repository root:

    REPO=/path/to/their/repo .venv/bin/python tools/golden/make_continual_eval_golden.py

It reads (with ``tools/golden/mattdl_plugins.py``, shared with ``make_lca_golden.py``), at that commit with
``git show``, their ``src/eval/continual_eval_metrics.py`` and the pieces of the Avalanche copy vendored in
their repository that it imports (``avalanche/core.py``,
``avalanche/evaluation/{metric_definitions,metric_results,metric_utils}.py``,
``avalanche/evaluation/metrics/{mean,accuracy,loss}.py``) into a temporary folder; the package
``avalanche/evaluation/metrics/__init__.py`` is written empty (theirs imports every metric, with GPU/RAM
probes we do not use) and ``src/utils.py`` is a stub (only the gradnorm plugin, unused here, calls it). Then it
drives their plugins the way their ``ContinualEvaluationPhasePlugin.track`` does (``before_tracking``; per
evaluated task ``before_tracking_step``, per batch ``before/after_tracking_batch``, ``after_tracking_step``),
with ``strategy.clock.train_exp_counter`` the task being trained, on seeded predictions of a 4-task stream,
and stores after each evaluation step: their per-task accuracy (``TaskTrackingAccuracyPluginMetric``),
avg-min-ACC (``TaskAveragingPluginMetric(TaskTrackingMINAccuracyPluginMetric)``), WC-ACC
(``WCACCPluginMetric``), and the task-averaged ``WindowedForgettingPluginMetric`` /
``WindowedPlasticityPluginMetric`` for windows 3 and 10. Two cases: unseen tasks skipped (their default)
and all tasks evaluated at every step. Writes tests/data/continual_eval_golden.pt.
"""
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mattdl_plugins import load, track  # noqa: E402

COMMIT = "7ffa3689af3aecb2b724b0cb13ef7da83bd87d90"
here = os.path.dirname(os.path.abspath(__file__))
their = load(os.environ["REPO"], COMMIT)

gen = torch.Generator().manual_seed(0)
N_TASKS, N_CLASSES, BATCHES = 4, 5, (12, 8)
PHASE_STEPS = (9, 7, 8, 6)


def predictions(p_correct, y):
    """Labels that are right with probability p_correct (wrong ones shifted by one class)."""
    right = torch.rand(y.shape, generator=gen) < p_correct
    return torch.where(right, y, (y + 1) % N_CLASSES)


def run(skip_unseen):
    col = their.TrackingCollector()
    strategy = types.SimpleNamespace(tracking_collector=col, clock=types.SimpleNamespace(train_exp_counter=0))
    acc_plugin = their.TaskTrackingAccuracyPluginMetric()
    min_plugin = their.TaskTrackingMINAccuracyPluginMetric()
    min_avg = their.TaskAveragingPluginMetric(min_plugin)
    wc = their.WCACCPluginMetric(min_plugin)
    wf = {w: their.WindowedForgettingPluginMetric(window_size=w) for w in (3, 10)}
    wp = {w: their.WindowedPlasticityPluginMetric(window_size=w) for w in (3, 10)}
    wf_avg = {w: their.TaskAveragingPluginMetric(p) for w, p in wf.items()}
    wp_avg = {w: their.TaskAveragingPluginMetric(p) for w, p in wp.items()}
    plugins = [acc_plugin, min_plugin, min_avg, wc, *wf.values(), *wf_avg.values(), *wp.values(), *wp_avg.values()]
    current = [k for k, n in enumerate(PHASE_STEPS) for _ in range(n)]
    labels = [[torch.randint(0, N_CLASSES, (b,), generator=gen) for b in BATCHES] for _ in range(N_TASKS)]
    level = torch.full((N_TASKS,), 0.2, dtype=torch.float64)
    out = {k: [] for k in ("acc", "avg_min_acc", "wc_acc", "wf3", "wf10", "wp3", "wp10")}
    seen = set()
    for s, k in enumerate(current):
        seen.add(k)
        first_of_phase = s == 0 or current[s - 1] != k
        # Accuracy levels: the trained task climbs; others drop sharply at a switch (the gap) then recover.
        for t in range(N_TASKS):
            if t == k:
                level[t] = min(0.95, float(level[t]) + 0.1)
            elif first_of_phase and t in seen:
                level[t] = max(0.05, float(level[t]) - 0.4)
            elif t in seen:
                level[t] = min(0.9, float(level[t]) + 0.06)
        strategy.clock.train_exp_counter = k
        tasks = [t for t in range(N_TASKS) if not (skip_unseen and t not in seen)]

        def predict(t, y):
            p_right = float(level[t]) + 0.1 * float(torch.randn((), generator=gen))
            return predictions(p_right, y)
        track(plugins, strategy, tasks, labels, predict)
        accs = acc_plugin.result()
        out["acc"].append([accs.get(t, float("nan")) for t in range(N_TASKS)])

        def value(plugin):
            r = plugin.result()
            return float("nan") if r is None or r.get(0) is None else r[0]
        out["avg_min_acc"].append(value(min_avg))
        out["wc_acc"].append(value(wc))
        for w in (3, 10):
            out[f"wf{w}"].append(value(wf_avg[w]))
            out[f"wp{w}"].append(value(wp_avg[w]))
    case = {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}
    case["acc"] = case["acc"].T.contiguous()  # [tasks, steps]
    case["current_task"] = torch.tensor(current)
    case["min_acc_final"] = {int(t): float(v) for t, v in min_plugin.result().items()}
    case["wf3_final"] = {int(t): float(v) for t, v in wf[3].result().items()}
    return case


cases = {"skip_unseen": run(True), "all_tasks": run(False)}
out = dict(reference=f"Mattdl/ContinualEvaluation@{COMMIT} src/eval/continual_eval_metrics.py "
                     f"(torch {torch.__version__})", cases=cases)
path = os.path.join(here, "..", "..", "tests", "data", "continual_eval_golden.pt")
torch.save(out, path)
for name, c in cases.items():
    print(name, "avg_min_acc", round(float(c["avg_min_acc"][-1]), 4), "wc_acc", round(float(c["wc_acc"][-1]), 4),
          "wf10", round(float(c["wf10"][-1]), 4))
