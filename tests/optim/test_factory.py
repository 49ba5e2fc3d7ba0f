"""gradwise.optim.create / param_groups: optimizers by name, weight decay kept off biases and norms."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import gradwise.optim as go
from gradwise.optim import create, param_groups
from gradwise.optim.factory import decay_split, is_norm_module, optimizer_names, resolve
from gradwise.registry import methods

OPTIMIZER_RECORDS = [m for m in methods() if m.kind in ("optimizer", "optimizer-wrapper")]


class T5LayerNorm(nn.Module):
    """A norm from another library: recognized by its class name."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class Net(nn.Module):
    """Attribute names avoid 'norm' and 'bias' so that the type rules are what excludes the norm layers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.bn = nn.BatchNorm1d(6)
        self.gn = nn.GroupNorm(2, 6)
        self.rms = nn.RMSNorm(6)
        self.t5 = T5LayerNorm(6)
        self.norm_proj = nn.Linear(6, 6, bias=False)  # excluded by the name pattern "norm" only
        self.head = nn.Linear(6, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_every_registered_optimizer_resolves_by_its_name_in_any_case():
    assert len(OPTIMIZER_RECORDS) >= 10
    for m in OPTIMIZER_RECORDS:
        cls = m.load()
        for spelling in (m.name, m.name.lower(), m.name.upper()):
            assert resolve(spelling) is cls, spelling
    assert resolve("stable_spam") is go.StableSPAM and resolve("Stable-SPAM") is go.StableSPAM
    assert resolve("sgd_sai") is go.SGDSaI and resolve("ortho adamw") is go.OrthoAdamW
    assert set(optimizer_names()["gradwise"]) == {m.name for m in OPTIMIZER_RECORDS}


def test_torch_optim_names_fall_through():
    # gradwise's AdamW (torch.optim.AdamW's math) wins over torch's; the torch.optim. prefix means torch's
    assert resolve("adamw") is go.AdamW and resolve("torch.optim.AdamW") is torch.optim.AdamW
    assert resolve("adam") is torch.optim.Adam
    assert resolve("SGD") is torch.optim.SGD
    assert resolve("torch.optim.Adafactor") is torch.optim.Adafactor
    assert resolve(torch.optim.RMSprop) is torch.optim.RMSprop
    opt = create("sgd", nn.Linear(2, 2), lr=0.1, momentum=0.9)  # extra kwargs reach the optimizer
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.1


def test_unknown_names_list_close_matches():
    with pytest.raises(ValueError, match=r"Invalid name: 'spma' .* did you mean 'SPAM'") as exc:
        create("spma", nn.Linear(2, 2))
    assert "AdaBelief" in str(exc.value) and "AdamW" in str(exc.value)  # every accepted name is listed
    with pytest.raises(ValueError, match="did you mean 'AdamW'"):
        resolve("adamww")
    with pytest.raises(ValueError, match="grad-transform, not an optimizer; pass it to an optimizer as "
                                         r"grad_transforms=\[SpikeClip\(\)\]"):
        resolve("spikeclip")
    with pytest.raises(ValueError, match="not a torch.optim.Optimizer subclass"):
        resolve(nn.Linear)
    with pytest.raises(ValueError, match="Invalid name"):
        resolve("")


def test_norm_modules_by_type_and_name():
    for m in (nn.LayerNorm(3), nn.BatchNorm2d(3), nn.SyncBatchNorm(3), nn.InstanceNorm1d(3, affine=True),
              nn.GroupNorm(1, 3), nn.RMSNorm(3), T5LayerNorm(3)):
        assert is_norm_module(m), type(m).__name__
    for m in (nn.Linear(2, 2), nn.Embedding(3, 2), nn.Conv1d(2, 2, 1)):
        assert not is_norm_module(m), type(m).__name__


def test_decay_split_excludes_biases_norms_and_patterns():
    model = Net()
    decay, keep = decay_split(model)
    assert decay == ["emb.weight", "fc.weight", "head.weight"]
    assert keep == ["fc.bias", "ln.weight", "ln.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias",
                    "rms.weight", "t5.weight", "norm_proj.weight", "head.bias"]
    # without the shape rule and the patterns, the norm layers are still excluded by type (T5LayerNorm by name)
    decay, keep = decay_split(model, no_decay=None, skip_1d=False)
    assert keep == ["ln.weight", "ln.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "rms.weight",
                    "t5.weight"]
    decay, keep = decay_split(model, no_decay=("bias",), skip_1d=False, skip_norms=False)
    assert keep == ["fc.bias", "ln.bias", "bn.bias", "gn.bias", "head.bias"]


def test_param_groups_cover_each_trainable_parameter_once():
    model = Net()
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    # tied weights: listed once, and not decayed if any place they appear excludes them
    tied = nn.Sequential(nn.Linear(3, 3, bias=False), nn.LayerNorm(3))
    tied[0].weight = nn.Parameter(torch.ones(3, 3))
    tied.add_module("again", tied[0])
    assert sum(len(g["params"]) for g in param_groups(tied, 0.1)) == 3


def test_param_groups_from_named_parameters_and_plain_parameters():
    model = Net()
    named = param_groups(model.named_parameters(), 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    # names and shapes only: the 2-D norm_proj weight is excluded by name, and norms by their 1-D shape
    assert sorted(names[id(p)] for p in named[0]["params"]) == ["emb.weight", "fc.weight", "head.weight"]
    plain = param_groups(model.parameters(), 0.1)
    assert sorted(names[id(p)] for p in plain[0]["params"]) == ["emb.weight", "fc.weight", "head.weight",
                                                                 "norm_proj.weight"]


def test_create_applies_the_groups_decay_reaches_only_weights():
    torch.manual_seed(0)
    model = Net()
    opt = create("AdamW", model, lr=0.1, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only decoupled weight decay moves a parameter
    decay, _ = decay_split(model)
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if n in decay else before[n]
        torch.testing.assert_close(p.detach(), expected, msg=n)


def test_create_gradwise_optimizer_and_default_decay():
    model = Net()
    opt = create("spam", model, lr=1e-3, weight_decay=0.05, warmup_steps=10)
    assert type(opt) is go.SPAM and opt.defaults["warmup_steps"] == 10
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    x = torch.randint(0, 10, (5,))
    model.head(model.fc(model.emb(x))).sum().backward()
    opt.step()
    plain = create("lion", model)  # weight_decay=None: the optimizer's defaults, one group
    assert len(plain.param_groups) == 1 and plain.defaults["weight_decay"] == go.Lion(
        [nn.Parameter(torch.ones(1))]).defaults["weight_decay"]
    assert len(plain.param_groups[0]["params"]) == sum(p.requires_grad for p in model.parameters())


def test_create_orthograd_with_a_base_optimizer_name():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    opt = create("orthograd", model, base_optimizer_cls="adamw", lr=1e-2, weight_decay=0.1)
    assert type(opt) is go.OrthoGrad
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    model(torch.randn(2, 3)).sum().backward()
    opt.step()


def test_create_keeps_param_group_dicts():
    model = nn.Linear(3, 3)
    groups = [{"params": [model.weight], "lr": 0.5}, {"params": [model.bias]}]
    opt = create("sgd", groups, lr=0.1, weight_decay=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]


def test_bad_arguments_are_named():
    model = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"SPAM got an unexpected argument 'bogus' \(accepted: lr, betas"):
        create("spam", model, bogus=1)
    with pytest.raises(ValueError, match="Invalid weight_decay"):
        create("spam", model, weight_decay=-1.0)
    with pytest.raises(ValueError, match="Invalid no_decay"):
        param_groups(model, 0.1, no_decay="bias")  # a string would match letter by letter
    with pytest.raises(ValueError, match="Invalid lr"):
        create("spam", model, lr="1e-3")
    with pytest.raises(ValueError, match="Invalid model"):
        create("spam", 3)
