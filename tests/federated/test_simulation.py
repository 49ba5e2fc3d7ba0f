"""FedAvg and FedAU on Flower's Simulation Engine (Ray backend): 5 digits clients on a Dirichlet(0.3) split,
taking part at unequal rates that the strategies do not know. Ray's start dominates the time (about 40 s
on 2 shared cores for the default test); the six-round comparison is marked slow."""
import numpy as np
import pytest

pytest.importorskip("flwr.simulation")
ray = pytest.importorskip("ray")

from flwr.serverapp.strategy import FedAvg  # noqa: E402

from gradwise.federated import bernoulli_participation, fedau_strategy, run_digits_simulation, with_participation  # noqa: E402

PROBS = [0.9, 0.7, 0.5, 0.3, 0.2]


def _compare(rounds):
    common = dict(fraction_evaluate=0.0, min_available_nodes=5, min_train_nodes=1)
    strategies = {"fedavg": with_participation(FedAvg(**common), PROBS, seed=1),
                  "fedau": with_participation(fedau_strategy(**common), PROBS, seed=1)}
    runs = run_digits_simulation(strategies, num_clients=5, num_rounds=rounds, alpha=0.3, num_cpus=2)
    assert not ray.is_initialized()  # Flower shut Ray down
    return strategies, runs


def _check(strategies, runs, rounds, gain):
    for name, run in runs.items():
        acc = np.array(run.accuracy)
        assert acc.shape == (rounds + 1,) and np.isfinite(acc).all(), name
        assert acc[1:].max() > acc[0] + gain and acc[1:].mean() > acc[0], (name, acc)  # the model learned
    est = strategies["fedau"].intervals
    # FedAU saw every node, and exactly the participation that the wrapper drew
    drawn = bernoulli_participation(PROBS, rounds, seed=1)
    assert len(est.absent) == 5
    assert sum(est.count.values()) + sum(v > 0 for v in est.absent.values()) >= drawn.any(0).sum()
    assert sum(est.count.values()) == drawn.sum()


def test_fedavg_and_fedau_learn_on_the_simulation_engine():
    strategies, runs = _compare(2)
    _check(strategies, runs, 2, gain=0.05)


@pytest.mark.slow
def test_fedavg_and_fedau_six_rounds_each_improve():
    strategies, runs = _compare(6)
    _check(strategies, runs, 6, gain=0.25)
    for run in runs.values():  # still improving after the first round (node order, hence who gets which
        assert max(run.accuracy[2:]) > run.accuracy[1]  # participation rate, differs between runs)


class _QueryGrid:
    """Answers query messages with each node's partition-id, in reverse order (as replies may arrive)."""

    def __init__(self, partitions, connected=None):
        self.partitions = partitions
        self.connected = list(partitions) if connected is None else connected

    def get_node_ids(self):
        return list(self.connected)

    def send_and_receive(self, messages, timeout=None):
        from flwr.app import Message, MetricRecord, RecordDict

        out = []
        for m in messages:
            assert m.metadata.message_type == "query"
            pid = self.partitions[m.metadata.dst_node_id]
            out.append(Message(content=RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=m))
        return out[::-1]


def test_node_partitions_asks_every_node(flwr_run):
    from gradwise.federated.simulation import node_partitions

    partitions = {30: 0, 10: 2, 20: 1}
    assert node_partitions(_QueryGrid(partitions), 3) == partitions
    with pytest.raises(RuntimeError, match="2 of 3 nodes connected"):
        node_partitions(_QueryGrid(partitions, connected=[30, 10]), 3, timeout=0.3)


def test_alphas_must_name_strategies():
    from gradwise.federated.simulation import digits_server_app

    strategies = {"a": FedAvg(), "b": FedAvg()}
    digits_server_app(strategies, num_rounds=1, num_clients=2, alphas={"a": 0.1})
    with pytest.raises(ValueError, match="alphas"):
        digits_server_app(strategies, num_rounds=1, num_clients=2, alphas={"c": 0.1})
    with pytest.raises(ValueError, match="alphas"):
        digits_server_app(strategies, num_rounds=1, num_clients=2, alphas={"a": 0.0})
