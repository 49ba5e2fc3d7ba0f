"""Study ``odice``: V-DICE's three value-gradient rules at equal λ and η (issue 19, study 2; "ODICE: Revealing
the Mystery of Distribution Correction Estimation via Orthogonal-gradient Update", Mao, Xu, Zhang, Zhan,
ICLR 2024): ``semi`` (no gradient through V(s')), ``true`` (the full gradient) and ``orthogonal`` (O-DICE: the
backward gradient projected on the normal plane of the forward one), each through
:func:`gradwise.rl.odice_value_backward`, with ODICE's weighted behaviour cloning for the policy, in the plain
PyTorch loop of :mod:`gradwise.arena.odice_runs` (the order of the authors' ``odice.py``; one torch thread).

Claim (the paper's): true-gradient is worst, orthogonal >= semi; the orthogonal update also makes the policy
more robust to out-of-distribution states. Each run (one mode, one seed) does two parts:

1. **Grid world** (our stand-in for the paper's toy example, whose text could not be read here: see
   docs/study_odice.md): 8 x 8 grid, slip 0.1, reward -3 per step / 0 at the goal, 4,000 transitions of a
   behaviour policy that moves uniformly with probability 0.9 (else right or up); discount 0.9, lr 1e-3,
   target rate 0.05, batch 128, ``grid_steps`` updates. Reported: the greedy policy's success rate from the
   start cell and from uniformly drawn start cells (some of them never visited by the data).
2. **Pendulum-v1** offline: the replay buffer of the cached 20k-step SAC run (``collect('Pendulum-v1',
   'medium-replay', n_steps=20000, seed=0)``; ``--replay-steps 0``: 10k random-policy steps), observations
   normalised, rewards unscaled (see ``odice_runs.prepare_pendulum``); MLPs 2 x 64, batch 256, discount 0.99,
   lr 1e-3 and target rate 0.05 (the authors': 2e-4 and 0.005 over 1M updates; raised for the short
   budget), ``steps`` updates. Reported: mean return of the deterministic policy
   over ``episodes`` episodes with Gaussian noise σ ∈ {0, 0.05, 0.1, 0.2} (in data stds) added to its
   observations, and the quantiles of the parallel coefficient c = <g_f, g_b> / |g_f|^2 over the orthogonal
   runs' steps (c < 0: the forward and backward gradients conflict).

Verdicts (printed under the table): paired by seed (same data, same initial nets), 95% t-intervals of
(other - true) and of (orthogonal - semi) for the Pendulum return at each σ and the grid success rates.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, UsageError, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "METHODS", "SIGMAS", "run_one", "load_task", "verdicts"]

HELP = ("ODICE: semi- vs true- vs orthogonal-gradient V-DICE at equal lambda and eta, on a grid world and "
        "offline Pendulum (return under observation noise, the parallel coefficient c)")
METHODS = ("semi", "true", "orthogonal")
SIGMAS = (0.0, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1 (nets, minibatches, grid data, evaluation starts)", at_least=1)
    steps: int = option(1000, "Pendulum updates per run", at_least=1)
    grid_steps: int = option(800, "grid-world updates per run", at_least=1)
    replay_steps: int = option(20000, "the cached SAC run whose replay buffer is the Pendulum data "
                                      "(medium-replay); 0: 10k random-policy steps", at_least=0)
    episodes: int = option(5, "Pendulum evaluation episodes per noise level", at_least=1)
    lam: float = option(0.6, "lambda, the same for every mode", at_least=0.0, below=1.0)
    eta: float = option(1.0, "eta, the backward-gradient weight of the orthogonal mode", at_least=0.0)
    lr: float = 1e-3
    target_rate: float = 0.05
    grid_size: int = 8
    grid_slip: float = 0.1
    grid_explore: float = 0.9
    grid_transitions: int = 4000
    grid_episodes: int = 50
    threads: int = 1


def load_task(cfg: Config, methods: tuple[str, ...]) -> dict[str, Any]:
    """The Pendulum data, preprocessed once for every run (no SAC run is started: see ``pendulum_data``)."""
    from gradwise.arena.odice_runs import pendulum_data, prepare_pendulum

    try:
        data, label = pendulum_data(cfg.replay_steps)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return {"prep": prepare_pendulum(data), "label": label, "transitions": int(data["obs"].shape[0])}


def run_one(cfg: Config, task: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    import torch

    from gradwise.arena.odice_runs import GridWorld, c_quantiles, grid_dataset, grid_eval, pendulum_eval, train_odice

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    env = GridWorld(cfg.grid_size, cfg.grid_slip)
    grid = grid_dataset(env, cfg.grid_transitions, cfg.grid_explore, seed)
    _, gpol, gcs = train_odice(grid, method, steps=cfg.grid_steps, seed=seed, discrete=4, batch_size=128, lr=1e-3,
                               lam=cfg.lam, eta=cfg.eta, discount=0.9, beta=0.05)
    row: dict[str, Any] = {"method": method, "seed": seed,
                           **grid_eval(env, gpol, grid["cells"], cfg.grid_episodes, seed)}
    row["grid_c_neg"] = c_quantiles(gcs)["c_neg"]
    t1 = time.perf_counter()
    _, pol, cs = train_odice(task["prep"], method, steps=cfg.steps, seed=seed, lam=cfg.lam, eta=cfg.eta, lr=cfg.lr,
                             beta=cfg.target_rate)
    t2 = time.perf_counter()
    row.update(pendulum_eval(pol, task["prep"], SIGMAS, cfg.episodes, seed))
    row["return_mean_noisy"] = statistics.fmean(row[f"return_s{s:g}"] for s in SIGMAS[1:])
    row.update(c_quantiles(cs))
    row.update(grid_s=t1 - t0, train_s=t2 - t1, wall_s=time.perf_counter() - t0,
               ms_per_step=1000 * (t2 - t1) / cfg.steps)
    return row


_KEYS = ("grid_success", "grid_success_any", *(f"return_s{s:g}" for s in SIGMAS), "return_mean_noisy")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci_fields, rank_summaries

    out = []
    for m in run.methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        s = {"method": m, "runs": len(rs), **mean_ci_fields(rs, _KEYS)}
        for k in ("c_q05", "c_q50", "c_q95", "c_neg", "wall_s", "ms_per_step"):
            s[k] = statistics.fmean(r[k] for r in rs)
        out.append(s)
    return rank_summaries(out, "return_s0", higher_is_better=True)


def _paired(rows: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, float, int]:
    """Mean and 95% half-width of (a - b) over the seeds both methods ran."""
    from gradwise.arena.stats import mean_ci

    ra = {r["seed"]: r[key] for r in rows if r["method"] == a}
    rb = {r["seed"]: r[key] for r in rows if r["method"] == b}
    d = [ra[s] - rb[s] for s in sorted(ra) if s in rb]
    m, h = mean_ci(d) if d else (math.nan, math.nan)
    return m, h, len(d)


def _word(m: float, h: float) -> str:
    if not math.isfinite(h):
        return "NOT SHOWN (no interval)" if math.isfinite(m) else "NOT SHOWN"
    if m - h > 0:
        return "SHOWN"
    if m + h < 0:
        return "NOT SHOWN (reversed)"
    return "NOT SHOWN (interval contains 0)"


def verdicts(methods: tuple[str, ...], rows: list[dict[str, Any]]) -> list[str]:
    """One line per measure: true worst (both others above it, paired), orthogonal > semi (paired), and
    orthogonal not below semi (the interval's upper end above 0)."""
    lines = []
    for key, what, digits in (("return_s0", "Pendulum return, σ=0", 1), ("return_s0.2", "Pendulum return, σ=0.2", 1),
                              ("return_mean_noisy", "Pendulum return, mean over σ>0", 1),
                              ("grid_success", "grid success from start", 2),
                              ("grid_success_any", "grid success from any cell", 2)):
        parts = []
        if "true" in methods:
            for other in ("semi", "orthogonal"):
                if other in methods:
                    m, h, _ = _paired(rows, other, "true", key)
                    parts.append(f"{other} - true {m:+.{digits}f} ± {h:.{digits}f} [{_word(m, h)}]")
        if "semi" in methods and "orthogonal" in methods:
            m, h, _ = _paired(rows, "orthogonal", "semi", key)
            ge = "not refuted" if not (m + h < 0) else "refuted"
            parts.append(f"orthogonal - semi {m:+.{digits}f} ± {h:.{digits}f} [> : {_word(m, h)}; >= : {ge}]")
        lines.append(f"{what}: " + "; ".join(parts))
    return lines


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg, task = run.cfg, run.task
    return (f"odice: V-DICE gradient modes at lambda {cfg.lam:g}, eta {cfg.eta:g}; grid {cfg.grid_size}x{cfg.grid_size} "
            f"({cfg.grid_steps} updates) + Pendulum-v1 {task['label']}, {task['transitions']} transitions "
            f"({cfg.steps} updates, {cfg.episodes} eval episodes per σ); {cfg.seeds} seed(s)")


def _fmt(x: float, d: int = 2) -> str:
    return "-" if x != x else f"{x:.{d}f}"


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    orth = [r for r in summary if r["method"] == "orthogonal"]
    lines = [f"ranked on the Pendulum return at σ=0; {CI_NOTE}; {RANK_NOTE}",
             "verdicts, paired by seed (mean ± 95% half-width):", *("  " + v for v in verdicts(run.methods,
                                                                                           run.state["rows"]))]
    if orth:
        o = orth[0]
        lines.append(f"parallel coefficient c (orthogonal, Pendulum, per-step quantiles averaged over seeds): "
                     f"5% {_fmt(o['c_q05'])}, median {_fmt(o['c_q50'])}, 95% {_fmt(o['c_q95'])}; "
                     f"share of steps with c < 0: {_fmt(o['c_neg'])}")
    lines.append("Pendulum return at σ = " + "/".join(f"{x:g}" for x in SIGMAS) + ": " + "; ".join(
        r["method"] + " " + "/".join(f"{r[f'return_s{x:g}_mean']:.0f}" for x in SIGMAS) for r in summary))
    lines.append("s/run and ms per Pendulum update (one torch thread): " + ", ".join(
        f"{r['method']} {r['wall_s']:.1f} s, {r['ms_per_step']:.1f} ms" for r in summary))
    return "\n".join(lines)


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title
    from gradwise.arena.stats import mean_ci

    styles = curve_styles(run.methods)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in run.methods:
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        mc = [mean_ci([r[f"return_s{s:g}"] for r in rs]) for s in SIGMAS]
        mean = np.array([a for a, _ in mc])
        half = np.array([b if math.isfinite(b) else 0.0 for _, b in mc])
        st = styles[m]
        ax1.errorbar(SIGMAS, mean, yerr=half, color=st["color"], ls=st["ls"], marker="o", capsize=3, label=m)
    ax1.set(xlabel="observation noise σ (data stds)", ylabel="Pendulum return (mean, 95% interval)")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    hist = [r["c_hist"] for r in rows if r["method"] == "orthogonal" and r["c_hist"]]
    if hist:
        counts = np.sum(np.array(hist), axis=0)
        edges = np.linspace(-3.0, 1.0, len(counts) + 1)
        ax2.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7)
        ax2.axvline(0.0, color="k", lw=0.8)
    ax2.set(xlabel="c = <g_f, g_b> / |g_f|^2 (clipped to [-3, 1])", ylabel="orthogonal steps (all seeds)")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(wrap_title(title, 120), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_one(run: Run, method: str, seed: int, _: Any) -> dict[str, Any]:
    row = run_one(run.cfg, run.task, method, seed)
    run.state.setdefault("rows", []).append(row)
    return row


def _columns(run: Run) -> tuple[Column, ...]:
    return (Column("mode", lambda s: s["method"], "left"),
            ci_column("grid start", "grid_success", 1), ci_column("grid any", "grid_success_any", 1),
            ci_column("return σ=0", "return_s0", 0), ci_column("σ=0.2", "return_s0.2", 0))


STUDY = register_study(Study(
    name="odice", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("modes", "gradient modes"), setup=load_task, run_one=_run_one,
    summarize=_summarize, title=_title, notes=_notes, columns=_columns, csv_skip=("c_hist",),
    write_files=lambda out, run, rows, summary, title: _plot(out / "odice.png", run, rows, title),
    outputs=("odice.png",),
    smoke=("--seeds", "1", "--steps", "5", "--grid-steps", "5", "--replay-steps", "0", "--episodes", "1"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
