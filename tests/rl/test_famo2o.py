from pathlib import Path

import pytest
import torch

from gradwise.rl import (balance_embedding, famo2o_balance, famo2o_balance_loss, famo2o_policy_loss,
                         famo2o_temperature_loss)

GOLDEN = Path(__file__).parents[1] / "data" / "famo2o_golden.pt"
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["default", "wide"])
def test_matches_authors_jax_code(name):
    c = torch.load(GOLDEN, weights_only=True)[name]
    beta = famo2o_balance(c["u"], balance_range=c["range"])
    torch.testing.assert_close(beta, c["beta"], **TOL)
    torch.testing.assert_close(balance_embedding(beta, n=c["n"], d=c["d"]), c["embedding"], **TOL)
    loss = famo2o_policy_loss(c["log_prob"], c["q"], c["v"], beta, pairing="authors")
    torch.testing.assert_close(loss, c["actor_loss"], **TOL)
    per_state = famo2o_policy_loss(c["log_prob"], c["q"], c["v"], beta)
    diag = torch.diagonal(c["weight"])  # their [B, B] weight's diagonal is the per-state weight
    torch.testing.assert_close(per_state, -(diag * c["log_prob"]).mean(), **TOL)
    torch.testing.assert_close(famo2o_balance_loss(c["balance_log_prob"], c["q_policy"], c["temperature"]),
                               c["hierarchical_loss"], **TOL)


def test_gradients_and_clip():
    log_prob = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.0, 1.0, 100.0], dtype=torch.float64, requires_grad=True)
    v = torch.zeros(3, dtype=torch.float64)
    beta = torch.tensor([2.0, 3.0, 1.0], dtype=torch.float64)
    famo2o_policy_loss(log_prob, q, v, beta).backward()
    torch.testing.assert_close(log_prob.grad, -torch.tensor([1.0, torch.e ** 3, 100.0], dtype=torch.float64) / 3)
    assert q.grad is None
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    famo2o_temperature_loss(t, torch.tensor([1.0, 2.0], dtype=torch.float64), -1.0).backward()
    torch.testing.assert_close(t.grad, torch.tensor(2.5, dtype=torch.float64))


@pytest.mark.parametrize("call, match", [
    (lambda: balance_embedding(torch.ones(3), d=5), "d"),
    (lambda: famo2o_balance(torch.ones(3), balance_range=(2.0, 1.0)), "balance_range"),
    (lambda: famo2o_policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(4)), "balance"),
    (lambda: famo2o_policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2), torch.zeros(3)), "v"),
    (lambda: famo2o_policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), torch.zeros(3), pairing="x"),
     "pairing"),
    (lambda: famo2o_balance_loss(torch.zeros(3), torch.zeros(3), -1.0), "temperature"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
