"""Statistics of a study: means over seeds with 95% Student-t intervals, and ranks with ties.

Every study reports a metric as its mean over seeds with a 95% Student-t
confidence interval (``mean_ci``) and ranks its methods with ties
(``tie_ranks``: a method whose interval overlaps the interval of the best
method of its group shares that method's rank).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DASH", "CI_LEVEL", "CI_NOTE", "RANK_NOTE", "mean_std", "mean_std_fields", "t_quantile", "mean_ci",
           "mean_ci_fields", "fmt_ci", "Rank", "rank_label", "tie_ranks", "rank_summaries", "compare_rankings"]

DASH = "—"
CI_LEVEL = 0.95
CI_NOTE = ("± = half-width of the 95% Student-t confidence interval of the mean over seeds "
           "(t quantile with n-1 degrees of freedom × sample std / √n)")
RANK_NOTE = ("rank: a method whose interval overlaps the interval of the best method of its group shares that "
             "rank (marked =, a tie); a new rank starts at the first method clear of it. Differences inside "
             "the intervals are not real: they change with the seeds and the CPU")


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
