"""Decoupled softmax loss for extreme multi-label classification."""
import torch
import torch.nn.functional as F

import gradwise.losses as L


f64 = torch.float64


# ----- decoupled softmax ----------------------------------------------------------------------------------------

def _decoupled_loop(x, t):
    out = []
    for i in range(x.shape[0]):
        pos = [j for j in range(x.shape[1]) if t[i, j] > 0]
        neg = [j for j in range(x.shape[1]) if t[i, j] <= 0]
        terms = []
        for p in pos:
            den = torch.logsumexp(torch.cat([x[i, p:p + 1], x[i, neg]]), 0)
            terms.append(den - x[i, p])
        out.append(torch.stack(terms).mean() if terms else x.new_zeros(()))
    return torch.stack(out)


def test_decoupled_softmax_matches_brute_force_and_ce():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 8, generator=g, dtype=f64) * 2
    t = (torch.rand(9, 8, generator=g) < 0.3).int()
    t[0] = 0
    t[1] = 1
    t[2, :] = 0
    t[2, 4] = 1
    torch.testing.assert_close(L.decoupled_softmax_loss(x, t, reduction="none"), _decoupled_loop(x, t))
    torch.testing.assert_close(L.decoupled_softmax_loss(x, t, reduction="sum"), _decoupled_loop(x, t).sum())
    y = torch.randint(0, 8, (9,), generator=g)
    torch.testing.assert_close(L.decoupled_softmax_loss(x, F.one_hot(y, 8).bool()), F.cross_entropy(x, y))
    xx = x.clone().requires_grad_(True)
    L.decoupled_softmax_loss(xx, t).backward()
    assert torch.isfinite(xx.grad).all()
