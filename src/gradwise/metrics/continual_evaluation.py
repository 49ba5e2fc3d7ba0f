r"""Continual evaluation (De Lange et al., 2023): per-iteration accuracy on every task seen so far, and the
worst-case metrics computed from that record (min-ACC, WC-ACC, windowed forgetting/plasticity, stability gap).

The functions take an accuracy record and are meant to be imported by other families too (continual
learning reuses ``avg_min_acc``, ``wc_acc`` and ``windowed_forgetting``):

* ``acc``: a float tensor [T, S], ``acc[t, s]`` the accuracy of task ``t``'s evaluation set at evaluation
  step ``s`` (steps in time order), NaN where task ``t`` was not evaluated at step ``s`` (the authors skip
  tasks not trained yet);
* ``current_task``: integers [S], the task being trained at evaluation step ``s`` (its changes are the
  task boundaries).

:class:`ContinualEvaluator` builds that record on any training loop (a :class:`TrainingCallback`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_bool, check_int
from gradwise.metrics.callback import TrainingCallback
from gradwise.registry import register

__all__ = ["ContinualEvaluator", "avg_min_acc", "continual_metrics", "final_average_accuracy", "min_acc_per_task",
           "stability_gap", "wc_acc", "windowed_forgetting", "windowed_plasticity"]


def check_record(acc, current_task=None) -> tuple[Tensor, Tensor | None]:
    """``(acc, current_task as long)`` after checking them (ValueError naming the argument); shared with
    ``gradwise.continual``, which reads the same record."""
    if not torch.is_tensor(acc) or acc.dim() != 2 or not acc.is_floating_point() or acc.shape[1] == 0:
        raise ValueError(f"Invalid acc: {type(acc).__name__}{tuple(acc.shape) if torch.is_tensor(acc) else ''} "
                         "(accepted: a float tensor [tasks, evaluation steps], NaN where not evaluated)")
    if current_task is None:
        return acc, None
    cur = torch.as_tensor(current_task, device=acc.device)
    if cur.dim() != 1 or cur.is_floating_point() or cur.dtype == torch.bool or cur.numel() != acc.shape[1] \
            or (cur.numel() and (int(cur.min()) < 0 or int(cur.max()) >= acc.shape[0])):
        raise ValueError(f"Invalid current_task: {current_task!r} (accepted: {acc.shape[1]} integers in "
                         f"[0, {acc.shape[0]}), the task trained at each evaluation step of acc)")
    return acc, cur.long()


def min_acc_per_task(acc: Tensor, current_task) -> Tensor:
    """``[T, S]``: task ``t``'s minimum accuracy over the evaluation steps ``<= s`` at which it was evaluated
    while another task was being trained (NaN before there is one): the authors'
    ``TaskTrackingMINAccuracyPluginMetric``."""
    acc, cur = check_record(acc, current_task)
    usable = torch.isfinite(acc) & (torch.arange(acc.shape[0], device=acc.device)[:, None] != cur[None, :])
    running = torch.cummin(torch.where(usable, acc, torch.inf), dim=1).values
    return torch.where(usable.cumsum(1) > 0, running, torch.nan)


def avg_min_acc(acc: Tensor, current_task) -> Tensor:
    r"""``[S]``: avg-min-ACC at each step, the mean over the tasks that have a min-ACC of their min-ACC,

    .. math:: \text{min-ACC}_{T_k} = \frac{1}{k-1}\sum_{i<k} \min_{|T_i| < n \le t} A(E_i, f_n)

    (the paper's Eq. 5 with the authors' code: every task with a minimum so far counts; NaN before any)."""
    mins = min_acc_per_task(acc, current_task)
    return torch.nanmean(mins, dim=0)


def wc_acc(acc: Tensor, current_task) -> Tensor:
    r"""``[S]``: worst-case accuracy at each step, :math:`\text{WC-ACC}_t = \frac1k A(E_k, f_t) +
    (1 - \frac1k)\,\text{min-ACC}_{T_k}` (paper Eq. 6), computed as the authors' ``WCACCPluginMetric``
    does: the mean of the current task's accuracy and the min-ACC of every other task that has one.
    Tasks are evaluated in index order, so a task after the current one counts with its minimum up to
    the previous step (only matters when unseen tasks are evaluated)."""
    acc, cur = check_record(acc, current_task)
    mins = min_acc_per_task(acc, cur)
    before = torch.cat([torch.full_like(mins[:, :1], torch.nan), mins[:, :-1]], dim=1)
    tasks = torch.arange(acc.shape[0], device=acc.device)[:, None]
    others = torch.where(tasks < cur[None, :], mins, before)
    others = torch.where(tasks == cur[None, :], torch.nan, others)
    counted = torch.isfinite(others)
    current = acc.gather(0, cur[None, :])[0]
    return (current + torch.where(counted, others, 0.0).sum(0)) / (1 + counted.sum(0))


def _windowed_max_delta(acc: Tensor, window: int, plasticity: bool) -> Tensor:
    window = check_int("window", window, 1)
    acc, _ = check_record(acc)
    out = torch.full_like(acc, torch.nan)
    for t in range(acc.shape[0]):
        seen = torch.isfinite(acc[t])
        v = acc[t][seen]
        n = v.numel()
        if n == 0:
            continue
        # Row j holds the window ending at task t's j-th evaluation (its last `window` values; invalid on the left).
        idx = torch.arange(n, device=v.device)[:, None] + torch.arange(1 - window, 1, device=v.device)[None, :]
        valid = idx >= 0
        w = v[idx.clamp(min=0)]
        # The authors' loop starts a delta only at values >= every earlier value of the window (a shortcut
        # exact for forgetting, not for plasticity): followed as written.
        start = valid & (w >= torch.cummax(torch.where(valid, w, -torch.inf), 1).values)
        if plasticity:
            after = torch.cummax(w.flip(1), 1).values.flip(1)
            delta = after[:, 1:] - w[:, :-1]
        else:
            after = torch.cummin(w.flip(1), 1).values.flip(1)
            delta = w[:, :-1] - after[:, 1:]
        best = torch.where(start[:, :-1], delta, -torch.inf).amax(1) if window > 1 else v.new_zeros(n)
        best = torch.cummax(best.clamp(min=0), 0).values  # running max over windows, from 0 as theirs
        pos = seen.long().cumsum(0) - 1
        out[t] = torch.where(pos >= 0, best[pos.clamp(min=0)], torch.nan)
    return out


def windowed_forgetting(acc: Tensor, window: int = 10) -> Tensor:
    r"""``[T, S]``: windowed forgetting WF\ :sup:`w` of each task up to each step (NaN before its first
    evaluation): the largest drop :math:`\max_{i<j} A_i - A_j` between two of its evaluations inside a window
    of ``window`` consecutive evaluations, maximized over all windows so far and floored at 0 (the authors'
    ``WindowedForgettingPluginMetric``; their runs report ``window`` 10 and 100, averaged over tasks)."""
    return _windowed_max_delta(acc, window, False)


def windowed_plasticity(acc: Tensor, window: int = 10) -> Tensor:
    """``[T, S]``: as :func:`windowed_forgetting` with a rise ``A_j - A_i`` (the authors'
    ``WindowedPlasticityPluginMetric``). Their loop, shared with forgetting, only considers rises that start
    at a value no lower than every earlier value in the window, so this is not always the largest rise in
    the window; it is followed as written, so that numbers match theirs."""
    return _windowed_max_delta(acc, window, True)


def stability_gap(acc: Tensor, current_task, window: int | None = None) -> Tensor:
    """``[T]``: for each task, its accuracy at the last evaluation of its (first) training phase minus its
    minimum over the first ``window`` evaluations of the phase that follows (all of them by default); NaN
    for a task no other phase follows. The paper shows the stability gap in plots and does not define one
    number; this is gradwise's summary of "the drop right after a task switch"."""
    acc, cur = check_record(acc, current_task)
    if window is not None:
        window = check_int("window", window, 1)
    out = torch.full((acc.shape[0],), torch.nan, dtype=acc.dtype, device=acc.device)
    change = torch.nonzero(cur[1:] != cur[:-1]).flatten().tolist()
    starts = [0] + [c + 1 for c in change]
    ends = [c + 1 for c in change] + [cur.numel()]
    for p in range(len(starts) - 1):
        t = int(cur[starts[p]])
        if not torch.isnan(out[t]):
            continue  # the first phase of a task counts
        end_acc = acc[t, ends[p] - 1]
        after = acc[t, starts[p + 1]:ends[p + 1]]
        after = after[torch.isfinite(after)]
        if window is not None:
            after = after[:window]
        if after.numel() and torch.isfinite(end_acc):
            out[t] = end_acc - after.min()
    return out


def final_average_accuracy(acc: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over tasks of the accuracy at the last evaluation step (the usual final ACC); ``weights`` (e.g.
    each task's evaluation-set size) gives Avalanche's stream accuracy, which pools the samples."""
    acc, _ = check_record(acc)
    last = acc[:, -1]
    if not bool(torch.isfinite(last).all()):
        raise ValueError("Invalid acc: its last evaluation step has NaN (accepted: every task evaluated at the "
                         "last step)")
    if weights is None:
        return last.mean()
    w = torch.as_tensor(weights, dtype=acc.dtype, device=acc.device)
    if w.shape != last.shape or not bool((w >= 0).all()) or not bool(w.sum() > 0):
        raise ValueError(f"Invalid weights: {weights!r} (accepted: {acc.shape[0]} non-negative numbers, not all 0)")
    return (w * last).sum() / w.sum()


def continual_metrics(acc: Tensor, current_task, windows: Sequence[int] = (10, 100)) -> dict[str, float]:
    """The final numbers the authors report (their ``*_final`` metrics, as fractions not percentages):
    ``avg_min_acc``, ``wc_acc``, ``wf{w}`` and ``wp{w}`` (task-averaged windowed forgetting and plasticity)
    for each window, plus ``final_avg_acc`` and ``stability_gap`` (mean over tasks that have one)."""
    acc, cur = check_record(acc, current_task)
    out = {"avg_min_acc": float(avg_min_acc(acc, cur)[-1]), "wc_acc": float(wc_acc(acc, cur)[-1])}
    for w in windows:
        out[f"wf{w}"] = float(torch.nanmean(windowed_forgetting(acc, w)[:, -1]))
        out[f"wp{w}"] = float(torch.nanmean(windowed_plasticity(acc, w)[:, -1]))
    last = acc[:, -1]
    out["final_avg_acc"] = float(last.mean()) if bool(torch.isfinite(last).all()) else float("nan")
    out["stability_gap"] = float(torch.nanmean(stability_gap(acc, cur)))
    return out


@register(kind="metric", paper="Continual evaluation for lifelong learning: Identifying the stability gap",
          year=2023, arxiv="2205.13452",
          code="https://github.com/Mattdl/ContinualEvaluation/tree/7ffa3689af3aecb2b724b0cb13ef7da83bd87d90",
          summary="callback evaluating every k steps on each seen task; min-ACC, WC-ACC, windowed forgetting, "
                  "stability gap")
class ContinualEvaluator(TrainingCallback):
    r"""Evaluate the model every ``every`` training steps on the evaluation set of each task seen so far.

    Paper: De Lange, van de Ven, Tuytelaars, "Continual evaluation for lifelong learning: Identifying the
    stability gap", ICLR 2023, arXiv:2205.13452. Authors' code: github.com/Mattdl/ContinualEvaluation
    (``src/eval/continual_eval.py``, ``continual_eval_metrics.py``; Avalanche plugins). Continual
    evaluation measures :math:`A(E_i, f_t)`, task ``i``'s accuracy after every training iteration ``t``
    (the authors' ``eval_periodicity`` 1), instead of only at task ends; its minimum after a task was
    learned exposes the *stability gap*: a large forgetting right after a switch that later recovers.
    The metrics are the module's functions on the record this callback builds:
    :func:`avg_min_acc` (Eq. 5), :func:`wc_acc` (Eq. 6), :func:`windowed_forgetting` (WF\ :sup:`w`),
    :func:`windowed_plasticity`, :func:`stability_gap`, :func:`final_average_accuracy`.

    Use: ``on_step(step, model=model, task=k)`` after each optimizer step while task ``k`` trains; the
    callback evaluates when ``step % every == 0`` (call :meth:`evaluate` to force one, e.g. at a task's
    last step, as the authors also do). Each loader yields batches ``(x, y, ...)``; the prediction is the
    argmax of ``predict(model, x)`` (default ``model(x)``), accuracy is correct / total over the loader, as
    Avalanche's ``Accuracy``. Evaluation runs in eval mode under ``torch.no_grad`` and restores each module's
    training mode. With ``skip_unseen_tasks`` (the authors' default) tasks not trained yet are left NaN.

    Departures from the authors' code: no pre-update evaluation at step -1 is made for you (call
    :meth:`evaluate` before training for it); their optional eval-subset sampling and loss/gradnorm/feature
    tracking are left out; the functions return whole per-step trajectories (their plugins emit one value
    per step). Results: ``accuracy`` [T, S], ``current_task`` [S], ``steps`` [S], :meth:`metrics`, and
    ``history`` entries ``(step, {"acc": [...], "avg_min_acc": x, "wc_acc": x})``.
    """

    def __init__(self, eval_loaders: Sequence, *, every: int = 1, skip_unseen_tasks: bool = True,
                 predict: Callable | None = None) -> None:
        super().__init__(every)
        if isinstance(eval_loaders, (str, bytes)) or not isinstance(eval_loaders, Sequence) or not eval_loaders:
            raise ValueError(f"Invalid eval_loaders: {type(eval_loaders).__name__} (accepted: a non-empty "
                             "sequence, one iterable of (x, y) batches per task)")
        if predict is not None and not callable(predict):
            raise ValueError(f"Invalid predict: {predict!r} (accepted: None or a callable (model, x) -> logits)")
        self.eval_loaders = list(eval_loaders)
        self.skip_unseen_tasks = check_bool("skip_unseen_tasks", skip_unseen_tasks)
        self.predict = predict
        self.seen_tasks: set[int] = set()
        self._columns: list[Tensor] = []
        self._tasks: list[int] = []
        self._steps: list[int] = []
        self._min = torch.full((len(self.eval_loaders),), torch.inf, dtype=torch.float64)  # running min-ACC

    def _check_task(self, task) -> int:
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < len(self.eval_loaders):
            raise ValueError(f"Invalid task: {task!r} (accepted: the index of the task being trained, an integer "
                             f"in [0, {len(self.eval_loaders)}))")
        return task

    def on_step(self, step: int, *, model=None, loss=None, task=None, **ctx) -> None:
        task = self._check_task(task)
        self.seen_tasks.add(task)
        if self.due(step):
            self.evaluate(step, model, task)

    def on_eval(self, step: int, *, model=None, task=None, **ctx) -> None:
        self.evaluate(step, model, self._check_task(task))

    @torch.no_grad()
    def evaluate(self, step: int, model: nn.Module, task: int) -> Tensor:
        """Evaluate now and append one column to the record; returns it ([T], NaN for skipped tasks)."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        task = self._check_task(task)
        self.seen_tasks.add(task)
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        column = torch.full((len(self.eval_loaders),), torch.nan, dtype=torch.float64)
        try:
            for t, loader in enumerate(self.eval_loaders):
                if self.skip_unseen_tasks and t not in self.seen_tasks:
                    continue
                correct, total = 0, 0
                for batch in loader:
                    x, y = batch[0], batch[1]
                    logits = self.predict(model, x) if self.predict is not None else model(x)
                    correct += int((logits.argmax(-1) == y).sum())
                    total += y.shape[0]
                if total:
                    column[t] = correct / total
        finally:
            for m, mode in modes:
                m.train(mode)
        self._columns.append(column)
        self._tasks.append(task)
        self._steps.append(int(step))
        # this step's avg-min-ACC and WC-ACC from the running per-task minima (as min_acc_per_task and
        # wc_acc compute them on the whole record), so a long run costs O(T) per evaluation, not O(T * S)
        tasks = torch.arange(column.numel())
        before = self._min
        self._min = torch.minimum(before, torch.where(torch.isfinite(column) & (tasks != task), column, torch.inf))
        mins = torch.where(torch.isfinite(self._min), self._min, torch.nan)
        others = torch.where(tasks < task, mins, torch.where(torch.isfinite(before), before, torch.nan))
        others = torch.where(tasks == task, torch.nan, others)
        counted = torch.isfinite(others)
        wc = (column[task] + torch.where(counted, others, 0.0).sum()) / (1 + counted.sum())
        self.record(step, {"acc": column.tolist(), "avg_min_acc": float(torch.nanmean(mins)), "wc_acc": float(wc)})
        return column

    @property
    def accuracy(self) -> Tensor:
        """[T, S] float64, one column per evaluation."""
        return torch.stack(self._columns, 1) if self._columns else torch.empty(len(self.eval_loaders), 0,
                                                                                 dtype=torch.float64)

    @property
    def current_task(self) -> Tensor:
        return torch.tensor(self._tasks, dtype=torch.long)

    @property
    def steps(self) -> Tensor:
        return torch.tensor(self._steps, dtype=torch.long)

    def metrics(self, windows: Sequence[int] = (10, 100)) -> dict[str, float]:
        """:func:`continual_metrics` of the record so far."""
        if not self._columns:
            raise ValueError("Invalid state: no evaluation recorded yet (accepted: call on_step/evaluate first)")
        return continual_metrics(self.accuracy, self.current_task, windows)
