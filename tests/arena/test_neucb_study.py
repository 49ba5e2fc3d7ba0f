"""The neucb study's pieces at a small size: a run's row, that the learners learn, bad method names.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest

from gradwise.arena import neucb_study as ns

SMALL = dataclasses.replace(ns.Config(), seeds=1, rounds=600)
TINY = dataclasses.replace(SMALL, rounds=40)


@pytest.fixture(scope="module")
def task():
    return ns.load_task(SMALL, ns.METHODS)


def test_task_is_digits_in_unit_range(task):
    assert tuple(task["x"].shape) == (1797, 64) and float(task["x"].max()) == 1.0
    assert sorted(set(task["y"].tolist())) == list(range(10))


@pytest.mark.parametrize("method", ns.METHODS)
def test_every_method_learns_beyond_chance(task, method):
    row = ns.run_one(SMALL, task, method, 0)
    assert row["method"] == method and row["seed"] == 0
    assert 0 <= row["regret_q1"] <= row["regret_half"] <= row["regret_T"] <= SMALL.rounds
    # uniform guessing pays 0.1 per round (regret 540 expected over 600 rounds); measured: regret 373-490, last
    # 60 rounds' reward 0.22-0.53 over two seeds
    assert row["regret_T"] < 0.9 * SMALL.rounds and row["tail_reward"] > 0.15


def test_runs_are_seeded(task):
    a, b = ns.run_one(TINY, task, "igw-kl", 3), ns.run_one(TINY, task, "igw-kl", 3)
    assert a["regret_T"] == b["regret_T"]


def test_unknown_method_is_refused(task):
    with pytest.raises(ValueError, match="method"):
        ns.run_one(TINY, task, "igw-huber", 0)
