"""Unknown participation: FedAU's label-tied probabilities, and the wrapper's order by partition (which makes a
simulation repeatable although Flower draws node ids at random)."""
import numpy as np
import pytest

from gradwise.federated.participation import label_participation_probabilities


def test_label_probabilities_follow_the_class_multipliers():
    q = np.eye(4)[[0, 1, 2, 3, 0, 1]]  # six clients, each holding one of four classes
    p = label_participation_probabilities(q, mean=0.25, minimum=0.01, alpha=1.0, seed=3)
    m = np.random.default_rng(3).dirichlet(np.ones(4))
    assert np.allclose(p, np.clip(0.25 * 4 * m[[0, 1, 2, 3, 0, 1]], 0.01, 1.0))
    assert p[0] == p[4] and p[1] == p[5]  # same labels, same rate
    mixed = label_participation_probabilities(np.full((3, 4), 0.25), mean=0.25, minimum=0.0, alpha=1.0, seed=3)
    assert np.allclose(mixed, 0.25)  # a client holding every class equally shows up at the mean rate


def test_label_probabilities_are_floored_capped_and_seeded():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.full(10, 0.1), size=50)
    p = label_participation_probabilities(q, mean=0.5, minimum=0.05, alpha=0.1, seed=1)
    assert p.shape == (50,) and p.min() >= 0.05 and p.max() <= 1.0
    assert (p == 0.05).any() and p.std() > 0.1  # rare clients and frequent ones: heterogeneous
    assert np.array_equal(p, label_participation_probabilities(q, mean=0.5, minimum=0.05, alpha=0.1, seed=1))
    assert not np.array_equal(p, label_participation_probabilities(q, mean=0.5, minimum=0.05, alpha=0.1, seed=2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(label_fractions=[[0.5, 0.4]]), "label_fractions"),
    (dict(label_fractions=[0.5, 0.5]), "label_fractions"),
    (dict(label_fractions=[[1.0, 0.0]], mean=1.5), "mean"),
    (dict(label_fractions=[[1.0, 0.0]], minimum=-0.1), "minimum"),
    (dict(label_fractions=[[1.0, 0.0]], alpha=0.0), "alpha"),
])
def test_bad_label_probability_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        label_participation_probabilities(**kwargs)


class _Recorder:
    """A strategy that sends one train message per node and records the replies it is given."""

    def __init__(self):
        self.seen = None

    def configure_train(self, server_round, arrays, config, grid):
        from flwr.app import Message, RecordDict

        return [Message(content=RecordDict(), dst_node_id=n, message_type="train") for n in grid.get_node_ids()]

    def aggregate_train(self, server_round, replies):
        self.seen = [m.metadata.src_node_id for m in replies]
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None


def test_bound_partitions_set_who_takes_part_and_the_reply_order(flwr_run):
    pytest.importorskip("flwr.serverapp")
    from flwr.app import Message, RecordDict

    from fl_fakes import FakeGrid
    from gradwise.federated import with_participation

    partitions = {907: 0, 15: 1, 4242: 2, 300: 3}  # node ids in another order than their partitions
    probs = [1.0, 0.0, 1.0, 0.0]  # partitions 0 and 2 always, 1 and 3 never
    grid = FakeGrid(partitions)
    strat = with_participation(_Recorder(), probs, seed=0)
    strat.bind_partitions(partitions)
    for rnd in (1, 2, 3):
        sent = strat.configure_train(rnd, None, {}, grid)
        assert sorted(m.metadata.dst_node_id for m in sent) == [907, 4242]
        replies = [Message(content=RecordDict(), reply_to=m) for m in reversed(sent)]  # from each node sent to
        strat.aggregate_train(rnd, replies)
        assert strat.strategy.seen == [907, 4242]  # sorted by partition, not by arrival
    unbound = with_participation(_Recorder(), probs, seed=0)  # by node id: 15 and 907 have p = 1
    assert sorted(m.metadata.dst_node_id for m in unbound.configure_train(1, None, {}, grid)) == [15, 907]
    with pytest.raises(ValueError, match="partitions"):
        strat.bind_partitions({1: 0, 2: 0})
    strat.bind_partitions({907: 0})
    with pytest.raises(ValueError, match="no partition-id"):
        strat.configure_train(1, None, {}, grid)
