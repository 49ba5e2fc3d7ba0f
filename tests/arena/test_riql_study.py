"""The riql study's pieces: the reference loop's update equals the authors' ImplicitQLearning.train
(tests/data/riql_golden.pt, float64), batched members train as separate agents, a small run's row, the
claims' verdicts. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from gradwise.arena import riql_study as rs
from gradwise.arena.riql_runs import VARIANTS, make_agent, train_step

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "riql_golden.pt", weights_only=True)
TINY = dataclasses.replace(rs.Config(), seeds=1, steps=20, data_steps=300, episodes=1, hidden=16, batch_size=32)


def close(a, b, rtol=1e-10, atol=1e-12):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float((a - b).abs().max()) <= atol + rtol * float(b.abs().max())


def _load(agent, sd):
    """The authors' state dicts into a one-member agent (their Linear weights are [out, in], ours [1, in, out])."""
    with torch.no_grad():
        for i, layer in enumerate((0, 2, 4)):
            agent.q.weights[i].copy_(sd["qf"][f"critic.{layer}.weight"])
            agent.q.biases[i].copy_(sd["qf"][f"critic.{layer}.bias"])
            agent.v.weights[i].copy_(sd["vf"][f"v.net.{layer}.weight"].T[None])
            agent.v.biases[i].copy_(sd["vf"][f"v.net.{layer}.bias"][None, None])
            agent.actor.weights[i].copy_(sd["actor"][f"net.net.{layer}.weight"].T[None])
            agent.actor.biases[i].copy_(sd["actor"][f"net.net.{layer}.bias"][None, None])
        agent.q_target.load_state_dict(agent.q.state_dict())


def test_train_step_matches_authors_train():
    case = next(c for c in GOLDEN["train"] if c["deterministic"])
    var = dataclasses.replace(VARIANTS["RIQL"], critics=case["K"], quantile=case["quantile"],
                              delta=1 / case["sigma"] ** 2)
    agent = make_agent(var, GOLDEN["S"], GOLDEN["A"], hidden=GOLDEN["H"], lr=1e-3, steps=10, tau=0.05)
    for m in (agent.q, agent.q_target, agent.v, agent.actor):
        m.double()
    _load(agent, case["init"])
    for st in case["steps"]:
        s, a, r, s2, d = st["batch"]
        train_step(agent, s[None], a[None], r.T, s2[None], d.T)
        for i, layer in enumerate((0, 2, 4)):
            close(agent.q.weights[i], st["qf"][f"critic.{layer}.weight"])
            close(agent.q_target.biases[i], st["q_target"][f"critic.{layer}.bias"])
            close(agent.v.weights[i][0], st["vf"][f"v.net.{layer}.weight"].T)
            close(agent.actor.weights[i][0], st["actor"][f"net.net.{layer}.weight"].T)


def test_members_train_as_separate_agents():
    """Two members in one batched agent end where two one-member agents with their parameters end."""
    var = VARIANTS["IQL+quantile"]
    torch.manual_seed(0)
    both = make_agent(var, 3, 1, members=2, hidden=8, lr=1e-2, steps=5)
    for m in (both.q, both.q_target, both.v, both.actor):
        m.double()
    singles = []
    for j in range(2):
        one = make_agent(var, 3, 1, hidden=8, lr=1e-2, steps=5)
        with torch.no_grad():
            for src, dst, k in ((both.q, one.q, var.critics), (both.q_target, one.q_target, var.critics),
                                (both.v, one.v, 1), (both.actor, one.actor, 1)):
                dst.double()
                for ps, pd in zip(src.parameters(), dst.parameters()):
                    pd.copy_(ps.view(k, 2, *ps.shape[1:])[:, j])
        singles.append(one)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        batch = (torch.randn(2, 16, 3, generator=g, dtype=torch.float64),
                 torch.rand(2, 16, 1, generator=g, dtype=torch.float64) * 2 - 1,
                 torch.randn(2, 16, generator=g, dtype=torch.float64),
                 torch.randn(2, 16, 3, generator=g, dtype=torch.float64), torch.rand(2, 16, generator=g) < 0.1)
        train_step(both, *batch)
        for j, one in enumerate(singles):
            train_step(one, *(t[j:j + 1] for t in batch))
    for j, one in enumerate(singles):
        for src, dst, k in ((both.q, one.q, var.critics), (both.v, one.v, 1), (both.actor, one.actor, 1)):
            for ps, pd in zip(src.parameters(), dst.parameters()):
                close(ps.view(k, 2, *ps.shape[1:])[:, j], pd, rtol=1e-9)


@pytest.fixture(scope="module")
def data():
    return rs.load_task(TINY, rs.METHODS)


def test_run_row_is_seeded_and_finite(data):
    a = rs.run_one(TINY, data, "RIQL", 3)
    b = rs.run_one(TINY, data, "RIQL", 3)
    assert a["method"] == "RIQL" and a["seed"] == 3
    for k in rs.CORRUPTIONS:
        assert -2000 < a[k] <= 0 and a[k] == b[k]  # Pendulum's reward is in [-16.3, 0] per step, 200 steps
    assert a["drop_dynamics"] == a["clean"] - a["dynamics"]


def test_unknown_method_is_refused(data):
    with pytest.raises(ValueError, match="method"):
        rs.run_one(TINY, data, "CQL", 0)


def _rows(iql, riql):
    return [{"method": m, "seed": s, **dict(zip(rs.CORRUPTIONS, v[s]))}
            for m, v in (("IQL", iql), ("RIQL", riql)) for s in range(len(v))]


def test_claims_verdicts():
    iql = [(-200, -300, -800), (-210, -280, -900), (-190, -320, -700)]
    riql = [(-205, -250, -300), (-200, -260, -320), (-195, -240, -280)]
    verdicts = [v for _, v, _ in rs.claims(_rows(iql, riql))]
    assert verdicts == ["SHOWN", "SHOWN", "SHOWN"]
    bad = [(-400, -410, -850), (-410, -420, -950), (-390, -400, -750)]  # RIQL worse on clean, no recovery
    verdicts = [v for _, v, _ in rs.claims(_rows(iql, bad))]
    assert verdicts == ["SHOWN", "NOT SHOWN", "NOT SHOWN"]
    assert [v for _, v, _ in rs.claims(_rows(iql, [])[:3])][1:] == ["NOT RUN", "NOT RUN"]
    assert math.isfinite(rs._paired(_rows(iql, riql), "RIQL", "IQL", "clean", "clean")[1])
