"""Study results: per-method summaries, the leaderboard, files on disk and plots.

Every study reports a metric as its mean over seeds with a 95% Student-t
confidence interval (``mean_ci``), ranks its methods with ties
(``tie_ranks``: a method whose interval overlaps the interval of the best
method of its group shares that method's rank), names the machine
(``machine``), writes its files into a temporary folder that is renamed into
place only when the run completed (``results_folder``), and draws every method
with its own colour, line style and marker (``curve_styles``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import tempfile
import textwrap
import warnings
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from gradwise.arena.runner import RunResult

__all__ = ["json_safe", "Summary", "summarize", "leaderboard", "results_dir", "results_folder", "ResultsFolder",
           "write_results", "plot_curves", "mean_std", "mean_std_fields", "mean_ci", "t_quantile", "mean_ci_fields", "Rank",
           "tie_ranks", "rank_summaries", "rank_label", "fmt_ci", "compare_rankings", "CI_LEVEL", "CI_NOTE",
           "RANK_NOTE", "progress", "versions", "machine", "machine_line", "write_csv", "write_json",
           "curve_styles", "robust_log_ylim", "wrap_title"]

DASH = "—"
CI_LEVEL = 0.95
CI_NOTE = ("± = half-width of the 95% Student-t confidence interval of the mean over seeds "
           "(t quantile with n-1 degrees of freedom × sample std / √n)")
RANK_NOTE = ("rank: a method whose interval overlaps the interval of the best method of its group shares that "
             "rank (marked =, a tie); a new rank starts at the first method clear of it. Differences inside "
             "the intervals are not real: they change with the seeds and the CPU")


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


def t_quantile(df: int, level: float = CI_LEVEL) -> float:
    """The two-sided Student-t quantile for ``df`` degrees of freedom."""
    from scipy.stats import t  # a dependency of scikit-learn, which the arena needs anyway

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci(xs: Iterable[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """(mean, half-width of the Student-t confidence interval of the mean).

    The half-width is ``t_{n-1} * s / sqrt(n)`` (``s``: sample standard
    deviation); inf for one value (no interval can be given), NaN when a value
    is not finite.
    """
    xs = list(xs)
    if not xs:
        return math.nan, math.nan
    mean = statistics.fmean(xs)
    if not all(math.isfinite(x) for x in xs):
        return mean, math.nan
    if len(xs) < 2:
        return mean, math.inf
    return mean, t_quantile(len(xs) - 1, level) * statistics.stdev(xs) / math.sqrt(len(xs))


def mean_ci_fields(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, float]:
    """``{k + "_mean", k + "_std", k + "_ci"}`` over ``rows`` for each key (``_ci``: see :func:`mean_ci`)."""
    out: dict[str, float] = {}
    for k in keys:
        xs = [r[k] for r in rows]
        out[k + "_mean"], out[k + "_std"] = mean_std(xs)
        out[k + "_ci"] = mean_ci(xs)[1]
    return out


def fmt_ci(mean: float, half: float, digits: int = 4, scale: float = 1.0) -> str:
    """``"mean ± half"``; ``"mean ± —"`` when there is no interval (one seed)."""
    if not math.isfinite(half):
        return f"{scale * mean:.{digits}f} ± {DASH}"
    return f"{scale * mean:.{digits}f} ± {scale * half:.{digits}f}"


@dataclass(frozen=True)
class Rank:
    """A method's place: ``rank`` 1 is best; ``tied`` when it shares the rank with another method."""

    rank: int
    tied: bool


def rank_label(r: Rank) -> str:
    """``"1"``, or ``"=1"`` for a tie."""
    return f"={r.rank}" if r.tied else str(r.rank)


def tie_ranks(means: Sequence[float], halves: Sequence[float], *, higher_is_better: bool = True) -> list[Rank]:
    """Ranks with ties from interval overlap, in the order of the inputs.

    Methods are ordered by mean (best first; a NaN mean last). Walking that
    order, the first method starts group 1; each next method joins the current
    group when its interval ``[mean - half, mean + half]`` overlaps the
    interval of the group's first (best) method, else it starts a new group
    whose rank is its position (1-based; "competition ranking": 1, 1, 3).
    Overlapping 95% intervals are a conservative test (two means can differ
    significantly although their intervals overlap a little), so a tie says
    "not shown to differ", not "equal". A NaN interval overlaps nothing; an
    infinite one (one seed) overlaps everything.
    """
    n = len(means)
    if len(halves) != n:
        raise ValueError(f"{n} means but {len(halves)} half-widths")
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(n), key=lambda i: (math.isnan(means[i]), sign * means[i] if not math.isnan(means[i]) else 0))

    def overlaps(i: int, j: int) -> bool:
        if any(math.isnan(v) for v in (means[i], means[j], halves[i], halves[j])):
            return False
        if math.isinf(halves[i]) or math.isinf(halves[j]):
            return True
        return means[i] - halves[i] <= means[j] + halves[j] and means[j] - halves[j] <= means[i] + halves[i]

    rank_of: dict[int, int] = {}
    head = None
    for pos, i in enumerate(order):
        if head is None or not overlaps(head, i):
            head = i
            rank_of[i] = pos + 1
        else:
            rank_of[i] = rank_of[head]
    sizes: dict[int, int] = {}
    for r in rank_of.values():
        sizes[r] = sizes.get(r, 0) + 1
    return [Rank(rank_of[i], sizes[rank_of[i]] > 1) for i in range(n)]


def rank_summaries(rows: list[dict[str, Any]], key: str, *, higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Sort ``rows`` (dicts with ``key + "_mean"`` and ``key + "_ci"``) best first and add ``rank``/``tied``."""
    ranks = tie_ranks([r[key + "_mean"] for r in rows], [r[key + "_ci"] for r in rows],
                      higher_is_better=higher_is_better)
    for r, rk in zip(rows, ranks):
        r["rank"], r["tied"] = rk.rank, rk.tied
    sign = -1.0 if higher_is_better else 1.0
    rows.sort(key=lambda r: (r["rank"], math.isnan(r[key + "_mean"]),
                             0.0 if math.isnan(r[key + "_mean"]) else sign * r[key + "_mean"]))
    return rows


def compare_rankings(a: dict[str, Rank], b: dict[str, Rank], top: int = 3) -> dict[str, Any]:
    """Do two rankings of the same methods (e.g. from two disjoint seed sets) agree at the top?

    ``leaders_a``/``leaders_b``: the methods ranked 1 (with ties) in each;
    ``reversals``: pairs ranked apart, in opposite orders, by the two rankings,
    among the methods whose rank is at most ``top`` in either; ``agree``: the
    leaders are the same and there is no reversal.
    """
    if set(a) != set(b):
        raise ValueError("the two rankings rank different methods")
    leaders_a = sorted(n for n, r in a.items() if r.rank == 1)
    leaders_b = sorted(n for n, r in b.items() if r.rank == 1)
    head = sorted(n for n in a if a[n].rank <= top or b[n].rank <= top)
    reversals = [(x, y) for i, x in enumerate(head) for y in head[i + 1:]
                 if (a[x].rank - a[y].rank) * (b[x].rank - b[y].rank) < 0]
    return {"leaders_a": leaders_a, "leaders_b": leaders_b, "reversals": reversals,
            "agree": leaders_a == leaders_b and not reversals}


def progress(console: Console, width: int = 24) -> Progress:
    """The studies' transient progress bar: a description ``width`` characters wide, bar, count, time."""
    columns = (TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def versions() -> dict[str, Any]:
    """The versions and the machine recorded in every results.json."""
    import torch

    import gradwise

    return {"gradwise": gradwise.__version__, "torch": torch.__version__, "machine": machine()}


def machine() -> dict[str, Any]:
    """The CPU behind a result: model name, core count and the vector kernels torch dispatches to.

    PyTorch picks its vectorized CPU kernels per CPU (AVX2, AVX-512, ...), and
    they round differently, so a chaotic training run (a high learning rate,
    loss spikes) follows another trajectory on another CPU.
    """
    import torch

    from gradwise.docsections import cpu_model

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # torch < 2.1
        capability = "unknown"
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_capability": capability, "torch": torch.__version__}


def machine_line() -> str:
    """One line naming the machine, printed under every leaderboard."""
    m = machine()
    return (f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} (CPU kernels: {m['cpu_capability']}); "
            "another CPU gives other numbers, within the intervals")


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


def results_dir(out: str | Path | None, root: str | Path = "runs") -> Path:
    """``out`` if given, else a fresh ``root/<timestamp>`` folder; created either way.

    Studies use :func:`results_folder`, which writes into a temporary folder and
    renames it into place at the end.
    """
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = _fresh_path(root)
    path.mkdir(parents=True)
    return path


def _fresh_path(root: str | Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / stamp
    i = 1
    while path.exists():
        i += 1
        path = Path(root) / f"{stamp}-{i}"
    return path


OUT_ACCEPTS = ("--out takes a folder that can be written: a new one (created), an empty one, an earlier arena "
               "results folder (replaced whole) or a folder of other files (kept; results added beside them)")


def _is_results_folder(path: Path) -> bool:
    """An earlier arena run's folder: its results.json names a study (what every study writes last)."""
    try:
        return isinstance(json.loads((path / "results.json").read_text()).get("study"), str)
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class ResultsFolder:
    """Where a study writes (``tmp``) and where its results end up (``final``)."""

    final: Path
    tmp: Path


@contextmanager
def results_folder(out: str | Path | None, root: str | Path = "runs") -> Iterator[ResultsFolder]:
    """A study's results folder, written all at once.

    The study writes into ``.tmp``, a fresh hidden folder beside the final one;
    when the block ends normally it is renamed to ``.final`` (an earlier arena
    results folder there is replaced as a whole, so old and new files never
    mix; a folder of other files keeps them, and the results are moved in
    beside them, ``results.json`` last). When the block raises (or is interrupted), the temporary folder is
    removed and nothing appears at ``final``: no folder ever looks complete
    unless the run completed. A process killed outright leaves only a hidden
    ``.<name>.partial-*`` folder.

    ``out`` None means a fresh ``root/<timestamp>``. An unusable ``out`` (a
    file, a place that cannot be written)
    raises :class:`~gradwise.arena.UsageError` naming ``--out``, before any
    work is done.
    """
    from gradwise.arena import UsageError

    final = _fresh_path(root) if out is None else Path(out)
    if final.exists() or final.is_symlink():
        if not final.is_dir():
            raise UsageError(f"--out {final}: is not a folder; {OUT_ACCEPTS}")
        if not os.access(final, os.W_OK | os.X_OK):
            raise UsageError(f"--out {final}: the folder is not writable; {OUT_ACCEPTS}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    except OSError as err:
        raise UsageError(f"--out {final}: cannot write there ({err.strerror or err}); {OUT_ACCEPTS}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; results are ordinary files
    try:
        yield ResultsFolder(final=final, tmp=tmp)
        if not final.exists():
            os.rename(tmp, final)
        elif not any(final.iterdir()) or _is_results_folder(final):
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rename(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:  # a folder of the user's own files: keep them, move the results in, results.json last
            for f in sorted(tmp.iterdir(), key=lambda f: f.name == "results.json"):
                os.replace(f, final / f.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


# Sixteen colours that stay apart on white: matplotlib's tab10, then six darker or brighter ones
# away from its hues; after them, colours repeat with another line style and marker.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#1a237e", "#b8860b", "#00796b", "#ff1493", "#6b8e23")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def curve_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A matplotlib style per name: ``color``, ``ls``, ``marker`` and ``markevery``.

    Colours are distinct for up to ``len(PALETTE)`` names; (colour, line style,
    marker) stays distinct well beyond. ``markevery`` starts each method's
    markers at another point, so two methods with identical curves both stay
    visible (their markers alternate along the line).
    """
    out = {}
    for i, name in enumerate(names):
        cycle = i // len(PALETTE)
        out[name] = {"color": PALETTE[i % len(PALETTE)],
                     "ls": LINE_STYLES[(i + cycle) % len(LINE_STYLES)],
                     "marker": MARKERS[(i + cycle) % len(MARKERS)],
                     "markevery": (i % 7, 7)}  # every 7th point; fraction offsets are not allowed here
    return out


def robust_log_ylim(values: Iterable[float], *, low_quantile: float = 0.02,
                    max_decades: float = 6.0) -> tuple[float, float] | None:
    """y-limits for a log axis that a few extreme points cannot stretch.

    The top is the largest finite positive value (training curves start at
    their top, and upward spikes are worth seeing); the bottom is the
    ``low_quantile`` quantile of the positive values, and never more than
    ``max_decades`` decades below the top, so one near-zero point (a loss
    that touched 1e-11) does not squeeze every curve into the top of the plot.
    Both get a little margin. None when there is no positive finite value.
    """
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    top = float(v.max())
    bottom = max(float(np.quantile(v, low_quantile)), top * 10.0 ** -max_decades)
    if bottom >= top:
        bottom = top / 10
    return bottom / 1.5, top * 1.5


def wrap_title(title: str, width: int = 90) -> str:
    """``title`` broken into lines of at most ``width`` characters (matplotlib cuts long titles off)."""
    return "\n".join(textwrap.wrap(title, width)) if title else title


def _mean_curves(results: Sequence[RunResult]) -> dict[str, tuple[list[int], Any]]:
    import numpy as np

    by_name: dict[str, list[RunResult]] = {}
    for r in results:
        by_name.setdefault(r.optimizer, []).append(r)
    out = {}
    for name, rs in by_name.items():
        longest = max(rs, key=lambda r: len(r.curve_steps))
        curves = np.full((len(rs), len(longest.curve_steps)), np.nan)
        for row, r in zip(curves, rs):  # a diverged run stops early: pad with NaN
            row[: len(r.curve_loss)] = r.curve_loss
        curves[~np.isfinite(curves)] = np.nan
        with warnings.catch_warnings():  # all-NaN columns after every seed diverged
            warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = (longest.curve_steps, np.nanmean(curves, axis=0))
    return out


def plot_curves(path: Path, results: Sequence[RunResult], *, target_loss: float | None = None,
                title: str = "") -> list[str]:
    """Mean (over seeds) training loss against step, one line per method, log y.

    Every method has its own colour, line style and marker (:func:`curve_styles`);
    a method whose mean curve is identical to an earlier one's says so in the
    legend; the y-axis is clipped with :func:`robust_log_ylim` and says how
    many points fell below it. Returns the legend's labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    curves = _mean_curves(results)
    styles = curve_styles(list(curves))
    fig, ax = plt.subplots(figsize=(10, 5.5))
    drawn: list[tuple[str, Any]] = []
    for name, (steps, mean) in curves.items():
        same = next((other for other, m in drawn if m.shape == mean.shape and np.array_equal(m, mean, equal_nan=True)),
                    None)
        label = name if same is None else f"{name} (identical to {same})"
        st = styles[name]
        ax.plot(steps, mean, label=label, lw=1.3, color=st["color"], ls=st["ls"], marker=st["marker"],
                markevery=st["markevery"], ms=4, mfc="none" if same is not None else st["color"])
        drawn.append((name, mean))
    if target_loss is not None:
        ax.axhline(target_loss, color="grey", ls="--", lw=0.8, label=f"target {target_loss:g}")
    ax.set_yscale("log")
    points = np.concatenate([m for _, m in drawn]) if drawn else np.array([])
    lim = robust_log_ylim(points)
    if lim is not None:
        ax.set_ylim(*lim)
        below = int(np.sum(np.isfinite(points) & (points > 0) & (points < lim[0])))
        zeros = int(np.sum(points == 0))
        if below or zeros:  # beside the plot, under the legend, where it hides no curve
            note = (f"not shown: {below} points below the axis (it starts at the 2% quantile of the points)"
                    + (f" and {zeros} points exactly 0" if zeros else ""))
            ax.text(1.01, 0.0, textwrap.fill(note, 34), transform=ax.transAxes, fontsize=7, color="dimgrey",
                    va="bottom", ha="left")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (full batch, mean over seeds)")
    ax.set_title(wrap_title(title, 100), fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [label for _, label in zip(*ax.get_legend_handles_labels())]
