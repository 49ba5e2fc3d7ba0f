"""Study results: per-method summaries, the leaderboard, files on disk and plots."""
from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gradwise.arena.runner import RunResult

__all__ = ["json_safe", "Summary", "summarize", "leaderboard", "results_dir", "write_results", "plot_curves",
           "mean_std", "mean_std_fields", "progress", "versions", "write_csv", "write_json"]

DASH = "—"


@dataclass
class Summary:
    """Aggregate over the seeds of one method.

    ``acc_std`` is the sample standard deviation (0 for one seed).
    ``steps_to_target`` is the mean over the seeds that reached the target
    (None if none did); ``reached`` counts them.
    """

    name: str
    lr: float
    runs: int
    acc_mean: float
    acc_std: float
    eval_loss_mean: float
    final_train_loss_mean: float
    steps_to_target: float | None
    reached: int
    wall_s_mean: float
    diverged: int


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else math.nan


def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of ``xs``; the deviation is 0 for one value."""
    xs = list(xs)
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_std_fields(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """``{k + "_mean": ..., k + "_std": ...}`` over ``rows`` for each key in ``keys``, in that order."""
    out: dict[str, float] = {}
    for k in keys:
        out[k + "_mean"], out[k + "_std"] = mean_std(r[k] for r in rows)
    return out


def progress(console: Console, width: int = 24) -> Progress:
    """The studies' transient progress bar: a description ``width`` characters wide, bar, count, time."""
    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def versions() -> dict[str, str]:
    """The versions recorded in every results.json."""
    import torch

    import gradwise

    return {"gradwise": gradwise.__version__, "torch": torch.__version__}


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> None:
    """A CSV of ``rows`` with columns ``fields`` (other keys ignored; None written as an empty cell)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_json(path: Path, doc: Any) -> None:
    """``doc`` as standard JSON (NaN and infinities written as null), indented."""
    path.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")


def summarize(results: Sequence[RunResult]) -> list[Summary]:
    """One Summary per method, best first (accuracy, then fewer steps to target)."""
    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.optimizer, []).append(r)
    out = []
    for name, rs in by_name.items():
        accs = [r.eval_acc for r in rs]
        hit = [r.steps_to_target for r in rs if r.steps_to_target is not None]
        out.append(Summary(
            name=name, lr=rs[0].lr, runs=len(rs), acc_mean=_mean(accs),
            acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
            eval_loss_mean=_mean([r.eval_loss for r in rs]),
            final_train_loss_mean=_mean([r.final_train_loss for r in rs]),
            steps_to_target=_mean(hit) if hit else None, reached=len(hit),
            wall_s_mean=_mean([r.wall_s for r in rs]), diverged=sum(r.diverged for r in rs),
        ))
    inf = math.inf
    out.sort(key=lambda s: (-s.acc_mean if math.isfinite(s.acc_mean) else inf,
                            s.steps_to_target if s.steps_to_target is not None else inf))
    return out


def leaderboard(summary: Sequence[Summary], *, target_loss: float, title: str,
                untuned: Collection[str] = ()) -> Group:
    """A rich table of ``summary`` and its notes; names in ``untuned`` get their lr starred."""
    table = Table(title=title, title_justify="left")
    table.add_column("optimizer", no_wrap=True)
    for col in ("lr", "test acc", f"steps to ≤{target_loss:g}", "final loss", "s/run"):
        table.add_column(col, justify="right", no_wrap=True)
    for s in summary:
        steps = DASH if s.steps_to_target is None else f"{s.steps_to_target:.0f} ({s.reached}/{s.runs})"
        name = s.name + (f" [red]diverged {s.diverged}/{s.runs}[/red]" if s.diverged else "")
        lr = f"{s.lr:.3g}" + ("*" if s.name in untuned else "")
        table.add_row(name, lr, f"{s.acc_mean:.4f} ± {s.acc_std:.4f}", steps,
                      f"{s.final_train_loss_mean:.2e}", f"{s.wall_s_mean:.2f}")
    caption = ["best first; test acc: mean ± std over seeds",
               f"steps: first step with full-batch training loss ≤ {target_loss:g}, mean over the seeds",
               "  that got there (how many got there)",
               "final loss: full-batch training loss after the last step, mean over seeds"]
    if any(s.name in untuned for s in summary):
        caption.append("* lr not swept: the optimizer's default")
    return Group(table, Text("\n".join(caption), style="dim"))


def results_dir(out: str | Path | None, root: str | Path = "runs") -> Path:
    """``out`` if given, else a fresh ``root/<timestamp>`` folder; created either way."""
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    i = 1
    while path.exists():
        i += 1
        path = Path(root) / f"{stamp}-{i}"
    path.mkdir(parents=True)
    return path


_RUN_FIELDS = ("optimizer", "seed", "lr", "steps", "eval_acc", "eval_loss", "final_train_loss",
               "steps_to_target", "wall_s", "diverged")


def write_results(out: Path, *, study: str, config: dict[str, Any], results: Sequence[RunResult],
                  summary: Sequence[Summary]) -> None:
    """Write ``results.csv`` (a row per run), ``curves.csv`` (training loss per
    measured step per run) and ``results.json`` (config, summary and runs)."""
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_RUN_FIELDS)
        for r in results:
            w.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in _RUN_FIELDS])
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("optimizer", "seed", "step", "train_loss"))
        for r in results:
            w.writerows((r.optimizer, r.seed, s, loss) for s, loss in zip(r.curve_steps, r.curve_loss))
    doc = {
        "study": study,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config": config,
        "summary": [asdict(s) for s in summary],
        "runs": [{k: getattr(r, k) for k in _RUN_FIELDS} for r in results],
    }
    write_json(out / "results.json", doc)


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, so the JSON is standard."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def plot_curves(path: Path, results: Sequence[RunResult], *, target_loss: float | None = None,
                title: str = "") -> None:
    """Mean (over seeds) training loss against step, one line per method, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.optimizer, []).append(r)
    fig, ax = plt.subplots(figsize=(9, 5))
    for i, (name, rs) in enumerate(by_name.items()):
        longest = max(rs, key=lambda r: len(r.curve_steps))
        curves = np.full((len(rs), len(longest.curve_steps)), np.nan)
        for row, r in zip(curves, rs):  # a diverged run stops early: pad with NaN
            row[: len(r.curve_loss)] = r.curve_loss
        curves[~np.isfinite(curves)] = np.nan
        with warnings.catch_warnings():  # all-NaN columns after every seed diverged
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(curves, axis=0)
        style = ("-", "--", ":")[i // 10 % 3]  # ten colours, then the next line style
        ax.plot(longest.curve_steps, mean, label=name, lw=1.3, color=f"C{i % 10}", ls=style)
    if target_loss is not None:
        ax.axhline(target_loss, color="grey", ls="--", lw=0.8, label=f"target {target_loss:g}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (full batch, mean over seeds)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
