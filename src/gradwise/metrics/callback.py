"""The one callback protocol the training diagnostics share, so any training loop can drive them.

A diagnostic that watches training (continual evaluation, per-sample loss changes, Hessian trace, ...)
subclasses :class:`TrainingCallback` and overrides one or both hooks:

* ``on_step(step, *, model=None, loss=None, **ctx)``: called by the loop after optimizer step ``step``
  (an int the loop counts, from 0 or 1 as it likes); ``ctx`` carries whatever else the loop knows
  (``task=`` the task being trained in a continual stream, ``batch=`` the batch, ...). A callback reads
  the keys it needs and ignores the rest, so one loop can drive callbacks that need different things.
* ``on_eval(step, *, model=None, **ctx)``: called when the loop evaluates (end of an epoch, of a task).

Each callback appends what it measures to ``history``, a list of ``(step, value)`` pairs, and ``every``
says how often ``on_step`` measures (:meth:`TrainingCallback.due`). :func:`call_callbacks` calls one hook
on a list of callbacks. This is all there is: no trainer, no events beyond these two hooks.

Example::

    callbacks = [ContinualEvaluator(eval_loaders, every=5), HessianTraceCallback(loss_fn, probe_batch)]
    for step, (x, y) in enumerate(loader):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        call_callbacks(callbacks, "on_step", step, model=model, loss=loss, task=task)
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gradwise._validate import check_choice, check_int

__all__ = ["TrainingCallback", "call_callbacks"]


class TrainingCallback:
    """Base class of the training diagnostics: two no-op hooks, ``every`` and a ``history`` of records.

    Subclasses override :meth:`on_step` and/or :meth:`on_eval` and call :meth:`record`.
    """

    def __init__(self, every: int = 1) -> None:
        self.every = check_int("every", every, 1)
        self.history: list[tuple[int, Any]] = []

    def due(self, step: int) -> bool:
        """Whether ``on_step`` measures at ``step`` (every ``every``-th step, counting from step 0)."""
        return int(step) % self.every == 0

    def record(self, step: int, value: Any) -> None:
        self.history.append((int(step), value))

    def on_step(self, step: int, *, model=None, loss=None, **ctx) -> None:
        """Called after optimizer step ``step``; the base does nothing."""

    def on_eval(self, step: int, *, model=None, **ctx) -> None:
        """Called when the loop evaluates; the base does nothing."""

    @property
    def latest(self) -> Any:
        """The last recorded value (None before any)."""
        return self.history[-1][1] if self.history else None


def call_callbacks(callbacks: Iterable[TrainingCallback], hook: str, step: int, **ctx) -> None:
    """Call ``hook`` ("on_step" or "on_eval") of each callback, in order, with ``step`` and ``ctx``."""
    check_choice("hook", hook, ("on_step", "on_eval"))
    for cb in callbacks:
        if not isinstance(cb, TrainingCallback):
            raise ValueError(f"Invalid callbacks: an element is {type(cb).__name__} "
                             "(accepted: TrainingCallback instances)")
        getattr(cb, hook)(step, **ctx)
