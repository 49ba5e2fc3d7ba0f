"""QKNormAttention (qk-layernorm): the math against a direct computation, nn.MultiheadAttention's conventions
(with the norms removed it is that layer), the logit bound, errors, compile."""
import math

import pytest
import torch
from torch import nn

from gradwise.nn import QKNormAttention
from gradwise.registry import get

torch.manual_seed(0)


def _direct(attn, x_bm, mask=None):
    """Transcription of the math: per-head LayerNorm over d_h of the projected queries and keys, then softmax
    attention with 1/sqrt(d_h); x_bm is batch-major [B, L, E]."""
    h, dh = attn.num_heads, attn.head_dim
    b, length, _ = x_bm.shape

    def heads(t):
        return t.reshape(b, length, h, dh).permute(0, 2, 1, 3)

    q = heads(x_bm @ attn.q_proj.weight.T + attn.q_proj.bias)
    k = heads(x_bm @ attn.k_proj.weight.T + attn.k_proj.bias)
    v = heads(x_bm @ attn.v_proj.weight.T + attn.v_proj.bias)
    mu_q, var_q = q.mean(-1, keepdim=True), q.var(-1, unbiased=False, keepdim=True)
    mu_k, var_k = k.mean(-1, keepdim=True), k.var(-1, unbiased=False, keepdim=True)
    q = (q - mu_q) / torch.sqrt(var_q + attn.q_norm.eps) * attn.q_norm.weight
    k = (k - mu_k) / torch.sqrt(var_k + attn.k_norm.eps) * attn.k_norm.weight
    z = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(dh)
    if mask is not None:
        z = z.masked_fill(mask, float("-inf"))
    w = torch.softmax(z, -1)
    out = torch.einsum("bhqk,bhkd->bqhd", w, v).reshape(b, length, h * dh)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias, w, z


@pytest.mark.parametrize("batch_first", [True, False])
def test_matches_direct_computation(batch_first):
    attn = QKNormAttention(24, 3, batch_first=batch_first).double()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    xin = x if batch_first else x.transpose(0, 1)
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    ref_out, ref_w, _ = _direct(attn, x, causal)
    for need_weights in (True, False):
        out, w = attn(xin, xin, xin, need_weights=need_weights, is_causal=True)
        out = out if batch_first else out.transpose(0, 1)
        torch.testing.assert_close(out, ref_out)
        if need_weights:
            torch.testing.assert_close(w, ref_w.mean(1))
    _, w = attn(xin, xin, xin, attn_mask=causal, average_attn_weights=False)
    torch.testing.assert_close(w, ref_w)


def test_default_norm_is_bias_free_learnable_scale_eps_1e_6():
    attn = QKNormAttention(16, 2)
    assert attn.q_norm.normalized_shape == (8,) and attn.q_norm.eps == 1e-6
    assert attn.q_norm.weight is not None and attn.q_norm.bias is None and attn.k_norm.bias is None
    with_bias = QKNormAttention(16, 2, norm_bias=True, eps=1e-5)
    assert with_bias.k_norm.bias is not None and with_bias.k_norm.eps == 1e-5
    assert QKNormAttention(16, 2, norm_affine=False).q_norm.weight is None


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", ["none", "bool", "float", "padding", "both", "batched_mask"])
def test_without_the_norms_it_is_nn_multiheadattention(batch_first, case):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).double().eval()
    attn = QKNormAttention.from_multihead_attention(mha).eval()
    attn.q_norm, attn.k_norm = nn.Identity(), nn.Identity()
    n, lq, lk = 3, 5, 6
    q = torch.randn(n, lq, 16, dtype=torch.float64)
    kv = torch.randn(n, lk, 16, dtype=torch.float64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    kw = {}
    bool_mask = torch.rand(lq, lk) < 0.3
    bool_mask[:, 0] = False
    pad = torch.zeros(n, lk, dtype=torch.bool)
    pad[1, -2:] = True
    if case in ("bool", "both"):
        kw["attn_mask"] = bool_mask
    if case == "float":
        kw["attn_mask"] = torch.randn(lq, lk, dtype=torch.float64)
    if case in ("padding", "both"):
        kw["key_padding_mask"] = pad
    if case == "batched_mask":
        kw["attn_mask"] = torch.randn(n * 4, lq, lk, dtype=torch.float64)
    for avg in (True, False):
        ref = mha(q, kv, kv, average_attn_weights=avg, **kw)
        got = attn(q, kv, kv, average_attn_weights=avg, **kw)
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
    torch.testing.assert_close(attn(q, kv, kv, need_weights=False, **kw)[0], mha(q, kv, kv, **kw)[0])


def test_logits_stay_bounded_when_the_weights_grow():
    attn = QKNormAttention(32, 4, batch_first=True, bias=False)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        attn.q_proj.weight.mul_(1e3)
        attn.k_proj.weight.mul_(1e3)
    q, k = attn.project_qk(x, x)
    z = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)
    assert z.abs().max() <= math.sqrt(attn.head_dim) + 1e-4  # |<q,k>| <= ||q|| ||k|| = d_h for unit-scale LN
    assert torch.isfinite(attn(x, x, x)[0]).all()


def test_gradients_reach_the_norm_scales_and_compile():
    attn = QKNormAttention(16, 2, batch_first=True)
    x = torch.randn(2, 4, 16)
    attn(x, x, x)[0].square().sum().backward()
    assert attn.q_norm.weight.grad.abs().sum() > 0 and attn.k_norm.weight.grad.abs().sum() > 0
    fn = torch.compile(attn, backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x, x, x, need_weights=False)[0], attn(x, x, x, need_weights=False)[0])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Invalid num_heads"):
        QKNormAttention(10, 3)
    with pytest.raises(ValueError, match="Invalid embed_dim"):
        QKNormAttention(0, 1)
    with pytest.raises(ValueError, match="Invalid eps"):
        QKNormAttention(8, 2, eps=0.0)
    with pytest.raises(ValueError, match="Invalid dropout"):
        QKNormAttention(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match="Invalid batch_first"):
        QKNormAttention(8, 2, batch_first=1)
    attn = QKNormAttention(8, 2, batch_first=True)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="Invalid query"):
        attn(torch.randn(2, 3, 7), x, x)
    with pytest.raises(ValueError, match="Invalid key"):
        attn(x, torch.randn(3, 8), x)
    with pytest.raises(ValueError, match="Invalid value"):
        attn(x, x, torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="Invalid attn_mask"):
        attn(x, x, x, attn_mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Invalid key_padding_mask"):
        attn(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="Invalid mha"):
        QKNormAttention.from_multihead_attention(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid mha"):
        QKNormAttention.from_multihead_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_record():
    rec = get("QKNormAttention")
    assert rec.kind == "module" and rec.family == "nn" and rec.arxiv == "2309.14322"
