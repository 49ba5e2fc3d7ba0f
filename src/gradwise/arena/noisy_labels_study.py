"""Study ``noisy-labels``: robust classification losses under 40% symmetric label noise.

An MLP learns scikit-learn's digits from training labels of which a seeded
40% are replaced by a different class drawn uniformly (symmetric noise); the
test labels stay clean. Each loss trains the same model (same initialization
and minibatch order for a seed) with Adam; the leaderboard reports clean test
accuracy, mean ± std over seeds, at the end and at its best evaluation, and a
PNG shows the test-accuracy curves.

Losses: cross-entropy; generalized cross-entropy = comp-sum with tau = 1.7
(GCE's usual q = 0.7); MAE = comp-sum with tau = 2; LDR-KL and ALDR-KL with
the authors' experiment settings; EnsLoss (Dai, 2024). EnsLoss is a binary
method (the authors' code has no multi-class version), so the study uses our
one-vs-rest extension ``ensloss_ovr``: one random calibrated loss-derivative
per minibatch, applied to all ten one-vs-rest margins, with the authors'
defaults (Box-Cox lam = 0, i.e. lognormal draws, superlinear tail) and a
generator seeded per run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "LOSSES", "STUDY", "noisy_labels", "digits_task", "noisy_seed_labels",
           "add_arguments", "run"]

HELP = "robust losses (GCE, MAE, LDR, ALDR, EnsLoss) vs cross-entropy on digits with 40% symmetric label noise"


@dataclass(frozen=True)
class Config:
    noise: float = option(0.4, "label noise rate", at_least=0.0, below=0.9)
    steps: int = option(1500, "minibatch steps", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    batch_size: int = 128
    lr: float = 1e-3
    hidden: tuple[int, ...] = (128, 128)
    eval_every: int = 50
    threads: int = 1


CONFIG = Config()

# name -> (gradwise.losses function name, keyword arguments)
LOSSES: dict[str, tuple[str, dict]] = {
    "CE": ("comp_sum_loss", dict(tau=1.0)),
    "GCE (comp-sum tau=1.7)": ("comp_sum_loss", dict(tau=1.7)),
    "MAE (comp-sum tau=2)": ("comp_sum_loss", dict(tau=2.0)),
    "LDR-KL": ("ldr_loss", dict()),
    "ALDR-KL": ("ALDRLoss", dict()),
    "EnsLoss (one-vs-rest)": ("ensloss_ovr", dict()),
}


def noisy_labels(y, num_classes: int, rate: float, seed: int):
    """Symmetric noise: each label, with probability ``rate``, becomes a uniformly drawn *other* class."""
    import torch

    g = torch.Generator().manual_seed(10_000 + seed)
    flip = torch.rand(len(y), generator=g) < rate
    shift = torch.randint(1, num_classes, (len(y),), generator=g)
    return torch.where(flip, (y + shift) % num_classes, y), flip


def _train_one(task, y_noisy, name: str, seed: int, cfg: Config):
    import torch

    import gradwise.losses as L
    from gradwise.arena.runner import batches
    from gradwise.arena.tasks import mlp

    fn_name, kw = LOSSES[name]
    torch.manual_seed(seed)
    model = mlp(task.num_features, task.num_classes, cfg.hidden)
    gen = torch.Generator().manual_seed(seed)
    n = len(y_noisy)
    order = batches(n, cfg.batch_size, cfg.steps, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if fn_name == "ALDRLoss":
        crit = L.ALDRLoss(n, **kw)
        loss_fn = lambda out, idx: crit(out, y_noisy[idx], idx)  # noqa: E731
    elif fn_name == "ensloss_ovr":
        f, loss_gen = L.ensloss_ovr, torch.Generator().manual_seed(20_000 + seed)  # one random loss per batch
        loss_fn = lambda out, idx: f(out, y_noisy[idx], generator=loss_gen, **kw)  # noqa: E731
    else:
        f = getattr(L, fn_name)
        loss_fn = lambda out, idx: f(out, y_noisy[idx], **kw)  # noqa: E731

    def test_acc() -> float:
        model.eval()
        with torch.no_grad():
            acc = (model(task.x_eval).argmax(1) == task.y_eval).float().mean().item()
        model.train()
        return acc

    steps, accs = [0], [test_acc()]
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        idx = order[step - 1]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(task.x_train[idx]), idx).backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            steps.append(step)
            accs.append(test_acc())
    model.eval()
    with torch.no_grad():
        pred = model(task.x_train).argmax(1)
    fit_noisy = (pred == y_noisy).float().mean().item()
    return dict(loss=name, seed=seed, final_acc=accs[-1], best_acc=max(accs), train_fit_noisy=fit_noisy,
                wall_s=time.perf_counter() - start, curve_steps=steps, curve_acc=accs)


def digits_task(cfg: Any, methods: tuple[str, ...]):
    """The digits task with its test split (the sharpness study trains on it too)."""
    from gradwise.arena.tasks import digits

    return digits(eval_split="test")


def noisy_seed_labels(run: Run, seed: int) -> tuple[Any, None]:
    """The seed's noisy training labels (``run.cfg.noise``), shared by every method of that seed (a
    ``seed_setup``; the sharpness study uses it too)."""
    return noisy_labels(run.task.y_train, run.task.num_classes, run.cfg.noise, seed)[0], None


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"noisy-labels: digits, {cfg.noise:.0%} symmetric label noise, {cfg.steps} steps, "
            f"{cfg.seeds} seed(s); clean test accuracy")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"best first by final clean test accuracy; best acc: the best evaluation during training; {CI_NOTE}; "
            f"{RANK_NOTE} (ranked on final accuracy)")


def _write_plot(out: Path, run: Run, results: list[dict[str, Any]], summary: list[dict[str, Any]],
                title: str) -> None:
    """Clean test accuracy against step: mean over seeds and its 95% t-interval, one line per loss."""
    import matplotlib
    import torch

    from gradwise.arena import report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, names = run.cfg, run.methods
    styles = report.curve_styles(names)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for nm in names:
        rs = [r for r in results if r["loss"] == nm]
        acc = torch.tensor([r["curve_acc"] for r in rs], dtype=torch.float64) * 100
        steps = rs[0]["curve_steps"]
        m = acc.mean(0)
        st = styles[nm]
        ax.plot(steps, m, label=nm, color=st["color"], ls=st["ls"], marker=st["marker"], ms=3,
                markevery=st["markevery"])
        if len(rs) > 1:  # the same 95% t-interval as the table, per evaluation step
            half = report.t_quantile(len(rs) - 1) * acc.std(0) / len(rs) ** 0.5
            ax.fill_between(steps, m - half, m + half, alpha=0.12, color=st["color"])
    ax.set_xlabel("step")
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(report.wrap_title(f"digits, {cfg.noise:.0%} symmetric label noise (mean and 95% t-interval "
                                   f"over {cfg.seeds} seeds)", 90), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "test_accuracy.png", dpi=120)
    plt.close(fig)


STUDY = register_study(Study(
    name="noisy-labels", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(LOSSES),
    select=Selection("losses", "loss names", default_text="all", empty_means_all=True),
    setup=digits_task, seed_setup=noisy_seed_labels, seed_setup_label="noisy labels", seeds_outer=True,
    run_one=lambda run, name, seed, y_noisy: _train_one(run.task, y_noisy, name, seed, run.cfg),
    key="loss", name_key="loss", summary_keys=("final_acc", "best_acc", "train_fit_noisy", "wall_s"),
    rank_on="final_acc", title=_title, notes=_notes,
    columns=(Column("loss", lambda s: s["loss"], "left"), ci_column("final acc (%)", "final_acc", 2, scale=100),
             ci_column("best acc (%)", "best_acc", 2, scale=100),
             Column("fit to noisy train labels", lambda s: f"{100 * s['train_fit_noisy_mean']:.1f}%"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_fields=("loss", "seed", "final_acc", "best_acc", "train_fit_noisy", "wall_s"),
    write_files=_write_plot, outputs=("test_accuracy.png",),
    smoke=("--seeds", "1", "--steps", "20", "--losses", "CE,ALDR-KL"),
))
# the study's entry points, as before the driver
add_arguments, run = STUDY.add_arguments, STUDY.run
