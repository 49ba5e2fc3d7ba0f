"""The ``continual`` study's TAME learner and its claim's measurement: the task boundaries TAME's loss-shift
detector finds against the true ones (the study record, the other learners and the report are in
``continual_study.py``).
"""
from __future__ import annotations

from typing import Any

from gradwise.arena.stats import fmt_ci

__all__ = ["TAMELearner", "boundary_scores", "tame_verdict", "TAME_WINDOW", "TAME_TOLERANCE", "TAME_SHOWN"]

# TAME: the loss window (the authors' split-MNIST value; their CIFAR runs use 100, more than a task's 100 steps
# here), how many steps after a true task boundary a detected one may come to count, and the claim's bar
TAME_WINDOW = 35
TAME_TOLERANCE = 10
TAME_SHOWN = 0.9


class TAMELearner:
    """TAME (Zhu et al., arXiv:2210.03869) as :class:`gradwise.continual.TAME`: one expert (the study's MLP with
    the authors' sigmoid output) per detected task, each trained by the authors' optimizer (SGD, lr 0.1,
    momentum 0.9, weight decay 5e-4, not the study's ``lr``), window :data:`TAME_WINDOW`, their threshold 3 and
    smoothing 0.2; it never sees the task index. Prediction: the active expert (the selector network is not
    built)."""

    def __init__(self, cfg: Any, num_features: int, num_classes: int, gen: Any) -> None:
        import torch  # lazily: the CLI imports the study records without torch
        from torch import nn

        from gradwise.arena.tasks import mlp
        from gradwise.continual import TAME

        self.cfg, self.gen, self.num_classes = cfg, gen, num_classes
        self.model = TAME(lambda: nn.Sequential(mlp(num_features, num_classes, cfg.hidden), nn.Sigmoid()),
                          lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
                          window=TAME_WINDOW)
        self.predict = self._active_expert

    def _active_expert(self, model, x):
        import torch

        return model(x) if len(model.experts) else torch.zeros(x.shape[0], self.num_classes)

    def step(self, x, y, task: int) -> None:
        self.model.step(x, y)

    def start_task(self, task: int) -> None:  # task-agnostic: it is never told
        pass

    def end_task(self, task: int, x, y) -> None:
        pass


def boundary_scores(learner: Any, steps_per_task: int, n_tasks: int) -> dict[str, Any]:
    """TAME's detected task boundaries (steps at which its training expert changed) against the true ones
    (``k * steps_per_task``, k = 1..n_tasks-1): a detection within :data:`TAME_TOLERANCE` steps at or after a true
    boundary matches it (each boundary once). Precision: matched detections / detections (0 with none);
    recall: matched boundaries / (n_tasks - 1). NaN for the other methods."""
    detected = getattr(learner.model, "boundaries", None)
    if detected is None:
        return dict(boundary_precision=float("nan"), boundary_recall=float("nan"), n_experts=float("nan"),
                    tame_boundaries=[])
    true = [k * steps_per_task for k in range(1, n_tasks)]
    matched = {b for b in true if any(b <= d < b + TAME_TOLERANCE for d in detected)}
    hits = sum(any(b <= d < b + TAME_TOLERANCE for b in true) for d in detected)
    return dict(boundary_precision=hits / len(detected) if detected else 0.0, boundary_recall=len(matched) / len(true),
                n_experts=float(len(learner.model.experts)), tame_boundaries=list(detected))


def tame_verdict(summary: list[dict[str, Any]], n_tasks: int) -> str:
    """TAME's claim: the loss-shift detector finds the task boundaries (precision and recall of the detected
    boundaries, mean over seeds, both at least :data:`TAME_SHOWN`)."""
    row = next((s for s in summary if s["method"] == "TAME"), None)
    if row is None:
        return "TAME boundary claim: TAME not run"
    p, r = row["boundary_precision_mean"], row["boundary_recall_mean"]
    shown = p >= TAME_SHOWN and r >= TAME_SHOWN
    return (f"TAME boundary claim: precision {fmt_ci(p, row['boundary_precision_ci'] or 0.0, 2)}, recall "
            f"{fmt_ci(r, row['boundary_recall_ci'] or 0.0, 2)} of the detected task boundaries (within "
            f"{TAME_TOLERANCE} steps), {row['n_experts_mean']:.1f} experts for {n_tasks} tasks: "
            f"{'SHOWN' if shown else 'NOT SHOWN'} (shown: both >= {TAME_SHOWN:g})")
