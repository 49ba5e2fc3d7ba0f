"""HiddenStateProbe: exact statistics on a known case, one row per pass, hooks removed, and on TransformerLM the
values of x_0 ... x_L recomputed by hand (Peri-LN's diagnostic, arXiv 2502.02732)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwise.nn import HIDDEN_STATE_STATS, HiddenStateProbe, TransformerLM, hidden_state_stats


class _Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return self.c * x


def test_known_case_scaling_blocks():
    # x_0 = [[3, -1], [1, 1]] (one sequence of two tokens, d = 2): mean 1, variance (4 + 4 + 0 + 0)/4 = 2,
    # |x| mean 6/4 = 1.5, per-token norms sqrt(10) and sqrt(2); each block doubles x, then triples it.
    x0 = torch.tensor([[[3.0, -1.0], [1.0, 1.0]]])
    blocks = nn.Sequential(_Scale(2.0), _Scale(3.0))
    with HiddenStateProbe(blocks) as probe:
        out = blocks(x0)
    torch.testing.assert_close(out, 6 * x0)  # the probe changes nothing
    s = probe.last()
    assert set(s) == set(HIDDEN_STATE_STATS)
    torch.testing.assert_close(s["variance"], torch.tensor([2.0, 8.0, 72.0], dtype=torch.float64))
    torch.testing.assert_close(s["abs_mean"], torch.tensor([1.5, 3.0, 9.0], dtype=torch.float64))
    n0 = (10 ** 0.5 + 2 ** 0.5) / 2
    torch.testing.assert_close(s["norm"], torch.tensor([n0, 2 * n0, 6 * n0], dtype=torch.float64))


def test_one_row_per_pass_and_hooks_removed_on_exit():
    blocks = nn.Sequential(_Scale(2.0), _Scale(0.5))
    x = torch.randn(2, 3, 4, requires_grad=True)
    with HiddenStateProbe(blocks) as probe:
        blocks(x)
        blocks(2 * x).sum().backward()  # recording keeps autograd working
    assert len(probe.history["variance"]) == 2 and len(probe.history["variance"][0]) == 3
    assert probe.history["variance"][1][0] == pytest.approx(4 * probe.history["variance"][0][0], rel=1e-5)
    assert not blocks[0]._forward_pre_hooks and not any(b._forward_hooks for b in blocks)
    blocks(x)
    assert len(probe.history["variance"]) == 2
    with pytest.raises(RuntimeError, match="no forward pass"):
        HiddenStateProbe(blocks).last()
    with pytest.raises(ValueError, match="Invalid blocks"):
        HiddenStateProbe([])


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_lm_stats_are_the_hidden_states_x0_to_xL(norm):
    torch.manual_seed(0)
    lm = TransformerLM(13, 16, 2, 4, max_seq_len=8, norm=norm, dropout=0.1).train()
    ids = torch.randint(0, 13, (3, 8))
    s = hidden_state_stats(lm, ids)
    assert lm.training  # restored
    lm.eval()
    with torch.no_grad():
        xs = [lm.embed(ids)]
        for blk in lm.blocks:
            xs.append(blk(xs[-1]))
    want = torch.stack([x.double().var(unbiased=False) for x in xs])
    torch.testing.assert_close(s["variance"], want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s["abs_mean"], torch.stack([x.double().abs().mean() for x in xs]), rtol=1e-5, atol=0)
    torch.testing.assert_close(s["norm"], torch.stack([x.double().norm(dim=-1).mean() for x in xs]),
                               rtol=1e-5, atol=0)
    if norm == "post":  # every Post-LN block ends in a LayerNorm at its initial scale 1, shift 0
        torch.testing.assert_close(s["variance"][1:], torch.ones(4, dtype=torch.float64), rtol=1e-3, atol=0)
    if norm == "peri":  # x_0 is normalized; each block adds two normalized branches, so variance grows with depth
        emb = lm.tok_emb.weight[ids] + lm.pos_emb.weight[:8]  # LayerNorm's eps: variance v/(v + eps), per token
        v = emb.double().var(-1, unbiased=False)
        assert s["variance"][0].item() == pytest.approx((v / (v + 1e-5)).mean().item(), rel=1e-4)
        assert (s["variance"].diff() > 0).all()


def test_hidden_state_stats_needs_blocks():
    with pytest.raises(ValueError, match="Invalid model: Linear has no `blocks`"):
        hidden_state_stats(nn.Linear(2, 2), torch.zeros(1, 2))
