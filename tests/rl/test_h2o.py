from pathlib import Path

import pytest
import torch

from gradwise.rl import h2o_dynamics_ratio, h2o_sim_coefficient, h2o_sim_penalty, h2o_sim_td_loss

GOLDEN = Path(__file__).parents[1] / "data" / "h2o_golden.pt"
CASES = sorted(torch.load(GOLDEN, weights_only=True))
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("name", CASES)
def test_matches_authors_code(golden, name):
    c = golden[name]
    torch.testing.assert_close(h2o_dynamics_ratio(c["sa_logits"], c["sas_logits"], clip=None), c["ratio"], **TOL)
    torch.testing.assert_close(h2o_sim_coefficient(c["sa_logits_n"], c["sas_logits_n"]), c["u"], **TOL)
    w = h2o_dynamics_ratio(c["sa_logits"], c["sas_logits"])
    for k in ("1", "2"):
        torch.testing.assert_close(h2o_sim_td_loss(c[f"sim_q{k}"], c["sim_td_target"], w), c[f"sim_qf{k}_loss"],
                                   **TOL)
        pen = h2o_sim_penalty(c[f"sim_q{k}"], c[f"real_q{k}"], c["u"], temp=c["cql_temp"], weight=1.0)
        torch.testing.assert_close(pen, c[f"cql_qf{k}_diff"], **TOL)
        torch.testing.assert_close(h2o_sim_penalty(c[f"sim_q{k}"], c[f"real_q{k}"], c["u"]),
                                   c[f"cql_qf{k}_diff"] * c["cql_min_q_weight"], **TOL)


def test_ratio_is_clipped_and_stays_finite_for_confident_discriminators():
    sa = torch.tensor([[0.0, 0.0], [800.0, -800.0]], dtype=torch.float64)
    sas = torch.tensor([[2.0, 0.0], [-800.0, 800.0]], dtype=torch.float64)
    r = h2o_dynamics_ratio(sa, sas, clip=None)
    assert torch.isfinite(r).all() and r[1] == 0.0  # their softmax products give 0/0 here
    torch.testing.assert_close(h2o_dynamics_ratio(sa, sas), torch.tensor([1.0, 1e-5], dtype=torch.float64))


def test_penalty_gradient_is_softmax_weighted_by_u():
    q_sim = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    q_real = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([1.0, 0.0001, 5.0], dtype=torch.float64, requires_grad=True)
    h2o_sim_penalty(q_sim, q_real, u, weight=1.0).backward()
    w = u.detach() * torch.exp(q_sim.detach())
    torch.testing.assert_close(q_sim.grad, w / w.sum())
    torch.testing.assert_close(q_real.grad, torch.full((2,), -0.5, dtype=torch.float64))
    assert u.grad is None  # u carries no gradient, as theirs (no_grad)


def test_nan_propagates():
    q = torch.tensor([1.0, float("nan")], dtype=torch.float64)
    assert torch.isnan(h2o_sim_penalty(q, torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)))


@pytest.mark.parametrize("call, match", [
    (lambda: h2o_dynamics_ratio(torch.zeros(3, 3), torch.zeros(3, 2)), "sa_logits"),
    (lambda: h2o_dynamics_ratio(torch.zeros(3, 2), torch.zeros(4, 2)), "sas_logits"),
    (lambda: h2o_dynamics_ratio(torch.zeros(3, 2), torch.zeros(3, 2), clip=(1.0, 0.0)), "clip"),
    (lambda: h2o_sim_coefficient(torch.zeros(3, 2), torch.zeros(3, 2)), "sas_logits"),
    (lambda: h2o_sim_td_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3, 1)), "ratio"),
    (lambda: h2o_sim_penalty(torch.zeros(3), torch.zeros(2), torch.ones(2)), "u"),
    (lambda: h2o_sim_penalty(torch.zeros(3), torch.zeros(2), torch.ones(3), temp=0.0), "temp"),
    (lambda: h2o_sim_penalty(torch.zeros(3), torch.zeros(0), torch.ones(3)), "q_real"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
