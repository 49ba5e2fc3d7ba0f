"""DAREx (seed 90) against the authors' code (golden data), DARE against HF PEFT's, bad input."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.peft import AdamR, darex_analytical_q, darex_prune, darex_search_q

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "darex_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def grid_index(q):
    return torch.round(q.double() * 1000).long()


def test_drop_and_rescale_matches_authors(golden):
    assert len(golden["drop"]) == 4
    for case in golden["drop"]:
        torch.manual_seed(case["seed"])   # theirs draws from the global generator, weight first, then bias
        w = case["pre_weight"] + darex_prune(case["delta_weight"], case["p"], q=case["q"])
        b = case["pre_bias"] + darex_prune(case["delta_bias"], case["p"], q=case["q"])
        torch.testing.assert_close(w, case["weight"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, case["bias"], rtol=1e-10, atol=1e-12)


def test_generator_and_default_q():
    delta = torch.randn(50, 40, dtype=torch.float64)
    a = darex_prune(delta, 0.9, generator=torch.Generator().manual_seed(3))
    b = darex_prune(delta, 0.9, q=1 - 0.9, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    kept = a != 0
    assert 0.05 < kept.double().mean() < 0.15
    torch.testing.assert_close(a[kept], delta[kept] / 0.1, rtol=1e-14, atol=0)
    torch.testing.assert_close(darex_prune(delta, 0.0), delta, rtol=0, atol=0)


def test_analytical_q_float64_matches_authors(golden):
    cases = golden["analytical"]
    assert len(cases) == 5 and sum(c["stop_bites"] for c in cases) == 2
    for case in cases:
        q = darex_analytical_q(case["c"], case["p"], eta=case["eta"], prob=case["prob"], stop_frac=case["stop"])
        assert q.shape == (case["c"].shape[0], 1) and q.dtype == torch.float64
        assert torch.equal(grid_index(q), grid_index(case["q"]))
        torch.testing.assert_close(q, case["q"], rtol=1e-6, atol=0)   # theirs holds q in float32
        full = darex_analytical_q(case["c"], case["p"], eta=case["eta"], prob=case["prob"], stop_frac=2.0)
        assert torch.equal(grid_index(full), grid_index(case["q_no_stop"]))
        assert torch.equal(grid_index(full) != grid_index(q), grid_index(case["q_no_stop"]) != grid_index(case["q"]))


def test_analytical_q_float16_path_matches_authors(golden):
    for case in golden["analytical16"]:
        q = darex_analytical_q(case["c"], case["p"], dtype=torch.float16)
        assert torch.equal(grid_index(q), grid_index(case["q"]))


def test_float16_ties_change_q_on_small_deltas(golden):
    case = golden["analytical16"][0]
    q16 = darex_analytical_q(case["c"], case["p"], dtype=torch.float16)
    q64 = darex_analytical_q(case["c"], case["p"])
    assert abs(q16.mean().item() - q64.mean().item()) > 0.01


def test_contract_cases(golden):
    con = golden["contract"]
    # theirs: phi(0.5) = NaN, every row stays at 1 - p; here phi(0.5) = 1/2 and the scan runs
    assert torch.all(con["half_p_q"] == 0.5)
    q = darex_analytical_q(con["half_p_c"], 0.5)
    assert torch.all((q >= 0.5) & (q < 1))
    # their first grid point at p = 0.9 is 0.099 (float truncation), kept
    assert con["first_grid_p09"] == pytest.approx(0.099)
    tiny = torch.full((3, 4), 1e-9, dtype=torch.float64)
    assert darex_analytical_q(tiny, 0.9, stop_frac=1.0).min().item() == pytest.approx(0.099)
    # AdamR with weight_decay = 0 is their plain Adam
    run = con["adam_wd0"]
    traj = run_adamr(run)
    for i, t in enumerate(run["traj"]):
        torch.testing.assert_close(traj[i], t, rtol=1e-9, atol=1e-12)


def run_adamr(run, steps=4):
    ws = [torch.nn.Parameter(w.clone()) for w in run["w0"]]
    opt = AdamR(ws, [w.clone() for w in run["w0"]], lr=run["lr"], betas=tuple(run["betas"]), eps=run["eps"],
                weight_decay=run["wd"], l1=run["l1"])
    traj = [[] for _ in ws]
    for _ in range(steps):
        opt.zero_grad()
        sum(((w - 0.3).pow(2) / 2 + 0.1 * torch.sin(5 * w)).sum() for w in ws).backward()
        opt.step()
        for i, w in enumerate(ws):
            traj[i].append(w.detach().clone())
    return [torch.stack(t) for t in traj]


@pytest.mark.parametrize("k", [0, 1], ids=["L2", "L1"])
def test_adamr_matches_authors(golden, k):
    run = golden["adamr"][k]
    traj = run_adamr(run)
    for i, t in enumerate(run["traj"]):
        torch.testing.assert_close(traj[i], t, rtol=1e-9, atol=1e-12)
    plain = run_adamr({**run, "wd": 0.0})
    assert (plain[0][-1] - traj[0][-1]).abs().max() > 1e-4   # the decay matters in these runs


def test_dare_equals_peft_under_the_same_mask(monkeypatch):
    merge_utils = pytest.importorskip("peft.utils.merge_utils")
    delta = torch.randn(6, 9, dtype=torch.float64)
    p = 0.7
    ours = darex_prune(delta, p, generator=torch.Generator().manual_seed(5))
    drop = torch.bernoulli(torch.full_like(delta, p), generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(merge_utils.torch, "bernoulli", lambda t: 1 - drop)   # PEFT's mask is the kept one
    theirs = merge_utils.prune(delta, 1 - p, method="random", rescale=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    merged = merge_utils.dare_linear([delta], torch.tensor([1.0], dtype=torch.float64), 1 - p)
    torch.testing.assert_close(ours, merged, rtol=1e-15, atol=0)


def test_search_q():
    best, scores = darex_search_q(lambda q: -abs(q - 0.3), 0.9, [0.2, 0.3, 0.4])
    assert best == 0.3 and list(scores) == [pytest.approx(0.1), 0.2, 0.3, 0.4]
    best, _ = darex_search_q(lambda q: 1.0, 0.9, [0.2, 0.5])   # ties: the later q, as the authors
    assert best == 0.5


def test_nan_propagates():
    d = torch.tensor([[math.nan, 1.0, 2.0]], dtype=torch.float64).repeat(200, 1)
    out = darex_prune(d, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(out[:, 0]).any()
    c = torch.randn(4, 5, dtype=torch.float64)
    c[1, 2] = math.nan
    q = darex_analytical_q(c, 0.9)
    assert torch.isnan(q[1]).all() and not torch.isnan(q[[0, 2, 3]]).any()


def test_bad_input():
    d = torch.randn(3, 4)
    for p in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="p"):
            darex_prune(d, p)
        with pytest.raises(ValueError, match="p"):
            darex_analytical_q(d, p)
    for q in (0.0, -1.0, torch.tensor([0.5, 0.0, 1.0, 1.0])):
        with pytest.raises(ValueError, match="q"):
            darex_prune(d, 0.5, q=q)
    with pytest.raises(ValueError, match="qs"):
        darex_search_q(lambda q: 0.0, 0.5, [])
    with pytest.raises(ValueError, match="q"):
        darex_search_q(lambda q: 0.0, 0.5, [0.2, -0.1])
    w = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="ref_params"):
        AdamR([w], [])
    with pytest.raises(ValueError, match="ref_params"):
        AdamR([w], [torch.zeros(4)])
    with pytest.raises(ValueError, match="weight_decay"):
        AdamR([w], [torch.zeros(3)], weight_decay=-1.0)
    w0 = w.detach().clone()
    opt = AdamR([w], [torch.zeros(3)])
    opt.step()   # no gradient: nothing moves
    assert torch.equal(w.detach(), w0)
