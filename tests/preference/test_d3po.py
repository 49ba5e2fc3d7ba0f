"""D3PO loss: equal (float64, rel 1e-10) to the loss statements of yk7333/D3PO @ 40d3175 scripts/train.py
(tests/data/d3po_golden.pt, tools/golden/make_d3po_golden.py); ties, clipping, bad input."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.preference import d3po_loss
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "d3po_golden.pt", weights_only=True)


@pytest.mark.parametrize("i", range(len(GOLDEN["d3po"])))
def test_matches_authors_loss(i):
    c = GOLDEN["d3po"][i]
    args = (c["policy_chosen"], c["policy_rejected"], c["ref_chosen"], c["ref_rejected"])
    got = d3po_loss(*args, beta=c["beta"], eps=c["eps"], ties=c["ties"])
    torch.testing.assert_close(got, c["loss"], rtol=1e-10, atol=1e-300)
    if c["batch_mean"] is not None:
        torch.testing.assert_close(d3po_loss(*args, beta=c["beta"], eps=c["eps"]).mean(), c["batch_mean"],
                                   rtol=1e-10, atol=1e-300)


def test_ties_give_log2_and_no_gradient():
    pc = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-3.0, -1.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.05, -2.02], dtype=torch.float64)
    loss = d3po_loss(pc, pr, ref, ref, beta=1.0, ties=torch.tensor([True, False]))
    assert math.isclose(float(loss[0].detach()), math.log(2.0), rel_tol=1e-15)
    loss.sum().backward()
    assert float(pc.grad[0]) == 0.0 and float(pr.grad[0]) == 0.0 and float(pc.grad[1]) != 0.0


def test_clipped_ratio_has_no_gradient_and_steps_shape():
    pc = torch.zeros(3, 5, requires_grad=True)
    big = torch.full((3, 5), -5.0)  # log ratio 5 >> log(1 + eps): clipped
    loss = d3po_loss(pc, torch.zeros(3, 5), big, torch.zeros(3, 5), eps=0.1)
    assert loss.shape == (3, 5) and loss.dtype == torch.float32
    loss.sum().backward()
    assert torch.equal(pc.grad, torch.zeros_like(pc))
    torch.testing.assert_close(loss, torch.full((3, 5), -torch.nn.functional.logsigmoid(
        torch.tensor(0.1 * math.log(1.1))).item()))


def test_lowering_loss_raises_chosen_logp():
    pc = torch.zeros(4, requires_grad=True)
    pr = torch.zeros(4, requires_grad=True)
    d3po_loss(pc, pr, torch.zeros(4), torch.zeros(4)).sum().backward()
    assert bool((pc.grad < 0).all()) and bool((pr.grad > 0).all())


@pytest.mark.parametrize("kw, name", [
    (dict(beta=0.0), "beta"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(ties=torch.tensor([True, False, True])), "ties"),
    (dict(ties=torch.tensor([1, 0])), "ties"),
])
def test_bad_input_names_the_argument(kw, name):
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        d3po_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), **kw)


def test_bad_shapes():
    with pytest.raises(ValueError, match="Invalid ref_rejected_logps"):
        d3po_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="Invalid policy_chosen_logps"):
        d3po_loss(*(torch.zeros(2, 2, 2),) * 4)


def test_registered_under_the_d3po_title():
    rec = get("d3po_loss")
    assert rec.paper == "Using Human Feedback to Fine-tune Diffusion Models without Any Reward Model"
    assert rec.family == "preference" and rec.arxiv == "2311.13231" and rec.seed
