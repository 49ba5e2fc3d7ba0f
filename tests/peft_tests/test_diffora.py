"""DiffoRA as a PEFT custom LoRA layer: the gated update, the DAM learning which module matters, discretisation,
training under get_peft_model, save/reload, merge, bad input."""
import pytest
import torch
from torch import nn

from gradwise.peft import (DiffoRAConfig, diffora_discretize, diffora_gates, diffora_parameter_groups,
                           get_diffora_model, load_adapter)

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead on a shared CPU


class TwoBranch(nn.Module):
    """y = a(x[:, :6]) + b(x[:, 6:]): two modules whose adaptation matters independently."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x):
        return self.a(x[..., :6]) + self.b(x[..., 6:])


def make(seed=0, **kw):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    cfg = DiffoRAConfig(r=2, lora_alpha=4.0, target_modules=["0", "2"], **kw)
    return get_diffora_model(base, cfg), cfg


def test_relaxed_forward_is_sigmoid_gated_lora_and_gate_gets_its_gradient():
    m, cfg = make(gate_init=0.3)
    layer = m.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
    x = torch.randn(3, 8, dtype=torch.float64)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    delta = x @ a.T @ b.T * (cfg.lora_alpha / cfg.r)
    g = torch.sigmoid(torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(layer(x), layer.base_layer(x) + g * delta, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(3, 16, dtype=torch.float64)
    layer(x).backward(grad_out)
    # d/dγ of σ(γ)·<grad_out, delta> = σ'(γ)·<grad_out, delta>
    torch.testing.assert_close(layer.lora_gate["default"].grad, g * (1 - g) * (grad_out * delta).sum(),
                               rtol=1e-10, atol=1e-12)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "base_model.model.0.lora_gate.default" in names and not any("base_layer" in n for n in names)
    assert diffora_gates(m) == pytest.approx({"base_model.model.0": float(g), "base_model.model.2": float(g)})


def test_dam_learns_the_module_that_needs_adapting_and_discretize_keeps_it():
    torch.manual_seed(0)
    base = TwoBranch().double()
    target = TwoBranch().double()
    target.load_state_dict(base.state_dict())
    with torch.no_grad():  # only branch a differs from the pretrained model
        target.a.weight.add_(torch.randn(4, 6, dtype=torch.float64) * 0.5)
    m = get_diffora_model(base, DiffoRAConfig(r=2, lora_alpha=2.0, target_modules=["a", "b"], select_ratio=0.5))
    lora, gates = diffora_parameter_groups(m)
    assert len(gates) == 2 and len(lora) == 4
    opt = torch.optim.Adam([{"params": lora, "lr": 5e-2}, {"params": gates, "lr": 1e-1}])
    for _ in range(50):
        x = torch.randn(32, 12, dtype=torch.float64)
        loss = (m(x) - target(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dam = diffora_gates(m)
    # the gate of the module whose adaptation lowers the loss opens, the other closes (seeds 0-3: a 0.63-0.74,
    # b 0.13-0.22)
    assert dam["base_model.model.a"] > 0.6 and dam["base_model.model.b"] < 0.4
    kept = diffora_discretize(m)
    assert kept == ["base_model.model.a"]
    assert diffora_gates(m) == {"base_model.model.a": 1.0, "base_model.model.b": 0.0}
    layer_a, layer_b = m.base_model.model.a, m.base_model.model.b
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer_b(x), layer_b.base_layer(x), rtol=0, atol=0)
    la, lb = layer_a.lora_A["default"].weight, layer_a.lora_B["default"].weight
    torch.testing.assert_close(layer_a(x), layer_a.base_layer(x) + x @ la.T @ lb.T, rtol=1e-12, atol=1e-12)
    assert not layer_a.lora_gate["default"].requires_grad and lb.requires_grad
    assert not layer_b.lora_A["default"].weight.requires_grad
    with pytest.raises(ValueError, match="already discretised"):
        diffora_discretize(m)


def test_discretize_ratio_ties_and_rounding():
    m, _ = make()
    with torch.no_grad():
        m.base_model.model[2].lora_gate["default"].fill_(1.0)
    assert diffora_discretize(m, select_ratio=0.4) == ["base_model.model.2"]  # round(0.8) = 1
    m, _ = make()  # equal gates: module order breaks the tie
    assert diffora_discretize(m, select_ratio=0.5) == ["base_model.model.0"]
    m, _ = make()
    assert diffora_discretize(m, select_ratio=1.0) == ["base_model.model.0", "base_model.model.2"]


def test_save_reload_round_trip_and_merge(tmp_path):
    m, cfg = make(gate_init=-0.7)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_()
    x = torch.randn(4, 8, dtype=torch.float64)
    m.save_pretrained(tmp_path / "relaxed")
    diffora_discretize(m, select_ratio=0.5)
    y = m(x)
    m.save_pretrained(tmp_path / "discrete")
    for sub, ref in (("discrete", y), ("relaxed", None)):
        torch.manual_seed(0)  # the same base weights as make()'s
        plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
        m2 = load_adapter(plain, tmp_path / sub)
        assert type(m2.base_model.model[0]).__name__ == "DiffoRALinear"
        if ref is not None:
            torch.testing.assert_close(m2(x), ref, rtol=0, atol=0)
            assert diffora_gates(m2) == {"base_model.model.0": 1.0, "base_model.model.2": 0.0}
        else:
            assert diffora_gates(m2) == pytest.approx({"base_model.model.0": float(torch.sigmoid(torch.tensor(-0.7))),
                                                       "base_model.model.2": float(torch.sigmoid(torch.tensor(-0.7)))})
            y2 = m2(x)
            merged = m2.merge_and_unload()
            torch.testing.assert_close(merged(x), y2, rtol=1e-12, atol=1e-12)


def test_trains_under_get_peft_model_after_reload(tmp_path):
    m, _ = make()
    m.save_pretrained(tmp_path)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()
    m2 = load_adapter(plain, tmp_path, is_trainable=True)
    opt = torch.optim.SGD([p for p in m2.parameters() if p.requires_grad], lr=0.1)
    x, t = torch.randn(32, 8, dtype=torch.float64), torch.randn(32, 4, dtype=torch.float64)
    losses = []
    for _ in range(8):
        loss = (m2(x) - t).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert m2.base_model.model[0].lora_gate["default"].grad is not None


def test_bad_input():
    with pytest.raises(ValueError, match="select_ratio"):
        DiffoRAConfig(select_ratio=0.0)
    with pytest.raises(ValueError, match="select_ratio"):
        DiffoRAConfig(select_ratio=1.5)
    with pytest.raises(ValueError, match="r"):
        DiffoRAConfig(r=0)
    with pytest.raises(ValueError, match="config"):
        get_diffora_model(nn.Linear(2, 2), dict(r=2))
    with pytest.raises(ValueError, match="no DiffoRA layer"):
        diffora_gates(nn.Linear(2, 2))
    m, _ = make()
    with pytest.raises(ValueError, match="select_ratio"):
        diffora_discretize(m, select_ratio=-0.1)
    assert set(diffora_gates(m).values()) == {0.5}  # the refused call left the DAM relaxed
    with pytest.raises(ValueError, match="adapter_names"):
        m(torch.randn(2, 8, dtype=torch.float64), adapter_names=["default", "default"])
