"""Bone (seed 252) as PEFT's MiSS-bat: forward and merge against W + W_blk·B + B in float64, merge/unmerge."""
import pytest
import torch

from gradwise.peft import bone_config

peft = pytest.importorskip("peft")


def block_affine(w, b):
    """Reference: W'[i, j] = W[i, j] + W[i, j] @ B[i] + B[i], blocks r x r, B one block per output block row."""
    r = b.shape[-1]
    out = w.clone()
    for i in range(w.shape[0] // r):
        for j in range(w.shape[1] // r):
            blk = w[i * r:(i + 1) * r, j * r:(j + 1) * r]
            out[i * r:(i + 1) * r, j * r:(j + 1) * r] = blk + blk @ b[i] + b[i]
    return out


def make(r=4, out_f=12, in_f=8, seed=0):
    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).double()
    w0 = base[0].weight.detach().clone()
    model = peft.get_peft_model(base, bone_config(r, target_modules=["0"]))
    model = model.double()
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.miss_block["default"].copy_(0.3 * torch.randn_like(layer.miss_block["default"]))
    return model, layer, w0


def test_config_is_miss_bat():
    cfg = bone_config(8, target_modules=["q_proj"])
    assert isinstance(cfg, peft.MissConfig) and cfg.init_weights == "bat" and cfg.r == 8


def test_starts_as_base_model():
    torch.manual_seed(1)
    base = torch.nn.Sequential(torch.nn.Linear(8, 12)).double()
    x = torch.randn(5, 8, dtype=torch.float64)
    y0 = base(x)
    model = peft.get_peft_model(base, bone_config(4, target_modules=["0"])).double()
    assert model.base_model.model[0].miss_block["default"].shape == (3, 4, 4)
    torch.testing.assert_close(model(x), y0, rtol=0, atol=0)


def test_forward_and_merge_match_block_affine():
    model, layer, w0 = make()
    b = layer.miss_block["default"].detach()
    w_ref = block_affine(w0, b)
    x = torch.randn(6, 8, dtype=torch.float64)
    y_ref = x @ w_ref.T + layer.base_layer.bias.detach()
    torch.testing.assert_close(model(x), y_ref, rtol=1e-12, atol=1e-12)
    # the affine map differs from W + B alone: the W_blk·B term matters
    assert (model(x) - (x @ block_affine(torch.zeros_like(w0), b).T + x @ w0.T)).abs().max() > 1e-3
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), y_ref, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    # PEFT inverts I + B in float32 even for float64 weights (torch.inverse(eye(float32) + B.float())), so the
    # round trip holds to float32 precision only (measured 8.7e-8 here)
    torch.testing.assert_close(layer.base_layer.weight.detach(), w0, rtol=0, atol=1e-6)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), w_ref, rtol=0, atol=1e-6)


def test_gradient_reaches_block():
    model, layer, _ = make(seed=2)
    x = torch.randn(6, 8, dtype=torch.float64)
    model(x).pow(2).sum().backward()
    g = layer.miss_block["default"].grad
    assert g is not None and g.abs().sum() > 0


def test_bad_input():
    with pytest.raises(ValueError, match="r"):
        bone_config(0)
    with pytest.raises(ValueError, match="init_weights"):
        bone_config(4, init_weights=True)


def test_without_peft_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"gradwise\[peft\]"):
        bone_config(4)
