"""SaRA (seed 259) against the authors' adamw2 (golden data), the sparse path against the dense one, bad input."""
import copy
import math
import random
from pathlib import Path

import pytest
import torch

from gradwise.peft import SaRA

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "sara_golden.pt"


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def targets_for(shape):
    n = math.prod(shape)
    return 0.05 * torch.cos(torch.arange(n, dtype=torch.float64) * 0.7).reshape(shape)


def loss_fn(ws, coefs):
    return sum((c * (w - targets_for(tuple(w.shape))).pow(2) / 2 + 0.1 * torch.sin(5 * w)).sum()
               for w, c in zip(ws, coefs))


def unpack(packed, n):
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:n].bool()


def run_ours(case, sparse, steps=31):
    ws = [torch.nn.Parameter(w.clone()) for w in case["w0"]]
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in case["kwargs"].items()}
    opt = SaRA(ws, sparse=sparse, **kw)
    if case["random_seed"] >= 0:
        random.seed(case["random_seed"])
    masks, values = [], []
    init = opt.initial_masks
    for _ in range(steps):
        for w in ws:
            w.grad = None
        loss_fn(ws, case["coefs"]).backward()
        opt.step()
        masks.append(torch.cat([m.reshape(-1) for m in opt.masks]))
        values.append(torch.cat([w.detach()[m] for w, m in zip(ws, init)]))
    return opt, ws, masks, values


RUNS = ["plain", "default_lr", "reselect", "nuclear", "nuclear_reselect", "shapes"]


# the sparse path on the runs that re-select, draw the nuclear norm and mix shapes (the others cost time only)
CASES = [(name, False) for name in RUNS] + [(name, True) for name in ("reselect", "nuclear_reselect", "shapes")]


@pytest.mark.parametrize("name,sparse", CASES, ids=[f"{n}-{'sparse' if s else 'dense'}" for n, s in CASES])
def test_matches_authors_adamw2(golden, name, sparse):
    case = golden["runs"][name]
    opt, ws, masks, values = run_ours(case, sparse)
    n = masks[0].numel()
    for t in range(31):
        assert torch.equal(masks[t], unpack(case["masks"][t], n)), f"mask differs at step {t + 1}"
        torch.testing.assert_close(values[t], case["values"][t], rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"step {t + 1}: {m}")
    for w, w0, m in zip(ws, case["w0"], opt.initial_masks):
        assert torch.equal(w.detach()[~m], w0[~m])          # unselected entries never move
    saved = opt.save_params()
    assert saved["threshold"] == case["saved"]["threshold"]
    for i in range(len(ws)):
        torch.testing.assert_close(saved[i], case["saved"][i], rtol=1e-9, atol=1e-12)


def test_golden_runs_exercise_what_they_claim(golden):
    r = golden["runs"]
    first, last = (unpack(r["reselect"]["masks"][i], r["reselect"]["masks"][0].numel() * 8) for i in (0, -1))
    assert last.sum() < first.sum()                         # re-selection dropped entries
    assert "lr" not in r["default_lr"]["kwargs"]


def test_default_lr(golden):
    for t, lr in zip(golden["default_lr"]["threshold"].tolist(), golden["default_lr"]["lr"].tolist()):
        opt = SaRA([torch.nn.Parameter(torch.zeros(2))], threshold=t)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-15)


def test_authors_minus_one_is_refused(golden):
    assert golden["minus_one_error"] == "TypeError"         # theirs fails at the first step
    with pytest.raises(ValueError, match="progressive_iter"):
        SaRA([torch.nn.Parameter(torch.zeros(2))], threshold=1e-3, progressive_iter=-1)


@pytest.mark.parametrize("kwargs,arg", [({"threshold": 0.0}, "threshold"), ({"threshold": -1.0}, "threshold"),
                                        ({"threshold": float("nan")}, "threshold"),
                                        ({"threshold": 1e-3, "lambda_rank": -0.1}, "lambda_rank"),
                                        ({"threshold": 1e-3, "progressive_iter": 1.5}, "progressive_iter"),
                                        ({"threshold": 1e-3, "lr": -1.0}, "lr"),
                                        ({"threshold": 1e-3, "betas": (1.0, 0.9)}, "betas"),
                                        ({"threshold": 1e-3, "sparse": 1}, "sparse")])
def test_bad_input(kwargs, arg):
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=arg):
        SaRA([w], **kwargs)


def test_load_params_checks_before_writing():
    ws = [torch.nn.Parameter(torch.tensor([0.0, 1.0, 0.0])), torch.nn.Parameter(torch.tensor([0.0, 0.0]))]
    opt = SaRA(ws, threshold=0.5)
    saved = opt.save_params()
    saved[0] = saved[0] + 1
    saved[1] = torch.zeros(3)                               # wrong count for parameter 1
    with pytest.raises(ValueError, match="parameter 1 needs 2"):
        opt.load_params(saved)
    assert torch.equal(ws[0].detach(), torch.tensor([0.0, 1.0, 0.0]))   # nothing written
    saved[1] = torch.ones(2)
    opt.load_params(saved)
    assert torch.equal(ws[0].detach(), torch.tensor([1.0, 1.0, 1.0])) and torch.equal(ws[1].detach(), torch.ones(2))


def test_nan_propagates_in_selected_entries():
    w = torch.nn.Parameter(torch.tensor([0.0, 5.0]))
    opt = SaRA([w], threshold=1.0, lr=0.1)
    w.grad = torch.tensor([float("nan"), float("nan")])
    opt.step()
    assert math.isnan(w[0].item()) and math.isnan(w[1].item())     # dense: as the authors' W'M + W(1 - M)
    w = torch.nn.Parameter(torch.tensor([0.0, 5.0]))
    opt = SaRA([w], threshold=1.0, lr=0.1, sparse=True)
    w.grad = torch.tensor([float("nan"), float("nan")])
    opt.step()
    assert math.isnan(w[0].item()) and w[1].item() == 5.0          # sparse: frozen entries are never touched


def test_state_dict_round_trip_with_reselection(golden):
    case = golden["runs"]["reselect"]                      # re-selects at step 11
    for sparse in (False, True):
        opt_a, ws_a, _, _ = run_ours(case, sparse, steps=9)
        sd = copy.deepcopy(opt_a.state_dict())     # torch's state_dict shares the state tensors
        ws_b = [torch.nn.Parameter(w.detach().clone()) for w in ws_a]
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in case["kwargs"].items()}
        opt_b = SaRA([torch.nn.Parameter(w.clone()) for w in case["w0"]], sparse=sparse, **kw)
        opt_b.param_groups[0]["params"] = ws_b
        opt_b.load_state_dict(sd)
        state = random.getstate()
        for opt, ws in ((opt_a, ws_a), (opt_b, ws_b)):
            random.setstate(state)
            for _ in range(3):
                for w in ws:
                    w.grad = None
                loss_fn(ws, case["coefs"]).backward()
                opt.step()
        for a, b in zip(ws_a, ws_b):
            assert torch.equal(a, b)


def test_sparse_state_is_smaller():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(200, 100) * 0.01)
    dense, sparse = SaRA([w], threshold=1e-3), SaRA([w], threshold=1e-3, sparse=True)
    for opt in (dense, sparse):
        w.grad = torch.randn_like(w)
        opt.step()
    nbytes = [sum(t.numel() * t.element_size() for s in o.state.values() for t in s.values() if t.dim())
              for o in (dense, sparse)]
    assert nbytes[1] < 0.5 * nbytes[0]


def test_masks_follow_their_parameter_across_groups_and_missing_grads():
    a = torch.nn.Parameter(torch.tensor([0.0, 9.0]))
    b = torch.nn.Parameter(torch.tensor([9.0, 0.0, 9.0]))
    c = torch.nn.Parameter(torch.tensor([0.0, 0.0]))
    opt = SaRA([{"params": [a, b]}, {"params": [c], "lr": 0.5}], threshold=1.0, lr=0.1, weight_decay=0.0)
    b.grad, c.grad = torch.ones(3), torch.ones(2)          # a gets no gradient
    opt.step()
    assert torch.equal(a.detach(), torch.tensor([0.0, 9.0]))
    assert b[0].item() == 9.0 and b[2].item() == 9.0 and b[1].item() == pytest.approx(-0.1)
    assert c.detach().tolist() == pytest.approx([-0.5, -0.5])


def test_no_eligible_matrix_draws_nothing():
    w = torch.nn.Parameter(torch.zeros(10, 70))           # min side 10 <= 64: not eligible
    opt = SaRA([w], threshold=1.0, lambda_rank=1.0)
    random.seed(0)
    state = random.getstate()
    w.grad = torch.zeros_like(w)
    opt.step()
    assert random.getstate() == state and torch.equal(w.detach(), torch.zeros_like(w))
