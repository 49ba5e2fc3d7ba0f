"""Golden TAME expert switching, made by running the authors' own training loop.

Source: github.com/HaoranZhuExplorer/TAME at commit 277a0a5e4709a656f984aff64705b73786196957 (the code of
"TAME: Task Agnostic Continual Learning using Multiple Experts", arXiv:2210.03869). Their ``utils_.py`` imports
torchvision, their pruning modules and their model zoo at module level, so this script parses it and executes,
unchanged, only its constants (``criterion``, ``MOMENTUM``, ``WEIGHT_DECAY``, ``MILESTONES``, ``GAMMA``,
``T_MAX``, ``DATASET_CONFIGS``) and its functions and class ``train``, ``test``, ``Expert``, ``add_new_expert``,
``train_wrapper`` and ``train_all_experts``. Their ``Net`` (a LeNet on 32x32 images) is replaced by a small MLP
(4-32-2 with their sigmoid output), each built from a fixed seed, whose initial weights are stored so the
test can start from the same ones; ``device`` is the CPU. The stream is synthetic (seed 3): 4-dimensional Gaussian
inputs, each task its own mean and its own labelling direction, two classes per task (their 'domain' labels),
tasks in the order 0, 1, 2, 1, 3 (their Fig. 4b order; task 1 is task 0 with its labels swapped), 40 batches
of 32 per task, shuffle off as theirs.
``train_all_experts(..., dataset="splitMNIST", window_size=10, smoothing_factor=0.2, learning_rate=0.1,
use_sch=2, num_iter_per_epoch=10**9, warmup_epochs=0)``: the scheduler never steps. Their printed events
("Time to switch at iter", "Switching to the expert", "Added a new expert at iter") are parsed into
``(iteration, expert, created)`` and each expert's record (``all_losses``, ``all_smoothed_losses``,
``all_thresholds``, final ``loss_window`` and ``smoothed_losses_when_active``) is stored.

Run from the repository root with their checkout (e.g. ``git archive 277a0a5``) at TAME_REF:

    TAME_REF=/path/to/TAME PYTHONPATH=src .venv/bin/python tools/golden/make_tame_golden.py

Writes tests/data/tame_golden.pt.
"""
import ast
import contextlib
import heapq
import io
import math
import os
import random
import re
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset

REF = Path(os.environ["TAME_REF"]) / "utils_.py"
tree = ast.parse(REF.read_text())
KEEP_DEFS = {"train", "test", "Expert", "add_new_expert", "train_wrapper", "train_all_experts"}
KEEP_CONSTS = {"criterion", "MOMENTUM", "WEIGHT_DECAY", "MILESTONES", "GAMMA", "T_MAX", "DATASET_CONFIGS"}
body = [n for n in tree.body if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in KEEP_DEFS)
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in KEEP_CONSTS for t in n.targets))]
assert {n.name for n in body if not isinstance(n, ast.Assign)} == KEEP_DEFS, "their utils_.py changed"

DIM, HIDDEN, PER_TASK, BATCHES, BATCH = 4, 32, 2, 40, 32
INITIAL_STATES = []


def make_expert(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, PER_TASK), nn.Sigmoid())


def Net(num_channels, output_size):  # stands in for their LeNet (see the docstring)
    assert output_size == PER_TASK
    net = make_expert(1000 + len(INITIAL_STATES))
    INITIAL_STATES.append({k: v.clone() for k, v in net.state_dict().items()})
    return net


theirs = dict(torch=torch, nn=nn, optim=optim, np=np, deque=deque, heapq=heapq, random=random, math=math,
              device=torch.device("cpu"), DataLoader=DataLoader, TensorDataset=TensorDataset, Net=Net)
exec(compile(ast.Module(body=body, type_ignores=[]), str(REF), "exec"), theirs)


def stream(seed, order=(0, 1, 2, 1, 3)):
    gen = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(4, DIM, generator=gen)
    dirs = torch.randn(4, DIM, generator=gen)
    dirs[1] = -dirs[0]  # task 1 relabels task 0's inputs the other way round
    means[1] = means[0]
    out, index = [], 0
    for task in order:
        for _ in range(BATCHES):
            x = means[task] + torch.randn(BATCH, DIM, generator=gen)
            y = ((x - means[task]) @ dirs[task] > 0).long()
            out.append((x, y, torch.full((BATCH,), task), y + PER_TASK * task, torch.arange(index, index + BATCH)))
            index += BATCH
    return out


if __name__ == "__main__":
    random.seed(0)
    batches = stream(seed=3)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        experts, _ = theirs["train_all_experts"](
            num_channels=1, num_classes_per_task=PER_TASK, replay_capacity=100, prune_capacity=50,
            learning_rate=0.1, batch_size=16, dataset="splitMNIST", dataloader=batches, window_size=10,
            smoothing_factor=0.2, use_sch=2, num_iter_per_epoch=10 ** 9, warmup_epochs=0)
    events, pending = [], None
    for line in log.getvalue().splitlines():
        if m := re.match(r"Time to switch at iter (\d+)", line):
            pending = int(m.group(1))
        elif m := re.match(r"Switching to the expert (\d+)", line):
            events.append((pending, int(m.group(1)), False))
        elif m := re.match(r"Added a new expert at iter (\d+)", line):
            events.append((pending, len([e for e in events if e[2]]) + 1, True))
    f64 = lambda v: torch.tensor(np.asarray(v, dtype=np.float64))  # noqa: E731
    record = [dict(all_losses=f64(e.all_losses), all_smoothed=f64(e.all_smoothed_losses),
                   thresholds=f64(e.all_thresholds), window=f64(list(e.loss_window)),
                   active_smoothed=f64(e.smoothed_losses_when_active), is_active=e.is_active) for e in experts]
    golden = dict(x=torch.stack([b[0] for b in batches]), y=torch.stack([b[1] for b in batches]),
                  task=torch.tensor([int(b[2][0]) for b in batches]), initial_states=INITIAL_STATES,
                  events=events, experts=record, window=10, smoothing=0.2, lr=0.1, momentum=theirs["MOMENTUM"],
                  weight_decay=theirs["WEIGHT_DECAY"])
    print("switch events", events, "experts", len(experts))
    out = Path(__file__).parents[2] / "tests" / "data" / "tame_golden.pt"
    torch.save(golden, out)
    print("wrote", out, out.stat().st_size, "bytes")
