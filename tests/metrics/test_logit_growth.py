"""AttentionLogitMonitor: its values against direct computations on small models (nn.MultiheadAttention in
every projection layout, masks, QKNormAttention; Hugging Face Llama and GPT-2 against q/k recomputed by hand),
hook removal, errors."""
import math

import pytest
import torch
from torch import nn

from gradwise.metrics import AttentionLogitMonitor, attention_logits
from gradwise.nn import QKNormAttention
from gradwise.registry import get

torch.manual_seed(0)


def _identity_mha(e, h, **kw):
    """q = k = v = x (identity projections, no bias): the logits are plain x_i . x_j / sqrt(d_h) per head."""
    mha = nn.MultiheadAttention(e, h, bias=False, **kw)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([torch.eye(e)] * 3))
    return mha


def test_identity_projection_gives_the_hand_computed_logit():
    e, h = 8, 2
    mha = _identity_mha(e, h, batch_first=True)
    x = torch.randn(3, 5, e)
    with AttentionLogitMonitor(mha) as mon:
        mha(x, x, x)
    dh = e // h
    direct = max((x[..., s:s + dh] @ x[..., s:s + dh].transpose(1, 2)).abs().max().item() / math.sqrt(dh)
                 for s in range(0, e, dh))
    assert mon.history == {"MultiheadAttention": [pytest.approx(direct, rel=1e-5)]}


def _direct_mha(mha, query, key, blocked=None):
    """Transcription of nn.MultiheadAttention's logits from its weights (sequence-first inputs)."""
    e, h = mha.embed_dim, mha.num_heads
    dh = e // h
    wq, wk = ((mha.in_proj_weight[:e], mha.in_proj_weight[e:2 * e]) if mha.in_proj_weight is not None
              else (mha.q_proj_weight, mha.k_proj_weight))
    bq, bk = (mha.in_proj_bias[:e], mha.in_proj_bias[e:2 * e]) if mha.in_proj_bias is not None else (0, 0)
    q = (query.transpose(0, 1) @ wq.T + bq).reshape(query.shape[1], query.shape[0], h, dh).permute(0, 2, 1, 3)
    k = (key.transpose(0, 1) @ wk.T + bk).reshape(key.shape[1], key.shape[0], h, dh).permute(0, 2, 1, 3)
    z = (q @ k.transpose(-1, -2) / math.sqrt(dh)).abs()
    if blocked is not None:
        z = z.masked_fill(blocked, -1.0)
    return z.max().item()


def test_transformer_encoder_per_layer_values_and_causal_mask():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    x = torch.randn(6, 2, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    inputs = {}
    for i, lay in enumerate(model.layers):
        lay.self_attn.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach()))
    with AttentionLogitMonitor(model) as mon:
        model(x, mask=causal, is_causal=True)
    blocked = torch.ones(6, 6, dtype=torch.bool).triu(1)
    for i, lay in enumerate(model.layers):
        got = mon.latest[f"layers.{i}.self_attn"]
        assert got == pytest.approx(_direct_mha(lay.self_attn, inputs[i], inputs[i], blocked), rel=1e-5)
        # the causal mask matters here: unmasked, the maximum may be larger, never smaller
        assert _direct_mha(lay.self_attn, inputs[i], inputs[i]) >= got - 1e-6
    assert mon.max() == max(mon.latest.values())


def test_separate_projections_kdim_bias_kv_and_padding():
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, add_bias_kv=True)
    q, k, v = torch.randn(4, 2, 8), torch.randn(6, 2, 5), torch.randn(6, 2, 3)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, :3] = True
    with AttentionLogitMonitor(mha) as mon:
        mha(q, k, v, key_padding_mask=pad)
    # transcribed: the bias_k key is appended (never masked)
    e, dh = 8, 4
    qq = (q.transpose(0, 1) @ mha.q_proj_weight.T + mha.in_proj_bias[:e]).reshape(2, 4, 2, dh).transpose(1, 2)
    kk = (k.transpose(0, 1) @ mha.k_proj_weight.T + mha.in_proj_bias[e:2 * e])
    kk = torch.cat([kk, mha.bias_k.reshape(1, 1, e).expand(2, 1, e)], 1).reshape(2, 7, 2, dh).transpose(1, 2)
    z = (qq @ kk.transpose(-1, -2) / math.sqrt(dh)).abs()
    blocked = torch.cat([pad, torch.zeros(2, 1, dtype=torch.bool)], 1)[:, None, None, :]
    assert mon.latest["MultiheadAttention"] == pytest.approx(z.masked_fill(blocked, -1).max().item(), rel=1e-5)


def test_qknorm_attention_through_its_project_qk():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = QKNormAttention(16, 2, batch_first=True)
            self.b = QKNormAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.b(self.a(x, x, x)[0], key=x, value=x, need_weights=False)[0]

    net = Net()
    with torch.no_grad():
        for m in (net.a, net.b):
            m.q_proj.weight.mul_(100)
    x = torch.randn(2, 5, 16)
    with AttentionLogitMonitor(net) as mon:
        net(x)
    h1 = net.a(x, x, x)[0]
    for name, (qin, kin) in {"a": (x, x), "b": (h1, x)}.items():
        q, k = getattr(net, name).project_qk(qin, kin)
        assert mon.latest[name] == pytest.approx(attention_logits(q, k).abs().max().item(), rel=1e-5)
        assert mon.latest[name] <= math.sqrt(8) + 1e-4  # qk-layernorm's bound at unit LN scale


def test_hooks_removed_on_close_and_every():
    mha = _identity_mha(8, 2)
    x = torch.randn(4, 2, 8)
    mon = AttentionLogitMonitor(mha, every=2)
    for _ in range(5):
        mha(x, x, x)
    assert len(mon.history["MultiheadAttention"]) == 3  # calls 1, 3, 5
    mon.close()
    assert not mha._forward_pre_hooks
    mha(x, x, x)
    assert len(mon.history["MultiheadAttention"]) == 3
    mon.reset()
    assert mon.history == {"MultiheadAttention": []} and math.isnan(mon.max())


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Invalid model"):
        AttentionLogitMonitor(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid model"):
        AttentionLogitMonitor("model")
    with pytest.raises(ValueError, match="Invalid every"):
        AttentionLogitMonitor(_identity_mha(4, 1), every=0)
    assert get("AttentionLogitMonitor").kind == "metric"


def test_causal_transformer_lm_blocks_read_through_project_qk_with_the_future_masked():
    """gradwise.nn.TransformerLM's attention (causal by construction, no is_causal argument): the monitor
    leaves out the logits of future keys, and reads qk-normalized ones when qk_norm=True."""
    from gradwise.nn import TransformerLM

    future = torch.ones(8, 8, dtype=torch.bool).triu(1)
    for qk_norm in (False, True):
        for seed in range(20):  # the first model whose largest logit is a future one, so the mask matters
            torch.manual_seed(seed)
            lm = TransformerLM(11, 16, 2, 2, 8, norm="pre", qk_norm=qk_norm, init_std=0.5)
            ids = torch.randint(0, 11, (1, 8))
            h = lm.blocks[0].attn_in_norm(lm.embed(ids))
            z = attention_logits(*lm.blocks[0].attn.project_qk(h, h)).abs()
            want = z.masked_fill(future, -1).max().item()
            if z.max().item() > want:
                break
        else:
            raise AssertionError("no seed put the largest logit in the future")
        with AttentionLogitMonitor(lm) as mon:
            lm(ids)
        assert sorted(mon.latest) == ["blocks.0.attn", "blocks.1.attn"]
        assert mon.latest["blocks.0.attn"] == pytest.approx(want, rel=1e-5)
        if qk_norm:
            assert want <= math.sqrt(8) + 1e-4


# ---- Hugging Face transformers attention (tiny models built from configs, nothing downloaded) ----

def _llama(impl, seed=0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=impl)
    return tr.LlamaForCausalLM(cfg)


def _gpt2(impl, seed=0):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = tr.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, attn_implementation=impl,
                        bos_token_id=0, eos_token_id=0)
    return tr.GPT2LMHeadModel(cfg)


def _inputs(model, names):
    """The hidden states entering each named attention layer (pre-hooks of our own, not the monitor's)."""
    seen, handles = {}, []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda m, a, kw, name=name: seen.__setitem__(name, (a[0] if a else kw["hidden_states"]).detach()),
            with_kwargs=True))
    return seen, handles


def _allowed(pad, length):
    """[B, 1, L, L]: key j allowed for query i when j <= i and j is not padding (right padding)."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return causal[None, None] & ~pad[:, None, None, :]


def _masked_max(z, allowed):
    return z.abs().masked_fill(~allowed, -1.0).max().item(), z.abs().max().item()


def _rope(x, theta=10000.0):
    """Llama's rotary embedding written out: pairs (i, i + d/2) rotated by position * theta^(-2i/d)."""
    d, length = x.shape[-1], x.shape[-2]
    ang = torch.arange(length, dtype=torch.float32)[:, None] * theta ** (-torch.arange(0, d, 2).float() / d)
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _ids_and_padding(batch=3, length=7):
    ids = torch.randint(0, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6:] = 0
    return ids, mask, mask == 0


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_llama_gqa_rope_padding_and_causal_match_a_hand_computation(impl):
    model = _llama(impl).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.mul_(4)  # logits large enough to tell layers and masks apart
    ids, mask, pad = _ids_and_padding()
    names = [f"model.layers.{i}.self_attn" for i in range(2)]
    seen, handles = _inputs(model, names)
    with torch.no_grad():
        want_logits = model(ids, attention_mask=mask).logits
        with AttentionLogitMonitor(model) as mon:
            assert model.config._attn_implementation != impl  # pointed at the monitor's wrapper
            got_logits = model(ids, attention_mask=mask).logits
    for h in handles:
        h.remove()
    assert model.config._attn_implementation == impl
    assert torch.equal(got_logits, want_logits)  # bit-identical: the original implementation ran unchanged
    assert sorted(mon.latest) == names
    mask_mattered = False
    for name in names:
        attn = model.get_submodule(name)
        x = seen[name]
        b, length, _ = x.shape
        q = _rope((x @ attn.q_proj.weight.T).reshape(b, length, 4, 8).transpose(1, 2))
        k = _rope((x @ attn.k_proj.weight.T).reshape(b, length, 2, 8).transpose(1, 2))
        k = torch.stack([k[:, 0], k[:, 0], k[:, 1], k[:, 1]], 1)  # GQA: query heads 0, 1 read key head 0
        want, unmasked = _masked_max(q @ k.transpose(-1, -2) / math.sqrt(8), _allowed(pad, length))
        assert mon.latest[name] == pytest.approx(want, rel=1e-5)
        mask_mattered |= unmasked > want * (1 + 1e-4)
    assert mask_mattered  # the causal/padding masks changed the answer for at least one layer


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_hf_gpt2_matches_a_hand_computation_with_padding(impl):
    model = _gpt2(impl).eval()
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(8)
    ids, mask, pad = _ids_and_padding()
    names = [f"transformer.h.{i}.attn" for i in range(2)]
    seen, handles = _inputs(model, names)
    with torch.no_grad():
        want_logits = model(ids, attention_mask=mask).logits
        with AttentionLogitMonitor(model) as mon:
            got_logits = model(ids, attention_mask=mask).logits
    for h in handles:
        h.remove()
    assert torch.equal(got_logits, want_logits) and model.config._attn_implementation == impl
    for name in names:
        attn = model.get_submodule(name)
        x = seen[name]
        b, length, e = x.shape
        qkv = x @ attn.c_attn.weight + attn.c_attn.bias  # Conv1D: weight is [in, out]
        q, k = (t.reshape(b, length, 4, 8).transpose(1, 2) for t in qkv[..., :2 * e].split(e, -1))
        want, _ = _masked_max(q @ k.transpose(-1, -2) / math.sqrt(8), _allowed(pad, length))
        assert mon.latest[name] == pytest.approx(want, rel=1e-5)


def test_hf_train_mode_backward_every_reset_and_close():
    model = _gpt2("sdpa").train()  # dropout 0.1 in attention and residuals: same seed, same masks
    ids, mask, _ = _ids_and_padding()

    def step():
        torch.manual_seed(1)
        model.zero_grad()
        loss = model(ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss0, grads0 = step()
    mon = AttentionLogitMonitor(model, every=2)
    for _ in range(3):
        loss1, grads1 = step()
    assert torch.equal(loss0, loss1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    assert {k: len(v) for k, v in mon.history.items()} == {"transformer.h.0.attn": 2, "transformer.h.1.attn": 2}
    assert mon.max() == max(mon.latest.values()) > 0
    mon.reset()
    assert mon.history == {"transformer.h.0.attn": [], "transformer.h.1.attn": []}
    mon.close()
    assert model.config._attn_implementation == "sdpa"
    step()
    assert mon.history == {"transformer.h.0.attn": [], "transformer.h.1.attn": []}


def test_hf_two_monitors_and_the_mask_free_reading():
    model = _llama("sdpa").eval()
    ids = torch.randint(0, 50, (2, 6))
    with AttentionLogitMonitor(model) as a:
        with AttentionLogitMonitor(model, use_masks=False) as b:
            model(ids)
        assert model.config._attn_implementation != "sdpa"  # still monitored by a
        model(ids)
    assert model.config._attn_implementation == "sdpa"
    assert len(a.history["model.layers.0.self_attn"]) == 2 and len(b.history["model.layers.0.self_attn"]) == 1
    for name in a.latest:  # without masks the maximum also covers future keys: never smaller
        assert b.latest[name] >= a.history[name][0] - 1e-6


def test_hf_unsupported_implementation_is_refused_untouched():
    model = _llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="Invalid model.*flash_attention_2"):
        AttentionLogitMonitor(model)
    assert model.config._attn_implementation == "flash_attention_2"
