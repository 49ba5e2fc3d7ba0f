"""High-loss selection: the k largest losses, largest first."""
from __future__ import annotations

import pytest
import torch

from gradwise.data_weighting import select_hard_samples


# ---------------------------------------------------------------- hard-sample selection

def test_select_hard_samples_returns_the_k_largest():
    losses = torch.rand(100, generator=torch.Generator().manual_seed(0))
    idx = select_hard_samples(losses, fraction=0.25)
    assert len(idx) == 25
    assert set(idx.tolist()) == set(torch.argsort(losses, descending=True)[:25].tolist())
    assert (losses[idx].diff() <= 0).all()  # largest first
    assert losses[idx].min() >= losses[~torch.isin(torch.arange(100), idx)].max()
    assert len(select_hard_samples(losses, k=3)) == 3 and len(select_hard_samples(losses, fraction=1.0)) == 100
    assert len(select_hard_samples(losses, fraction=0.001)) == 1
    with pytest.raises(ValueError, match="fraction"):
        select_hard_samples(losses, fraction=0.0)
    with pytest.raises(ValueError, match="k"):
        select_hard_samples(losses, k=101)
