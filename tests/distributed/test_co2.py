"""CO2: the outer update against the authors' code (golden data), and 2-rank gloo runs.

Checked: the outer update equals ``_perform_local_optimization`` of the authors' code on generated tensors
(their clip is a no-op, see the docstring); synchronous CO2 with one local step, no penalty and no clipping is
data-parallel SGD with heavy-ball momentum at learning rate outer_lr * inner lr; overlapped CO2 leaves every
rank with the same parameters after each outer step and equals a one-process simulation of the one-round-stale
schedule; a run resumed from a checkpoint equals an uninterrupted one; bad arguments raise.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distributed.ddp_harness import batch, make_model, run_ranks
from gradwise.distributed import CO2, co2_outer_update_

DATA = Path(__file__).resolve().parents[1] / "data" / "co2_golden.pt"
FN = "distributed.test_co2:co2_rank"
OVERLAP = dict(local_steps=2, outer_lr=0.8, outer_momentum=0.5, gap_penalty=2.0, clip_threshold=0.02)
CONFIGS = {
    "sync1": dict(fn=FN, steps=4, lr=0.1, kwargs=dict(local_steps=1, outer_lr=0.5, outer_momentum=0.9, overlap=False)),
    "overlap": dict(fn=FN, steps=8, lr=0.1, kwargs=OVERLAP),
    "overlap_resume": dict(fn=FN, steps=8, lr=0.1, kwargs=OVERLAP, resume_at=5),
}


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _loss(model, rank, step):
    x, y = batch(rank, step)
    return torch.nn.functional.mse_loss(model(x), y)


def co2_rank(config, rank, out_dir, name):
    def build():
        model = make_model()
        inner = torch.optim.SGD(model.parameters(), lr=config["lr"])
        return model, inner, CO2(inner, model.parameters(), **config["kwargs"])

    model, inner, co2 = build()
    outer = []
    for step in range(config["steps"]):
        if step == config.get("resume_at"):
            path = Path(out_dir) / f"co2_{name}_{rank}.pt"
            torch.save({"model": model.state_dict(), "inner": inner.state_dict(), "co2": co2.state_dict()}, path)
            model, inner, co2 = build()
            ckpt = torch.load(path, weights_only=False)
            model.load_state_dict(ckpt["model"])
            inner.load_state_dict(ckpt["inner"])
            co2.load_state_dict(ckpt["co2"])
        inner.zero_grad()
        _loss(model, rank, step).backward()
        inner.step()
        if co2.step():
            outer.append(_flat(model))
    co2.synchronize()
    return {"outer": outer, "final": _flat(model)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_ranks(CONFIGS, 2, tmp_path_factory.mktemp("co2"), timeout=120)


def test_outer_update_matches_authors_code():
    for case in torch.load(DATA, weights_only=False):
        anchor, mom = case["anchor0"].clone(), case["momentum0"].clone()
        for avg, a_ref, m_ref, p_ref in zip(case["averages"], case["anchors"], case["momenta"], case["params"]):
            # their clip discards torch.clamp's result: with it "on" they compute the unclipped update
            co2_outer_update_(anchor, mom, avg, outer_lr=case["outer_lr"], outer_momentum=case["outer_momentum"],
                              gap_penalty=case["gap_penalty"])
            torch.testing.assert_close(anchor, a_ref, rtol=0, atol=1e-12)
            torch.testing.assert_close(mom, m_ref, rtol=0, atol=1e-12)
            torch.testing.assert_close(anchor, p_ref, rtol=0, atol=1e-12)


def test_clip_clamps_the_outer_momentum():
    anchor, mom, avg = torch.tensor([1.0, 1.0, 1.0]), torch.zeros(3), torch.tensor([0.0, 0.99, 1.5])
    co2_outer_update_(anchor, mom, avg, outer_lr=1.0, outer_momentum=0.0, clip_threshold=0.1)
    torch.testing.assert_close(mom, torch.tensor([0.1, 0.01, -0.1]))
    torch.testing.assert_close(anchor, torch.tensor([0.9, 0.99, 1.1]))


def test_sync_one_local_step_is_data_parallel_momentum_sgd(runs):
    cfg = CONFIGS["sync1"]
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"] * cfg["kwargs"]["outer_lr"],
                          momentum=cfg["kwargs"]["outer_momentum"])
    for step in range(cfg["steps"]):
        opt.zero_grad()
        (0.5 * (_loss(model, 0, step) + _loss(model, 1, step))).backward()
        opt.step()
        for r in range(2):
            torch.testing.assert_close(runs[r]["sync1"]["outer"][step], _flat(model), rtol=1e-5, atol=1e-6)


def _simulate_overlap(steps, lr, local_steps, **kw):
    """Two workers in one process, the stale mean applied one outer step later."""
    models = [make_model() for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    anchor, mom, pending, outer = _flat(models[0]).clone(), torch.zeros_like(_flat(models[0])), None, []
    for step in range(steps):
        for r in range(2):
            opts[r].zero_grad()
            _loss(models[r], r, step).backward()
            opts[r].step()
        if (step + 1) % local_steps:
            continue
        mean = 0.5 * (_flat(models[0]) + _flat(models[1]))
        if pending is not None:
            co2_outer_update_(anchor, mom, pending, **kw)
            for m in models:
                torch.nn.utils.vector_to_parameters(anchor.clone(), m.parameters())
        pending = mean
        outer.append([_flat(m) for m in models])
    return outer


def test_overlap_ranks_agree_and_match_stale_simulation(runs):
    kw = dict(CONFIGS["overlap"]["kwargs"])
    ref = _simulate_overlap(8, 0.1, kw.pop("local_steps"), **kw)
    got = [runs[r]["overlap"]["outer"] for r in range(2)]
    assert len(got[0]) == len(ref) == 4
    for k in range(1, 4):  # after the first outer step every rank restarts from the same anchor
        assert torch.equal(got[0][k], got[1][k])
        torch.testing.assert_close(got[0][k], ref[k][0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(got[0][0], got[1][0])  # the first outer step only launches the all-reduce


def test_resume_equals_uninterrupted(runs):
    for r in range(2):
        torch.testing.assert_close(runs[r]["overlap_resume"]["final"], runs[r]["overlap"]["final"], rtol=0, atol=0)


def test_bad_arguments_raise():
    model = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="inner_optimizer"):
        CO2(model, model.parameters())
    for kw, word in [(dict(local_steps=0), "local_steps"), (dict(outer_lr=-1.0), "outer_lr"),
                     (dict(outer_momentum=1.0), "outer_momentum"), (dict(gap_penalty=0.0), "gap_penalty"),
                     (dict(clip_threshold=0.0), "clip_threshold"), (dict(overlap=1), "overlap")]:
        with pytest.raises(ValueError, match=word):  # checked before any process group is needed
            CO2(inner, model.parameters(), **kw)
    with pytest.raises(TypeError, match="params"):
        CO2(inner, torch.zeros(3))
