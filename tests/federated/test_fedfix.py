"""FedFix: its windows, weights and global models equal the authors' simulation (tests/data/fedfix_golden.pt),
and the Flower strategy reproduces them with its virtual clock, buffering the replies of slow clients."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    FixedWindowClock, fedfix_schedule, fedfix_simulate, fedfix_strategy, fedfix_weights, linear_compute_times,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedfix_golden.pt", weights_only=True)
IDS = [f"delta{c['delta']}-M{len(c['compute_times'])}" for c in GOLDEN]


def _local_work(case):
    """The golden clients' local work: ``steps`` gradient steps on their quadratics, from ``w``."""
    a = {k: v.numpy() for k, v in case["a"].items()}
    c = {k: v.numpy() for k, v in case["c"].items()}

    def work(i, w):
        out = {}
        for k, v in w.items():
            v = np.array(v, dtype=np.float64)
            for _ in range(case["steps"]):
                v = v - case["lr"] * a[k][i] * (v - c[k][i])
            out[k] = v
        return out
    return work


def _importance(case):
    return None if case["importance"] is None else case["importance"].numpy()


@pytest.mark.parametrize("case", GOLDEN, ids=IDS)
def test_schedule_and_weights_equal_the_authors(case):
    tau = case["compute_times"].numpy()
    np.testing.assert_array_equal(fedfix_schedule(tau, case["delta"], case["windows"]), case["schedule"].numpy())
    np.testing.assert_allclose(fedfix_weights(tau, case["delta"], _importance(case)), case["weights"].numpy(),
                               rtol=1e-15, atol=0)


def test_golden_cases_are_asynchronous():
    staleness = [(np.arange(c["windows"])[:, None] - c["schedule"].numpy())[c["schedule"].numpy() >= 0].max()
                 for c in GOLDEN]
    assert max(staleness) >= 3 and min(staleness) == 0  # stale updates, and one synchronous case


@pytest.mark.parametrize("case", GOLDEN, ids=IDS)
def test_simulation_equals_the_authors_loop(case):
    initial = {k: v[0].numpy() for k, v in case["w_global"].items()}
    got = fedfix_simulate(initial, _local_work(case), case["compute_times"].numpy(), case["delta"],
                          case["windows"], _importance(case), case["server_lr"])
    assert len(got) == case["windows"] + 1
    for k, want in case["w_global"].items():
        np.testing.assert_allclose(np.stack([g[k] for g in got]), want.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", GOLDEN, ids=IDS)
def test_strategy_global_model_equals_the_authors_loop(case, flwr_run):
    from fl_fakes import FakeGrid, arrays, reply
    from flwr.app import ConfigRecord

    tau, sched = case["compute_times"].numpy(), case["schedule"].numpy()
    n = tau.size
    nodes = list(range(201, 201 + n))
    grid = FakeGrid(reversed(nodes))  # node ids are matched to compute times in sorted order
    importance = None if case["importance"] is None else dict(zip(nodes, case["importance"].tolist()))
    strategy = fedfix_strategy(delta=case["delta"], compute_times=tau.tolist(), importance=importance,
                               server_lr=case["server_lr"], fraction_evaluate=0.0, min_available_nodes=n)
    work = _local_work(case)
    w = {k: v[0].numpy() for k, v in case["w_global"].items()}
    for r in range(1, case["windows"] + 1):
        messages = list(strategy.configure_train(r, arrays(w), ConfigRecord(), grid))
        idle = np.arange(n) if r == 1 else np.flatnonzero(sched[r - 2] >= 0)
        assert sorted(m.metadata.dst_node_id for m in messages) == [nodes[i] for i in idle]
        replies = []
        for m in messages:  # each client trains on the model in its own message
            i = nodes.index(m.metadata.dst_node_id)
            replies.append(reply(m, work(i, {k: v.numpy() for k, v in m.content["arrays"].items()})))
        new, _ = strategy.aggregate_train(r, replies)
        row = sched[r - 1]
        assert strategy.last_aggregated == {nodes[i]: (pytest.approx(case["weights"][i].item()), r - 1 - row[i])
                                            for i in np.flatnonzero(row >= 0)}
        if new is not None:
            w = {k: v.numpy() for k, v in new.items()}
        for k, want in case["w_global"].items():
            np.testing.assert_allclose(w[k], want[r].numpy(), rtol=0, atol=1e-12)


def test_strategy_drops_failed_clients_and_sends_them_the_current_model(flwr_run):
    from fl_fakes import FakeGrid, arrays, reply
    from flwr.app import ConfigRecord

    grid = FakeGrid([1, 2])
    strategy = fedfix_strategy(delta=1.0, compute_times=[1.0, 2.0], fraction_evaluate=0.0)
    w0 = {"w": np.zeros(2)}
    messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, arrays(w0), ConfigRecord(), grid)}
    new, _ = strategy.aggregate_train(1, [reply(messages[1], {"w": np.ones(2)})])  # node 2 never replies
    np.testing.assert_allclose(new["w"].numpy(), 0.5 * np.ones(2))  # d_1 = ceil(1/1) * 1/2
    messages = list(strategy.configure_train(2, new, ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]  # node 2 was idle again
    assert strategy.clock.started == {1: 2, 2: 2}


def test_clock_by_hand_and_state_round_trip():
    clock = FixedWindowClock({"a": 0.5, "b": 1.2}, delta=0.5)
    assert clock.start("a", 1) == 0.5 and clock.start("b", 1) == 1.2
    assert clock.finished(1) == ["a"] and clock.busy() == {"b"}
    clock.start("a", 2)
    with pytest.raises(ValueError, match="still working"):
        clock.start("b", 2)
    copy = FixedWindowClock({}, 1.0)
    copy.load_state_dict(clock.state_dict())
    assert sorted(clock.finished(2)) == ["a"] and sorted(copy.finished(2)) == ["a"]
    assert clock.finished(3) == ["b"] == copy.finished(3)  # 1.2 <= 1.5: three windows, as ceil(1.2/0.5)
    with pytest.raises(KeyError, match="no compute time"):
        clock.start("c", 3)


def test_linear_compute_times_and_weights():
    np.testing.assert_allclose(linear_compute_times(5, 80), [1.0, 0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(fedfix_weights([1.0, 0.8, 0.6, 0.4, 0.2], 0.5), [0.4, 0.4, 0.4, 0.2, 0.2])
    np.testing.assert_allclose(fedfix_weights([1.0, 0.3], 0.5, importance=[3, 1]), [1.5, 0.25])
    assert linear_compute_times(1).tolist() == [1.0]


@pytest.mark.parametrize("call,match", [
    (lambda: fedfix_weights([1.0, 0.0], 0.5), "compute_times"),
    (lambda: fedfix_weights([[1.0]], 0.5), "compute_times"),
    (lambda: fedfix_weights([1.0], 0.0), "delta"),
    (lambda: fedfix_weights([1.0, 2.0], 0.5, importance=[1.0]), "importance"),
    (lambda: fedfix_weights([1.0, 2.0], 0.5, importance=[0.0, 0.0]), "importance"),
    (lambda: fedfix_schedule([1.0], 0.5, -1), "windows"),
    (lambda: linear_compute_times(3, 100), "slowdown"),
    (lambda: fedfix_simulate({"w": np.zeros(1)}, lambda i, w: w, [1.0], 0.5, 2, server_lr=0.0), "server_lr"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("kwargs,match", [
    (dict(delta=-1.0, compute_times=[1.0]), "delta"),
    (dict(delta=1.0, compute_times=[1.0, float("nan")]), "compute_times"),
    (dict(delta=1.0, compute_times={1: 0.0}), "compute_times"),
    (dict(delta=1.0, compute_times=[1.0], server_lr=0.0), "server_lr"),
    (dict(delta=1.0, compute_times=[1.0], importance=[-1.0]), "importance"),
    (dict(delta=1.0, compute_times=[1.0], importance=3.0), "importance"),
    (dict(delta=1.0, compute_times={1: 1.0}, importance={1: float("inf")}), "importance"),
    (dict(delta=1.0, compute_times=[1.0], fraction_train=0.5), "fraction_train"),
])
def test_bad_strategy_arguments(kwargs, match):
    pytest.importorskip("flwr.serverapp")
    with pytest.raises(ValueError, match=match):
        fedfix_strategy(**kwargs)


def test_compute_times_must_match_the_nodes(flwr_run):
    from fl_fakes import FakeGrid, arrays
    from flwr.app import ConfigRecord

    strategy = fedfix_strategy(delta=1.0, compute_times=[1.0, 2.0], fraction_evaluate=0.0)
    with pytest.raises(ValueError, match="compute_times: 2 given for 3 nodes"):
        strategy.configure_train(1, arrays({"w": np.zeros(1)}), ConfigRecord(), FakeGrid([1, 2, 3]))
    strategy = fedfix_strategy(delta=1.0, compute_times={1: 1.0, 5: 2.0}, fraction_evaluate=0.0)
    with pytest.raises(ValueError, match=r"no value for nodes \[2\]"):
        strategy.configure_train(1, arrays({"w": np.zeros(1)}), ConfigRecord(), FakeGrid([1, 2]))


class _InProcessGrid:
    """A Grid that hands each message straight to a ClientApp in this process (node i+1 holds partition i)."""

    def __init__(self, num_nodes, app):
        from flwr.app import Context, RecordDict

        self.app = app
        self.contexts = {i + 1: Context(1, i + 1, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {})
                         for i in range(num_nodes)}
        self.sent: list[list[int]] = []

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.sent.append(sorted(m.metadata.dst_node_id for m in messages))
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def test_fedfix_learns_digits_through_flowers_strategy_loop(flwr_run):
    """Flower's own Strategy.start loop and the digits ClientApp, without the Simulation Engine (no Ray):
    4 clients with the authors' F-80 times and windows of half the slowest time."""
    pytest.importorskip("sklearn")
    from gradwise.federated import digits_client_app
    from gradwise.federated._flwr import state_to_arrays
    from gradwise.federated.digits import DigitsTask, accuracy, digits_model

    torch.set_num_threads(1)
    task, model, acc = DigitsTask(4, 0.3, 0), digits_model(32, 0), []

    def evaluate(server_round, arrays):
        model.load_state_dict(arrays.to_torch_state_dict())
        acc.append(accuracy(model, task.x_test, task.y_test))

    strategy = fedfix_strategy(delta=0.5, compute_times=linear_compute_times(4, 80), fraction_evaluate=0.0,
                               min_available_nodes=4)
    grid = _InProcessGrid(4, digits_client_app(0.3, 0))
    strategy.start(grid=grid, initial_arrays=state_to_arrays(model.state_dict()), num_rounds=3, evaluate_fn=evaluate)
    # tau = 1, 0.73, 0.47, 0.2: nodes 3 and 4 take one window, nodes 1 and 2 two (their updates one version late)
    assert grid.sent == [[1, 2, 3, 4], [3, 4], [1, 2, 3, 4]]
    assert strategy.history == [{3: (0.25, 0), 4: (0.25, 0)},
                                {1: (0.5, 1), 2: (0.5, 1), 3: (0.25, 0), 4: (0.25, 0)},
                                {3: (0.25, 0), 4: (0.25, 0)}]
    assert len(acc) == 4 and acc[-1] > acc[0] + 0.2 and acc[2] > acc[1], acc  # it learned, and kept learning


@pytest.mark.slow
def test_fedfix_learns_on_the_simulation_engine():
    """Four digits clients, the slowest five times slower than the fastest (the authors' F-80), windows of
    half the slowest time: fast clients are aggregated every window, slow ones every other, on a stale
    model. Ray's start takes most of the time (about 40 s on 2 shared cores), hence slow."""
    pytest.importorskip("flwr.simulation")
    ray = pytest.importorskip("ray")
    from gradwise.federated import run_digits_simulation

    strategy = fedfix_strategy(delta=0.5, compute_times=linear_compute_times(4, 80), fraction_evaluate=0.0,
                               min_available_nodes=4)
    run = run_digits_simulation(strategy, num_clients=4, num_rounds=4, alpha=0.3, num_cpus=2)
    assert not ray.is_initialized()
    acc = np.array(run.accuracy)
    assert acc.shape == (5,) and np.isfinite(acc).all()
    assert acc[1:].max() > acc[0] + 0.2 and acc[-1] > acc[1], acc  # it learned, and kept learning
    assert [len(h) for h in strategy.history] == [2, 4, 2, 4]  # two fast clients each window, two slow every other
    assert max(s for h in strategy.history for _, s in h.values()) == 1  # slow updates arrive one version late
