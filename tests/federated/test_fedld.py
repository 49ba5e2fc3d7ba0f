"""FedLD: aggregation and margin loss equal the authors' code (tests/data/fedld_golden.pt); the strategy
asks clients for the margin loss and applies the principal-gradient step."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.federated import (
    PrincipalGradientAggregator, fedld_strategy, margin_control_loss, principal_gradient_aggregate,
)

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "fedld_golden.pt", weights_only=True)


def _split(flat, shapes):
    out, start = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[..., start:start + n].reshape(*flat.shape[:-1], *shape)
        start += n
    return out


@pytest.mark.parametrize("case", GOLDEN["aggregation"], ids=lambda c: f"k{c['k_proportion']}-m{c['clients']}")
def test_aggregator_equals_pcgrad_svd_over_rounds(case):
    agg = PrincipalGradientAggregator(case["k_proportion"])
    for r, rnd in enumerate(case["rounds"]):
        step = agg(_split(rnd["updates"].numpy(), case["shapes"]))
        got = np.concatenate([step[k].ravel() for k in case["shapes"]])
        np.testing.assert_allclose(got, rnd["step"].numpy(), rtol=1e-9, atol=1e-12)
        mean = rnd["updates"].numpy().mean(0)
        assert (r == 0) == np.allclose(got, mean)  # plain mean in round 1 only


def test_principal_step_is_sign_invariant_and_bounded():
    g = np.random.default_rng(0).standard_normal((6, 40))
    step = principal_gradient_aggregate(g, 0.8)
    assert step.shape == (40,) and np.isfinite(step).all()
    # each revised update has norm <= ||g_i|| (weights s_j / sum s add up to at most 1)
    assert np.linalg.norm(step) <= np.linalg.norm(g, axis=1).mean() + 1e-12
    np.testing.assert_allclose(principal_gradient_aggregate(g[::-1], 0.8), step, atol=1e-12)  # order-free
    # k = m: all directions of a single client collapse to the client's own update
    np.testing.assert_allclose(principal_gradient_aggregate(g[:1], 1.0), g[0], atol=1e-12)
    assert not principal_gradient_aggregate(g[:1], 0.8).any()  # k = int(0.8) = 0, as in their code


@pytest.mark.parametrize("case", GOLDEN["loss"], ids=lambda c: f"n{len(c['target'])}-lam{c['lam']}")
def test_margin_loss_equals_marginal_log_loss(case):
    x = case["logits"].clone().requires_grad_(True)
    value = margin_control_loss(x, case["target"], case["lam"])
    value.backward()
    torch.testing.assert_close(value.detach(), case["value"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, case["grad"], rtol=1e-10, atol=1e-12)


def test_margin_loss_limits_and_bad_input():
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(margin_control_loss(x, y, 0.0), torch.nn.functional.cross_entropy(x, y))
    # peaked predictions pay more than flat ones
    assert margin_control_loss(10 * x, y, 1.0) - torch.nn.functional.cross_entropy(10 * x, y) > \
        margin_control_loss(0 * x, y, 1.0) - torch.nn.functional.cross_entropy(0 * x, y)
    with pytest.raises(ValueError, match="logits"):
        margin_control_loss(torch.randn(3), y)
    with pytest.raises(ValueError, match="target"):
        margin_control_loss(x, y[:2])
    with pytest.raises(ValueError, match="lam"):
        margin_control_loss(x, y, -1.0)
    with pytest.raises(ValueError, match="updates"):
        principal_gradient_aggregate(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="k_proportion"):
        principal_gradient_aggregate(np.ones((2, 3)), 0.0)
    with pytest.raises(ValueError, match="k_proportion"):
        fedld_strategy(k_proportion=1.5)


def test_strategy_configures_the_margin_loss_and_steps_by_the_aggregator(flwr_run):
    from flwr.app import ConfigRecord
    from fl_fakes import FakeGrid, arrays, reply

    grid = FakeGrid([7, 8, 9])
    strategy = fedld_strategy(fraction_evaluate=0.0, min_available_nodes=3, min_train_nodes=3)
    ref = PrincipalGradientAggregator()
    w = {"a": np.zeros((2, 3)), "b": np.zeros(3)}
    rng = np.random.default_rng(1)
    for rnd in (1, 2):
        messages = list(strategy.configure_train(rnd, arrays(w), ConfigRecord(), grid))
        cfg = messages[0].content["config"]
        assert cfg["loss"] == "margin-control" and cfg["margin-lambda"] == 0.03 and cfg["momentum"] == 0.5
        ups = {k: rng.standard_normal((3, *v.shape)) for k, v in w.items()}
        replies = [reply(m, {k: w[k] + ups[k][i] for k in w}) for i, m in
                   enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id))]
        new, metrics = strategy.aggregate_train(rnd, replies)
        want = ref(ups)
        for k in w:
            np.testing.assert_allclose(new[k].numpy() - w[k], want[k], atol=1e-12)
        w = {k: new[k].numpy() for k in w}
    assert metrics is not None
