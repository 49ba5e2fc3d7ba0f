"""load_adapter: save -> fresh base model -> load_adapter gives identical outputs for DynMoLE and DiffoRA; a plain
LoRA adapter passes through to PEFT; bad folders and unknown gradwise adapters are refused."""
import json

import pytest
import torch
from torch import nn

from gradwise.peft import DiffoRAConfig, DynMoLEConfig, get_diffora_model, get_dynmole_model, load_adapter

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead on a shared CPU


def base(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def randomize(m):
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("kind", ["dynmole", "diffora", "lora"])
def test_save_fresh_model_load_adapter_identical_outputs(tmp_path, kind):
    if kind == "dynmole":
        m = get_dynmole_model(base(), DynMoLEConfig(r=2, lora_alpha=4.0, target_modules={"0", "2"},
                                                    num_experts=3, top_p=0.6))
        layer_name = "DynMoLELinear"
    elif kind == "diffora":
        m = get_diffora_model(base(), DiffoRAConfig(r=2, lora_alpha=4.0, target_modules=["0", "2"]))
        layer_name = "DiffoRALinear"
    else:
        m = peft.get_peft_model(base(), peft.LoraConfig(r=2, target_modules=["0", "2"]))
        layer_name = "Linear"
    randomize(m)
    x = torch.randn(2, 5, 8)
    y = m(x)
    m.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved.get("gradwise_adapter") or {}).get("method") == (None if kind == "lora" else kind)
    m2 = load_adapter(base(), tmp_path)
    assert type(m2.base_model.model[0]).__name__ == layer_name
    torch.testing.assert_close(m2(x), y, rtol=0, atol=0)
    assert not any(p.requires_grad for p in m2.parameters())  # inference mode unless is_trainable
    if kind == "dynmole":
        assert m2.base_model.model[0].dynmole_config.top_p == 0.6
        # plain PEFT loading builds LoRA layers without the router: the outputs differ
        with pytest.warns(UserWarning):
            m3 = peft.PeftModel.from_pretrained(base(), str(tmp_path))
        assert not torch.allclose(m3(x), y)


def test_bad_folder_and_unknown_method(tmp_path):
    with pytest.raises(ValueError, match="adapter_config.json"):
        load_adapter(base(), tmp_path)
    m = get_diffora_model(base(), DiffoRAConfig(r=2, target_modules=["0"]))
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    cfg["gradwise_adapter"]["method"] = "nope"
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'nope' is unknown"):
        load_adapter(base(), tmp_path)
