r"""Continual evaluation for the continual family: the evaluator bound to a model, the worst-case metrics of
De Lange et al. (2023), and A-GEM's learning curve area.

The per-iteration record and its metrics live in :mod:`gradwise.metrics.continual_evaluation` (shared with
every training loop); this module re-exports them under the names issue 17 gives them and adds:

* :class:`ContinualEvaluator`: ``ContinualEvaluator(model, eval_sets, every=1)`` with
  ``.track(step, current_task)``, a front on :class:`gradwise.metrics.ContinualEvaluator` that keeps the
  model and accepts tensors ``(x, y)`` as evaluation sets (the record, its validation and its metrics are
  the base class's);
* :func:`learning_curves`: each task's accuracies while it is the task being trained;
* :func:`lca`: the learning curve area :math:`\text{LCA}_\beta` (Chaudhry et al., 2019).

Names: ``min_acc`` is the paper's min-ACC (Eq. 5, the average over earlier tasks of their minimum,
``metrics.avg_min_acc``); ``min_acc_per_task`` the per-task minimum; ``wc_acc`` (Eq. 6),
``windowed_forgetting`` and ``windowed_plasticity`` are the metrics family's functions themselves.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_choice, check_int
from gradwise.metrics import ContinualEvaluator as _RecordEvaluator
from gradwise.metrics import (avg_min_acc, continual_metrics, min_acc_per_task, stability_gap, wc_acc,
                              windowed_forgetting, windowed_plasticity)
from gradwise.metrics.continual_evaluation import check_record
from gradwise.registry import register

__all__ = ["ContinualEvaluator", "continual_metrics", "lca", "learning_curves", "min_acc", "min_acc_per_task",
           "stability_gap", "wc_acc", "windowed_forgetting", "windowed_plasticity"]

min_acc = avg_min_acc


def _as_loader(eval_set, batch_size: int | None, t: int):
    """An evaluation set as the base class reads it: an iterable of ``(x, y, ...)`` batches. A pair of
    tensors ``(x, y)`` becomes one batch, or batches of ``batch_size`` rows."""
    if isinstance(eval_set, (tuple, list)) and len(eval_set) == 2 and all(torch.is_tensor(v) for v in eval_set):
        x, y = eval_set
        if x.dim() == 0 or y.dim() != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
            raise ValueError(f"Invalid eval_sets: set {t} has x {tuple(x.shape)} and y {tuple(y.shape)} "
                             "(accepted: x [N, ...] and labels y [N], N >= 1)")
        if batch_size is None:
            return [(x, y)]
        return list(zip(x.split(batch_size), y.split(batch_size)))
    if isinstance(eval_set, (str, bytes)) or not hasattr(eval_set, "__iter__"):
        raise ValueError(f"Invalid eval_sets: set {t} is {type(eval_set).__name__} (accepted: a pair of tensors "
                         "(x, y) or an iterable of (x, y, ...) batches, e.g. a DataLoader)")
    return eval_set


class ContinualEvaluator(_RecordEvaluator):
    r"""Evaluate ``model`` on every task's evaluation set every ``every`` training steps (De Lange et al.,
    "Continual evaluation for lifelong learning: Identifying the stability gap", ICLR 2023, arXiv:2205.13452;
    authors' code github.com/Mattdl/ContinualEvaluation).

    ``eval_sets``: one per task, each a pair of tensors ``(x, y)`` (one batch, or batches of ``batch_size``
    rows) or an iterable of ``(x, y, ...)`` batches. Call ``track(step, current_task)`` after each training
    step of task ``current_task``: when ``step % every == 0`` it evaluates (one pass over each seen task's
    set) and returns the column of accuracies it appended (NaN for tasks not trained yet), else None.
    ``evaluate_now(step, current_task)`` evaluates whatever the step (e.g. before training, or at a task's
    last step). Everything else is :class:`gradwise.metrics.ContinualEvaluator`'s: the record
    ``accuracy`` [T, S], ``current_task``, ``steps``, ``history``, :meth:`metrics` (avg-min-ACC, WC-ACC,
    WF\ :sup:`w`, windowed plasticity, final accuracy, stability gap), the evaluation in eval mode under
    ``no_grad`` with each module's mode restored; plus :meth:`lca`.
    """

    def __init__(self, model: nn.Module, eval_sets: Sequence, *, every: int = 1, skip_unseen_tasks: bool = True,
                 predict: Callable | None = None, batch_size: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        if batch_size is not None:
            batch_size = check_int("batch_size", batch_size, 1)
        if isinstance(eval_sets, (str, bytes)) or not isinstance(eval_sets, Sequence) or not eval_sets:
            raise ValueError(f"Invalid eval_sets: {type(eval_sets).__name__} (accepted: a non-empty sequence, one "
                             "evaluation set per task)")
        super().__init__([_as_loader(s, batch_size, t) for t, s in enumerate(eval_sets)], every=every,
                         skip_unseen_tasks=skip_unseen_tasks, predict=predict)
        self.model = model

    def track(self, step: int, current_task: int) -> Tensor | None:
        """After training step ``step`` of task ``current_task``: evaluate if due; the new column or None."""
        n = len(self.history)
        self.on_step(step, model=self.model, task=current_task)
        return self.accuracy[:, -1] if len(self.history) > n else None

    def evaluate_now(self, step: int, current_task: int) -> Tensor:
        """Evaluate at ``step`` whatever ``every`` says; returns the new column."""
        return self.evaluate(step, self.model, current_task)

    def lca(self, beta: int = 10, rule: str = "mean") -> Tensor:
        """:func:`lca` of the record's :func:`learning_curves` (each task's accuracies while it trains)."""
        return lca(learning_curves(self.accuracy, self.current_task), beta, rule=rule)


def learning_curves(acc: Tensor, current_task) -> Tensor:
    """``[T, L]``: row ``k`` holds ``acc[k, s]`` at the evaluation steps ``s`` at which task ``k`` was the task
    being trained, in order, padded with NaN (``L`` the longest). These are the values the authors'
    ``TrackingLCAPluginMetric`` collects; for A-GEM's :math:`Z_b` the first one must be task ``k``'s accuracy
    before its first update (call ``evaluate_now`` with the new task before training it)."""
    acc, cur = check_record(acc, current_task)
    rows = [acc[k, cur == k] for k in range(acc.shape[0])]
    width = max(r.numel() for r in rows)
    out = acc.new_full((acc.shape[0], width), torch.nan)
    for k, r in enumerate(rows):
        out[k, :r.numel()] = r
    return out


@register(kind="metric", paper="Efficient Lifelong Learning with A-GEM", year=2019, arxiv="1812.00420",
          code="https://github.com/facebookresearch/agem", seed=False,
          summary="learning curve area LCA_beta: the average b-shot accuracy of each task over its first "
                  "beta+1 minibatches (how fast new tasks are learned)")
def lca(curves: Tensor, beta: int = 10, *, rule: str = "mean") -> Tensor:
    r"""Learning curve area :math:`\text{LCA}_\beta` (Chaudhry, Ranzato, Rohrbach, Elhoseiny, "Efficient
    Lifelong Learning with A-GEM", ICLR 2019, arXiv:1812.00420; code github.com/facebookresearch/agem).

    ``curves`` [T, L]: ``curves[k, b]`` is the accuracy on task ``k`` after the model has seen ``b``
    minibatches of task ``k`` (``b = 0``: before its first update; NaN where not measured), e.g.
    :func:`learning_curves` of a continual-evaluation record. With the average ``b``-shot accuracy
    :math:`Z_b = \frac1T \sum_k a_{k,b,k}`,

    .. math:: \text{LCA}_\beta = \frac{1}{\beta + 1} \sum_{b=0}^{\beta} Z_b \quad (\texttt{rule="mean"})

    the area under the average learning curve of the first :math:`\beta` minibatches, normalized: high when
    tasks are learned quickly (:math:`\text{LCA}_0` is the zero-shot accuracy). The stored text of the paper
    gives only its abstract, so the definition is taken from the authors' code: ``rule="mean"`` is the
    equation as Mattdl/ContinualEvaluation's ``TrackingLCAPluginMetric`` computes it (per task the mean of its
    window, then the mean over tasks: the same number); ``rule="trapezoid"`` is what the A-GEM authors'
    plotting notebook (``plotting_code/agem_plots.ipynb``) reports: the trapezoid area
    :math:`\frac1\beta \sum_{b<\beta} \frac{Z_b + Z_{b+1}}{2}` (:math:`Z_0` for :math:`\beta = 0`).

    Tasks with fewer than ``beta + 1`` measured values are left out (as Mattdl's plugin leaves out a task
    whose window is not full); NaN when no task has them. Mattdl's ``TrackingLCAPluginMetric(beta=n)``
    averages the first ``n`` values, i.e. ``lca(curves, n - 1)``; their tracking has no evaluation before a
    task's first update (except the very first), so their window starts at ``b = 1``.
    """
    if not torch.is_tensor(curves) or curves.dim() != 2 or not curves.is_floating_point() or curves.shape[0] == 0:
        raise ValueError(f"Invalid curves: {type(curves).__name__}"
                         f"{tuple(curves.shape) if torch.is_tensor(curves) else ''} (accepted: a float tensor "
                         "[tasks, minibatches seen], NaN where not measured)")
    beta = check_int("beta", beta, 0)
    check_choice("rule", rule, ("mean", "trapezoid"))
    window = curves[:, :beta + 1]
    if window.shape[1] < beta + 1:
        return curves.new_tensor(torch.nan)
    full = torch.isfinite(window).all(1)
    z = torch.where(full[:, None], window, 0.0).sum(0) / full.sum()  # Z_b over the tasks that count
    if rule == "mean" or beta == 0:
        return z.mean()
    return torch.trapezoid(z) / beta
