"""FedSpeed: the local step and the server rule equal the authors' code (tests/data/fedspeed_golden.pt);
the strategy sends each client its own correction and steps as their server does."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    FedSpeedDuals, fedspeed_global_step, fedspeed_local_step, fedspeed_local_train, fedspeed_strategy,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedspeed_golden.pt", weights_only=True)


def _model(flat):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    torch.nn.utils.vector_to_parameters(flat.clone(), m.parameters())
    return m


def _split(flat):
    out, start = [], 0
    for shape in GOLDEN["shapes"]:
        n = int(np.prod(shape))
        out.append(flat[start:start + n].reshape(shape))
        start += n
    return out


@pytest.mark.parametrize("case", GOLDEN["client"], ids=lambda c: f"lam{c['lamb']}-rho{c['rho']}-lr{c['lr']}")
def test_local_steps_equal_their_fedspeed_client(case):
    model = _model(case["params"])
    corr = _split(case["correction"])
    for _ in range(case["local_epochs"]):
        for x, y in case["batches"]:
            fedspeed_local_step(model, torch.nn.functional.cross_entropy, x, y, corr, lr=case["lr"],
                                prox_lambda=case["lamb"], rho=case["rho"], weight_decay=case["weight_decay"])
    got = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(got, case["result"], rtol=1e-10, atol=1e-12)


def test_clipping_matters_in_the_large_correction_case():
    case = GOLDEN["client"][-1]
    model = _model(case["params"])
    x, y = case["batches"][0]
    fedspeed_local_step(model, torch.nn.functional.cross_entropy, x, y, _split(case["correction"]),
                        lr=case["lr"], prox_lambda=case["lamb"], rho=case["rho"],
                        weight_decay=case["weight_decay"], max_norm=1e9)
    unclipped = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    model = _model(case["params"])
    fedspeed_local_step(model, torch.nn.functional.cross_entropy, x, y, _split(case["correction"]),
                        lr=case["lr"], prox_lambda=case["lamb"], rho=case["rho"], weight_decay=case["weight_decay"])
    clipped = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert not torch.allclose(unclipped, clipped)
    # the clipped direction has norm 10: the step less its weight decay part is lr * 10 long
    decay = case["lr"] * (case["weight_decay"] + case["lamb"]) * case["params"]
    torch.testing.assert_close((case["params"] - clipped - decay).norm(), torch.tensor(case["lr"] * 10.0,
                                                                                      dtype=torch.float64))


def test_local_step_reduces_to_sgd_with_prox_when_rho_is_zero():
    flat = GOLDEN["client"][0]["params"]
    model, ref = _model(flat), _model(flat)
    x, y = GOLDEN["client"][0]["batches"][0]
    c = [torch.randn_like(p) for p in model.parameters()]
    named = {k: t for (k, _), t in zip(model.named_parameters(), c)}
    fedspeed_local_step(model, torch.nn.functional.cross_entropy, x, y, named, lr=0.1, prox_lambda=0.2, rho=0.0,
                        weight_decay=0.01)
    loss = torch.nn.functional.cross_entropy(ref(x), y) + sum(0.2 * (p * t).sum() for p, t in zip(ref.parameters(), c))
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * (p.grad + 0.21 * p)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", GOLDEN["server"], ids=lambda c: f"n{c['num_clients']}")
def test_server_rule_equals_their_fedspeed_server(case):
    duals = FedSpeedDuals()
    n = case["num_clients"]
    for rnd in case["rounds"]:
        w = {"p": rnd["global_before"].numpy()}
        for cid, corr in zip(rnd["clients"], rnd["corrections"]):
            np.testing.assert_allclose(duals.correction(cid, w)["p"], corr.numpy(), rtol=1e-12, atol=1e-14)
        step = duals.step(rnd["clients"], {"p": rnd["updates"].numpy()}, n)
        np.testing.assert_allclose(w["p"] + step["p"], rnd["global_after"].numpy(), rtol=1e-12, atol=1e-14)


def test_global_step_and_bad_input():
    u = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(fedspeed_global_step(u, np.ones(3), 4), u.mean(0) + 0.25)
    model = _model(GOLDEN["client"][0]["params"])
    x, y = GOLDEN["client"][0]["batches"][0]
    ce = torch.nn.functional.cross_entropy
    zeros = [torch.zeros_like(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="updates"):
        fedspeed_global_step(np.zeros((0, 3)), np.zeros(3), 2)
    with pytest.raises(ValueError, match="dual_sum"):
        fedspeed_global_step(u, np.zeros(2), 2)
    with pytest.raises(ValueError, match="num_clients"):
        fedspeed_global_step(u, np.zeros(3), 0)
    with pytest.raises(ValueError, match="num_clients"):
        FedSpeedDuals().step([1, 2, 3], {"p": np.zeros((3, 2))}, 2)
    with pytest.raises(ValueError, match="correction"):
        fedspeed_local_step(model, ce, x, y, zeros[:-1], lr=0.1)
    with pytest.raises(ValueError, match="correction"):
        fedspeed_local_step(model, ce, x, y, {"0.weight": zeros[0]}, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        fedspeed_local_step(model, ce, x, y, zeros, lr=0.1, rho=-1.0)
    with pytest.raises(ValueError, match="lr"):
        fedspeed_local_step(model, ce, x, y, zeros, lr=0.0)
    with pytest.raises(ValueError, match="epochs"):
        fedspeed_local_train(model, x, y, zeros, epochs=0)
    with pytest.raises(ValueError, match="prox_lambda"):
        fedspeed_strategy(prox_lambda=-0.1)


def test_local_train_lowers_the_loss():
    torch.manual_seed(1)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    model = _model(GOLDEN["client"][0]["params"])
    zeros = [torch.zeros_like(p) for p in model.parameters()]
    first = fedspeed_local_train(model, x, y, zeros, epochs=1, lr=0.2, batch_size=16)
    last = fedspeed_local_train(model, x, y, zeros, epochs=5, lr=0.2, batch_size=16)
    assert last < first


def test_strategy_sends_own_corrections_and_steps_as_their_server(flwr_run):
    from flwr.app import ConfigRecord
    from fl_fakes import FakeGrid, arrays, reply

    case = GOLDEN["server"][0]
    nodes = [11, 12, 13, 14]
    grid = FakeGrid(nodes)
    w = {"p": case["rounds"][0]["global_before"].numpy()}
    for rnd in case["rounds"]:
        sel = [nodes[c] for c in rnd["clients"]]
        strategy_kwargs = dict(fraction_evaluate=0.0, min_available_nodes=4)
        if rnd is case["rounds"][0]:
            strategy = fedspeed_strategy(**strategy_kwargs)
        # sample exactly this round's clients, as their server did
        grid.node_ids = sel
        strategy.min_train_nodes = len(sel)
        strategy.min_available_nodes = len(sel)
        messages = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, arrays(w), ConfigRecord(), grid)}
        grid.node_ids = nodes
        strategy.known_nodes = nodes  # all four clients count in the mean of h, as in their code
        assert sorted(messages) == sorted(sel)
        for cid, corr in zip(sel, rnd["corrections"]):
            msg = messages[cid]
            assert msg.content["config"]["local-rule"] == "fedspeed" and msg.content["config"]["rho"] == 0.1
            np.testing.assert_allclose(msg.content["fedspeed-correction"]["p"].numpy(), corr.numpy(), atol=1e-14)
        replies = [reply(messages[c], {"p": w["p"] + u.numpy()}) for c, u in zip(sel, rnd["updates"])]
        new, metrics = strategy.aggregate_train(1, replies)
        np.testing.assert_allclose(new["p"].numpy(), rnd["global_after"].numpy(), rtol=1e-12, atol=1e-14)
        w = {"p": new["p"].numpy()}
    assert metrics is not None


@pytest.mark.slow
def test_fedspeed_learns_on_the_simulation_engine():
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    from gradwise.federated import run_digits_simulation

    strategy = fedspeed_strategy(fraction_evaluate=0.0, min_available_nodes=5)
    run = run_digits_simulation(strategy, num_clients=5, num_rounds=3, alpha=0.3, num_cpus=2)
    acc = np.array(run.accuracy)
    assert acc.shape == (4,) and np.isfinite(acc).all() and acc[1:].max() > acc[0] + 0.1, acc
    assert len(strategy.duals.duals) == 5  # every client's accumulated correction kept by the server
