"""Study ``bandits``: DynLin-UCB against LinUCB and Exp3 on the authors' synthetic dynamical linear bandit
(issue 19, study 4; "Dynamical Linear Bandits", Mussi, Metelli, Restelli, ICML 2023, Figure 2's instance).

The instance is marcomussi/DLB's ``testcase_synt_sigma0dot01`` (``--sigma 0.1``: ``..._sigma0dot1``): a 3-d hidden
state with A = diag(0.2, 0, 0.1), 6 budget arms (the permutations of (1, 0.5, 0)), reward = sum of the outputs,
noise N(0, sigma^2) on state and output (:data:`gradwise.bandits.SYNTHETIC_INSTANCE`). Holding [1, 0.5, 0]
forever is best (steady reward 0.8125); [0.5, 1, 0] gives the best immediate reward (0.78125 when held), which is
what a learner that ignores the state converges to, so its regret grows linearly.

Methods, as in the authors' ``scripts/main.py`` (all with their constants from the system, delta = 1/T):

* ``dynlin-logT``: :class:`gradwise.bandits.DynLinUCB` with lambda = log T;
* ``dynlin-1``: DynLinUCB with lambda = 1;
* ``linucb``: :class:`gradwise.bandits.LinUCB`, lambda 1, max norm 1.5 (their ``LinUCBAgent``);
* ``exp3``: :class:`gradwise.bandits.Exp3` with their gamma, eta and reward scaling.

Each method plays ``seeds`` trials (trial i: noise seed i, first arm uniform from seed i) of ``horizon`` rounds,
all trials in one batched :func:`gradwise.bandits.run_trials` call (done in the setup, before the per-trial rows
are read). Regret as the authors': per round, the best arm's steady reward minus the played arm's, summed.
Reported: cumulative regret at 30k, 200k and T rounds (mean and 95% interval over trials; ranked on the last),
the share of the last 10% of rounds on the best arm and on [0.5, 1, 0], and whether and where DynLin-UCB with
lambda = 1 drops below LinUCB (mean cumulative regret, on a grid of 1,000 rounds).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "METHODS", "run_methods"]

HELP = ("DynLin-UCB (lambda log T and 1) vs LinUCB and Exp3 on the authors' synthetic dynamical linear bandit "
        "(6 budget arms): cumulative regret, does lambda=1 cross LinUCB")
METHODS = ("dynlin-logT", "dynlin-1", "linucb", "exp3")
CHECKPOINTS = (30_000, 200_000)
GRID = 1000


@dataclass(frozen=True)
class Config:
    seeds: int = option(10, "trials 0..N-1 (noise and first arm), run batched", at_least=1)
    horizon: int = option(1_000_000, "rounds per trial (the paper's 1e6)", at_least=10)
    sigma: float = option(0.01, "noise standard deviation (the authors' configs: 0.01, 0.1)", at_least=0.0)
    threads: int = 1


def _instance(cfg: Config):
    from gradwise.bandits import SYNTHETIC_INSTANCE as S
    from gradwise.bandits import DynamicalLinearBanditEnv, budget_arms

    arms = budget_arms(3, S["max_daily_budget"], S["max_camp_budget"], S["min_camp_budget"])
    env = DynamicalLinearBanditEnv(S["A"], S["B"], S["C"], S["D"], cfg.sigma, cfg.horizon, seed=0)
    return env, arms


def _agent(method: str, cfg: Config, arms, k: dict[str, float]):
    from gradwise.bandits import DynLinUCB, Exp3, LinUCB

    T = cfg.horizon
    if method.startswith("dynlin"):
        lam = math.log(T) if method == "dynlin-logT" else 1.0
        return DynLinUCB(arms, T, noise_var=cfg.sigma ** 2, lam=lam, seed=0, **k)
    if method == "linucb":
        return LinUCB(arms, T, theta_norm=k["theta_norm"], max_norm=1.5, lam=1.0, seed=0)
    if method == "exp3":
        return Exp3(arms.shape[0], T, seed=0, **Exp3.paper_setting(arms.shape[0], T, rho=k["rho"],
                    omega_norm=k["omega_norm"], theta_norm=k["theta_norm"], b_norm=k["b_norm"], u_max=k["u_max"]))
    raise ValueError(f"Invalid method: {method!r} (accepted: {', '.join(METHODS)})")


def run_methods(cfg: Config, methods: tuple[str, ...]) -> dict[str, Any]:
    """Every method's trials, batched: per method the per-trial rows, the mean cumulative regret on the grid
    (and its 95% half-width) and the wall time."""
    import torch

    from gradwise.arena.stats import mean_ci
    from gradwise.bandits import cumulative_regret, run_trials

    env, arms = _instance(cfg)
    steady = env.steady_rewards(arms)
    best, greedy = int(steady.argmax()), 3          # [1, 0.5, 0] and [0.5, 1, 0]
    T = cfg.horizon
    grid = list(range(GRID, T + 1, GRID)) if T >= GRID else [T]
    if grid[-1] != T:
        grid.append(T)
    marks = [c for c in CHECKPOINTS if c < T] + [T]
    out: dict[str, Any] = {"grid": grid, "rows": {}, "curve": {}, "curve_ci": {}, "wall_s": {}}
    t0 = time.perf_counter()
    noise = env.noise_rewards(cfg.seeds)
    consts = env.constants(arms)
    out["wall_s"]["noise"] = time.perf_counter() - t0
    for method in methods:
        t0 = time.perf_counter()
        played = run_trials(_agent(method, cfg, arms, consts), env, cfg.seeds, arms=arms, noise=noise)
        wall = time.perf_counter() - t0
        cum = cumulative_regret(env, arms, played)
        tail = played[:, -max(1, T // 10):].long()
        rows = []
        for i in range(cfg.seeds):
            row = {"method": method, "seed": i, "regret_T": float(cum[i, -1])}
            for c in CHECKPOINTS:
                if c < T:
                    row[f"regret_{c // 1000}k"] = float(cum[i, c - 1])
            row["tail_best"] = float((tail[i] == best).double().mean())
            row["tail_greedy"] = float((tail[i] == greedy).double().mean())
            row["wall_s"] = wall / cfg.seeds
            rows.append(row)
        at = cum[:, [g - 1 for g in grid]]
        out["rows"][method] = rows
        out["curve"][method] = at.mean(0).tolist()
        out["curve_ci"][method] = ([mean_ci(col.tolist())[1] for col in at.T] if cfg.seeds > 1
                                   else [0.0] * len(grid))
        out["wall_s"][method] = wall
        del played, cum
    out["marks"] = marks
    out["steady"] = steady.tolist()
    return out


def _setup(cfg: Config, methods: tuple[str, ...]) -> dict[str, Any]:
    from gradwise.arena.runner import torch_threads

    t0 = time.perf_counter()
    with torch_threads(cfg.threads):  # the setup runs outside the driver's thread setting (2 threads: 7x slower)
        res = run_methods(cfg, methods)
    res["total_s"] = time.perf_counter() - t0
    return res


def _run_one(run: Run, method: str, seed: int, shared: Any) -> dict[str, Any]:
    return run.task["rows"][method][seed]


def _keys(run: Run) -> tuple[str, ...]:
    return tuple(f"regret_{c // 1000}k" for c in CHECKPOINTS if c < run.cfg.horizon) + (
        "regret_T", "tail_best", "tail_greedy", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    return summarize_rows(STUDY, rows, run.methods, _keys(run))


def _columns(run: Run) -> tuple[Column, ...]:
    T = run.cfg.horizon
    cols = [Column("method", lambda s: s["method"], "left")]
    cols += [ci_column(f"regret @{c // 1000}k", f"regret_{c // 1000}k", 0) for c in CHECKPOINTS if c < T]
    cols += [ci_column(f"regret @T={T:,}", "regret_T", 0),
             ci_column("last 10%: best arm", "tail_best", 2), ci_column("on [.5,1,0]", "tail_greedy", 2),
             Column("s (all trials)", lambda s: f"{s['wall_s_mean'] * run.cfg.seeds:.1f}")]
    return tuple(cols)


def crossing(grid: list[int], a: list[float], b: list[float]) -> int | None:
    """The first grid round from which ``a`` stays below ``b`` to the end (None: it never does)."""
    at = None
    for g, x, y in zip(grid, a, b):
        if x < y:
            at = g if at is None else at
        else:
            at = None
    return at


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"bandits: the authors' synthetic dynamical linear bandit (6 budget arms, A = diag(0.2, 0, 0.1)), "
            f"sigma {c.sigma:g}, T = {c.horizon:,} rounds, {c.seeds} trial(s), run batched")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    task = run.task
    lines = [f"cumulative regret (steady reward of the best arm minus the played arm's, summed), ranked on the last "
             f"column (lower first); last 10%: share of the last tenth of rounds on the best arm [1, 0.5, 0] and "
             f"on [0.5, 1, 0]; {CI_NOTE}; {RANK_NOTE}"]
    curve, grid = task["curve"], task["grid"]
    if "dynlin-1" in curve and "linucb" in curve:
        at = crossing(grid, curve["dynlin-1"], curve["linucb"])
        lines.append("DynLin-UCB (lambda=1) vs LinUCB, mean cumulative regret: " + (
            f"below LinUCB from round {at:,} to T" if at is not None else
            f"does not cross by T = {grid[-1]:,} ({curve['dynlin-1'][-1]:,.0f} vs {curve['linucb'][-1]:,.0f})"))
    if "dynlin-logT" in curve and "linucb" in curve:
        at = crossing(grid, curve["dynlin-logT"], curve["linucb"])
        lines.append("DynLin-UCB (lambda=log T) vs LinUCB: " + (
            f"below LinUCB from round {at:,} to T" if at is not None else "does not cross by T"))
    lines.append("wall time of the batched runs (s, all trials): " + ", ".join(
        f"{m} {s:.1f}" for m, s in task["wall_s"].items()) + f"; setup total {task['total_s']:.1f} s")
    return "\n".join(lines)


def _plot(path: Path, run: Run, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    task = run.task
    grid = np.array(task["grid"])
    styles = curve_styles(run.methods)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in run.methods:
        mean, ci = np.array(task["curve"][m]), np.array(task["curve_ci"][m])
        st = styles[m]
        ax.plot(grid, mean, color=st["color"], ls=st["ls"], label=m, lw=1.4)
        ax.fill_between(grid, mean - ci, mean + ci, color=st["color"], alpha=0.15, lw=0)
    ax.set(xlabel="round", ylabel="cumulative regret (mean over trials, 95% band)")
    ax.set_title(wrap_title(title, 95), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_extra(run: Run, summary: list[dict[str, Any]]) -> dict[str, Any]:
    t = run.task
    return {"grid_every": GRID, "curves": t["curve"], "curves_ci": t["curve_ci"], "wall_s": t["wall_s"],
            "steady_rewards": t["steady"]}


STUDY = register_study(Study(
    name="bandits", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("methods", "method names"),
    setup=_setup, run_one=_run_one, summarize=_summarize, rank_on="regret_T", higher_is_better=False,
    title=_title, notes=_notes, columns=_columns, json_extra=_json_extra,
    write_files=lambda out, run, rows, summary, title: _plot(out / "regret.png", run, title),
    outputs=("regret.png",),
    smoke=("--seeds", "2", "--horizon", "3000"),
))
