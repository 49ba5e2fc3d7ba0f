"""A Single Merging Suffices: schedule and mixing matrices against the authors' code, and 4-rank gloo runs.

Checked: ``communication_degree`` equals their ``compute_r`` for every schedule on a grid of steps, and
``gossip_weights`` their mixing rows for the deterministic topologies; on 4 ranks a ring gossip round is
``W @ X`` and keeps the average; after ``global_merge`` every rank holds the mean; ``LateGossip`` with the
truncate schedule communicates every ``k_steps`` steps with ``r_start`` neighbours, then the complete graph
in the last round, which leaves every rank with the mean of their models; bad arguments raise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distributed.ddp_harness import batch, make_model, run_ranks
from gradwise.distributed import LateGossip, communication_degree, gossip_weights

DATA = Path(__file__).resolve().parents[1] / "data" / "single_merge_golden.pt"
FN = "distributed.test_single_merge:merge_rank"
N = 4
CONFIGS = {"ring": dict(fn=FN, what="ring"), "merge": dict(fn=FN, what="merge"),
           "late": dict(fn=FN, what="late", max_steps=20, k_steps=4, point1=0.9)}


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def merge_rank(config, rank, out_dir, name):
    from gradwise.distributed import LateGossip, global_merge, gossip_, gossip_weights

    model = make_model(seed=rank)  # different models on every rank
    before = _flat(model)
    if config["what"] == "ring":
        gossip_(model, gossip_weights(N, "ring"))
        return {"before": before, "after": _flat(model)}
    if config["what"] == "merge":
        global_merge(model)
        return {"before": before, "after": _flat(model)}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    late = LateGossip(model, max_steps=config["max_steps"], k_steps=config["k_steps"], point1=config["point1"])
    pre_last = None
    for step in range(config["max_steps"]):
        x, y = batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if step == config["max_steps"] - 1:
            pre_last = _flat(model)
        late.step()
    return {"history": late.history, "pre_last": pre_last, "after": _flat(model)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_ranks(CONFIGS, N, tmp_path_factory.mktemp("merge"), timeout=150)


def test_schedule_matches_authors_compute_r():
    for case in torch.load(DATA, weights_only=False)["schedules"]:
        got = [communication_degree(s, case["max_steps"], schedule=case["schedule"], r_start=case["r_start"],
                                    r_end=case["r_end"], point1=case["point1"], window_size=case["window_size"])
               for s in case["steps"]]
        np.testing.assert_allclose(got, case["r"], rtol=1e-12, atol=1e-12, err_msg=case["schedule"])


def test_late_concentration_of_the_default_schedule():
    # the paper's Figure 1 setting: 30000 steps, rounds of 100, r = 0.2 until 99.7 % then the complete graph
    r = {s: communication_degree(s, 30000, r_end=31) for s in range(100, 30001, 100)}
    assert [s for s, v in r.items() if v == 31] == [30000]  # one merge: the last round
    assert all(v == 0.2 for s, v in r.items() if s < 29910)


def test_matrices_match_authors_rows():
    for case in torch.load(DATA, weights_only=False)["matrices"]:
        torch.testing.assert_close(gossip_weights(case["n"], case["topology"]), case["weights"].double(),
                                   rtol=0, atol=1e-7, msg=f"{case['topology']} n={case['n']}")


def test_random_weights_are_row_stochastic_with_r_neighbours():
    w = gossip_weights(8, "random", 2.0, np.random.default_rng(0))
    torch.testing.assert_close(w.sum(1), torch.ones(8, dtype=torch.float64))
    assert ((w > 0).sum(1) == 3).all() and (w.diagonal() > 0).all()
    assert torch.equal(gossip_weights(8, "random", 7.0, np.random.default_rng(1)), gossip_weights(8, "complete"))
    assert torch.equal(gossip_weights(5, "random", 2.5, np.random.default_rng(3)),
                       gossip_weights(5, "random", 2.5, np.random.default_rng(3)))


def test_ring_gossip_is_w_times_x_and_keeps_the_average(runs):
    x = torch.stack([runs[r]["ring"]["before"] for r in range(N)])
    after = torch.stack([runs[r]["ring"]["after"] for r in range(N)])
    w = gossip_weights(N, "ring").float()
    torch.testing.assert_close(after, w @ x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after.mean(0), x.mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after[0], after[2])  # a ring of 4 is not the complete graph


def test_global_merge_gives_every_rank_the_mean(runs):
    mean = torch.stack([runs[r]["merge"]["before"] for r in range(N)]).mean(0)
    for r in range(N):
        torch.testing.assert_close(runs[r]["merge"]["after"], mean, rtol=1e-5, atol=1e-6)


def test_late_gossip_rounds_and_final_merge(runs):
    for r in range(N):
        assert runs[r]["late"]["history"] == [(4, 0.2), (8, 0.2), (12, 0.2), (16, 0.2), (20, 3.0)]
    mean = torch.stack([runs[r]["late"]["pre_last"] for r in range(N)]).mean(0)
    for r in range(N):
        torch.testing.assert_close(runs[r]["late"]["after"], mean, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(runs[0]["late"]["pre_last"], runs[1]["late"]["pre_last"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="schedule"):
        communication_degree(1, 10, schedule="late")
    with pytest.raises(ValueError, match="topology"):
        gossip_weights(4, "star")
    with pytest.raises(ValueError, match="generator"):
        gossip_weights(4, "random", 1.0)
    with pytest.raises(ValueError, match="world_size"):
        gossip_weights(0, "ring")
    with pytest.raises(TypeError, match="model_or_params"):
        LateGossip(torch.zeros(3), max_steps=10)
    for kw, word in [(dict(max_steps=0), "max_steps"), (dict(max_steps=10, k_steps=0), "k_steps"),
                     (dict(max_steps=10, point1=2.0), "point1"), (dict(max_steps=10, topology="star"), "topology")]:
        with pytest.raises(ValueError, match=word):  # checked before any process group is needed
            LateGossip(make_model(), **kw)
