"""The odice study's pieces at a small size: the grid world and its data, the reference loop's c, a run's
row on random Pendulum data, the paired verdicts, and the refusal to start a SAC run.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

pytest.importorskip("gymnasium")

from gradwise.arena import odice_runs as R  # noqa: E402
from gradwise.arena import odice_study as os_  # noqa: E402

TINY = dataclasses.replace(os_.Config(), seeds=1, steps=4, grid_steps=4, replay_steps=0, episodes=1,
                           grid_transitions=200, grid_episodes=4)


@pytest.fixture(scope="module")
def task():
    return os_.load_task(TINY, os_.METHODS)


def test_grid_world_data_rewards_and_determinism():
    env = R.GridWorld(5, 0.0)
    a, b = R.grid_dataset(env, 300, 0.9, 1), R.grid_dataset(env, 300, 0.9, 1)
    assert torch.equal(a["cells"], b["cells"]) and torch.equal(a["action"], b["action"])
    # reward -3 per step, 0 exactly on the transitions that enter the terminal goal
    assert torch.equal(a["reward"] == 0, a["done"]) and set(a["reward"].tolist()) <= {0.0, -3.0}
    assert float(a["obs"].min()) >= -1 and float(a["obs"].max()) <= 1
    nxt, r, done = env.step((3, 4), 0, None)  # no slip: the move is taken, and (4, 4) is the goal
    assert nxt == (4, 4) and done and r == 0.0


def test_reference_loop_returns_c_only_for_the_orthogonal_mode():
    env = R.GridWorld(5, 0.1)
    data = R.grid_dataset(env, 200, 0.9, 0)
    _, _, cs = R.train_odice(data, "orthogonal", steps=6, seed=0, discrete=4, batch_size=32)
    assert cs.shape == (6,) and bool(torch.isfinite(cs).all())
    _, _, cs = R.train_odice(data, "semi", steps=3, seed=0, discrete=4, batch_size=32)
    assert bool(torch.isnan(cs).all()) and math.isnan(R.c_quantiles(cs)["c_neg"])
    q = R.c_quantiles(torch.tensor([-2.0, -1.0, -0.5, 0.5]))
    assert q["c_neg"] == 0.75 and q["c_q05"] <= q["c_q50"] <= q["c_q95"] and sum(q["c_hist"]) == 4
    with pytest.raises(ValueError, match="mode"):
        R.train_odice(data, "residual", steps=1, seed=0, discrete=4)


def test_a_run_gives_every_measure(task):
    row = os_.run_one(TINY, task, "orthogonal", 0)
    for s in os_.SIGMAS:
        assert -2000 < row[f"return_s{s:g}"] <= 0  # Pendulum's reward is in [-16.3, 0] over 200 steps
    assert 0 <= row["grid_success"] <= 1 and 0 <= row["grid_success_any"] <= 1
    assert math.isfinite(row["c_q50"]) and 0 <= row["c_neg"] <= 1
    again = os_.run_one(TINY, task, "orthogonal", 0)
    assert again["return_s0.1"] == row["return_s0.1"] and again["c_q50"] == row["c_q50"]
    with pytest.raises(ValueError, match="method"):
        os_.run_one(TINY, task, "residual", 0)


def test_verdicts_are_paired_by_seed():
    rows = []
    for seed in range(4):
        for m, base in (("true", -900.0), ("semi", -300.0), ("orthogonal", -200.0)):
            r = {"method": m, "seed": seed, "grid_success": 0.5, "grid_success_any": 0.5}
            for k in ("return_s0", "return_s0.2", "return_mean_noisy"):
                r[k] = base + 10.0 * seed + (seed % 2)  # seed effects shared by every mode
            rows.append(r)
    lines = os_.verdicts(os_.METHODS, rows)
    assert "semi - true +600.0" in lines[0] and "[SHOWN]" in lines[0]
    assert "orthogonal - semi +100.0" in lines[0] and "> : SHOWN" in lines[0]
    assert "orthogonal - semi +0.00 ± 0.00 [> : NOT SHOWN (interval contains 0); >= : not refuted]" in lines[3]


def test_an_uncached_replay_buffer_is_refused_not_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADWISE_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="no cached SAC buffer"):
        R.pendulum_data(123)
    assert not any(tmp_path.rglob("*.pt"))
