"""Federated curricula: the pacing functions, the client's ordered local training and the server's client
curriculum equal the authors' code (tests/data/curriculum_golden.pt); the strategy scores every node,
trains the paced pool's rounds and sends the data-curriculum config."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    ClientCurriculum, client_score, curriculum_client_rule, curriculum_local_train, curriculum_order,
    curriculum_strategy, curriculum_subset_sizes, example_losses, pacing_function,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "curriculum_golden.pt", weights_only=True)


class Net(torch.nn.Module):  # the golden's toy model
    def __init__(self, state):
        super().__init__()
        self.hidden = torch.nn.Linear(6, 8, dtype=torch.float64)
        self.linear = torch.nn.Linear(8, 4, dtype=torch.float64)
        self.load_state_dict(state)

    def forward(self, x):
        return self.linear(torch.tanh(self.hidden(x)))


@pytest.mark.parametrize("case", GOLDEN["pacing"],
                         ids=lambda c: f"{c['pacing']}-a{c['a']}-b{c['b']}-T{c['total_steps']}-N{c['total_data']}")
def test_pacing_functions_equal_theirs(case):
    g = pacing_function(case["pacing"], case["a"], case["b"], case["total_steps"], case["total_data"])
    got = torch.tensor([g(t) for t in case["steps"].tolist()])
    assert torch.equal(got, case["sizes"])


@pytest.mark.parametrize("name", ["linear", "quad", "root", "step", "exp", "log"])
def test_pacing_starts_at_b_and_reaches_all_data_by_a(name):
    n, total, a, b = 200, 50, 0.6, 0.25
    g = pacing_function(name, a, b, total, n)
    sizes = [g(t) for t in range(2 * total)]
    assert all(s0 <= s1 for s0, s1 in zip(sizes, sizes[1:]))  # never shrinks
    assert 1 <= min(sizes) and max(sizes) == n
    assert sizes[0] == (int(b * n) if name != "log" else g(0))
    assert g(int(np.ceil(a * total))) >= (n - 1 if name in ("exp", "log") else n)
    if name == "step":  # one jump, at a T
        assert set(sizes) == {int(b * n), n}
    assert pacing_function("sqrt" if name == "root" else name, a, b, total, n)(7) == g(7)
    frozen = pacing_function(name, float("inf"), b, total, n)  # a = inf: no growth
    assert frozen(2 * total) == frozen(0) <= int(b * n)


def test_curriculum_order_kinds():
    scores = torch.tensor([0.5, 0.1, 0.5, 0.9, 0.1], dtype=torch.float64)
    assert curriculum_order(scores, "curriculum").tolist() == [1, 4, 0, 2, 3]  # ties in index order
    assert curriculum_order(scores, "anti-curriculum").tolist() == [3, 2, 0, 4, 1]
    assert curriculum_order(scores, "curr").tolist() == curriculum_order(scores).tolist()
    rand = curriculum_order(scores, "random", torch.Generator().manual_seed(3))
    assert sorted(rand.tolist()) == [0, 1, 2, 3, 4]
    assert torch.equal(rand, curriculum_order(scores, "rand", torch.Generator().manual_seed(3)))
    two = torch.stack([scores, torch.tensor([0.0, 1.0, 0.2, -1.0, 0.0], dtype=torch.float64)], 1)
    assert curriculum_order(two).tolist() == curriculum_order(two.sum(1)).tolist() == [3, 4, 0, 2, 1]
    assert client_score(two) == pytest.approx(float(two.sum(1).mean()))


@pytest.mark.parametrize("case", GOLDEN["local"], ids=lambda c: f"{c['ordering']}-{c['pacing']}-e{c['epochs']}")
def test_local_training_equals_their_client(case):
    model = Net(case["start"])
    order = curriculum_order(example_losses(model, case["x"], case["y"]), case["ordering"])
    # their scoring_func gives the ascending order; their "anti" reverses it in train()
    expected = case["order"] if case["ordering"] == "curr" else case["order"].flip(0)
    assert torch.equal(order, expected)
    sizes = curriculum_subset_sizes(len(case["y"]), case["batch_size"], case["epochs"], pacing=case["pacing"],
                                    a=case["a"], b=case["b"])
    # their loop builds one more subset after its last pass, never trained on
    assert sizes == [len(p) for p in case["passes"][:-1]]
    assert all(torch.equal(p, order[:len(p)]) for p in case["passes"])
    assert sum(-(-s // case["batch_size"]) for s in sizes) == case["steps"]
    loss = curriculum_local_train(
        model, case["x"], case["y"], ordering=case["ordering"], pacing=case["pacing"], a=case["a"], b=case["b"],
        epochs=case["epochs"], lr=case["lr"], batch_size=case["batch_size"], momentum=case["momentum"],
        weight_decay=case["weight_decay"], lr_decay=tuple(case["lr_decay"]), shuffle=False)
    for k, v in case["result"].items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(case["loss"], rel=1e-10)


def test_lr_decay_and_given_scores_change_training():
    case = GOLDEN["local"][0]
    kwargs = dict(pacing="linear", epochs=1, lr=0.1, batch_size=10, shuffle=False)
    base = Net(case["start"])
    curriculum_local_train(base, case["x"], case["y"], **kwargs)
    decayed = Net(case["start"])
    curriculum_local_train(decayed, case["x"], case["y"], lr_decay=(0.5, 1.0), **kwargs)
    assert not torch.allclose(base.linear.weight, decayed.linear.weight)
    # scores given (e.g. an expert's) replace the global model's losses: reversed scores = anti-curriculum
    own = example_losses(Net(case["start"]), case["x"], case["y"])
    anti = Net(case["start"])
    curriculum_local_train(anti, case["x"], case["y"], ordering="anti-curriculum", **kwargs)
    flipped = Net(case["start"])
    curriculum_local_train(flipped, case["x"], case["y"], scores=-own, **kwargs)
    torch.testing.assert_close(anti.linear.weight, flipped.linear.weight, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", GOLDEN["clients"], ids=lambda c: f"{c['ordering']}-{c['pacing']}-n{len(c['losses'])}")
def test_client_pools_equal_their_scheduler(case):
    scores = torch.stack([client_score(v) for v in case["losses"]])
    cc = ClientCurriculum(case["total_updates"], 4, ordering=case["ordering"], pacing=case["pacing"],
                          a=case["a"], b=case["b"])
    for updates, pool in zip(case["updates"].tolist(), case["pools"]):
        cc.updates = updates
        assert cc.schedule(scores) == pool.tolist()


def test_client_curriculum_rounds_cover_the_pool_then_rescore():
    scores = torch.arange(10.0, 0.0, -1.0)  # client 9 easiest
    cc = ClientCurriculum(40, 3, pacing="linear", a=0.5, b=0.5, seed=1)
    assert cc.needs_scores()
    pool = cc.schedule(scores)
    assert pool == [9, 8, 7, 6, 5]
    rounds = [cc.next_round() for _ in range(2)]
    assert [len(r) for r in rounds] == [3, 2] and sorted(sum(rounds, [])) == sorted(pool)
    assert cc.updates == 5 and cc.needs_scores()
    assert len(cc.schedule(scores)) == 6  # g(5) = 5 + (10 - 5) * 5 / 20 = 6.25, truncated
    with pytest.raises(RuntimeError, match="schedule"):
        ClientCurriculum(4, 2).next_round()


def test_client_rule_scores_without_training_or_trains():
    case = GOLDEN["local"][0]
    model = Net(case["start"])
    score = curriculum_client_rule(model, case["x"], case["y"], {"curriculum-score-only": True}, epochs=1,
                                   lr=0.1, batch_size=10, seed=0)
    assert score == pytest.approx(float(example_losses(model, case["x"], case["y"]).mean()))
    assert torch.equal(model.linear.weight, case["start"]["linear.weight"])
    loss = curriculum_client_rule(model, case["x"], case["y"], {"ordering": "anti", "pacing-a": 0.5}, epochs=2,
                                  lr=0.1, batch_size=10, seed=0)
    assert np.isfinite(loss) and not torch.equal(model.linear.weight, case["start"]["linear.weight"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="pacing"):
        pacing_function("cubic", 0.8, 0.2, 10, 10)
    with pytest.raises(ValueError, match="Invalid a"):
        pacing_function("linear", 0.0, 0.2, 10, 10)
    with pytest.raises(ValueError, match="Invalid b"):
        pacing_function("linear", 0.8, -0.1, 10, 10)
    with pytest.raises(ValueError, match="total_steps"):
        pacing_function("linear", 0.8, 0.2, 0, 10)
    with pytest.raises(ValueError, match="ordering"):
        curriculum_order(torch.zeros(3), "easy-first")
    with pytest.raises(ValueError, match="NaN"):
        curriculum_order(torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="scores"):
        curriculum_order(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="scores"):
        curriculum_order(["easy", "hard"])
    assert curriculum_order([0.3, 0.1, 0.2]).tolist() == [1, 2, 0]  # a plain list is read as float64
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    model = Net(GOLDEN["local"][0]["start"])
    with pytest.raises(ValueError, match="lr_decay"):
        curriculum_local_train(model, x, y, lr_decay=(0.1,))
    with pytest.raises(ValueError, match="scores"):
        curriculum_local_train(model, x, y, scores=torch.zeros(5))
    with pytest.raises(ValueError, match="Invalid y"):
        example_losses(model, x, y[:4])
    with pytest.raises(ValueError, match="min_examples"):
        curriculum_subset_sizes(10, 2, min_examples=0)
    with pytest.raises(ValueError, match="clients_per_round"):
        ClientCurriculum(10, 0)
    with pytest.raises(ValueError, match="losses"):
        client_score(torch.zeros(0))


def test_strategy_bad_arguments():
    pytest.importorskip("flwr.serverapp")
    with pytest.raises(ValueError, match="client_ordering"):
        curriculum_strategy(clients_per_round=2, client_ordering="hardest")
    with pytest.raises(ValueError, match="client_a"):
        curriculum_strategy(clients_per_round=2, client_a=-1.0)
    with pytest.raises(ValueError, match="Invalid pacing"):
        curriculum_strategy(clients_per_round=2, pacing="cubic")
    with pytest.raises(ValueError, match="clients_per_round"):
        curriculum_strategy(clients_per_round=0)


def test_strategy_scores_nodes_and_trains_the_paced_pool(flwr_run):
    from flwr.app import ConfigRecord
    from fl_fakes import FakeGrid, arrays, reply

    class ScoringGrid(FakeGrid):
        """Answers the strategy's score-only messages with each node's fixed loss."""

        def __init__(self, losses):
            super().__init__(sorted(losses))
            self.losses, self.asked = losses, []

        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                assert m.content["config"]["curriculum-score-only"]
                self.asked.append(m.metadata.dst_node_id)
                r = reply(m, {"p": np.zeros(3)})
                r.content["metrics"]["train-loss"] = self.losses[m.metadata.dst_node_id]
                out.append(r)
            return out

    losses = {21: 0.9, 22: 0.2, 23: 0.5, 24: 0.1, 25: 0.7, 26: 0.3}
    grid = ScoringGrid(losses)
    strategy = curriculum_strategy(clients_per_round=2, client_pacing="linear", client_a=0.5, client_b=0.5,
                                   fraction_evaluate=0.0, min_available_nodes=6)
    w = arrays({"p": np.zeros(3)})
    first = list(strategy.configure_train(1, w, ConfigRecord(), grid))
    assert sorted(grid.asked) == sorted(losses)  # every node scored
    pool = {24, 22, 26}  # g(0) = 0.5 * 6 = 3 easiest nodes
    second = list(strategy.configure_train(2, w, ConfigRecord(), grid))
    trained = [m.metadata.dst_node_id for m in first + second]
    assert len(first) == 2 and len(second) == 1 and set(trained) == pool
    assert len(grid.asked) == 6  # no rescoring while the pool lasts
    cfg = first[0].content["config"]
    assert cfg["local-rule"] == "curriculum" and cfg["ordering"] == "curriculum" and cfg["pacing-a"] == 0.8
    assert cfg["server-round"] == 1
    list(strategy.configure_train(3, w, ConfigRecord(), grid))
    assert len(grid.asked) == 12  # pool used up: scored again
    replies = [reply(m, {"p": np.ones(3) * i}, num_examples=10) for i, m in enumerate(first)]
    new, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(new["p"].numpy(), 0.5)  # FedAvg of the round's clients


@pytest.mark.slow
def test_curriculum_learns_on_the_simulation_engine():
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    from gradwise.federated import run_digits_simulation

    strategy = curriculum_strategy(clients_per_round=2, client_b=0.5, fraction_evaluate=0.0, min_available_nodes=4)
    run = run_digits_simulation(strategy, num_clients=4, num_rounds=3, alpha=0.3, num_cpus=2)
    acc = np.array(run.accuracy)
    assert acc.shape == (4,) and np.isfinite(acc).all() and acc[1:].max() > acc[0] + 0.1, acc
    assert strategy.curriculum.updates == 6 and len(strategy.scores) == 4


def test_participation_wrapper_sizes_the_client_pacing_to_the_run(monkeypatch):
    # with_participation runs its own round loop, so the curriculum's start() is not called: the wrapper
    # must still size the client pacing to num_rounds * clients_per_round updates (not one round's)
    strategy_mod = pytest.importorskip("flwr.serverapp.strategy")
    from gradwise.federated import with_participation

    calls = []
    monkeypatch.setattr(strategy_mod.Strategy, "start", lambda self, grid, arrays, **kw: calls.append(kw))
    inner = curriculum_strategy(clients_per_round=3, fraction_evaluate=0.0)
    wrapped = with_participation(inner, [1.0] * 6)
    wrapped.start(None, None, num_rounds=7, timeout=12.0)
    assert calls and calls[0]["num_rounds"] == 7
    assert inner.curriculum.total_updates == 21 and inner.curriculum.clients_per_round == 3
    assert inner.timeout == 12.0
