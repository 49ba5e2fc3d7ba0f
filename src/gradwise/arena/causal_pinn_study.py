"""Study ``causal-pinn``: the plain PINN residual loss against the causal one (Wang, Sankaran, Perdikaris,
"Respecting causality is all you need for training physics-informed neural networks", arXiv 2203.07404), on a
damped oscillator over a long time window and on the 1-D Allen-Cahn equation (the authors' benchmark, at CPU
scale).

Claims checked: (1) the plain PINN is wrong late in time while the causal one is not (relative L2 error on the
last quarter of the time window, causal below plain); (2) the smallest causal weight tracks convergence
(Spearman correlation between min w at a fixed eps and the error over training checkpoints: negative).

Problems (see :mod:`gradwise.arena.causal_pinn_runs`): oscillator u'' + 2 zeta omega u' + omega^2 u = 0, u(0) = 1,
u'(0) = 0 on [0, t_end], scored against the closed form; Allen-Cahn u_t - nu u_xx + 5u^3 - 5u = 0 on [-1, 1)
(periodic; the authors' periodic Fourier input encoding), u0 = x^2 cos(pi x), scored against an ETDRK4 spectral
solution. Both: tanh MLP in float64, Adam lr 1e-3 with the authors' decay, residuals averaged per time chunk,
initial-condition loss weighted 100 (the authors' Allen-Cahn weight); causal runs follow the authors' eps schedule
(1e-2 ... 100, next once min w > 0.99, checked every ``check_every`` steps).

Patent notice: causal PINN training is patented (University of Pennsylvania, per the authors' README); gradwise's
implementation grants no patent rights.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Study, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY"]

HELP = "causal PINN vs plain PINN: late-time error on a damped oscillator and Allen-Cahn; min w vs convergence"
METHODS = tuple(f"{k}@{p}" for p in ("oscillator", "allen-cahn") for k in ("plain", "causal", "causal-annealed"))


@dataclass(frozen=True)
class Config:
    steps: int = option(2000, "Adam steps per run", at_least=1)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    chunks: int = option(16, "time chunks (causal weights)", at_least=2)
    points_per_chunk: int = 4
    t_end: float = option(10.0, "oscillator time window [0, t_end]", at_least=1.0)
    zeta: float = 0.05
    omega: float = 1.0
    nu: float = 1e-4
    ac_t_end: float = option(0.5, "Allen-Cahn time window [0, t_end] (the authors' is 1)", at_least=0.1)
    ac_points: int = 16
    ac_modes: int = 2
    width: int = 64
    depth: int = 3
    lr: float = 1e-3
    ic_weight: float = 100.0
    check_every: int = 100
    causal_eps: float = option(100.0, "eps of the fixed-eps causal runs (the authors' Allen-Cahn value)", at_least=0.0)
    track_eps: float = 1.0
    threads: int = 1


CONFIG = Config()


def _run_one(run: Run, method: str, seed: int, _shared: Any) -> dict[str, Any]:
    from gradwise.arena.causal_pinn_runs import train_pinn

    kind, problem = method.split("@")
    return train_pinn(run.cfg, problem, kind, seed)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci

    out = []
    for m in run.methods:
        rs = [x for x in rows if x["method"] == m]
        if not rs:
            continue
        row: dict[str, Any] = {"method": m, "runs": len(rs)}
        for key in ("rel_l2", "rel_l2_early", "rel_l2_late", "min_w", "spearman_minw_err"):
            vals = [x[key] for x in rs if x[key] == x[key]]
            row[key + "_mean"], row[key + "_ci"] = mean_ci(vals) if vals else (math.nan, math.nan)
        row["final_stage"] = max(x["final_stage"] for x in rs)
        row["wall_s_mean"] = statistics.fmean(x["wall_s"] for x in rs)
        row["rank"], row["tied"] = None, False
        out.append(row)
    for problem in ("oscillator", "allen-cahn"):
        mine = sorted((r for r in out if r["method"].endswith(problem)), key=lambda r: r["rel_l2_late_mean"])
        for i, r in enumerate(mine):
            r["rank"] = i + 1
    return out


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"causal-pinn: oscillator on [0, {cfg.t_end:g}] (zeta {cfg.zeta:g}) and Allen-Cahn on "
            f"[0, {cfg.ac_t_end:g}] (nu {cfg.nu:g}), {cfg.steps} Adam steps, {cfg.chunks} time chunks, "
            f"{cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return (f"ranked within each problem on the late-time relative L2 error (last quarter of the window); {CI_NOTE}; "
            f"min w at eps = {run.cfg.track_eps:g}; rho = Spearman(min w, error) over checkpoints every "
            f"{run.cfg.check_every} steps (negative: min w rises as the error falls); eps stage = index reached in "
            f"the authors' schedule (1e-2, 1e-1, 1, 10, 100). Causal PINN training is patented (UPenn): no patent "
            f"rights granted")


def _fmt(mean: float, half: float, d: int = 3) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.{d}f}" + ("" if half != half else f" ± {half:.{d}f}")


STUDY = register_study(Study(
    name="causal-pinn", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    run_one=_run_one, summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             Column("rel L2", lambda s: _fmt(s["rel_l2_mean"], s["rel_l2_ci"])),
             Column("early", lambda s: _fmt(s["rel_l2_early_mean"], s["rel_l2_early_ci"])),
             Column("late", lambda s: _fmt(s["rel_l2_late_mean"], s["rel_l2_late_ci"])),
             Column("min w", lambda s: _fmt(s["min_w_mean"], s["min_w_ci"])),
             Column("rho", lambda s: _fmt(s["spearman_minw_err_mean"], s["spearman_minw_err_ci"], 2)),
             Column("eps stage", lambda s: str(s["final_stage"]) if s["final_stage"] >= 0 else "-"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    csv_skip=("curve_min_w", "curve_err"),
    outputs=(), smoke=("--seeds", "1", "--steps", "2", "--chunks", "4"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
