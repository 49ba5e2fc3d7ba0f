"""Study results: the optimizers study's per-method summary, leaderboard and files, and the public face
of the arena's reporting.

The pieces every study shares live in :mod:`gradwise.arena.stats` (means with
95% Student-t intervals, ranks with ties), :mod:`gradwise.arena.results` (the
results folder written all at once, CSV/JSON, the machine) and
:mod:`gradwise.arena.plots` (styles, y-limits, titles); they are re-exported
here, so ``report.mean_ci`` and the like keep working.
"""
from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from gradwise.arena.optimizers_study import RUN_FIELDS
from gradwise.arena.plots import LINE_STYLES, MARKERS, PALETTE, curve_styles, plot_curves, robust_log_ylim, wrap_title
from gradwise.arena.results import (OUT_ACCEPTS, ResultsFolder, json_safe, machine, machine_line, progress,
                                    results_dir, results_folder, versions, write_csv, write_json)
from gradwise.arena.runner import RunResult
from gradwise.arena.stats import (CI_LEVEL, CI_NOTE, DASH, RANK_NOTE, Rank, compare_rankings, fmt_ci, mean_ci,
                                  mean_ci_fields, mean_std, mean_std_fields, rank_label, rank_summaries, t_quantile,
                                  tie_ranks)

__all__ = ["json_safe", "Summary", "summarize", "leaderboard", "results_dir", "results_folder", "ResultsFolder",
           "write_results", "plot_curves", "mean_std", "mean_std_fields", "mean_ci", "t_quantile", "mean_ci_fields",
           "Rank", "tie_ranks", "rank_summaries", "rank_label", "fmt_ci", "compare_rankings", "CI_LEVEL", "CI_NOTE",
           "RANK_NOTE", "progress", "versions", "machine", "machine_line", "write_csv", "write_json",
           "curve_styles", "robust_log_ylim", "wrap_title", "DASH", "OUT_ACCEPTS", "PALETTE", "LINE_STYLES",
           "MARKERS", "RUN_FIELDS", "write_curves"]


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


@dataclass
class Summary:
    """Aggregate over the seeds of one method.

    ``acc_std`` is the sample standard deviation (0 for one seed), ``acc_ci``
    the half-width of the 95% t-interval of the mean (inf for one seed: no
    interval). ``rank``/``tied``: see :func:`tie_ranks`.
    ``steps_to_target`` is the mean over the seeds that reached the target
    (None if none did); ``reached`` counts them.
    """

    name: str
    lr: float
    runs: int
    acc_mean: float
    acc_std: float
    acc_ci: float
    eval_loss_mean: float
    final_train_loss_mean: float
    steps_to_target: float | None
    reached: int
    wall_s_mean: float
    diverged: int
    rank: int = 0
    tied: bool = False


def summarize(results: Sequence[RunResult]) -> list[Summary]:
    """One Summary per method, ranked (:func:`tie_ranks` on test accuracy), best first (mean
    accuracy, then fewer steps to target)."""
    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.optimizer, []).append(r)
    out = []
    for name, rs in by_name.items():
        accs = [r.eval_acc for r in rs]
        hit = [r.steps_to_target for r in rs if r.steps_to_target is not None]
        out.append(Summary(
            name=name, lr=rs[0].lr, runs=len(rs), acc_mean=_mean(accs),
            acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0, acc_ci=mean_ci(accs)[1],
            eval_loss_mean=_mean([r.eval_loss for r in rs]),
            final_train_loss_mean=_mean([r.final_train_loss for r in rs]),
            steps_to_target=_mean(hit) if hit else None, reached=len(hit),
            wall_s_mean=_mean([r.wall_s for r in rs]), diverged=sum(r.diverged for r in rs),
        ))
    for s, r in zip(out, tie_ranks([s.acc_mean for s in out], [s.acc_ci for s in out])):
        s.rank, s.tied = r.rank, r.tied
    inf = math.inf
    out.sort(key=lambda s: (s.rank, -s.acc_mean if math.isfinite(s.acc_mean) else inf,
                            s.steps_to_target if s.steps_to_target is not None else inf))
    return out


def leaderboard(summary: Sequence[Summary], *, target_loss: float, title: str,
                untuned: Collection[str] = ()) -> Group:
    """A rich table of ``summary`` and its notes; names in ``untuned`` get their lr starred."""
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right", no_wrap=True)
    table.add_column("optimizer", no_wrap=True)
    for col in ("lr", "test acc", f"steps to ≤{target_loss:g}", "final loss", "s/run"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in summary:
        steps = DASH if s.steps_to_target is None else f"{s.steps_to_target:.0f} ({s.reached}/{s.runs})"
        name = s.name + (f" [red]diverged {s.diverged}/{s.runs}[/red]" if s.diverged else "")
        lr = f"{s.lr:.3g}" + ("*" if s.name in untuned else "")
        table.add_row(rank_label(Rank(s.rank, s.tied)), name, lr, fmt_ci(s.acc_mean, s.acc_ci), steps,
                      f"{s.final_train_loss_mean:.2e}", f"{s.wall_s_mean:.2f}")
    caption = ["best first by mean test accuracy; " + CI_NOTE,
               RANK_NOTE + " (ranked on test accuracy)",
               f"steps: first step with full-batch training loss ≤ {target_loss:g}, mean over the seeds",
               "  that got there (how many got there)",
               "final loss: full-batch training loss after the last step, mean over seeds"]
    if any(s.name in untuned for s in summary):
        caption.append("* lr not swept: the optimizer's default")
    caption.append(machine_line())
    return Group(table, Text("\n".join(caption), style="dim"))



def write_curves(path: Path, results: Sequence[RunResult]) -> None:
    """``curves.csv``: the full-batch training loss at each measured step of each run."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("optimizer", "seed", "step", "train_loss"))
        for r in results:
            w.writerows((r.optimizer, r.seed, s, loss) for s, loss in zip(r.curve_steps, r.curve_loss))


def write_results(out: Path, *, study: str, config: dict[str, Any], results: Sequence[RunResult],
                  summary: Sequence[Summary]) -> None:
    """Write ``results.csv`` (a row per run), ``curves.csv`` (training loss per
    measured step per run) and ``results.json`` (config, summary and runs)."""
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_FIELDS)
        for r in results:
            w.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in RUN_FIELDS])
    write_curves(out / "curves.csv", results)
    doc = {
        "study": study,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config": config,
        "summary": [asdict(s) for s in summary],
        "runs": [{k: getattr(r, k) for k in RUN_FIELDS} for r in results],
    }
    write_json(out / "results.json", doc)
