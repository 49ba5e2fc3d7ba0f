"""The batch-size study's pieces at a tiny size: method names, one run of each kind, the budget and the batch trace.
(Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses

import pytest

from gradwise.arena import batch_size_study as bs


@pytest.fixture(scope="module")
def task():
    return bs._setup(bs.Config(), bs.METHODS)


TINY = dataclasses.replace(bs.Config(), epochs=2, hidden=8, seeds=1)


def test_method_names_parse():
    assert [bs.parse_method(m) for m in bs.METHODS] == [("norm", 0.1), ("norm", 0.5), ("norm", 1.0), ("fixed", 2),
                                                        ("fixed", 32), ("fixed", 512)]


def test_fixed_batch_run_spends_the_sample_budget_at_a_constant_size(task):
    row = bs.run_one(TINY, task, "fixed-32", seed=0)
    n = task.x_train.shape[0]
    assert row["samples"] == 2 * n and row["final_batch"] == 32
    assert {b for _, b in row["batches"]} == {32}
    # an evaluation after each pass over the data, each at the samples seen by then
    assert [c[0] for c in row["curve"]] == [n, 2 * n] and 0 < row["test_acc"] <= 1
    assert row["iterations"] == 2 * -(-n // 32)  # every index once per pass: the last batch of a pass is smaller


def test_norm_test_grows_the_batch_monotonically_from_the_initial_size(task):
    row = bs.run_one(TINY, task, "norm-0.5", seed=0)
    sizes = [b for _, b in row["batches"]]
    assert sizes == sorted(sizes) and sizes[0] == TINY.initial_batch and row["final_batch"] >= sizes[-1] > sizes[0]
    assert row["samples"] >= 2 * task.x_train.shape[0] and row["iterations"] == len(sizes)
    # a stricter test (smaller eta) asks for larger batches on the same data and seed
    strict = bs.run_one(TINY, task, "norm-0.1", seed=0)
    assert strict["final_batch"] >= row["final_batch"] and strict["iterations"] <= row["iterations"]


def test_target_crossing_is_the_first_evaluation_at_or_above_it(task):
    row = bs.run_one(dataclasses.replace(TINY, target=0.0), task, "fixed-512", seed=0)
    assert row["samples_to_target"] == row["curve"][0][0] and row["seconds_to_target"] == row["curve"][0][2]
    never = bs.run_one(dataclasses.replace(TINY, target=0.999999), task, "fixed-512", seed=0)
    assert never["samples_to_target"] is None and never["seconds_to_target"] is None
