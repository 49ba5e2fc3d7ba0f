"""Study ``imbalance``: upsample or upweight on a long-tailed digits training set.

The digits training split is cut to a long tail: class ``c`` keeps
``round(n_max * ratio ** (-c / 9))`` samples (class 0 the most, class 9
``n_max / ratio``; which samples are kept is drawn with the run seed). The
test split is untouched; it is balanced (stratified), and the metrics are
balanced accuracy (mean per-class recall) and the worst class's recall.

Methods (all: the same MLP, Adam, ``steps`` minibatches of ``batch_size``):

* plain -- natural sampling (T = 1), plain cross-entropy;
* upsample -- temperature sampling with T = inf (every class equally often);
* upweight -- natural sampling, cross-entropy weighted by ``class_weights(counts, inf)``
  (the scalarization equivalent of T = inf);
* cooldown -- temperature sampling with ``cooldown_temperature``: T = ``t_start`` (5, the paper's value)
  for the first half, then T = 1 in one step (Li et al. 2025, §4).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "add_arguments", "run", "run_one", "long_tail"]

HELP = "long-tailed digits: plain vs upsampling vs upweighting vs Cooldown temperature sampling"
METHODS = ("plain", "upsample", "upweight", "cooldown")


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    split_seed: int = 0
    ratio: float = option(50.0, "imbalance ratio head/tail", at_least=1.0)  # head / tail class count
    hidden: tuple[int, ...] = (128, 128)
    batch_size: int = 64
    steps: int = option(1000, "optimizer steps per run", at_least=1)
    lr: float = 1e-3             # Adam
    t_start: float = 5.0         # Cooldown's initial temperature (the paper's)
    t_end: float = 1.0
    cooldown_start: float = 0.5
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()


def long_tail(y, num_classes: int, ratio: float, seed: int):
    """Indices of a long-tailed subset of labels ``y`` and the per-class counts."""
    import torch

    counts = torch.bincount(y, minlength=num_classes)
    n_max = int(counts.min())
    g = torch.Generator().manual_seed(10_000 + seed)
    keep, kept = [], []
    for c in range(num_classes):
        n_c = max(1, round(n_max * ratio ** (-c / (num_classes - 1))))
        idx = (y == c).nonzero().squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n_c]])
        kept.append(n_c)
    return torch.cat(keep), kept


def run_one(task, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp
    from gradwise.data_weighting import TemperatureSampler, class_weights
    from gradwise.schedules import cooldown_temperature

    t0 = time.perf_counter()
    idx, counts = long_tail(task.y_train, task.num_classes, cfg.ratio, seed)
    x, y = task.x_train[idx], task.y_train[idx]
    torch.manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    sampler = TemperatureSampler(y, temperature=math.inf if method == "upsample" else 1.0, generator=gen)
    weight = class_weights(counts, math.inf).float() if method == "upweight" else None
    for step in range(cfg.steps):
        if method == "cooldown":
            sampler.temperature = cooldown_temperature(step, cfg.steps, t_start=cfg.t_start, t_end=cfg.t_end,
                                                       cooldown_start=cfg.cooldown_start)
        b = sampler.draw(cfg.batch_size)
        opt.zero_grad()
        per = F.cross_entropy(model(x[b]), y[b], reduction="none")
        loss = (per * weight[y[b]]).mean() if weight is not None else per.mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(task.x_eval).argmax(1)
    recall = [float((pred[task.y_eval == c] == c).double().mean()) for c in range(task.num_classes)]
    return {"method": method, "seed": seed, "balanced_acc": statistics.fmean(recall), "worst_class_acc": min(recall),
            "tail_acc": statistics.fmean(recall[-3:]), "head_acc": statistics.fmean(recall[:3]),
            "accuracy": float((pred == task.y_eval).double().mean()), "per_class": recall, "train_counts": counts,
            "wall_s": time.perf_counter() - t0}


def _plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    fig, ax = plt.subplots(figsize=(8, 4.8))
    styles = curve_styles(METHODS)
    counts = rows[0]["train_counts"]
    classes = np.arange(len(counts))
    for m in METHODS:
        per = np.array([r["per_class"] for r in rows if r["method"] == m])
        if len(per):
            st = styles[m]
            ax.plot(classes, per.mean(0), color=st["color"], ls=st["ls"], marker=st["marker"], label=m, lw=1.3)
    ax.set_xticks(classes, [f"{c}\n(n={n})" for c, n in zip(classes, counts)], fontsize=8)
    ax.set_xlabel("class (training samples)")
    ax.set_ylabel("test recall (mean over seeds)")
    ax.set_title(wrap_title(title, 95), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _task(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg, counts = run.cfg, rows[0]["train_counts"]
    return (f"imbalance on digits: long tail ratio {cfg.ratio:g} (train counts {counts[0]}..{counts[-1]}, "
            f"{sum(counts)} samples), MLP, {cfg.steps} steps × batch {cfg.batch_size}, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return ("best first by balanced test accuracy (mean per-class recall); "
            f"{CI_NOTE}; {RANK_NOTE} (ranked on balanced accuracy); "
            f"cooldown: T={cfg.t_start:g}, then T={cfg.t_end:g} for the last {1 - cfg.cooldown_start:.0%} of steps")


STUDY = register_study(Study(
    name="imbalance", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, run_one=lambda run, method, seed, _: run_one(run.task, run.cfg, method, seed),
    summary_keys=("balanced_acc", "worst_class_acc", "tail_acc", "head_acc", "wall_s"), rank_on="balanced_acc",
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("balanced acc", "balanced_acc"),
             ci_column("worst class", "worst_class_acc"), ci_column("tail 3 classes", "tail_acc"),
             ci_column("head 3 classes", "head_acc"), Column("s/run", lambda s: f"{s['wall_s_mean']:.2f}")),
    csv_skip=("per_class", "train_counts"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "per_class_recall.png", rows, title),
    outputs=("per_class_recall.png",), smoke=("--seeds", "1", "--steps", "5"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
