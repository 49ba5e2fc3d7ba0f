"""LISA: the authors' sampling rule (LMFlow's callback, golden data), what trains and what stays frozen in a plain
loop and under the Hugging Face Trainer, optimizer state, state_dict and bad inputs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradwise.optim import LISA, LISATrainerCallback, find_layers
from gradwise.registry import get

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "lisa_golden.json").read_text())


pytestmark = pytest.mark.usefixtures("one_thread")


class StandIn(nn.Module):
    """Embedding, a list of blocks, a head: the shape LISA expects (as in the golden generator)."""

    def __init__(self, n, d=3, vocab=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.embed(tokens)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return self.head(h)


def _tiny_gpt2(n_layer=4, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=8, n_head=2, vocab_size=16, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _pattern(lisa):
    return [all(p.requires_grad for p in layer.parameters()) for layer in lisa.layers]


@pytest.mark.parametrize("name", sorted(n for n in GOLDEN["cases"] if n.startswith("standin")))
@pytest.mark.parametrize("global_rng", [False, True], ids=["seeded", "numpy-global"])
def test_draws_match_lmflows_callback(name, global_rng):
    case = GOLDEN["cases"][name]
    model = StandIn(case["total_layers"])
    if global_rng:  # seed=None draws from numpy's global generator, as LMFlow
        lisa = LISA(model, n_layers=case["n_layers"], interval=case["interval"])
        np.random.seed(case["seed"])
    else:
        lisa = LISA(model, n_layers=case["n_layers"], interval=case["interval"], seed=case["seed"])
    for step in range(case["steps"]):
        assert lisa(step) == case["active"][step], step
        assert _pattern(lisa) == case["requires_grad"][step], step
    assert model.embed.weight.requires_grad and model.head.weight.requires_grad


def test_draws_match_lmflow_on_a_gpt2_found_by_its_layer_list():
    case = GOLDEN["cases"]["gpt2_4_2_20"]
    model = _tiny_gpt2()
    lisa = LISA(model, n_layers=case["n_layers"], interval=case["interval"], seed=case["seed"])
    assert lisa.layers == list(model.transformer.h)
    for step in range(case["steps"]):
        assert lisa.on_step(step) == case["active"][step]
        assert _pattern(lisa) == case["requires_grad"][step]
    assert model.transformer.wte.weight.requires_grad and model.transformer.ln_f.weight.requires_grad


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _changed(before, model, prefix):
    return any(not torch.equal(before[k], v) for k, v in model.named_parameters() if k.startswith(prefix))


def test_only_the_drawn_layers_and_the_rest_of_the_model_train_in_a_plain_loop():
    torch.manual_seed(0)
    model = StandIn(6, d=4, vocab=7)
    lisa = LISA(model, n_layers=2, interval=3, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # decay would move frozen layers
    tokens = torch.randint(0, 7, (8, 5))
    sets = []
    for step in range(9):
        active = list(lisa(step))
        if step % 3 == 0:
            sets.append(sorted(active))
        else:
            assert sorted(active) == sets[-1]
        before = _snapshot(model)
        loss = nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 7), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
        for i in range(6):
            assert _changed(before, model, f"layers.{i}.") == (i in active), (step, i, active)
        assert _changed(before, model, "embed.") and _changed(before, model, "head.")
    assert len({tuple(s) for s in sets}) > 1  # the drawn set changes every K steps


def test_a_left_over_gradient_does_not_move_a_frozen_layer():
    # zero_grad(set_to_none=False) leaves zero tensors: SGD with momentum would keep moving the layer
    torch.manual_seed(1)
    model = StandIn(4)
    lisa = LISA(model, n_layers=1, interval=1, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    tokens = torch.randint(0, 5, (6, 4))
    for step in range(6):
        active = lisa(step)
        before = _snapshot(model)
        model(tokens).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        for i in range(4):
            assert _changed(before, model, f"layers.{i}.") == (i in active)


def test_release_state_drops_the_optimizer_state_of_frozen_layers():
    torch.manual_seed(2)
    model = StandIn(5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    keep = LISA(model, n_layers=2, interval=1, seed=0)
    tokens = torch.randint(0, 5, (6, 4))
    for step in range(4):
        keep(step)
        model(tokens).sum().backward()
        opt.step()
        opt.zero_grad()
    stale = sum(p in opt.state for layer in model.layers for p in layer.parameters())
    assert stale > 2 * 2  # LMFlow's behaviour: frozen layers keep their moments
    lisa = LISA(model, n_layers=2, interval=1, seed=0, optimizer=opt, release_state=True)
    active = lisa(0)
    assert len(active) == 2
    for i, layer in enumerate(model.layers):
        if i not in active:
            assert not any(p in opt.state for p in layer.parameters())
    assert all(p in opt.state for p in model.embed.parameters())


def test_always_train_and_a_users_own_freezing_are_respected():
    model = StandIn(6)
    model.layers[2].bias.requires_grad_(False)  # frozen by the user before LISA
    lisa = LISA(model, n_layers=2, interval=1, always_train=(0, 5), seed=4)
    drawn = set()
    for step in range(20):
        active = lisa(step)
        assert not {0, 5} & set(active) and len(active) == 2
        drawn |= set(active)
        assert model.layers[0].weight.requires_grad and model.layers[5].weight.requires_grad
        assert not model.layers[2].bias.requires_grad
        assert model.layers[2].weight.requires_grad == (2 in active)
    assert drawn == {1, 2, 3, 4}


def test_state_dict_resumes_the_same_draws():
    a = LISA(StandIn(7), n_layers=3, interval=2, seed=9)
    for step in range(5):
        a(step)
    model_b = StandIn(7)
    b = LISA(model_b, n_layers=3, interval=2, seed=123)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.active == a.active and _pattern(b) == _pattern(a)
    for step in range(5, 15):
        assert a(step) == b(step)


def test_find_layers_on_common_layouts():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))

    class LlamaLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(2, 2)

    llama = LlamaLike()
    assert find_layers(llama) is llama.model.layers
    gpt2 = _tiny_gpt2(n_layer=2)
    assert find_layers(gpt2) is gpt2.transformer.h

    class Wrapper(nn.Module):  # a PEFT-style wrapper: base_model.model.transformer.h
        def __init__(self, inner):
            super().__init__()
            self.base_model = nn.Module()
            self.base_model.model = inner

    assert find_layers(Wrapper(gpt2)) is gpt2.transformer.h
    assert find_layers(llama, "model.layers") is llama.model.layers
    blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(4))
    assert LISA(blocks, n_layers=1).layers == list(blocks)


def test_hf_trainer_with_the_callback_trains_only_the_drawn_layers():
    transformers = pytest.importorskip("transformers")
    import tempfile

    model = _tiny_gpt2(n_layer=4, seed=1)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 16, (24, 12), generator=g)]
    callback = LISATrainerCallback(model, n_layers=1, interval=3, seed=0)
    assert isinstance(callback, transformers.TrainerCallback) and isinstance(callback, LISATrainerCallback)
    records = []

    class Recorder(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            records.append([state.global_step, list(callback.lisa.active), _snapshot(model)])

        def on_step_end(self, args, state, control, **kwargs):
            records[-1].append(_snapshot(model))

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, max_steps=6, per_device_train_batch_size=4,
                                              learning_rate=5e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                                              logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=0,
                                              disable_tqdm=True)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Recorder()])
        trainer.train()
    assert [r[0] for r in records] == list(range(6))
    sets = [tuple(r[1]) for r in records]
    assert sets[0] == sets[1] == sets[2] and sets[3] == sets[4] == sets[5]
    for step, active, before, after in records:
        for i in range(4):
            moved = any(not torch.equal(before[k], after[k]) for k in before if k.startswith(f"transformer.h.{i}."))
            assert moved == (i in active), (step, i, active)
        assert not torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])
    # every layer is in the Trainer's optimizer: it was built before the first draw froze anything
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in model.transformer.h.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_layers=0), "Invalid n_layers"), (dict(n_layers=7), "Invalid n_layers"), (dict(n_layers=2.0), "Invalid n_layers"),
    (dict(interval=0), "Invalid interval"), (dict(always_train=(6,)), "Invalid always_train"),
    (dict(always_train=(1, 1)), "Invalid always_train"), (dict(always_train=tuple(range(6))), "Invalid always_train"),
    (dict(seed=-1), "Invalid seed"), (dict(optimizer="adam"), "Invalid optimizer"),
    (dict(release_state=True), "Invalid release_state"), (dict(layers="model.nope"), "Invalid layers"),
    (dict(verbose=1), "Invalid verbose")])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=rf"{match}\b.*accepted"):
        LISA(StandIn(6), **kwargs)


def test_bad_models_and_steps_are_refused():
    with pytest.raises(TypeError, match="Invalid model"):
        LISA("gpt2")
    with pytest.raises(ValueError, match="Invalid model: no list of blocks"):
        LISA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Invalid model"):
        LISA([])
    lisa = LISA(StandIn(3), n_layers=1)
    with pytest.raises(ValueError, match="Invalid step"):
        lisa(-1)
    with pytest.raises(ValueError, match="Invalid arguments"):
        LISATrainerCallback(lisa, n_layers=2)


def test_registry_record():
    rec = get("LISA")
    assert rec.load() is LISA and rec.family == "optim" and rec.arxiv == "2403.17919"
    assert rec.paper == "LISA: Layerwise Importance Sampling for Memory-Efficient Large Language Model Fine-Tuning"
