"""Plots of a study: a style per method that stays distinct, log y-limits a few extreme points cannot
stretch, wrapped titles, and the optimizers study's loss curves."""
from __future__ import annotations

import textwrap
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradwise.arena.runner import RunResult

__all__ = ["PALETTE", "LINE_STYLES", "MARKERS", "curve_styles", "robust_log_ylim", "wrap_title", "plot_curves"]


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
