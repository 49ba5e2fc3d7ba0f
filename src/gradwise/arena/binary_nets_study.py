"""Study ``binary-nets``: STE against ReSTE on a binary digits CNN, with the paper's two indicators.

ReSTE (Wu et al., "Estimator Meets Equilibrium Perspective: A Rectified Straight Through Estimator for Binary
Neural Networks Training", arXiv 2308.06689; :mod:`gradwise.compression.reste`) claims an equilibrium: as the
estimator's power ``o`` grows, its estimating error falls and its gradient stability worsens, and the best
accuracy lies in between (their CIFAR-10 ablation over o_end).

Model: scikit-learn's 8x8 digits (1,347 training, 450 test images), a CNN whose first conv and last linear
layer stay full precision (as the authors'): conv 1->32 + BN, then two binary convs 32->32 (3x3, each + BN,
max-pool after each), linear 32*2*2 -> 10. Binary convs binarize their weight to ``sign(W) mean|W|`` and, in
``1w1a``, their input to ``sign(x)`` (``1w32a``: input kept). Adam (lr 1e-3), batch 64, ``epochs`` epochs;
ReSTE's ``o`` follows the authors' schedule ``reste_o_schedule(epoch, epochs, o_end=...)`` (1 at the start).

Methods (``<bits>-<estimator>``, bits in 1w1a / 1w32a):

* ``ste`` -- sign with the clipped identity (BinaryConnect's STE);
* ``reste-o1`` / ``reste-o2`` / ``reste-o3`` -- ReSTE with ``o_end`` 1, 2, 3 (t 1.5, interval 0.1).

Reported per run: test accuracy; the estimating error ``sum_l ||f_o(w_l) - sign(w_l)||_2`` over the binary
convs' weights at the run's ``o_end`` (STE: o = 1) and the gradient stability ``sum_l var|g_l|`` of their
gradients, each averaged over the last step of every epoch (the authors log them per step and average over
epochs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "add_arguments", "run", "run_one", "binary_cnn"]

HELP = "binary digits CNN (1w1a, 1w32a): STE vs ReSTE at o_end 1, 2, 3, with estimating error and gradient stability"
ESTIMATORS = {"ste": None, "reste-o1": 1.0, "reste-o2": 2.0, "reste-o3": 3.0}
METHODS = tuple(f"{bits}-{est}" for bits in ("1w1a", "1w32a") for est in ESTIMATORS)


@dataclass(frozen=True)
class Config:
    test_fraction: float = 0.25
    split_seed: int = 0
    width: int = 32
    batch_size: int = 64
    lr: float = 1e-3
    epochs: int = option(12, "training epochs per run", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()


def binary_cnn(width: int, binarize_activations: bool, estimator: str):
    """Full-precision first conv and head, two binary 3x3 convs in between (8x8 input)."""
    from torch import nn

    from gradwise.compression import BinaryConv2d

    def block(c_in, c_out):
        return [BinaryConv2d(c_in, c_out, 3, padding=1, estimator=estimator, binarize_activations=binarize_activations),
                nn.BatchNorm2d(c_out), nn.MaxPool2d(2)]

    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         *block(width, width), *block(width, width), nn.Flatten(), nn.Linear(width * 4, 10))


def run_one(task, cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.compression import (BinaryConv2d, reste_estimating_error, reste_gradient_stability,
                                      reste_o_schedule, set_reste_o)

    t0 = time.perf_counter()
    bits, est = method.split("-", 1)
    o_end = ESTIMATORS[est]
    torch.manual_seed(seed)
    model = binary_cnn(cfg.width, bits == "1w1a", "ste" if o_end is None else "reste")
    binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x, y = task.x_train.reshape(-1, 1, 8, 8), task.y_train
    gen = torch.Generator().manual_seed(seed)
    errors, stabilities = [], []
    for epoch in range(cfg.epochs):
        if o_end is not None:
            set_reste_o(model, reste_o_schedule(epoch, cfg.epochs, o_end=o_end))
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        errors.append(float(reste_estimating_error([m.weight for m in binary], o_end or 1.0)))
        stabilities.append(float(reste_gradient_stability([m.weight.grad for m in binary])))
    model.eval()
    with torch.no_grad():
        acc = float((model(task.x_eval.reshape(-1, 1, 8, 8)).argmax(1) == task.y_eval).double().mean())
    return {"method": method, "seed": seed, "accuracy": acc, "estimating_error": sum(errors) / len(errors),
            "gradient_stability": sum(stabilities) / len(stabilities), "errors": errors, "stabilities": stabilities,
            "wall_s": time.perf_counter() - t0}


def _plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import wrap_title

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for bits, marker in (("1w1a", "o"), ("1w32a", "s")):
        for ax, key in zip(axes, ("accuracy", "estimating_error", "gradient_stability")):
            xs, ms, sd = [], [], []
            for i, est in enumerate(ESTIMATORS):
                vals = np.array([r[key] for r in rows if r["method"] == f"{bits}-{est}"])
                if len(vals):
                    xs.append(i)
                    ms.append(vals.mean())
                    sd.append(vals.std())
            ax.errorbar(xs, ms, yerr=sd, marker=marker, capsize=3, label=bits)
            ax.set_xticks(range(len(ESTIMATORS)), list(ESTIMATORS), fontsize=8)
            ax.set_title(key.replace("_", " "), fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(wrap_title(title, 140), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _task(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"binary-nets on digits: CNN (fp conv, 2 binary convs of {cfg.width}, fp head), Adam {cfg.lr:g}, "
            f"{cfg.epochs} epochs × batch {cfg.batch_size}, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("best first by test accuracy; est. error = mean over epochs of sum_l ||sign(w)|w|^(1/o_end) - sign(w)||_2 "
            "(STE: o = 1); grad var = mean over epochs of sum_l var|g_l| (larger = less stable); "
            f"{CI_NOTE}; {RANK_NOTE} (ranked on accuracy)")


STUDY = register_study(Study(
    name="binary-nets", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_task, run_one=lambda run, method, seed, _: run_one(run.task, run.cfg, method, seed),
    summary_keys=("accuracy", "estimating_error", "gradient_stability", "wall_s"), rank_on="accuracy",
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc", "accuracy"),
             Column("est. error", lambda s: f"{s['estimating_error_mean']:.2f}"),
             Column("grad var", lambda s: f"{s['gradient_stability_mean']:.3g}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.2f}")),
    csv_skip=("errors", "stabilities"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "equilibrium.png", rows, title),
    outputs=("equilibrium.png",), smoke=("--seeds", "1", "--epochs", "1"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
