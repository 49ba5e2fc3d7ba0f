"""Multi-sample dropout: eval and p=0 equal the head; the loss averages per-sample losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.nn import MultiSampleDropout


# ---------------------------------------------------------------- multi-sample dropout


def _msd(p=0.5, s=4, reduction="mean"):
    torch.manual_seed(0)
    return MultiSampleDropout(nn.Linear(6, 3), num_samples=s, p=p, reduction=reduction)


def test_msd_eval_and_p0_equal_head():
    x = torch.randn(5, 6)
    y = torch.randint(0, 3, (5,))
    m = _msd().eval()
    assert torch.equal(m(x), m.head(x))
    assert torch.equal(m.loss(x, y, F.cross_entropy), F.cross_entropy(m.head(x), y))
    m0 = _msd(p=0.0).train()
    assert torch.allclose(m0(x), m0.head(x), atol=1e-6)
    assert torch.allclose(m0.loss(x, y, F.cross_entropy), F.cross_entropy(m0.head(x), y), atol=1e-6)
    assert torch.allclose(_msd(p=0.0, reduction="sum").train().loss(x, y, F.cross_entropy),
                          4 * F.cross_entropy(m0.head(x), y), atol=1e-5)
    calls = []
    m0.head.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    m0.loss(x, y, F.cross_entropy)
    assert calls == [5]  # p=0: one pass over the batch, not S


def test_msd_loss_is_mean_of_per_sample_losses_under_a_fixed_seed():
    x = torch.randn(5, 6)
    y = torch.randint(0, 3, (5,))
    m = _msd(p=0.5, s=4).train()
    torch.manual_seed(123)
    got = m.loss(x, y, F.cross_entropy)
    torch.manual_seed(123)  # the same masks: one dropout call on the stacked [S*N, D] batch
    masked = F.dropout(x.repeat(4, 1), 0.5, training=True).view(4, 5, 6)
    ref = torch.stack([F.cross_entropy(m.head(masked[s]), y) for s in range(4)]).mean()
    assert torch.allclose(got, ref, atol=1e-6)
    torch.manual_seed(123)
    out = m(x)
    assert torch.allclose(out, torch.stack([m.head(masked[s]) for s in range(4)]).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="num_samples"):
        MultiSampleDropout(nn.Identity(), num_samples=0)
    with pytest.raises(ValueError, match="p"):
        MultiSampleDropout(nn.Identity(), p=1.0)
