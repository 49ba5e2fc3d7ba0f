"""Online loss-based reweighting: golden values from the authors' code, normalisation, orderings, limits."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.data_weighting import ReweightedLoss, loss_reweighting_weights, reweighted_loss


DATA = Path(__file__).parents[1] / "data"


# ---------------------------------------------------------------- loss-based reweighting


def test_reweighting_matches_authors_code_golden():
    gold = torch.load(DATA / "loss_reweighting_golden.pt", weights_only=True)["cases"]
    for c in gold:
        w = loss_reweighting_weights(c["losses"], strategy=c["strategy"], temperature=c["temperature"])
        assert torch.allclose(w / len(w), c["weights"], rtol=1e-12, atol=1e-15), c["strategy"]


@pytest.mark.parametrize("strategy", ["linupper", "quadratic", "extremes", "upper", "uniform"])
def test_reweighting_weights_normalised_and_detached(strategy):
    losses = (torch.rand(50, dtype=torch.float64) * 4).requires_grad_()
    w = loss_reweighting_weights(losses, strategy=strategy, temperature=0.5)
    assert not w.requires_grad and (w > 0).all()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    loss = reweighted_loss(losses, strategy=strategy, temperature=0.5)
    loss.backward()
    assert torch.allclose(losses.grad, w / 50)  # gradient through the losses only
    assert torch.allclose(ReweightedLoss(strategy=strategy, temperature=0.5)(losses), loss)
    none = reweighted_loss(losses, strategy=strategy, temperature=0.5, reduction="none")
    assert torch.allclose(none.mean(), loss) and torch.allclose(
        reweighted_loss(losses, strategy=strategy, temperature=0.5, reduction="sum"), none.sum())


def test_reweighting_orderings_and_limits():
    losses = torch.linspace(0.1, 3.0, 30, dtype=torch.float64)
    up = loss_reweighting_weights(losses, strategy="upper", temperature=0.3)
    assert (up.diff() > 0).all()  # higher loss -> higher weight
    lin = loss_reweighting_weights(losses, strategy="linupper", temperature=0.3)
    mid = losses.median()
    assert (lin[losses < mid].diff() > 0).all() and torch.allclose(lin[losses > mid + 0.1], lin[-1])
    ext = loss_reweighting_weights(losses, strategy="extremes", temperature=0.3)
    assert ext[0] > ext[15] and ext[-1] > ext[15]
    quad = loss_reweighting_weights(losses, strategy="quadratic", temperature=0.3)
    assert quad[15] > quad[0] and quad[15] > quad[-1]
    hot = loss_reweighting_weights(losses, strategy="extremes", temperature=1e9)
    assert torch.allclose(hot, torch.ones_like(hot))  # T -> inf: uniform
    same = loss_reweighting_weights(torch.full((7,), 2.0), strategy="linupper")
    assert torch.allclose(same, torch.ones(7))  # all equal losses: uniform, no NaN
    with pytest.raises(ValueError, match="strategy"):
        loss_reweighting_weights(losses, strategy="mid")
    with pytest.raises(ValueError, match="temperature"):
        loss_reweighting_weights(losses, temperature=0)
    with pytest.raises(ValueError, match="per_sample_losses"):
        loss_reweighting_weights(losses.view(5, 6))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.bfloat16]), st.sampled_from([1.0, 1e4]))
def test_reweighting_finite_for_extreme_losses(seed, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    losses = (torch.rand(16, generator=g) * scale).to(dtype).requires_grad_()
    loss = reweighted_loss(losses, strategy="extremes", temperature=0.4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(losses.grad).all()
