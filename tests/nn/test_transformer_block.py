"""TransformerBlock: each placement equals the Peri-LN paper's equation (arXiv 2502.02732, Figure 2), written out
here by hand; pre/post equal torch's nn.TransformerEncoderLayer; causal masking, gradients, torch.compile, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.nn import TransformerBlock
from gradwise.registry import get

D, H, FF, B, T = 16, 4, 40, 3, 7
NORMS = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


def _block(norm, norm_layer=nn.LayerNorm, seed=0, **kw):
    torch.manual_seed(seed)
    blk = TransformerBlock(D, H, FF, norm=norm, norm_layer=norm_layer, **kw)
    with torch.no_grad():  # non-trivial norm scales and shifts, so a swapped norm cannot pass unnoticed
        for name, p in blk.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return blk


# ------------------------------------------------------------ the paper's equations, by hand


def _norm(x, layer):
    """LayerNorm or RMSNorm written out: (x - mean)/sqrt(var + eps) * g + b, or x/sqrt(mean(x^2) + eps) * g."""
    if isinstance(layer, nn.LayerNorm):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias
    eps = torch.finfo(x.dtype).eps if layer.eps is None else layer.eps
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * layer.weight


def _attention(x, blk, causal=True):
    """softmax(Q K^T / sqrt(d_h) + mask) V per head, heads concatenated, then the output projection."""
    b, t, d = x.shape
    dh = d // H
    qkv = x @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    heads = []
    for h in range(H):
        sl = slice(h * dh, (h + 1) * dh)
        scores = q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(dh)
        if causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[..., sl])
    return torch.cat(heads, -1) @ blk.attn.out.weight.T + blk.attn.out.bias


def _mlp(x, blk, act=F.gelu):
    return act(x @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _paper(x, blk, norm, causal=True):
    """Post-LN: x_{l+1} = Norm(x_l + Module(x_l)); Pre-LN: x_l + Module(Norm(x_l));
    Peri-LN: x_l + Norm(Module(Norm(x_l))): attention, then MLP, each with its own norms."""
    for module, sub in ((lambda z: _attention(z, blk, causal), "attn"), (lambda z: _mlp(z, blk), "mlp")):
        n_in, n_out, n_res = (getattr(blk, f"{sub}_{w}_norm") for w in ("in", "out", "res"))
        if norm == "post":
            x = _norm(x + module(x), n_res)
        elif norm == "pre":
            x = x + module(_norm(x, n_in))
        else:
            x = x + _norm(module(_norm(x, n_in)), n_out)
    return x


@pytest.mark.parametrize("norm_layer", list(NORMS))
@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_each_placement_equals_the_papers_equation(norm, norm_layer):
    blk = _block(norm, NORMS[norm_layer])
    x = torch.randn(B, T, D, dtype=torch.float64) * 2.0
    blk = blk.double()
    torch.testing.assert_close(blk(x), _paper(x, blk, norm), rtol=1e-10, atol=1e-10)
    nc = _block(norm, NORMS[norm_layer], causal=False).double()
    torch.testing.assert_close(nc(x), _paper(x, nc, norm, causal=False), rtol=1e-10, atol=1e-10)


def test_string_norm_layer_names_build_the_same_layers():
    assert isinstance(TransformerBlock(D, H, FF, norm_layer="rmsnorm").attn_in_norm, nn.RMSNorm)
    assert isinstance(TransformerBlock(D, H, FF, norm_layer="layernorm").mlp_out_norm, nn.LayerNorm)


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_norms_sit_where_the_placement_puts_them(norm):
    blk = TransformerBlock(D, H, FF, norm=norm)
    present = {f"{s}_{w}_norm" for s in ("attn", "mlp") for w in ("in", "out", "res")
               if getattr(blk, f"{s}_{w}_norm") is not None}
    where = {"pre": {"in"}, "post": {"res"}, "peri": {"in", "out"}}[norm]
    assert present == {f"{s}_{w}_norm" for s in ("attn", "mlp") for w in where}
    n_norm_params = sum(p.numel() for n, p in blk.named_parameters() if "norm" in n)
    assert n_norm_params == len(present) * 2 * D  # each its own LayerNorm weight and bias


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_pre_and_post_equal_torch_transformer_encoder_layer(norm):
    torch.manual_seed(1)
    blk = _block(norm, activation="relu")
    ref = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, activation="relu", batch_first=True,
                                     norm_first=norm == "pre")
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(blk.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(blk.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(blk.attn.out.weight)
        ref.self_attn.out_proj.bias.copy_(blk.attn.out.bias)
        for ours, theirs in ((blk.mlp.fc1, ref.linear1), (blk.mlp.fc2, ref.linear2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        w = "in" if norm == "pre" else "res"
        for sub, theirs in (("attn", ref.norm1), ("mlp", ref.norm2)):
            theirs.load_state_dict(getattr(blk, f"{sub}_{w}_norm").state_dict())
    x = torch.randn(B, T, D)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    torch.testing.assert_close(blk(x), ref(x, src_mask=mask, is_causal=True), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ shapes, masking, gradients, dropout


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_causal_block_never_looks_ahead(norm):
    blk = _block(norm).eval()
    x = torch.randn(2, T, D)
    y = blk(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, T - 4, D)  # change the future only
    torch.testing.assert_close(blk(x2)[:, :4], y[:, :4], rtol=0, atol=1e-6)
    assert not torch.allclose(blk(x2)[:, 4:], y[:, 4:])
    bidir = _block(norm, causal=False).eval()
    assert not torch.allclose(bidir(x2)[:, :4], bidir(x)[:, :4])


@pytest.mark.parametrize("norm", ["pre", "post", "peri"])
def test_gradients_reach_every_parameter_and_the_input(norm):
    blk = _block(norm)
    x = torch.randn(B, T, D, requires_grad=True)
    blk(x).pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dropout_acts_on_each_branch_before_the_residual_add():
    blk = _block("peri", dropout=0.5)
    x = torch.randn(B, T, D, dtype=torch.float64)
    blk = blk.double()
    torch.testing.assert_close(blk.eval()(x), _paper(x, blk, "peri"))  # eval: no dropout
    blk.train()
    torch.manual_seed(5)
    got = blk(x)
    torch.manual_seed(5)  # the same masks, drawn in the same order: attention branch, then MLP branch
    h = x + F.dropout(_norm(_attention(_norm(x, blk.attn_in_norm), blk), blk.attn_out_norm), 0.5)
    ref = h + F.dropout(_norm(_mlp(_norm(h, blk.mlp_in_norm), blk), blk.mlp_out_norm), 0.5)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("norm, backend", [("peri", "inductor"), ("pre", "aot_eager"), ("post", "aot_eager")])
def test_torch_compile_runs_the_block_and_matches_eager(norm, backend):
    torch._dynamo.reset()
    blk = _block(norm)
    x = torch.randn(B, T, D)
    compiled = torch.compile(blk, backend=backend, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    grads = {n: p.grad.clone() for n, p in blk.named_parameters()}
    blk.zero_grad()
    y_eager = blk(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-5)
    for n, p in blk.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ------------------------------------------------------------ errors and the record


@pytest.mark.parametrize("kwargs, arg", [
    ({"norm": "mid"}, "norm"), ({"norm": None}, "norm"), ({"norm_layer": 3}, "norm_layer"),
    ({"norm_layer": "batchnorm"}, "norm_layer"), ({"norm_layer": lambda d: 1.0}, "norm_layer"),
    ({"dropout": 1.0}, "dropout"), ({"attn_dropout": -0.1}, "attn_dropout"), ({"causal": 1}, "causal"),
    ({"activation": "tanh"}, "activation"), ({"n_heads": 3}, "n_heads"), ({"d_ff": 0}, "d_ff"),
    ({"qk_norm": "yes"}, "qk_norm"),
])
def test_bad_arguments_name_the_argument(kwargs, arg):
    args = {"d_model": D, "n_heads": H, "d_ff": FF, **kwargs}
    with pytest.raises(ValueError, match=rf"^Invalid {arg}: .*accepted"):
        TransformerBlock(**args)


def test_bad_input_shape_names_x():
    with pytest.raises(ValueError, match=r"Invalid x: shape \(3, 8\)"):
        TransformerBlock(D, H, FF)(torch.randn(3, 8))
    with pytest.raises(ValueError, match="Invalid x"):
        TransformerBlock(D, H, FF)(torch.randn(2, 3, D + 1))


def test_record_is_a_module_citing_the_paper():
    rec = get("PeriLN")
    assert rec.kind == "module" and rec.arxiv == "2502.02732" and rec.code is None and rec.family == "nn"
    assert rec.load() is TransformerBlock


# ------------------------------------------------------------ qk-layernorm (Wortsman et al. 2023, §3.1.1)

@pytest.mark.parametrize("norm", ["pre", "peri"])
def test_qk_norm_block_attention_equals_qknorm_attention_with_the_same_weights(norm):
    """The block's qk-layernorm is gradwise.nn.QKNormAttention's: same projections, same LNs -> same output."""
    from gradwise.nn import QKNormAttention

    blk = _block(norm, qk_norm=True)
    with torch.no_grad():
        blk.attn.q_norm.weight.copy_(torch.rand(D // H) + 0.5)
        blk.attn.k_norm.weight.copy_(torch.rand(D // H) + 0.5)
    ref = QKNormAttention(D, H, batch_first=True)
    with torch.no_grad():
        for lin, w, b in zip((ref.q_proj, ref.k_proj, ref.v_proj), blk.attn.qkv.weight.split(D),
                             blk.attn.qkv.bias.split(D)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        ref.out_proj.weight.copy_(blk.attn.out.weight)
        ref.out_proj.bias.copy_(blk.attn.out.bias)
        ref.q_norm.weight.copy_(blk.attn.q_norm.weight)
        ref.k_norm.weight.copy_(blk.attn.k_norm.weight)
    x = torch.randn(B, T, D)
    h = blk.attn_in_norm(x)
    got = blk.attn(h)
    want = ref(h, h, h, need_weights=False, is_causal=True)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_qk_norm_bounds_the_attention_logits_where_plain_attention_does_not():
    """With huge query/key weights the plain block's logits blow up; qk-layernorm caps them at
    sqrt(d_h) * max|g_q| * max|g_k| (here sqrt(d_h), unit LN scales)."""
    x = torch.randn(B, T, D)
    for qk_norm in (False, True):
        blk = TransformerBlock(D, H, FF, norm="pre", qk_norm=qk_norm)
        with torch.no_grad():
            blk.attn.qkv.weight[:2 * D].mul_(100)
        q, k = blk.attn.project_qk(x, x)
        zmax = (q @ k.transpose(-1, -2) / math.sqrt(D // H)).abs().max().item()
        if qk_norm:
            assert zmax <= math.sqrt(D // H) + 1e-4
            assert blk.attn.q_norm.bias is None and blk.attn.q_norm.weight.shape == (D // H,)
        else:
            assert zmax > 10 * math.sqrt(D // H)
    assert "qk_norm=True" in repr(blk)


def test_peri_output_norms_sit_on_the_branch_so_the_residual_path_is_an_identity():
    """Peri-LN's output norm (position B) is applied before the residual add: with both output norms
    silenced (scale 0, shift 0) the block returns its input unchanged; a norm after the add (position C)
    would return zeros instead."""
    blk = _block("peri")
    with torch.no_grad():
        for n in (blk.attn_out_norm, blk.mlp_out_norm):
            n.weight.zero_()
            n.bias.zero_()
    x = torch.randn(B, T, D)
    torch.testing.assert_close(blk(x), x)
