"""FedAU: its weights and global updates equal the authors' main.py loop (tests/data/fedau_golden.pt)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import ParticipationIntervals, fedau_strategy, fedau_weights

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedau_golden.pt", weights_only=True)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"K{c['cutoff']}")
def test_weights_equal_the_authors_loop(case):
    got = fedau_weights(case["participation"].numpy(), cutoff=case["cutoff"])
    want = case["weights"].numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=1e-12)
    assert np.nanmax(got) > 1 or case["cutoff"] == 1  # non-trivial weights (K=1 makes every interval 1)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"K{c['cutoff']}")
def test_strategy_global_model_equals_the_authors_loop(case, flwr_run):
    from fl_fakes import FakeGrid, arrays, reply
    from flwr.app import ConfigRecord

    part, upd = case["participation"].numpy(), case["updates"].numpy()
    rounds, n = part.shape
    grid = FakeGrid(range(101, 101 + n))
    strategy = fedau_strategy(cutoff=case["cutoff"], server_lr=case["server_lr"], fraction_evaluate=0.0,
                              min_available_nodes=n, min_train_nodes=n)
    w = np.zeros(upd.shape[2])
    for t in range(rounds):
        messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(t + 1, arrays({"w": w}),
                                                                                ConfigRecord(), grid)}
        assert sorted(messages) == grid.node_ids  # fraction_train=1: every node is asked
        replies = [reply(messages[101 + i], {"w": w + upd[t, i]}) for i in range(n) if part[t, i]]
        new, _ = strategy.aggregate_train(t + 1, replies)
        if new is not None:
            w = new["w"].numpy()
        np.testing.assert_allclose(w, case["w_global"][t].numpy(), rtol=0, atol=1e-10)
        assert set(strategy.last_weights) == {101 + i for i in range(n) if part[t, i]}


def test_weight_estimates_inverse_participation_probability():
    rng = np.random.default_rng(0)
    p = np.array([0.8, 0.4, 0.1])
    w = fedau_weights(rng.random((3000, 3)) < p)
    np.testing.assert_allclose(np.nanmean(w[-500:], axis=0), 1 / p, rtol=0.1)
    # the cutoff caps the intervals, so the weights stay <= K
    assert np.nanmax(fedau_weights(rng.random((3000, 3)) < p, cutoff=4)) <= 4


def test_intervals_by_hand_and_state_round_trip():
    est = ParticipationIntervals(cutoff=3)
    assert est.step("abc", "ab") == {"a": 1.0, "b": 1.0}  # intervals a:[1] b:[1]
    assert est.step("abc", "") == {}                     # c absent twice
    assert est.step("abc", "") == {}                     # c reaches K=3: interval 3; a, b absent 2
    assert est.step("abc", "ac") == {"a": 1.0, "c": 3.0}  # a completes 3 -> [1, 3]
    copy = ParticipationIntervals()
    copy.load_state_dict(est.state_dict())
    assert est.step("abc", "b") == {"b": 2.0}            # b: [1, 3] (its absence hit K in round 4)
    assert copy.step("abc", "abc") != est.step("abc", "abc")  # the copy missed the last round
    copy.load_state_dict(est.state_dict())
    assert copy.step("abc", "abc") == est.step("abc", "abc")


@pytest.mark.parametrize("kwargs,match", [(dict(cutoff=0), "cutoff"), (dict(cutoff=2.5), "cutoff"),
                                          (dict(server_lr=0.0), "server_lr")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fedau_strategy(**kwargs)
    with pytest.raises(ValueError, match="participation"):
        fedau_weights([1, 0, 1])
    with pytest.raises(ValueError, match="participation"):
        fedau_weights([[0.5, 1]])
