"""The Cooldown temperature schedule: the paper's step by default, and the linear variant."""
from __future__ import annotations

import pytest
import torch

from gradwise.data_weighting import class_weights, temperature_probabilities
from gradwise.schedules import cooldown_temperature


# ---------------------------------------------------------------- loss-based reweighting


def test_cooldown_default_is_the_papers_step_schedule():
    # Li et al. section 4: tau = 5 for the first 30k of 60k iterations, then tau = 1 at once (a step, not a ramp)
    ts = [cooldown_temperature(s, 60_000) for s in (0, 29_999, 30_000, 45_000, 59_999)]
    assert ts == [5.0, 5.0, 1.0, 1.0, 1.0]
    assert cooldown_temperature(45_000, 60_000, schedule="linear") == pytest.approx(3.0, abs=1e-3)  # the old default
    # Theorem 1: the scalarization weights are p(i; tau) / p(i; 1)
    counts = [600_000, 1_000_000, 83_000]
    c = torch.tensor(counts, dtype=torch.float64)
    torch.testing.assert_close(class_weights(counts, 5.0), temperature_probabilities(counts, 5.0) / (c / c.sum()))


def test_cooldown_schedule():
    ts = [cooldown_temperature(s, 100, t_start=5.0, t_end=1.0, cooldown_start=0.5) for s in range(100)]
    assert ts[0] == ts[49] == 5.0 and ts[-1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert cooldown_temperature(60, 100, schedule="step") == 1.0
    with pytest.raises(ValueError, match="schedule"):
        cooldown_temperature(0, 10, schedule="cosine")
