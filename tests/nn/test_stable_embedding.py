"""StableEmbedding against bitsandbytes 0.50.2's bnb.nn.StableEmbedding, and its 32-bit optimizer state."""
import math

import pytest
import torch

import gradwise.optim as go
from gradwise.nn import StableEmbedding
from gradwise.optim.state_codecs import STATE_BITS_ATTR
from gradwise.registry import get


def test_forward_equals_bitsandbytes_with_the_same_weights():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    ref = bnb.nn.StableEmbedding(100, 64, padding_idx=3)
    ours = StableEmbedding(100, 64, padding_idx=3)
    with torch.no_grad():
        ref.norm.weight.uniform_(0.5, 1.5)
        ref.norm.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())  # same keys: weight, norm.weight, norm.bias
    idx = torch.randint(0, 100, (7, 9))
    idx[0, 0] = 3
    out, expected = ours(idx), ref(idx)
    assert torch.equal(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    assert torch.equal(ours.weight.grad, ref.weight.grad)


def test_init_is_xavier_uniform_and_padding_row_is_zero():
    torch.manual_seed(1)
    emb = StableEmbedding(400, 300, padding_idx=0)
    bound = math.sqrt(6 / (400 + 300))
    w = emb.weight.detach()
    assert torch.equal(w[0], torch.zeros(300))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(float(w[1:].var()) - bound ** 2 / 3) < 0.05 * bound ** 2 / 3  # U(-a, a) has variance a^2/3
    out = emb(torch.tensor([[1, 2, 3]]))
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 3), atol=1e-5, rtol=0)  # LayerNorm after lookup


@pytest.mark.parametrize("state_bits", [8, 16])
def test_weight_state_stays_32bit_under_quantized_state(state_bits):
    torch.manual_seed(2)
    emb = StableEmbedding(1000, 64)
    head = torch.nn.Linear(64, 128)
    assert getattr(emb.weight, STATE_BITS_ATTR) == 32
    opt = go.AdamW([*emb.parameters(), *head.parameters()], lr=1e-3, state_bits=state_bits)
    for _ in range(2):
        opt.zero_grad()
        head(emb(torch.randint(0, 1000, (16,)))).square().mean().backward()
        opt.step()
    st = opt.state[emb.weight]
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float32 for k, x in st.items() if k != "step")
    quantized = opt.state[head.weight]["exp_avg"]  # 8192 entries: quantized
    assert isinstance(quantized, tuple) if state_bits == 8 else quantized.dtype == torch.bfloat16


def test_mark_survives_moving_the_module():
    emb = StableEmbedding(10, 4).to(torch.float64)
    assert emb.weight.dtype == torch.float64 and getattr(emb.weight, STATE_BITS_ATTR) == 32


def test_bad_sizes_and_registry_record():
    with pytest.raises(ValueError, match="Invalid num_embeddings: 0"):
        StableEmbedding(0, 4)
    with pytest.raises(ValueError, match="Invalid embedding_dim"):
        StableEmbedding(4, 2.5)
    rec = get("StableEmbedding")
    assert rec.kind == "module" and rec.arxiv == "2110.02861" and rec.family == "nn"
