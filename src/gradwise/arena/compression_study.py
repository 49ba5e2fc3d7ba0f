"""Study ``compression``: error feedback under heterogeneous workers, and L-GreCo's bytes against uniform PowerSGD.

Part 1 (methods ``ls-*``): distributed least squares, ``n`` workers simulated in one process, worker ``i``
holding its own ``A_i, b_i`` whose optimum ``x_c + heterogeneity * u_i`` differs from the others'; gradient
steps on the average of the workers' messages (``lr`` times ``1/L``), the exact local gradients unless
``--ls-noise`` adds Gaussian noise:

* ``ls-sgd`` -- uncompressed (the reference);
* ``ls-topk`` -- each worker sends Top-K of its gradient (:class:`gradwise.distributed.TopK`, ``k = ratio d``),
  no error feedback;
* ``ls-topk-ef`` -- Top-K with error feedback as gradwise's DDP hook keeps it: ``x_i = g_i + e_i``,
  ``m_i = C(x_i)``, ``e_i = x_i - m_i``.

The issue's claim is that plain error feedback plateaus under heterogeneity where EControl (Gao, Islamov and
Stich, "EControl: Fast Distributed Optimization with Compression and Error Control", arXiv 2311.05645)
converges. **The EControl arm is not here**: it is blocked until its Algorithm 1 can be read in full (the stored
pages give the abstract only and no code by its authors was found; docs/coverage_notes.md, "Issue 13"). What
runs is the half of the claim that needs no EControl: whether EF plateaus, and whether it does so because of
the heterogeneity (``--heterogeneity 0`` gives every worker the same optimum).

Part 2 (methods ``cnn-*``): a small CNN on scikit-learn's digits (8x8; 1,347 training, 450 test images) under
DDP on ``world_size`` local gloo processes started by the study, each with its shard of the training set, SGD
with momentum; communication hooks: ``cnn-dense`` (plain all-reduce), ``cnn-powersgd-r`` (torch's PowerSGD at
uniform rank ``r`` with error feedback and warm start, :func:`gradwise.distributed.powersgd_hook`) and
``cnn-lgreco`` (L-GreCo, Alimohammadi et al., arXiv 2210.17357: per-layer ranks in ``[r/2, 2r]`` chosen by its
dynamic program once an epoch to send the fewest bytes whose summed compression error is at most that of
uniform rank ``r = --lgreco-rank``; :func:`gradwise.distributed.lgreco_hook`). Every compressed method runs
dense for the first ``start_iter`` steps (torch's PowerSGD needs a warm-up past DDP's bucket rebuild).
Reported: final test accuracy, bytes one worker sends per step (after the warm-up) and per run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Selection, Study, option, register_study

__all__ = ["HELP", "Config", "METHODS", "LS_METHODS", "CNN_METHODS", "STUDY", "ECONTROL_NOTE"]

HELP = ("heterogeneous least squares: Top-K with and without error feedback (EControl blocked); "
        "digits CNN on 2 DDP ranks: L-GreCo vs uniform PowerSGD ranks, bytes vs accuracy")
LS_METHODS = ("ls-sgd", "ls-topk", "ls-topk-ef")
CNN_METHODS = ("cnn-dense", "cnn-powersgd-1", "cnn-powersgd-2", "cnn-powersgd-4", "cnn-lgreco")
METHODS = LS_METHODS + CNN_METHODS
ECONTROL_NOTE = ("EControl (arXiv 2311.05645) is not run: blocked until its Algorithm 1 can be read in full "
                 "(the stored pages give only the abstract; docs/coverage_notes.md, Issue 13)")


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    workers: int = option(10, "least squares: simulated workers", at_least=1)
    ls_steps: int = option(2000, "least squares: gradient steps", at_least=1)
    heterogeneity: float = option(1.0, "least squares: spread of the workers' optima (0: one common optimum)",
                                  at_least=0.0)
    topk_ratio: float = option(0.1, "least squares: fraction of the coordinates Top-K sends", at_least=1e-6,
                               below=1.0)
    ls_lr: float = option(0.5, "least squares: step size in units of 1/L (L: smoothness of f)", at_least=1e-6,
                          below=2.0)
    ls_noise: float = option(0.0, "least squares: std of Gaussian noise on each worker's gradient (0: exact)",
                             at_least=0.0)
    cnn_epochs: int = option(20, "CNN: epochs", at_least=1)
    batch_size: int = option(32, "CNN: minibatch per rank", at_least=1)
    lr: float = option(0.05, "CNN: SGD learning rate (momentum 0.9)", at_least=1e-6)
    lgreco_rank: int = option(2, "CNN: L-GreCo's reference uniform rank (candidates rank/2 .. 2 rank)", at_least=1)
    dim: int = 50                  # least squares: coordinates
    samples: int = 100             # least squares: rows per worker
    world_size: int = 2            # CNN: DDP ranks
    start_iter: int = 10           # CNN: dense steps before compression
    timeout: float = 1800.0        # CNN: seconds the ranks of one seed may take
    split_seed: int = 0
    threads: int = 1


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    if not any(m in CNN_METHODS for m in methods):
        return None
    from gradwise.arena.compression_runs import CnnSetup
    from gradwise.arena.tasks import digits

    t = digits(eval_split="test", split_seed=cfg.split_seed)
    return CnnSetup(t.x_train, t.y_train, t.x_eval, t.y_eval, epochs=cfg.cnn_epochs, batch_size=cfg.batch_size,
                    lr=cfg.lr, start_iter=cfg.start_iter, lgreco_rank=cfg.lgreco_rank)


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """Every selected method on one seed: the least-squares methods in this process, the CNN methods in one
    start of ``world_size`` ranks."""
    from gradwise.arena.compression_runs import least_squares_problem, run_least_squares, train_cnn_rank

    cfg = run.cfg
    rows: dict[str, dict[str, Any]] = {}
    ls = [m for m in run.methods if m in LS_METHODS]
    if ls:
        p = least_squares_problem(cfg.workers, cfg.dim, cfg.samples, cfg.heterogeneity, seed)
        for m in ls:
            r = run_least_squares(p, m, ratio=cfg.topk_ratio, steps=cfg.ls_steps, lr_scale=cfg.ls_lr,
                                  noise=cfg.ls_noise, seed=seed)
            r["log10_dist"] = math.log10(r["dist"]) if r["dist"] > 0 else -math.inf
            rows[m] = {"method": m, "part": "least squares", "seed": seed, **r}
    cnn = tuple(m for m in run.methods if m in CNN_METHODS)
    if cnn:
        from gradwise.distributed.launch import run_local

        per_rank = run_local(train_cnn_rank, cfg.world_size, args=(run.task, cnn, seed), timeout=cfg.timeout)
        for m in cnn:  # rank 0's numbers: every rank holds the same model and sends the same bytes
            rows[m] = {"method": m, "part": "cnn", "seed": seed, **per_rank[0][m]}
    return [rows[m] for m in run.methods]


LS_KEYS = ("log10_dist", "gap", "bytes_per_step", "bytes_total")
CNN_KEYS = ("test_acc", "bytes_per_step", "bytes_total", "train_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each part ranked on its own: least squares on log10 of the final distance (lower first), the CNN on
    test accuracy."""
    out = []
    for methods, keys, rank_on, higher in ((LS_METHODS, LS_KEYS, "log10_dist", False),
                                           (CNN_METHODS, CNN_KEYS, "test_acc", True)):
        part = []
        for m in (m for m in run.methods if m in methods):
            mine = [r for r in rows if r["method"] == m]
            s = {"method": m, "part": mine[0]["part"], "runs": len(mine), **mean_ci_fields(mine, keys)}
            if "ranks" in mine[0]:
                s["ranks"] = [r["ranks"] for r in mine]
            part.append(s)
        if part:
            out += rank_summaries(part, rank_on, higher_is_better=higher)
    return out


def _ranks_cell(s: dict[str, Any]) -> str:
    if "ranks" in s:
        return " | ".join(",".join(map(str, r)) for r in s["ranks"])
    if s["method"].startswith("cnn-powersgd-"):
        return "uniform " + s["method"].rsplit("-", 1)[1]
    return ""


COLUMNS = (
    Column("method", lambda s: s["method"], "left"),
    Column("log10 dist", lambda s: fmt_ci(s["log10_dist_mean"], s["log10_dist_ci"], 2) if "log10_dist_mean" in s
           else ""),
    Column("gap f-f*", lambda s: f"{s['gap_mean']:.2e}" if "gap_mean" in s else ""),
    Column("test acc", lambda s: fmt_ci(s["test_acc_mean"], s["test_acc_ci"]) if "test_acc_mean" in s else ""),
    Column("KB/step", lambda s: f"{s['bytes_per_step_mean'] / 1e3:,.2f}"),
    Column("MB/run", lambda s: f"{s['bytes_total_mean'] / 1e6:,.3f}"),
    Column("ranks per layer (per seed)", _ranks_cell, "left"),
)


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    parts = []
    if any(m in LS_METHODS for m in run.methods):
        parts.append(f"least squares ({c.workers} workers, d={c.dim}, {c.samples} rows each, heterogeneity "
                     f"{c.heterogeneity:g}, {c.ls_steps} steps of {c.ls_lr:g}/L, Top-K {c.topk_ratio:g}, gradient "
                     f"noise {c.ls_noise:g})")
    if any(m in CNN_METHODS for m in run.methods):
        parts.append(f"digits CNN on {c.world_size} DDP ranks ({c.cnn_epochs} epochs, batch {c.batch_size}/rank, SGD "
                     f"lr {c.lr:g} momentum 0.9, compression after {c.start_iter} dense steps)")
    return f"compression: {'; '.join(parts)}; {c.seeds} seed(s)"


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"least squares: log10 of ||x - x*|| / ||x0 - x*|| after the last step (lower first; float64), "
            f"gap f(x) - f* (mean); KB/step: one worker's message (float64 values, Top-K adds int32 indices); "
            f"CNN: test accuracy after the last epoch; KB/step: one worker's message after the dense warm-up "
            f"(float32), MB/run: all steps; L-GreCo's ranks: conv1, conv2, fc1, fc2 as its dynamic program left "
            f"them; {ECONTROL_NOTE}; each part ranked on its own; {CI_NOTE}; {RANK_NOTE}")


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.plots import curve_styles, wrap_title

    styles = curve_styles(run.methods)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for m in run.methods:
        mine = [r for r in rows if r["method"] == m]
        st = dict(color=styles[m]["color"], ls=styles[m]["ls"], lw=1.3)
        if m in LS_METHODS:
            steps = [c[0] for c in mine[0]["curve"]]
            dist = np.exp(np.mean([[math.log(max(c[1], 1e-300)) for c in r["curve"]] for r in mine], axis=0))
            axes[0].plot(steps, dist, label=m, **st)
        else:
            mb = np.mean([[c[1] / 1e6 for c in r["curve"]] for r in mine], axis=0)
            acc = np.mean([[c[2] for c in r["curve"]] for r in mine], axis=0)
            axes[1].plot(mb, acc, marker=styles[m]["marker"], ms=3, label=m, **st)
    for s in summary:
        if s["method"] in CNN_METHODS:
            m = s["method"]
            axes[2].errorbar(s["bytes_total_mean"] / 1e6, s["test_acc_mean"], yerr=s["test_acc_ci"] or None,
                             color=styles[m]["color"], marker=styles[m]["marker"], ls="none", capsize=3, label=m)
    axes[0].set(yscale="log", xlabel="step", ylabel="||x - x*|| / ||x0 - x*|| (geometric mean over seeds)",
                title="least squares, heterogeneous workers")
    axes[1].set(xscale="log", xlabel="MB sent by one worker so far", ylabel="test accuracy (mean over seeds)",
                title="digits CNN, 2 DDP ranks")
    axes[2].set(xscale="log", xlabel="MB sent by one worker per run", ylabel="final test accuracy (95% interval)",
                title="bytes vs accuracy")
    from matplotlib.ticker import FuncFormatter

    def at_2_and_5(v: float, _: Any) -> str:  # minor labels of a log axis at 2x and 5x only: no crowding
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

    for ax in axes[1:]:
        ax.xaxis.set_minor_formatter(FuncFormatter(at_2_and_5))
    for ax in axes:
        ax.grid(True, alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(wrap_title(title, 170), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="compression", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("methods", "method names"),
    setup=_setup, run_seed=_run_seed, summarize=_summarize,
    title=_title, notes=_notes, columns=COLUMNS, csv_skip=("curve",),
    write_files=lambda out, run, rows, summary, title: _plot(out / "compression.png", run, rows, summary, title),
    outputs=("compression.png",),
    # the least-squares part only: the CNN part starts processes (tests/arena/test_compression_study.py runs it)
    smoke=("--seeds", "1", "--ls-steps", "40", "--workers", "3", "--methods", "ls-sgd,ls-topk,ls-topk-ef"),
))
