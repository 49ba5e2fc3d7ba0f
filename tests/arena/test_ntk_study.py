"""The ntk study's pieces at a small size: a width's row, the fitted slope, that a wider net sits nearer the
limit. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest

from gradwise.arena import ntk_study as ns

TINY = dataclasses.replace(ns.Config(), seeds=1, steps=20, points=8, train=4, draws=2)


def test_slope_of_a_power_law():
    ws = [64, 256, 1024]
    assert ns.slope(ws, [3.0 * w ** -0.5 for w in ws]) == pytest.approx(-0.5)
    assert math.isnan(ns.slope([64], [1.0]))


def test_rows_and_a_wider_net_is_nearer_the_limit_and_moves_less():
    narrow, wide = ns.run_width(TINY, 16, 0), ns.run_width(TINY, 512, 0)
    for r in (narrow, wide):
        assert set(r) >= {"width", "seed", "spread", "drift", "lin_gap", "train_loss", "theta_x0", "limit_x0"}
        assert r["spread"] > 0 and r["drift"] > 0 and 0 <= r["lin_gap"] and r["limit_x0"] > 0
    # Theta_inf(x0, x0) at depth 4, beta 0.1: 0.51, 0.52, 0.4025, 0.2825 over the layers
    assert wide["limit_x0"] == pytest.approx(narrow["limit_x0"])
    assert wide["spread"] < narrow["spread"] and wide["drift"] < narrow["drift"]
    assert wide["lin_gap"] < narrow["lin_gap"]
    assert ns.run_width(TINY, 16, 0)["spread"] == narrow["spread"]  # seeded
