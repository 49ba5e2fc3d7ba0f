"""Train one model with one optimizer on one task and record what happened."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gradwise.arena.tasks import Task, mlp

__all__ = ["RunResult", "train", "torch_threads", "batches"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass
class RunResult:
    """The outcome of one (optimizer, seed) run.

    ``curve_steps``/``curve_loss`` hold the full-batch training loss, measured
    every ``eval_every`` steps and at step 0. ``steps_to_target`` is the first
    measured step whose training loss is at or below the target, or None.
    ``diverged`` is True when the loss became non-finite (training then stops).
    """

    optimizer: str
    seed: int
    lr: float
    steps: int
    eval_acc: float
    eval_loss: float
    final_train_loss: float
    steps_to_target: int | None
    wall_s: float
    diverged: bool = False
    curve_steps: list[int] = field(default_factory=list)
    curve_loss: list[float] = field(default_factory=list)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)``, restoring the old value after."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """Index tensor of shape (steps, batch_size): shuffled epochs laid end to end."""
    if batch_size >= n:
        return torch.arange(n).expand(steps, n)
    epochs = math.ceil(steps * batch_size / n)
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def train(task: Task, name: str, make_optimizer: OptimizerFactory, *, lr: float, seed: int, steps: int,
          batch_size: int, hidden: tuple[int, ...], eval_every: int, target_loss: float) -> RunResult:
    """Train a fresh MLP on ``task`` with ``make_optimizer(params, lr=lr)``.

    Deterministic: the model's initialization and the minibatch order depend
    only on ``seed``, so the same arguments give bit-identical results on the
    same machine and thread count.
    """
    torch.manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, hidden)
    gen = torch.Generator().manual_seed(seed)
    order = batches(len(task.y_train), batch_size, steps, gen)
    opt = make_optimizer(model.parameters(), lr=lr)

    start = time.perf_counter()
    curve_steps, curve_loss = [0], [_evaluate(model, task.x_train, task.y_train)[0]]
    reached: int | None = None
    diverged = False
    for step in range(1, steps + 1):
        idx = order[step - 1]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(task.x_train[idx]), task.y_train[idx]).backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            loss = _evaluate(model, task.x_train, task.y_train)[0]
            model.train()
            curve_steps.append(step)
            curve_loss.append(loss)
            if reached is None and loss <= target_loss:
                reached = step
            if not math.isfinite(loss):
                diverged = True
                break
    eval_loss, eval_acc = _evaluate(model, task.x_eval, task.y_eval)
    wall = time.perf_counter() - start
    return RunResult(optimizer=name, seed=seed, lr=lr, steps=steps, eval_acc=eval_acc, eval_loss=eval_loss,
                     final_train_loss=curve_loss[-1], steps_to_target=reached, wall_s=wall, diverged=diverged,
                     curve_steps=curve_steps, curve_loss=curve_loss)
