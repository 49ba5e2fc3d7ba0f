"""RIQL: losses, gradients, full IQL-style steps and random corruption equal the authors' RIQL.py and
attack.py (tests/data/riql_golden.pt, float64), plus the contract (bad input, NaN propagation)."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal

from gradwise.registry import get
from gradwise.rl import (awr_weights, corrupt_transitions, ensemble_quantile, expectile_loss,
                         normalize_observations, riql_q_loss, riql_value_loss)
from gradwise.rl._common import polyak_update
from gradwise.rl.riql import _apply_corruption

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "riql_golden.pt", weights_only=True)
S, A, H = GOLDEN["S"], GOLDEN["A"], GOLDEN["H"]


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert err <= atol + rtol * float(b.abs().max()), err


@pytest.mark.parametrize("case", GOLDEN["value"], ids=lambda c: f"K{c['K']}-q{c['quantile']}-t{c['expectile']}")
def test_value_loss_matches_authors(case):
    v = case["v"].clone().requires_grad_()
    loss = riql_value_loss(v, case["target_q"], quantile=case["quantile"], expectile=case["expectile"])
    loss.backward()
    close(loss, case["loss"])
    close(v.grad, case["grad"])
    close(ensemble_quantile(case["target_q"], case["quantile"]) - v.detach(), case["adv"])


@pytest.mark.parametrize("case", GOLDEN["q"], ids=lambda c: f"K{c['K']}-sigma{c['sigma']}")
def test_q_loss_matches_authors(case):
    q = case["q"].clone().requires_grad_()
    loss = riql_q_loss(q, case["reward"], case["done"].bool(), case["next_v"], delta=1 / case["sigma"] ** 2)
    loss.backward()
    close(loss, case["loss"])
    close(q.grad, case["grad"])


class VLinear(nn.Module):  # the authors' VectorizedLinear layout: weight [K, in, out], bias [K, 1, out]
    def __init__(self, i, o, k):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.empty(k, i, o)), nn.Parameter(torch.empty(k, 1, o))

    def forward(self, x):
        return x @ self.weight + self.bias


class Ensemble(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k
        self.critic = nn.Sequential(VLinear(S + A, H, k), nn.ReLU(), VLinear(H, H, k), nn.ReLU(), VLinear(H, 1, k))

    def forward(self, s, a):
        return self.critic(torch.cat([s, a], -1).expand(self.k, -1, -1)).squeeze(-1)


def mlp(dims, out_act=None):
    layers = []
    for i in range(len(dims) - 1):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    return nn.Sequential(*layers[:-1], *([out_act] if out_act else []))


class Holder(nn.Module):
    def __init__(self, net, attr="net"):
        super().__init__()
        setattr(self, attr, net)


def build(case):
    qf = Ensemble(case["K"]).double()
    vf = Holder(Holder(mlp([S, H, H, 1])), "v").double()
    if case["deterministic"]:
        actor = Holder(Holder(mlp([S, H, H, A], nn.Tanh()))).double()
    else:
        actor = Holder(Holder(mlp([S, H, H, A]))).double()
        actor.log_std = nn.Parameter(torch.zeros(A, dtype=torch.float64))
    for m, key in ((qf, "qf"), (vf, "vf"), (actor, "actor")):
        m.load_state_dict(case["init"][key])
    return qf, vf, actor


@pytest.mark.parametrize("case", GOLDEN["train"], ids=lambda c: f"K{c['K']}-det{c['deterministic']}")
def test_full_steps_match_authors_train(case):
    """Their ImplicitQLearning.train order: V(s') before the V step; V step; Q step; target EMA; actor."""
    qf, vf, actor = build(case)
    qt = Ensemble(case["K"]).double().requires_grad_(False)
    qt.load_state_dict(qf.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (vf, qf, actor)]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opts[2], 10)
    value = lambda s: vf.v.net(s).squeeze(-1)  # noqa: E731
    for st in case["steps"]:
        s, a, r, s2, d = st["batch"]
        with torch.no_grad():
            next_v = value(s2)
            target_q = qt(s, a)
        v = value(s)
        adv = (ensemble_quantile(target_q, case["quantile"]) - v).detach()
        opts[0].zero_grad()
        riql_value_loss(v, target_q, quantile=case["quantile"], expectile=0.7).backward()
        opts[0].step()
        opts[1].zero_grad()
        riql_q_loss(qf(s, a), r.squeeze(-1), d.squeeze(-1), next_v, delta=1 / case["sigma"] ** 2).backward()
        opts[1].step()
        polyak_update(qt, qf, 0.05)
        out = actor.net.net(s)
        if case["deterministic"]:
            bc = ((out - a) ** 2).sum(-1)
        else:
            std = torch.exp(actor.log_std.clamp(-5.0, 2.0))
            bc = -MultivariateNormal(out, scale_tril=torch.diag(std)).log_prob(a)
        opts[2].zero_grad()
        (awr_weights(adv, beta=3.0) * bc).mean().backward()
        opts[2].step()
        sched.step()
        for m, key in ((qf, "qf"), (vf, "vf"), (actor, "actor"), (qt, "q_target")):
            for name, t in m.state_dict().items():
                close(t, st[key][name])


@pytest.mark.parametrize("case", GOLDEN["attack"], ids=lambda c: "+".join(d["kind"] for d in c["draws"]))
def test_corruption_matches_authors_attack(case):
    field = {"observations": "obs", "actions": "action", "rewards": "reward", "next_observations": "next_obs",
             "terminals": "done"}
    data = {field[k]: v for k, v in case["before"].items()}
    for d in case["draws"]:
        data = _apply_corruption(data, d["kind"], d["rows"], d["noise"])
    for k, v in case["after"].items():
        close(data[field[k]], v)


def test_corrupt_transitions_draws_and_fields():
    g = torch.Generator().manual_seed(0)
    n = 2000
    data = dict(obs=torch.randn(n, 3, dtype=torch.float64), action=torch.randn(n, 2, dtype=torch.float64),
                reward=torch.randn(n, dtype=torch.float64), next_obs=torch.randn(n, 3, dtype=torch.float64),
                done=torch.zeros(n))
    out, mask = corrupt_transitions(data, ("reward", "dynamics"), rate=0.3, generator=g)
    changed_r = out["reward"] != data["reward"]
    assert 0.25 < float(changed_r.double().mean()) < 0.35
    assert float(out["reward"][changed_r].abs().max()) <= 30.0
    assert torch.equal(out["obs"], data["obs"]) and out["action"] is data["action"]
    assert bool((mask >= changed_r).all())
    again, _ = corrupt_transitions(data, ("reward", "dynamics"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["next_obs"], out["next_obs"])


def test_normalize_uses_obs_and_next_obs_together():
    obs, nxt = torch.tensor([[0.0], [2.0]], dtype=torch.float64), torch.tensor([[4.0], [6.0]], dtype=torch.float64)
    o, n, mean, std = normalize_observations(obs, nxt)
    assert float(mean) == 3.0 and math.isclose(float(std), math.sqrt(5) + 1e-3)
    close(o[:, 0], (obs[:, 0] - 3) / (math.sqrt(5) + 1e-3))


def test_expectile_and_quantile_values():
    u = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    close(expectile_loss(u, 0.7, reduction="none"), torch.tensor([0.3, 2.8], dtype=torch.float64))
    q = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    close(ensemble_quantile(q, 0.25), torch.tensor([0.5], dtype=torch.float64))


def test_nan_propagates():
    q = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    r = torch.tensor([float("nan"), 0, 0, 0], dtype=torch.float64)
    assert torch.isnan(riql_q_loss(q, r, torch.zeros(4), torch.zeros(4, dtype=torch.float64)))


@pytest.mark.parametrize("call, match", [
    (lambda q, v, r: riql_q_loss(q, r, torch.zeros(4), v, delta=0.0), "delta"),
    (lambda q, v, r: riql_q_loss(q, r[:3], torch.zeros(4), v), "batch sizes"),
    (lambda q, v, r: riql_q_loss(q[:, :3], r, torch.zeros(4), v), "q must be"),
    (lambda q, v, r: riql_value_loss(v, q[0]), "target_q must be"),
    (lambda q, v, r: riql_value_loss(v, q, quantile=1.5), "quantile"),
    (lambda q, v, r: riql_value_loss(v, q, expectile=-0.1), "expectile"),
    (lambda q, v, r: corrupt_transitions({"reward": r}, "noise"), "kind"),
    (lambda q, v, r: corrupt_transitions({"reward": r}, "obs"), "obs"),
])
def test_bad_input(call, match):
    q = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        call(q, v, torch.zeros(4, dtype=torch.float64))
    assert q.grad is None and v.grad is None


def test_registered_with_seed_title():
    rec = get("RIQL")
    assert rec.paper == "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption"
    assert rec.family == "rl" and rec.kind == "rl-objective"
