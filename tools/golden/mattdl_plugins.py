"""Shared by the golden generators that run Mattdl/ContinualEvaluation's metric plugins
(``make_continual_eval_golden.py``, ``make_lca_golden.py``): load their plugin module from a git directory
of theirs at a commit, and drive one tracking pass as their ``ContinualEvaluationPhasePlugin.track`` does."""
import os
import sys

from authors_code import extract

FILES = ["src/eval/continual_eval_metrics.py", "avalanche/core.py", "avalanche/evaluation/__init__.py",
         "avalanche/evaluation/metric_definitions.py", "avalanche/evaluation/metric_results.py",
         "avalanche/evaluation/metric_utils.py", "avalanche/evaluation/metrics/mean.py",
         "avalanche/evaluation/metrics/accuracy.py", "avalanche/evaluation/metrics/loss.py"]


def load(repo, commit):
    """Their ``src/eval/continual_eval_metrics.py`` with the vendored Avalanche pieces it imports, read with
    ``git show`` into a temporary folder; ``avalanche/evaluation/metrics/__init__.py`` is written empty (theirs
    imports every metric, with GPU/RAM probes) and ``src/utils.py`` is a stub (only the gradnorm plugin calls
    it)."""
    tmp = extract(repo, commit, FILES, on_path=())
    for pkg in ("avalanche/__init__.py", "avalanche/evaluation/metrics/__init__.py", "src/__init__.py",
                "src/eval/__init__.py"):
        open(os.path.join(tmp, pkg), "w").close()
    with open(os.path.join(tmp, "src/utils.py"), "w") as f:
        f.write("def get_grad_normL2(model):\n    raise NotImplementedError\n")
    sys.path.insert(0, tmp)
    import src.eval.continual_eval_metrics as their
    return their


def track(plugins, strategy, tasks, labels, predict):
    """One evaluation: ``before_tracking``; for each task in ``tasks`` ``before_tracking_step``, for each of its
    label batches ``before/after_tracking_batch`` on ``predict(task, y)``, ``after_tracking_step``."""
    col = strategy.tracking_collector
    for p in plugins:
        p.before_tracking(strategy)
    for t in tasks:
        col.current_tracking_task = t
        for p in plugins:
            p.before_tracking_step(strategy)
        for y in labels[t]:
            col.y, col.preds_batch = y, predict(t, y)
            for p in plugins:
                p.before_tracking_batch(strategy)
            for p in plugins:
                p.after_tracking_batch(strategy)
        for p in plugins:
            p.after_tracking_step(strategy)
