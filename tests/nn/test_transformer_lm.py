"""TransformerLM: embedding, blocks, final norm and head composed as documented, each placement's embedding and final
norms (Peri-LN, arXiv 2502.02732), causal masking, gradients, and errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.nn import EMBED_NORM_DEFAULT, FINAL_NORM_DEFAULT, TransformerBlock, TransformerLM

V, D, H, L, T = 11, 16, 4, 3, 9


def _lm(norm="peri", seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(V, D, H, L, max_seq_len=T, norm=norm, **kw)


def _ids(b=2, t=T, seed=1):
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_forward_is_embedding_blocks_final_norm_head(norm):
    lm = _lm(norm).double()
    ids = _ids()
    x = lm.tok_emb.weight[ids] + lm.pos_emb.weight[:T]
    if norm == "peri":
        x = F.layer_norm(x, (D,), lm.embed_norm.weight, lm.embed_norm.bias)
    for blk in lm.blocks:
        x = blk(x)
    if norm != "post":
        x = F.layer_norm(x, (D,), lm.final_norm.weight, lm.final_norm.bias)
    logits = lm(ids)
    assert logits.shape == (2, T, V)
    torch.testing.assert_close(logits, x @ lm.head.weight.T, rtol=1e-12, atol=1e-12)
    assert all(isinstance(b, TransformerBlock) and b.norm == norm and b.causal for b in lm.blocks)


def test_embedding_and_final_norm_follow_the_placement_and_can_be_overridden():
    assert EMBED_NORM_DEFAULT == {"pre": False, "post": False, "peri": True}
    assert FINAL_NORM_DEFAULT == {"pre": True, "post": False, "peri": True}
    for norm in ("pre", "post", "peri"):
        lm = _lm(norm)
        assert (lm.embed_norm is not None) == EMBED_NORM_DEFAULT[norm]
        assert (lm.final_norm is not None) == FINAL_NORM_DEFAULT[norm]
    lm = _lm("peri", embed_norm=False, final_norm=False, norm_layer=nn.RMSNorm)
    assert lm.embed_norm is None and lm.final_norm is None
    assert isinstance(lm.blocks[0].attn_out_norm, nn.RMSNorm)
    assert isinstance(_lm("post", final_norm=True, norm_layer="rmsnorm").final_norm, nn.RMSNorm)


def test_initialization_and_weight_tying():
    lm = _lm("pre", init_std=0.05)
    assert abs(lm.tok_emb.weight.std().item() - 0.05) < 0.01
    assert lm.blocks[0].mlp.fc1.bias.abs().sum() == 0
    assert torch.equal(lm.final_norm.weight, torch.ones(D))
    tied = _lm("peri", tie_weights=True)
    assert tied.head.weight is tied.tok_emb.weight
    n_untied = sum(p.numel() for p in _lm("peri").parameters())
    assert n_untied - sum(p.numel() for p in tied.parameters()) == V * D


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_lm_is_causal_and_all_parameters_get_gradients(norm):
    lm = _lm(norm)
    ids = _ids()
    ids2 = ids.clone()
    ids2[:, 5:] = (ids2[:, 5:] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(lm(ids2)[:, :5], lm(ids)[:, :5], rtol=0, atol=1e-6)
    logits = lm(ids[:, :-1])  # shorter than max_seq_len is fine
    F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
    for name, p in lm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_a_few_steps_of_training_lower_the_loss():
    lm = _lm("peri")
    ids = _ids(b=4)
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(lm(ids[:, :-1]).reshape(-1, V), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]  # memorizes the 4 sequences


@pytest.mark.parametrize("kwargs, arg", [
    ({"norm": "sandwich"}, "norm"), ({"vocab_size": 0}, "vocab_size"), ({"n_layers": 0}, "n_layers"),
    ({"max_seq_len": 0}, "max_seq_len"), ({"embed_norm": 1}, "embed_norm"), ({"final_norm": "yes"}, "final_norm"),
    ({"tie_weights": None}, "tie_weights"), ({"init_std": 0.0}, "init_std"), ({"norm_layer": "ln"}, "norm_layer"),
    ({"n_heads": 5}, "n_heads"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    args = {"vocab_size": V, "d_model": D, "n_heads": H, "n_layers": L, "max_seq_len": T, **kwargs}
    with pytest.raises(ValueError, match=rf"^Invalid {arg}: .*accepted"):
        TransformerLM(**args)


def test_bad_ids_name_ids():
    lm = _lm()
    with pytest.raises(ValueError, match="Invalid ids: .*max_seq_len=9"):
        lm(_ids(t=T + 1))
    with pytest.raises(ValueError, match="Invalid ids"):
        lm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="Invalid ids"):
        lm(torch.zeros(6, dtype=torch.long))
