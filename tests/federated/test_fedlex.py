"""FedLEx: exploration, the guidance matrix and the guided local steps equal the authors' code
(tests/data/fedlex_golden.pt); the strategy builds the matrix from the exploration round and sends it."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    fedlex_client_train, fedlex_guidance, fedlex_guidance_matrix, fedlex_local_run, fedlex_local_train,
    fedlex_strategy,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedlex_golden.pt", weights_only=True)
CE = torch.nn.functional.cross_entropy


def _ids(case):
    return f"{case['optimizer']}-{case['normalization']}-k{len(case['scouts'])}-p{case['patience']}"


def _model(state):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    m.load_state_dict(state)
    return m


def _opt(model, case):
    if case["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=case["lr"], weight_decay=case["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=case["lr"], momentum=case["momentum"],
                           weight_decay=case["weight_decay"])


def _deviations(case):
    return {k: torch.stack([s[k] for s in case["scouts"]]) - b for k, b in case["base"].items()}


@pytest.mark.parametrize("case", GOLDEN, ids=_ids)
def test_exploration_equals_their_create_scout(case):
    for batches, scout in zip(case["explorer_batches"], case["scouts"]):
        model = _model(case["base"])
        fedlex_local_run(model, CE, [batches] * case["explore_epochs"], _opt(model, case), patience=case["patience"])
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, scout[k], rtol=1e-10, atol=1e-12)


def test_some_exploration_stops_early():
    case = next(c for c in GOLDEN if c["stopped_early"])
    batches = case["explorer_batches"]
    moved = []
    for patience in (case["patience"], None):
        model = _model(case["base"])
        for b in batches:
            fedlex_local_run(model, CE, [b] * case["explore_epochs"], _opt(model, case), patience=patience)
        moved.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach())
    assert not torch.equal(*moved)


@pytest.mark.parametrize("case", GOLDEN, ids=_ids)
def test_guidance_matrix_equals_their_create_mask(case):
    got = fedlex_guidance(_deviations(case), case["normalization"])
    assert set(got) == set(case["mask"])
    for k, v in case["mask"].items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-12, atol=1e-14)
        if case["normalization"] == "minmax":
            assert got[k].min() == 0.0 and got[k].max() == 1.0
        else:
            assert (got[k] < 0).any()  # the robust scaling puts entries below the median negative


@pytest.mark.parametrize("case", GOLDEN, ids=_ids)
def test_guided_training_equals_their_update(case):
    model = _model(case["base"])
    fedlex_local_run(model, CE, [case["guided_batches"]] * case["local_epochs"], _opt(model, case),
                     guidance=case["mask"], max_norm=case["max_norm"])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, case["guided"][k], rtol=1e-10, atol=1e-12)
    # the guidance changed the outcome: without it the weights differ
    plain = _model(case["base"])
    fedlex_local_run(plain, CE, [case["guided_batches"]] * case["local_epochs"], _opt(plain, case),
                     max_norm=case["max_norm"])
    assert not torch.allclose(plain[0].weight, model[0].weight)
    if case["max_norm"] > 0:  # and the clipping was active
        unclipped = _model(case["base"])
        fedlex_local_run(unclipped, CE, [case["guided_batches"]] * case["local_epochs"], _opt(unclipped, case),
                         guidance=case["mask"])
        assert not torch.allclose(unclipped[0].weight, model[0].weight)


def test_guidance_matrix_properties():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 4, 5)) * np.linspace(0.1, 2.0, 5)
    g = fedlex_guidance_matrix(d).numpy()
    ls = (d ** 2).mean(0)
    # an order-preserving map of the learning spread onto [0, 1]
    assert np.array_equal(np.argsort(g, axis=None), np.argsort(ls, axis=None))
    np.testing.assert_allclose(g, (ls - ls.min()) / (ls.max() - ls.min()), rtol=1e-12)
    # the sign of a deviation does not matter, and the scale of all of them cancels
    np.testing.assert_allclose(fedlex_guidance_matrix(-3.0 * d).numpy(), g, rtol=1e-10, atol=1e-12)
    # robust: median at 0 and the quartiles one apart (torch.median, torch.quantile semantics)
    r = fedlex_guidance_matrix(torch.as_tensor(d), "robust")
    flat = torch.as_tensor(ls).reshape(-1)
    iqr = torch.quantile(flat, 0.75) - torch.quantile(flat, 0.25)
    torch.testing.assert_close(r, (torch.as_tensor(ls) - flat.median()) / iqr, rtol=1e-12, atol=1e-14)
    # a constant spread (a one-entry tensor) gives ones, not 0/0
    assert torch.equal(fedlex_guidance_matrix(np.ones((2, 1))), torch.ones(1, dtype=torch.float64))
    assert torch.equal(fedlex_guidance_matrix(np.ones((2, 3)), "robust"), torch.ones(3, dtype=torch.float64))
    assert fedlex_guidance_matrix(torch.ones(2, 3, dtype=torch.float32)).dtype == torch.float32


def test_local_train_lowers_the_loss_and_zero_guidance_freezes():
    torch.manual_seed(1)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    model = _model(GOLDEN[0]["base"])
    g = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    first = fedlex_local_train(model, x, y, g, epochs=1, lr=0.2, batch_size=16)
    last = fedlex_local_train(model, x, y, g, epochs=5, lr=0.2, batch_size=16, optimizer="adam")
    assert last < first
    g["0.weight"] = torch.zeros_like(g["0.weight"])  # G = 0 stops an entry moving (SGD without decay)
    before = model[0].weight.detach().clone()
    fedlex_local_train(model, x, y, g, epochs=2, lr=0.2, batch_size=16, momentum=0.9)
    assert torch.equal(model[0].weight, before) and not torch.equal(model[2].weight, before[:3, :3])


def test_bad_arguments():
    case = GOLDEN[0]
    model = _model(case["base"])
    x, y = case["guided_batches"][0]
    opt = _opt(model, case)
    with pytest.raises(ValueError, match="normalization"):
        fedlex_guidance_matrix(np.ones((2, 3)), "zscore")
    with pytest.raises(ValueError, match="deviations"):
        fedlex_guidance_matrix(np.ones((0, 3)))
    with pytest.raises(ValueError, match="deviations"):
        fedlex_guidance([np.ones((2, 3))])
    with pytest.raises(ValueError, match="guidance"):
        fedlex_local_run(model, CE, [[(x, y)]], opt, guidance={"0.weight": torch.ones(4, 5)})
    with pytest.raises(ValueError, match="guidance"):
        fedlex_local_run(model, CE, [[(x, y)]], opt, guidance=[torch.ones(4, 5)] * 4)
    with pytest.raises(ValueError, match="patience"):
        fedlex_local_run(model, CE, [[(x, y)]], opt, patience=0)
    with pytest.raises(ValueError, match="max_norm"):
        fedlex_local_run(model, CE, [[(x, y)]], opt, max_norm=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        fedlex_local_train(model, x, y, optimizer="lbfgs")
    with pytest.raises(ValueError, match="momentum"):
        fedlex_local_train(model, x, y, optimizer="adam", momentum=0.9)
    with pytest.raises(ValueError, match="epochs"):
        fedlex_local_train(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="fedlex-phase"):
        fedlex_client_train({}, {"fedlex-phase": "exploit"}, model, x, y)
    with pytest.raises(ValueError, match="fedlex-guidance"):
        fedlex_client_train({}, {"fedlex-phase": "guided"}, model, x, y)
    for kwargs, match in [(dict(explore_epochs=0), "explore_epochs"), (dict(explore_patience=0), "explore_patience"),
                          (dict(fraction_explore=1.5), "fraction_explore"), (dict(normalization="l2"), "normalization"),
                          (dict(local_optimizer="rmsprop"), "local_optimizer"), (dict(max_norm=-1.0), "max_norm")]:
        with pytest.raises(ValueError, match=match):
            fedlex_strategy(**kwargs)


def test_strategy_explores_then_sends_their_guidance(flwr_run):
    from flwr.app import ConfigRecord
    from fl_fakes import FakeGrid, arrays, reply

    case = GOLDEN[1]
    nodes = [21, 22, 23, 24]
    grid = FakeGrid(nodes)
    base = {k: v.numpy() for k, v in case["base"].items()}
    strategy = fedlex_strategy(explore_epochs=7, explore_patience=3, fraction_explore=0.5, normalization="robust",
                               max_norm=0.5, fraction_evaluate=0.0, min_available_nodes=4, min_train_nodes=1)
    messages = strategy.configure_train(1, arrays(base), ConfigRecord(), grid)
    assert len(messages) == 2 and strategy.fraction_train == 1.0  # half the nodes explore
    cfg = messages[0].content["config"]
    assert (cfg["local-rule"], cfg["fedlex-phase"], cfg["explore-epochs"], cfg["explore-patience"]) == \
        ("fedlex", "explore", 7, 3)
    assert "fedlex-guidance" not in messages[0].content
    sizes = [10, 30]
    replies = [reply(m, {k: v.numpy() for k, v in s.items()}, n)
               for m, s, n in zip(messages, case["scouts"], sizes)]
    new, metrics = strategy.aggregate_train(1, replies)
    assert sorted(strategy.explorers) == sorted(m.metadata.dst_node_id for m in messages)
    for k, v in case["mask"].items():
        np.testing.assert_allclose(strategy.guidance[k], v.numpy(), rtol=1e-12, atol=1e-14)
        # the exploration round's global model: FedAvg of the scouts (weighted by examples)
        want = sum(n * s[k].numpy() for n, s in zip(sizes, case["scouts"])) / sum(sizes)
        np.testing.assert_allclose(new[k].numpy(), want, rtol=1e-12, atol=1e-14)
    assert metrics is not None

    w = {k: v.numpy() for k, v in new.items()}
    messages = strategy.configure_train(2, arrays(w), ConfigRecord(), grid)
    assert len(messages) == 4  # guided rounds sample fraction_train
    for m in messages:
        cfg = m.content["config"]
        assert cfg["fedlex-phase"] == "guided" and cfg["max-norm"] == 0.5
        for k, v in case["mask"].items():
            np.testing.assert_allclose(m.content["fedlex-guidance"][k].numpy(), v.numpy(), rtol=1e-12)
    steps = [0.1, 0.3, -0.2, 0.4]
    new2, _ = strategy.aggregate_train(2, [reply(m, {k: v + s for k, v in w.items()}) for m, s in zip(messages, steps)])
    for k, v in w.items():  # guided rounds aggregate as FedAvg and keep the guidance
        np.testing.assert_allclose(new2[k].numpy(), v + np.mean(steps), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(strategy.guidance["0.weight"], case["mask"]["0.weight"].numpy(), rtol=1e-12)


def test_client_rule_reads_the_message(flwr_run):
    from fl_fakes import arrays

    case = GOLDEN[0]
    x = torch.cat([b[0] for b in case["guided_batches"]])
    y = torch.cat([b[1] for b in case["guided_batches"]])
    cfg = {"fedlex-phase": "guided", "lr": 0.3, "local-epochs": 2, "batch-size": 4, "max-norm": 0.5}
    content = {"fedlex-guidance": arrays({k: v.numpy() for k, v in case["mask"].items()})}
    a, b = _model(case["base"]), _model(case["base"])
    fedlex_client_train(content, cfg, a, x, y, seed=3)
    fedlex_local_train(b, x, y, case["mask"], epochs=2, lr=0.3, batch_size=4, max_norm=0.5, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    a, b = _model(case["base"]), _model(case["base"])
    explore = {"fedlex-phase": "explore", "explore-epochs": 3, "explore-patience": 1, "max-norm": 1e-3}
    fedlex_client_train({}, explore, a, x, y, seed=3)  # exploration is never clipped
    fedlex_local_train(b, x, y, None, epochs=3, patience=1, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_digits_client_app_runs_both_phases(flwr_run):
    """The strategy's messages through the digits ClientApp, called in-process (no Ray): three clients,
    an exploration round and two guided rounds."""
    pytest.importorskip("sklearn")
    from flwr.app import ConfigRecord, Context, RecordDict
    from fl_fakes import FakeGrid

    from gradwise.federated import DigitsTask, accuracy, digits_client_app, digits_model
    from gradwise.federated._flwr import state_to_arrays

    n = 3
    app = digits_client_app(alpha=0.3, seed=0, local_epochs=1)
    grid = FakeGrid(range(1, n + 1))
    strategy = fedlex_strategy(explore_epochs=2, fraction_evaluate=0.0, min_available_nodes=n)
    model, task = digits_model(), DigitsTask(n, 0.3, 0)
    arrays, acc = state_to_arrays(model.state_dict()), [accuracy(model, task.x_test, task.y_test)]
    for rnd in (1, 2, 3):
        replies = []
        for m in strategy.configure_train(rnd, arrays, ConfigRecord(), grid):
            node = m.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": n},
                          state=RecordDict(), run_config={})
            replies.append(app(m, ctx))
        assert not any(r.has_error() for r in replies)
        arrays, _ = strategy.aggregate_train(rnd, replies)
        model.load_state_dict(arrays.to_torch_state_dict())
        acc.append(accuracy(model, task.x_test, task.y_test))
        assert strategy.guidance is not None and sorted(strategy.explorers) == [1, 2, 3]
    assert max(acc[2:]) > acc[0] + 0.2, acc


@pytest.mark.slow
def test_fedlex_learns_on_the_simulation_engine():
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    from gradwise.federated import run_digits_simulation

    strategy = fedlex_strategy(explore_epochs=3, fraction_evaluate=0.0, min_available_nodes=4)
    run = run_digits_simulation(strategy, num_clients=4, num_rounds=3, alpha=0.3, num_cpus=2)
    acc = np.array(run.accuracy)
    assert acc.shape == (4,) and np.isfinite(acc).all() and acc[1:].max() > acc[0] + 0.1, acc
    assert acc[2:].min() > acc[0] + 0.1, acc  # the guided rounds keep a trained model
    assert len(strategy.explorers) == 4 and set(strategy.guidance) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for g in strategy.guidance.values():
        assert g.min() == 0.0 and g.max() == 1.0
