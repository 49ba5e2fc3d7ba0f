"""The bandits study's pieces at a small size: every method's rows and curves, the crossing helper, the
claim's numbers in the notes. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest

from gradwise.arena import bandits_study as bs

SMALL = dataclasses.replace(bs.Config(), seeds=2, horizon=4000, sigma=0.01)


def test_every_method_runs_all_trials_and_regret_grows():
    res = bs.run_methods(SMALL, bs.METHODS)
    assert res["grid"] == [1000, 2000, 3000, 4000]
    for m in bs.METHODS:
        rows, curve = res["rows"][m], res["curve"][m]
        assert [r["seed"] for r in rows] == [0, 1]
        assert all(r["regret_T"] >= 0 and 0 <= r["tail_best"] + r["tail_greedy"] <= 1 for r in rows)
        assert curve == sorted(curve) and curve[-1] == pytest.approx(sum(r["regret_T"] for r in rows) / 2)
    # only the best arm has zero gap: a method never on it would have regret 4000 * (0.8125 - 0.78125) at least
    assert min(r["regret_T"] for m in bs.METHODS for r in res["rows"][m]) > 0


def test_crossing_is_where_a_stays_below_b_to_the_end():
    grid = [1, 2, 3, 4, 5]
    assert bs.crossing(grid, [5, 1, 5, 1, 1], [2, 2, 2, 2, 2]) == 4
    assert bs.crossing(grid, [5, 5, 5, 5, 5], [2, 2, 2, 2, 2]) is None
    assert bs.crossing(grid, [1, 1, 1, 1, 1], [2, 2, 2, 2, 2]) == 1


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method"):
        bs._agent("ucb1", SMALL, None, {})
