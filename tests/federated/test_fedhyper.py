"""FedHyper: the global and the client-side learning-rate rules equal the authors' code
(tests/data/fedhyper_golden.pt); the strategy sends the last mean update and steps as their server does."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    FedHyperGlobal, fedhyper_global_step, fedhyper_local_factor, fedhyper_local_run, fedhyper_local_train,
    fedhyper_strategy,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedhyper_golden.pt", weights_only=True)
VARIANTS = {"FedHyper-G": dict(momentum=0.0, agg_bounds=(-0.8, 4.0)),
            "FedHyper-GM": dict(momentum=0.9, agg_bounds=(-0.2, 4.0))}


def _model(flat):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    torch.nn.utils.vector_to_parameters(flat.clone(), m.parameters())
    return m


@pytest.mark.parametrize("case", GOLDEN["global"], ids=lambda c: c["function"])
def test_global_rule_equals_their_round_loop(case):
    kw = VARIANTS[case["function"]]
    direction, agg = None, 0.0
    rule = FedHyperGlobal(kw["momentum"], kw["agg_bounds"])
    for rnd in case["rounds"]:
        u = rnd["update"].numpy()
        step, agg, direction = fedhyper_global_step(u, direction, agg, **kw)
        np.testing.assert_allclose(step, rnd["step"].numpy(), rtol=1e-10, atol=1e-13)
        assert agg == pytest.approx(rnd["agg"], abs=1e-12)
        # the layer-wise class, on two clients whose mean is u, split in two entries
        rows = np.stack([u + 1.0, u - 1.0])
        out = rule({"a": rows[:, :7], "b": rows[:, 7:]})
        np.testing.assert_allclose(np.concatenate([out["a"], out["b"]]), rnd["step"].numpy(), rtol=1e-10,
                                   atol=1e-13)
    assert rule.agg == pytest.approx(case["rounds"][-1]["agg"], abs=1e-12)


@pytest.mark.parametrize("case", GOLDEN["local"], ids=lambda c: f"lr{c['lr']}-e{c['epochs']}")
def test_local_rule_equals_their_local_update(case):
    model = _model(case["params"])
    shapes = [p.shape for p in model.parameters()]
    gtl = list(torch.split(case["gtl"], [int(np.prod(s)) for s in shapes]))
    fedhyper_local_run(model, torch.nn.functional.cross_entropy, [case["batches"]] * case["epochs"],
                       [g.reshape(s) for g, s in zip(gtl, shapes)], clients=case["clients"], lr=case["lr"])
    got = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(got, case["result"], rtol=1e-10, atol=1e-12)


def test_local_factor_limits_and_bad_input():
    s, p, g = np.ones(3), np.ones(3), np.zeros(3)
    assert fedhyper_local_factor(1.0, s, p, g, 5) == pytest.approx(1.1)  # gamma capped at 1.1
    assert fedhyper_local_factor(9.5, s, p, g, 5) == 10.0
    assert fedhyper_local_factor(1.0, s, -10 * p, g, 5) == 0.1
    assert fedhyper_local_factor(1.0, np.zeros(3), p, g, 5) == 1.0
    with pytest.raises(ValueError, match="clients"):
        fedhyper_local_factor(1.0, s, p, g, 0)
    with pytest.raises(ValueError, match="beta"):
        fedhyper_local_factor(20.0, s, p, g, 1)
    with pytest.raises(ValueError, match="step"):
        fedhyper_local_factor(1.0, s, p[:2], g, 1)
    with pytest.raises(ValueError, match="agg_bounds"):
        fedhyper_global_step(s, None, 0.0, agg_bounds=(0.5, 4.0))
    with pytest.raises(ValueError, match="momentum"):
        fedhyper_global_step(s, None, 0.0, momentum=2.0)
    with pytest.raises(ValueError, match="direction"):
        fedhyper_global_step(s, np.ones(2), 0.0)
    model = _model(GOLDEN["local"][0]["params"])
    with pytest.raises(ValueError, match="global_update"):
        fedhyper_local_run(model, torch.nn.functional.cross_entropy, [], [torch.zeros(3)], clients=1, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        fedhyper_local_run(model, torch.nn.functional.cross_entropy, [], {}, clients=1, lr=-0.1)
    with pytest.raises(ValueError, match="local_scheduler"):
        fedhyper_strategy(local_scheduler="yes")


def test_local_train_lowers_the_loss():
    torch.manual_seed(1)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    model = _model(GOLDEN["local"][0]["params"])
    zeros = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    first = fedhyper_local_train(model, x, y, zeros, clients=5, epochs=1, lr=0.1, batch_size=16)
    last = fedhyper_local_train(model, x, y, zeros, clients=5, epochs=5, lr=0.1, batch_size=16)
    assert last < first


def test_strategy_sends_last_update_and_steps_as_their_server(flwr_run):
    from flwr.app import ConfigRecord
    from fl_fakes import FakeGrid, arrays, reply

    case = GOLDEN["global"][1]  # FedHyper-GM, the defaults
    grid = FakeGrid([5, 6])
    strategy = fedhyper_strategy(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2)
    w = {"p": np.zeros_like(case["rounds"][0]["update"].numpy())}
    sent = np.zeros_like(w["p"])
    for rnd in case["rounds"]:
        messages = list(strategy.configure_train(1, arrays(w), ConfigRecord(), grid))
        for m in messages:
            cfg = m.content["config"]
            assert cfg["local-rule"] == "fedhyper" and cfg["hyper-clients"] == 2.0 and cfg["momentum"] == 0.5
            np.testing.assert_allclose(m.content["fedhyper-global-update"]["p"].numpy(), sent, atol=1e-14)
        u = rnd["update"].numpy()
        replies = [reply(m, {"p": w["p"] + u + (1.0 if i else -1.0)}) for i, m in enumerate(messages)]
        new, metrics = strategy.aggregate_train(1, replies)
        np.testing.assert_allclose(new["p"].numpy() - w["p"], rnd["step"].numpy(), rtol=1e-9, atol=1e-12)
        w, sent = {"p": new["p"].numpy()}, u
    assert metrics is not None


@pytest.mark.slow
def test_fedhyper_learns_on_the_simulation_engine():
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    from gradwise.federated import run_digits_simulation

    strategy = fedhyper_strategy(fraction_evaluate=0.0, min_available_nodes=5)
    run = run_digits_simulation(strategy, num_clients=5, num_rounds=3, alpha=0.3, num_cpus=2)
    acc = np.array(run.accuracy)
    assert acc.shape == (4,) and np.isfinite(acc).all() and acc[1:].max() > acc[0] + 0.1, acc
    assert strategy.rule.agg != 0.0  # the global learning rate moved
