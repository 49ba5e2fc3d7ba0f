"""Study ``batch-size``: AdAdaGrad's norm test grows the batch from 2, against fixed small and large batches.

After Lau, Liu and Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods"
(arXiv 2402.11215, 2024); setup from the authors' MNIST runs (github.com/timlautk/AdAdaGrad, ``expt.sh``
and ``main.py`` at cc126fba): AdaGrad at a constant learning rate 8e-3 (``--decay_lr=False``), the first
batch of 2 samples, the norm test every iteration (``test_interval`` 1) on the per-sample gradients of the
batch just used, the batch growing monotonically up to the whole training set, and a budget counted in
samples (their ``training_type=sample``). Here the data is scikit-learn's digits (1,347 training and 450
test images, standardized; nothing is downloaded) and the model a small GELU MLP (``hidden`` units;
``--hidden 0`` is the authors' logistic regression).

Methods (one name each, so ``--methods`` can pick them):

* ``norm-0.1`` -- the norm test at the authors' ``eta = 0.1``; ``norm-0.5``, ``norm-1`` -- looser tests
  (larger ``eta`` asks for smaller batches): :class:`gradwise.schedules.AdaptiveBatchSize`, batches drawn
  from one shuffled pass after another (:class:`gradwise.schedules.GrowingBatchSampler`);
* ``fixed-2``, ``fixed-32``, ``fixed-512`` -- a constant batch size (the small end is the adaptive runs'
  first batch).

Every run sees the same number of samples (``epochs`` passes over the training set) and evaluates the test
accuracy after each pass. Reported: final test accuracy, iterations, training wall time (the per-sample
gradients of the test included; evaluation excluded), final batch size, and the samples and wall time until
the test accuracy first reaches ``target``. The paper's claim is that the adaptive schedules keep the
generalization of small batches at the cost in iterations of large ones.

Not here: UBA (arXiv 2505.24452) against cosine and step schedules, which the issue also asks of this study:
the paper's §3 (the schedule's closed form and defaults) could not be read in the stored text, so gradwise
has no UBA yet (docs/coverage_notes.md).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "parse_method", "run_one"]

HELP = "digits, AdaGrad: AdAdaGrad's norm test grows the batch from 2, vs fixed small and large batches"
METHODS = ("norm-0.1", "norm-0.5", "norm-1", "fixed-2", "fixed-32", "fixed-512")


@dataclass(frozen=True)
class Config:
    epochs: int = option(20, "passes over the training set (the sample budget of every run)", at_least=1)
    lr: float = option(8e-3, "AdaGrad's learning rate (constant, as the authors' MNIST runs)", at_least=1e-8)
    initial_batch: int = option(2, "the adaptive runs' first batch size", at_least=1)
    test_interval: int = option(1, "the norm test runs every that many iterations", at_least=1)
    hidden: int = option(64, "hidden units of the MLP (0: logistic regression)", at_least=0)
    target: float = option(0.9, "test accuracy whose first crossing is timed", at_least=0.0, below=1.0)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    split_seed: int = 0
    threads: int = 1


def parse_method(name: str) -> tuple[str, float]:
    """``"norm-0.5"`` -> ``("norm", 0.5)`` (the test's eta); ``"fixed-32"`` -> ``("fixed", 32)``."""
    kind, _, value = name.partition("-")
    return kind, (float(value) if kind == "norm" else int(value))


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    from gradwise.arena.tasks import digits

    return digits(eval_split="test", split_seed=cfg.split_seed)


def run_one(cfg: Config, task: Any, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp
    from gradwise.schedules import AdaptiveBatchSize, GrowingBatchSampler

    torch.set_num_threads(cfg.threads)
    kind, value = parse_method(method)
    n = int(task.x_train.shape[0])
    torch.manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, (cfg.hidden,) if cfg.hidden else ())
    opt = torch.optim.Adagrad(model.parameters(), lr=cfg.lr)
    if kind == "norm":
        ctrl = AdaptiveBatchSize("norm", value, initial=min(cfg.initial_batch, n), max_batch_size=n,
                                 test_interval=cfg.test_interval)
    else:
        ctrl = AdaptiveBatchSize("norm", 1.0, initial=min(int(value), n), max_batch_size=min(int(value), n))
    sampler = GrowingBatchSampler(n, ctrl, generator=torch.Generator().manual_seed(10_000 + seed))
    budget = cfg.epochs * n

    def test_acc() -> float:
        with torch.no_grad():
            return float((model(task.x_eval).argmax(1) == task.y_eval).float().mean())

    seen = steps = 0
    train_s = 0.0
    next_eval = n
    curve: list[tuple[int, int, float, int, float]] = []   # (samples, iterations, train s, batch, test acc)
    batches: list[tuple[int, int]] = []  # (samples before the step, the batch size it drew: the last may be cut)
    while seen < budget:
        for idx in sampler:
            if seen >= budget:
                break
            batches.append((seen, ctrl.batch_size))
            t0 = time.perf_counter()
            x, y = task.x_train[idx], task.y_train[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if kind == "norm" and ctrl.due:
                ctrl.update(model=model, loss_fn=F.cross_entropy, inputs=x, targets=y)
            else:
                ctrl.update()
            train_s += time.perf_counter() - t0
            seen += len(idx)
            steps += 1
            if seen >= next_eval or seen >= budget:
                next_eval += n
                curve.append((seen, steps, train_s, len(idx), test_acc()))
    reach = next(((s, t) for s, _, t, _, a in curve if a >= cfg.target), (None, None))
    return {"method": method, "seed": seed, "test_acc": curve[-1][4], "iterations": steps, "train_s": train_s,
            "final_batch": ctrl.batch_size, "samples": seen, "samples_to_target": reach[0],
            "seconds_to_target": reach[1], "curve": curve, "batches": batches}


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The driver's summary plus, per method, how many seeds reached the target and their mean cost to it."""
    from gradwise.arena.driver import summarize_rows

    out = summarize_rows(STUDY, rows, run.methods)
    for s in out:
        mine = [r for r in rows if r["method"] == s["method"]]
        hit = [r for r in mine if r["samples_to_target"] is not None]
        s["reached"] = f"{len(hit)}/{len(mine)}"
        s["samples_to_target_mean"] = (sum(r["samples_to_target"] for r in hit) / len(hit)) if hit else None
        s["seconds_to_target_mean"] = (sum(r["seconds_to_target"] for r in hit) / len(hit)) if hit else None
        s["final_batch_max"] = max(r["final_batch"] for r in mine)
    return out


def _to_target(s: dict[str, Any]) -> str:
    if s["samples_to_target_mean"] is None:
        return f"never ({s['reached']})"
    return f"{s['samples_to_target_mean']:,.0f} / {s['seconds_to_target_mean']:.2f}s ({s['reached']})"


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    styles = curve_styles(run.methods)
    for m in run.methods:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        st = dict(color=styles[m]["color"], ls=styles[m]["ls"], lw=1.3)
        first = mine[0]
        seen = [s for s, _ in first["batches"]]
        axes[0].step(np.maximum(seen, 1), [b for _, b in first["batches"]], where="post", label=m, **st)
        samples = [c[0] for c in first["curve"]]
        acc = np.array([[c[4] for c in r["curve"]] for r in mine]).mean(0)
        secs = np.array([[c[2] for c in r["curve"]] for r in mine]).mean(0)
        axes[1].plot(samples, acc, marker=styles[m]["marker"], ms=3, label=m, **st)
        axes[2].plot(secs, acc, marker=styles[m]["marker"], ms=3, label=m, **st)
    axes[0].set(xscale="log", yscale="log", xlabel="samples seen", ylabel="batch size (seed 0)")
    axes[1].set(xlabel="samples seen", ylabel="test accuracy (mean over seeds)")
    axes[2].set(xscale="log", xlabel="training wall time, s (mean over seeds)", ylabel="test accuracy")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    axes[1].axhline(run.cfg.target, color="grey", lw=0.8, ls=":")
    axes[2].axhline(run.cfg.target, color="grey", lw=0.8, ls=":")
    axes[1].legend(fontsize=8)
    fig.suptitle(wrap_title(title, 140), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    model = f"MLP 64-{c.hidden}-10" if c.hidden else "logistic regression"
    return (f"batch-size: digits, {model}, AdaGrad lr {c.lr:g} (constant), {c.epochs} epochs of samples per run, "
            f"adaptive runs from batch {c.initial_batch} (norm test every {c.test_interval} iteration(s)), "
            f"{c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"best first by final test accuracy; batch: the batch size at the end; to target: samples / seconds; iters and train s (per-sample gradients of the test "
            f"included, evaluation excluded) are means; to {run.cfg.target:g}: mean samples and seconds until the "
            f"test accuracy first reached it, over the seeds that did; {CI_NOTE}; {RANK_NOTE}")


STUDY = register_study(Study(
    name="batch-size", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("methods", "method names"),
    setup=_setup, run_one=lambda run, method, seed, _: run_one(run.cfg, run.task, method, seed),
    summary_keys=("test_acc", "iterations", "train_s", "final_batch"), rank_on="test_acc", summarize=_summarize,
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"), ci_column("test acc", "test_acc"),
             Column("iters", lambda s: f"{s['iterations_mean']:,.0f}"),
             Column("train s", lambda s: f"{s['train_s_mean']:.2f}"),
             Column("batch", lambda s: f"{s['final_batch_mean']:,.0f}"),
             Column("to target", _to_target)),
    csv_skip=("curve", "batches"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "batch_size_curves.png", run, rows, title),
    outputs=("batch_size_curves.png",),
    smoke=("--seeds", "1", "--epochs", "1", "--methods", "norm-1,fixed-512", "--hidden", "8"),
))
