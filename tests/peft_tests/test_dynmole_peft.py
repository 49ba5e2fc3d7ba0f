"""DynMoLE as a PEFT custom LoRA layer: forward equals dynmole_delta, router trains and saves, reloads, bad input."""
import pytest
import torch
from torch import nn

from gradwise.peft import DynMoLEConfig, dynmole_delta, dynmole_model_router_loss, get_dynmole_model

peft = pytest.importorskip("peft")


def make(seed=0):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    cfg = DynMoLEConfig(r=2, lora_alpha=4.0, target_modules=["0", "2"], num_experts=3)
    return get_dynmole_model(base, cfg), cfg


def test_layer_forward_is_dynmole_delta_and_router_trains(tmp_path):
    m, cfg = make()
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"base_model.model.0.lora_router.default", "base_model.model.2.lora_router.default"} <= names
    assert not any("base_layer" in n for n in names)
    layer = m.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    a = layer.lora_A["default"].weight.reshape(3, 2, 8)
    b = layer.lora_B["default"].weight.reshape(16, 3, 2).permute(1, 0, 2)
    ref = layer.base_layer(x) + dynmole_delta(x, layer.lora_router["default"], a, b, scaling=cfg.lora_alpha / cfg.r,
                                              **cfg.route)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)
    y = m(x)
    (y.pow(2).mean() + dynmole_model_router_loss(m, torch.ones(2, 5))).backward()
    assert layer.lora_router["default"].grad.abs().sum() > 0
    assert layer.dynmole_logits["default"].shape == (10, 3)
    m.save_pretrained(tmp_path)
    from safetensors.torch import load_file
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.0.lora_router" in saved
    m2, _ = make(seed=1)  # other random init, same base weights below
    m2.base_model.model[0].base_layer.load_state_dict(layer.base_layer.state_dict())
    m2.base_model.model[2].base_layer.load_state_dict(m.base_model.model[2].base_layer.state_dict())
    peft.set_peft_model_state_dict(m2, saved)
    torch.testing.assert_close(m2(x), m(x))


def test_bad_config_and_merge():
    with pytest.raises(ValueError, match="num_experts"):
        DynMoLEConfig(num_experts=0)
    with pytest.raises(ValueError, match="top_p"):
        DynMoLEConfig(top_p=0.0)
    with pytest.raises(ValueError, match="entropy_index"):
        DynMoLEConfig(entropy_index=0.0)
    with pytest.raises(ValueError, match="config"):
        get_dynmole_model(nn.Linear(2, 2), dict(r=2))
    m, _ = make()
    with pytest.raises(ValueError, match="merged"):
        m.merge_and_unload()
    with pytest.raises(ValueError, match="forward"):
        dynmole_model_router_loss(m)
