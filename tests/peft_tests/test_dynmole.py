"""DynMoLE (seed 127) against the authors' routing, loss and MoE block (golden data), and bad input."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradwise.peft import dynmole_delta, dynmole_route, dynmole_router_loss, tsallis_entropy

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "dynmole_golden.pt"
TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.mark.parametrize("i", range(8))
def test_routing_matches_authors(golden, i):
    c = golden["routing"][i]
    logits = c["logits"].clone().requires_grad_(True)
    probs = F.softmax(logits, -1)
    w, ent = dynmole_route(probs, **c["route"])
    rows = torch.ones(w.shape[:-1], dtype=torch.bool)
    if c["route"]["top_p"] == 1.0:
        # top_p = 1 sits on the boundary: whether the cumulative sum of a row reaches 1.0 or stops at 1 - 2 ulp
        # depends on the CPU kernels' softmax rounding, and with it whether the smallest expert is kept. Rows
        # whose routing flipped must differ only there; the others are compared exactly below.
        rows = ((w > 0) == (c["weights"] > 0)).all(-1)
        smallest = probs.detach().argmin(-1)
        diff = (w.detach() > 0) != (c["weights"] > 0)
        assert (diff.sum(-1)[~rows] == 1).all() and diff[~rows].float().argmax(-1).eq(smallest[~rows]).all()
    torch.testing.assert_close(w.detach()[rows], c["weights"][rows], **TOL)
    torch.testing.assert_close(ent.detach(), c["entropy"], **TOL)
    ((w * c["cw"]).sum() + (ent * c["ce"]).sum()).backward()
    torch.testing.assert_close(logits.grad[rows], c["grad"][rows], **TOL)


def test_routing_cases_cover_both_branches(golden):
    active = [(c["weights"] > 0).sum(-1) for c in golden["routing"]]
    assert any((a == c["weights"].shape[-1]).any() and (a < c["weights"].shape[-1]).any()
               for a, c in zip(active, golden["routing"]))
    assert any((a == 1).all() for a in active)  # keep_top_k=1, top-p below the largest probability


@pytest.mark.parametrize("i", range(4))
def test_router_loss_matches_authors(golden, i):
    c = golden["losses"][i]
    logits = c["logits"].clone().requires_grad_(True)
    mask = c["attention_mask"] if c["attention_mask"].numel() else None
    loss = dynmole_router_loss(logits, mask, entropy_coef=c["entropy_coef"], balance_coef=c["balance_coef"],
                               **c["route"])
    torch.testing.assert_close(loss.detach(), c["loss"], **TOL)
    loss.backward()
    torch.testing.assert_close(logits.grad, c["grad"], **TOL)


def test_padding_changes_the_balance_term(golden):
    c = golden["losses"][1]
    assert (c["attention_mask"] == 0).any()
    kw = dict(entropy_coef=c["entropy_coef"], balance_coef=c["balance_coef"], **c["route"])
    assert not torch.allclose(dynmole_router_loss(c["logits"], None, **kw),
                              dynmole_router_loss(c["logits"], c["attention_mask"], **kw))


@pytest.mark.parametrize("i", range(3))
def test_delta_matches_authors_block(golden, i):
    c = golden["deltas"][i]
    leaves = [c[k].clone().requires_grad_(True) for k in ("x", "router_weight", "lora_A", "lora_B")]
    out = dynmole_delta(*leaves, scaling=c["scaling"], **c["route"])
    torch.testing.assert_close(out.detach(), c["delta"], **TOL)
    (out * c["c"]).sum().backward()
    for leaf, k in zip(leaves, ("grad_x", "grad_router", "grad_A", "grad_B")):
        torch.testing.assert_close(leaf.grad, c[k], **TOL)


def test_contract_cases(golden):
    c = golden["contract"]
    p = c["probs"]
    torch.testing.assert_close(tsallis_entropy(p, 1.3, normalize=False), c["tsallis_unnorm"], **TOL)
    torch.testing.assert_close(tsallis_entropy(p, 1.0, normalize=False), c["shannon_unnorm"], **TOL)
    torch.testing.assert_close(tsallis_entropy(p, 1.0), c["shannon_norm"], **TOL)
    ours = tsallis_entropy(p, 1.1)
    assert 0 < (ours - c["raw_entropy"]).abs().max() <= 3.2e-8  # their float32 normaliser
    for name in ("uniform", "onehot"):
        probs = torch.full((3, 6), 1 / 6, dtype=torch.float64) if name == "uniform" else \
            torch.eye(6, dtype=torch.float64)[:3]
        w, ent = dynmole_route(probs)
        torch.testing.assert_close(w, c[f"{name}_weights"], **TOL)
        torch.testing.assert_close(ent, c[f"{name}_entropy"], **TOL)
    assert (c["uniform_weights"] > 0).all()  # high entropy: every expert, weights not renormalised
    torch.testing.assert_close(c["uniform_weights"].sum(-1), torch.ones(3, dtype=torch.float64))


def test_weights_not_renormalised_and_float32_runs():
    torch.manual_seed(0)
    probs = F.softmax(torch.randn(64, 6) * 3, -1)
    w, ent = dynmole_route(probs, entropy_threshold=0.99)
    assert w.dtype == torch.float32 and ent.dtype == torch.float32
    assert (w.sum(-1) < 1 - 1e-6).any() and ((w > 0).sum(-1) >= 2).all()


def test_nan_propagates():
    probs = torch.tensor([[0.5, float("nan"), 0.25, 0.25]])
    w, ent = dynmole_route(probs)
    assert torch.isnan(ent).all() and torch.isnan(w).any()


BAD_ROUTE = [dict(keep_top_k=0), dict(keep_top_k=1.5), dict(top_p=0.0), dict(top_p=1.1), dict(entropy_index=0.0),
             dict(entropy_index=-1.0), dict(entropy_threshold=0.0), dict(entropy_eps=-1e-5)]


@pytest.mark.parametrize("kw", BAD_ROUTE)
def test_bad_route_arguments(kw):
    probs = F.softmax(torch.randn(4, 6), -1)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        dynmole_route(probs, **kw)
    logits = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(ValueError, match=name):
        dynmole_router_loss(logits, **kw)
    assert logits.grad is None


def test_bad_loss_and_delta_arguments():
    logits = torch.randn(2 * 3 * 5 + 1, 6)
    with pytest.raises(ValueError, match="attention_mask"):
        dynmole_router_loss(logits, torch.ones(3, 5))
    with pytest.raises(ValueError, match="entropy_coef"):
        dynmole_router_loss(logits, entropy_coef=-1.0)
    with pytest.raises(ValueError, match="q"):
        tsallis_entropy(torch.rand(3, 4), 0.0)
    x, wr = torch.randn(2, 8), torch.randn(4, 8)
    A, B = torch.randn(4, 2, 8), torch.randn(4, 5, 2)
    assert dynmole_delta(x, wr, A, B, scaling=1.0).shape == (2, 5)
    with pytest.raises(ValueError, match="lora_B"):
        dynmole_delta(x, wr, A, torch.randn(4, 5, 3), scaling=1.0)
    with pytest.raises(ValueError, match="lora_B"):
        dynmole_delta(x, wr, A, torch.randn(3, 5, 2), scaling=1.0)
    with pytest.raises(ValueError, match="router_weight"):
        dynmole_delta(x, torch.randn(3, 8), A, B, scaling=1.0)
    with pytest.raises(ValueError, match="keep_top_k"):
        dynmole_delta(x, wr, A, B, scaling=1.0, keep_top_k=0)
