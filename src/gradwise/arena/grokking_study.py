"""Study ``grokking``: Softmax Collapse on modular addition, and StableMax / ⊥AdamW without weight decay.

Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability" (2025,
arXiv 2501.04697); setup from the authors' ``grokking_experiments.py`` and ``utils.py``
(github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability @0cc9e8d):

* task: ``(a + b) mod p`` for every pair ``a, b < p``, input the two one-hot vectors
  concatenated (``2p`` features), a random ``train_fraction`` of the ``p^2`` pairs for
  training (``int(train_fraction * p^2)`` of them, as their ``random_split`` takes, but drawn
  per seed with the study's own generator, so the pairs differ from theirs), the rest for test;
* model: ReLU MLP ``2p -> 200 -> 200 -> p`` without biases (so positively homogeneous: the
  naive-loss-minimization direction is the weights), float32, full batch, one step per epoch;
* optimizer: ``torch.optim.AdamW`` with their script's ``eps=1e-25``, ``beta2=0.99`` (softmax
  runs) or ``0.999`` (their StableMax runs pass ``--beta2 0.999``), lr 0.01 (their Figure 1);
  ⊥AdamW as their ``--orthogonal_gradients`` runs it (:class:`gradwise.optim.OrthoAdamW` with
  its defaults: torch's betas and eps, which is what their wrapper ends up using).

Methods (weight decay 0 unless named):

* softmax -- softmax cross-entropy (float32) + AdamW: the baseline that overfits and collapses;
* stablemax -- :func:`gradwise.losses.stablemax_cross_entropy` + AdamW;
* softmax-perp -- softmax cross-entropy + ⊥AdamW;
* stablemax-perp -- StableMax cross-entropy + ⊥AdamW;
* softmax-wd -- softmax cross-entropy + AdamW with ``weight_decay`` (the classic grokking recipe).

Every ``log_every`` steps (and at the first and last) a run records, on the parameters before
that step's update: train/test accuracy, the train loss, ``zero_loss`` (fraction of training
samples whose own loss is exactly 0 in float32, the authors' ``zero_terms``),
:func:`~gradwise.metrics.softmax_collapse_fraction` of the train logits and
:func:`~gradwise.metrics.nlm_alignment` of the raw loss gradient.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "add_arguments", "run", "run_one", "modular_addition",
           "steps_to"]

HELP = "modular addition without weight decay: softmax CE (Softmax Collapse) vs StableMax vs ⊥AdamW vs weight decay"
# name -> (loss, optimizer); "wd" is AdamW with Config.weight_decay
METHODS = {"softmax": ("softmax", "adamw"), "stablemax": ("stablemax", "adamw"), "softmax-perp": ("softmax", "perp"),
           "stablemax-perp": ("stablemax", "perp"), "softmax-wd": ("softmax", "wd")}
# stablemax-perp runs when named (--methods): both fixes at once, not needed for the headline
DEFAULT_METHODS = ("softmax", "stablemax", "softmax-perp", "softmax-wd")
CURVES = ("train_acc", "test_acc", "train_loss", "zero_loss", "sc_fraction", "nlm")
CURVE_LABELS = {"train_acc": "train accuracy", "test_acc": "test accuracy", "train_loss": "train loss (own loss)",
                "zero_loss": "fraction of train losses exactly 0", "sc_fraction": "Softmax Collapse fraction (train)",
                "nlm": "NLM alignment cos(-g, w)"}


@dataclass(frozen=True)
class Config:
    p: int = option(59, "modulus p (the authors': 113)", at_least=2)
    train_fraction: float = option(0.7, "fraction of the p^2 pairs used for training (authors' Fig. 1: 0.4, Fig. 2: up to 0.7)",
                                   at_least=0.01, below=1.0)
    hidden: tuple[int, ...] = (200, 200)   # the authors' --hidden_sizes
    steps: int = option(2000, "full-batch steps per run", at_least=1)
    lr: float = option(0.01, "learning rate (the authors' Fig. 1)", at_least=0.0)
    weight_decay: float = option(1.0, "AdamW weight decay of the softmax-wd control", at_least=0.0)
    log_every: int = option(25, "record the curves every N steps", at_least=1)
    beta2: float = 0.99            # their default --beta2 (softmax runs)
    stablemax_beta2: float = 0.999  # their StableMax runs pass --beta2 0.999
    adam_eps: float = 1e-25        # their --adam_epsilon
    seeds: int = option(2, "seeds 0..N-1 (each its own split and init)", at_least=1)
    threads: int = 1


CONFIG = Config()


def modular_addition(p: int, train_fraction: float, seed: int):
    """One-hot ``(a, b)`` pairs and labels ``(a + b) mod p``, split at random (with ``seed``) into
    ``int(train_fraction * p^2)`` training pairs and the rest: ``(x_train, y_train, x_test, y_test)``."""
    import torch
    import torch.nn.functional as F

    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    x = torch.cat([F.one_hot(a, p), F.one_hot(b, p)], dim=1).float()
    y = (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(10_000 + seed))
    n = int(train_fraction * p * p)
    if not 1 <= n < p * p:
        from gradwise.arena.study import UsageError

        raise UsageError(f"--train-fraction {train_fraction:g} with --p {p} leaves {n} training pairs of {p * p} "
                         "(accepted: at least one for training and one for test)")
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def _model(p: int, hidden: tuple[int, ...]):
    from torch import nn

    sizes = [2 * p, *hidden, p]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out, bias=False))  # no biases: a homogeneous model, as theirs
    return nn.Sequential(*layers)


def _optimizer(kind: str, loss: str, params, cfg: Config):
    import torch

    from gradwise.optim import OrthoAdamW

    if kind == "perp":
        return OrthoAdamW(params, lr=cfg.lr)
    beta2 = cfg.stablemax_beta2 if loss == "stablemax" else cfg.beta2
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay if kind == "wd" else 0.0)


def steps_to(steps: list[int], acc: list[float], level: float) -> int | None:
    """The first recorded step at which ``acc`` reaches ``level``; None if it never does."""
    return next((s for s, a in zip(steps, acc) if a >= level), None)


def run_one(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from gradwise.losses import stablemax_cross_entropy
    from gradwise.metrics import nlm_alignment, softmax_collapse_fraction, zero_loss_fraction

    t0 = time.perf_counter()
    loss_name, kind = METHODS[method]
    xtr, ytr, xte, yte = modular_addition(cfg.p, cfg.train_fraction, seed)
    torch.manual_seed(seed)
    model = _model(cfg.p, cfg.hidden)
    opt = _optimizer(kind, loss_name, model.parameters(), cfg)
    loss_fn = stablemax_cross_entropy if loss_name == "stablemax" else F.cross_entropy
    steps: list[int] = []
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    for step in range(cfg.steps + 1):  # the last pass only records the trained model
        out = model(xtr)
        loss = loss_fn(out, ytr)
        record = step % cfg.log_every == 0 or step == cfg.steps
        if step < cfg.steps or record:
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if record:
            with torch.no_grad():
                per = loss_fn(out.detach(), ytr, reduction="none")
                test_acc = float((model(xte).argmax(1) == yte).float().mean())
            zero = (float(zero_loss_fraction(out, ytr)) if loss_name == "softmax"
                    else float((per == 0).float().mean()))
            steps.append(step)
            for k, v in (("train_acc", float((out.argmax(1) == ytr).float().mean())), ("test_acc", test_acc),
                         ("train_loss", float(loss.detach())), ("zero_loss", zero),
                         ("sc_fraction", float(softmax_collapse_fraction(out))),
                         ("nlm", float(nlm_alignment(model)))):
                curves[k].append(v)
        if step < cfg.steps:
            opt.step()
    row: dict[str, Any] = {"method": method, "seed": seed, "final_test_acc": curves["test_acc"][-1],
                           "final_train_acc": curves["train_acc"][-1], "final_train_loss": curves["train_loss"][-1],
                           "final_zero_loss": curves["zero_loss"][-1], "final_sc": curves["sc_fraction"][-1],
                           "final_nlm": curves["nlm"][-1], "max_sc": max(curves["sc_fraction"])}
    for level in (90, 99):
        row[f"steps_to_{level}"] = steps_to(steps, curves["test_acc"], level / 100)
    row.update(wall_s=time.perf_counter() - t0, logged_steps=steps, curves=curves)
    return row


SUMMARY_KEYS = ("final_test_acc", "final_train_acc", "final_zero_loss", "final_sc", "max_sc", "final_nlm", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    summary = summarize_rows(STUDY, rows, run.methods)
    for s in summary:
        rs = [r for r in rows if r["method"] == s["method"]]
        for level in (90, 99):
            hit = [r[f"steps_to_{level}"] for r in rs if r[f"steps_to_{level}"] is not None]
            s[f"reached_{level}"] = len(hit)
            s[f"steps_to_{level}_median"] = statistics.median(hit) if hit else None
    return summary


def _steps_cell(level: int):
    def cell(s: dict[str, Any]) -> str:
        med = s[f"steps_to_{level}_median"]
        return f"{'—' if med is None else f'{med:.0f}'} ({s[f'reached_{level}']}/{s['runs']})"
    return cell


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.plots import curve_styles, wrap_title

    styles = curve_styles(run.methods)
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, key in zip(axes.flat, CURVES):
        for m in run.methods:
            rs = [r for r in rows if r["method"] == m]
            if not rs:
                continue
            st = styles[m]
            mean = np.mean([r["curves"][key] for r in rs], axis=0)  # same logged steps for every seed
            ax.plot(rs[0]["logged_steps"], mean, color=st["color"], ls=st["ls"], lw=1.4, label=m)
        if key == "train_loss":
            ax.set_yscale("log")
        ax.set_title(CURVE_LABELS[key], fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes.flat[1].axhline(1 / run.cfg.p, color="grey", lw=0.8, ls=":", label="chance")
    axes.flat[1].legend(fontsize=8)
    fig.suptitle(wrap_title(title + " (mean over seeds)", 130), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    n = int(cfg.train_fraction * cfg.p * cfg.p)
    return (f"grokking: (a+b) mod {cfg.p}, {n} train / {cfg.p * cfg.p - n} test pairs, MLP "
            f"{'-'.join(map(str, (2 * cfg.p, *cfg.hidden, cfg.p)))} float32, {cfg.steps} full-batch steps, "
            f"lr {cfg.lr:g}, {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return ("best first by final test accuracy; steps to 90%/99% test: median over the seeds that reached it "
            f"(reached/runs), recorded every {cfg.log_every} steps; SC: fraction of train samples in Softmax "
            "Collapse (float32) at the end (max_sc in results.csv: its peak over the run); zero loss: fraction of train samples whose own "
            f"loss is exactly 0; softmax-wd: weight decay {cfg.weight_decay:g}; {CI_NOTE}; {RANK_NOTE}")


def _columns(run: Run) -> tuple[Column, ...]:
    return (Column("method", lambda s: s["method"], "left"), ci_column("test acc", "final_test_acc", 3),
            ci_column("train acc", "final_train_acc", 3), Column("steps to 90%", _steps_cell(90)),
            Column("steps to 99%", _steps_cell(99)), ci_column("SC at end", "final_sc", 2),
            ci_column("zero loss", "final_zero_loss", 2), ci_column("NLM cos", "final_nlm", 2),
            Column("s/run", lambda s: f"{s['wall_s_mean']:.0f}"))


def _check(cfg: Config) -> Config:
    modular_addition(cfg.p, cfg.train_fraction, 0)  # a bad split is refused before any run
    if not math.isfinite(cfg.lr):
        from gradwise.arena.study import UsageError

        raise UsageError(f"--lr {cfg.lr} (accepted: a finite number >= 0)")
    return cfg


STUDY = register_study(Study(
    name="grokking", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(METHODS),
    default_methods=lambda: DEFAULT_METHODS,
    adjust=_check, run_one=lambda run, method, seed, _: run_one(run.cfg, method, seed),
    select=Selection("methods", "method names", default_text="all but stablemax-perp", empty_means_all=True),
    summary_keys=SUMMARY_KEYS, rank_on="final_test_acc", summarize=_summarize,
    title=_title, notes=_notes, columns=_columns, csv_skip=("logged_steps", "curves"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "curves.png", run, rows, title),
    outputs=("curves.png",), smoke=("--seeds", "1", "--steps", "6", "--p", "7", "--log-every", "2"),
))
# the study's entry points, as the other studies have them
add_arguments, run = STUDY.add_arguments, STUDY.run
