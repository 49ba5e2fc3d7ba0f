"""Softmax-collapse diagnostics (arXiv 2501.04697): the authors' logger (golden data), closed forms, NLM alignment."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.losses import stablemax_cross_entropy
from gradwise.metrics import nlm_alignment, nlm_alignment_on_batch, softmax_collapse_fraction, zero_loss_fraction

torch.set_num_threads(1)
GOLDEN = torch.load(os.path.join(os.path.dirname(__file__), "..", "data", "stablemax_golden.pt"))["collapse"]


@pytest.mark.parametrize("bits, dtype", [(16, torch.float16), (32, torch.float32), (64, torch.float64)])
def test_softmax_collapse_matches_the_authors_logger(bits, dtype):
    got = softmax_collapse_fraction(GOLDEN["logits"], dtype=dtype)
    assert got.item() == pytest.approx(GOLDEN["softmax_collapse"][bits], abs=1e-7)


def test_zero_loss_fraction_matches_the_authors_logger():
    got = zero_loss_fraction(GOLDEN["logits"], GOLDEN["target"])
    assert got.item() == pytest.approx(GOLDEN["zero_terms"], abs=1e-7)
    # less collapses in float64, as in the paper's figures
    assert softmax_collapse_fraction(GOLDEN["logits"], dtype=torch.float64) < softmax_collapse_fraction(GOLDEN["logits"])


def test_closed_forms():
    # exp(-120) is absorbed by 1 in float32 (and float64: 1 + 6.5e-53 == 1), exp(-1) is not
    z = torch.tensor([[0.0, -120.0], [0.0, -1.0], [0.0, -20.0]])
    assert softmax_collapse_fraction(z).item() == pytest.approx(2 / 3)       # exp(-20) = 2e-9 < 2^-24
    assert softmax_collapse_fraction(z, dtype=torch.float64).item() == pytest.approx(1 / 3)
    # a misclassified collapsed sample: collapsed, but its loss is the margin, not 0
    y = torch.tensor([1, 0, 0])
    assert zero_loss_fraction(z, y).item() == pytest.approx(1 / 3)
    assert zero_loss_fraction(z, torch.tensor([1, 0, -100])).item() == pytest.approx(0.0)
    assert zero_loss_fraction(z, torch.tensor([0, -100, 0])).item() == pytest.approx(1.0)


def test_stablemax_loss_is_not_zero_where_softmax_ce_is():
    z = torch.tensor([[1.0, -0.5, 0.25]]).repeat(4, 1) * torch.tensor([[200.0], [400.0], [800.0], [1600.0]])
    y = torch.zeros(4, dtype=torch.long)
    assert zero_loss_fraction(z, y) == 1
    assert (stablemax_cross_entropy(z, y, reduction="none") > 0).all()


@pytest.mark.parametrize("call, match", [
    (lambda: softmax_collapse_fraction(torch.zeros(3)), "Invalid logits"),
    (lambda: softmax_collapse_fraction(torch.zeros(0, 3)), "Invalid logits"),
    (lambda: softmax_collapse_fraction(torch.zeros(2, 3), dtype=torch.int32), "Invalid dtype"),
    (lambda: zero_loss_fraction(torch.zeros(2, 3), torch.tensor([0, 3])), "Invalid target"),
    (lambda: zero_loss_fraction(torch.zeros(2, 3), torch.tensor([-100, -100])), "Invalid target"),
    (lambda: nlm_alignment([]), "Invalid parameters"),
    (lambda: nlm_alignment([torch.ones(2)]), "Invalid parameters: no parameter has a gradient"),
    (lambda: nlm_alignment([torch.ones(2)], [torch.ones(3)]), "Invalid grads"),
    (lambda: nlm_alignment([torch.ones(2)], [torch.ones(2), None]), "Invalid grads"),
    (lambda: nlm_alignment([torch.ones(2)], [torch.ones(2)], per_tensor=1), "Invalid per_tensor"),
    (lambda: nlm_alignment([torch.ones(2)], [torch.ones(2)], eps=0.0), "Invalid eps"),
    (lambda: nlm_alignment_on_batch("model", torch.zeros(1), torch.zeros(1)), "Invalid model"),
])
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16, bias=False), nn.ReLU(), nn.Linear(16, 5, bias=False))


def test_weights_are_the_nlm_direction_of_a_homogeneous_model():
    """f((1 + e) theta) = (1 + e)^2 f(theta) for a bias-free 2-layer ReLU MLP: moving along theta only scales
    the logits (the predictions do not change), which is why the weights are its NLM direction."""
    model, x = mlp(), torch.randn(10, 6, dtype=torch.float64)
    model.double()
    base = model(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    torch.testing.assert_close(model(x), 1.21 * base)
    assert torch.equal(model(x).argmax(1), base.argmax(1))


def test_nlm_alignment_is_the_cosine_of_minus_the_gradient_with_the_weights():
    model = mlp()
    x, y = torch.randn(12, 6), torch.randint(0, 5, (12,))
    F.cross_entropy(model(x), y).backward()
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()
    torch.testing.assert_close(nlm_alignment(model), F.cosine_similarity(-g, w, dim=0))
    per = nlm_alignment(model.parameters(), per_tensor=True)
    want = torch.stack([F.cosine_similarity(-p.grad.reshape(-1).double(), p.detach().reshape(-1).double(), dim=0)
                        for p in model.parameters()])
    torch.testing.assert_close(per, want)
    # on a batch: the same number, and .grad untouched
    grads = [p.grad.clone() for p in model.parameters()]
    torch.testing.assert_close(nlm_alignment_on_batch(model, x, y), nlm_alignment(model))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    # the extremes: a gradient along -theta (pure NLM), and the same gradient after ⊥Grad's projection
    params = list(model.parameters())
    assert nlm_alignment(params, [-3 * p.detach() for p in params]).item() == pytest.approx(1.0)
    perp = [p.grad - (p.grad * p).sum() / (p * p).sum() * p.detach() for p in params]
    assert nlm_alignment(params, perp, per_tensor=True).abs().max().item() < 1e-6
    # a zero gradient gives 0, not NaN
    assert nlm_alignment(params, [torch.zeros_like(p) for p in params]).item() == 0.0


def test_nlm_alignment_grows_once_a_separable_problem_is_fit():
    """Without weight decay, once every training sample is classified, cross entropy keeps lowering the loss
    by scaling: the negative gradient turns towards the weights (the paper's NLM, §4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32, bias=False), nn.ReLU(), nn.Linear(32, 4, bias=False))
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    early = nlm_alignment_on_batch(model, x, y).item()
    for _ in range(400):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model(x).argmax(1) == y).all()
    late = nlm_alignment_on_batch(model, x, y).item()
    assert late > 0.5 and late > early
