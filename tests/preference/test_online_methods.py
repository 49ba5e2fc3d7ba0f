"""Online methods as objects with hooks (gradwise.preference.online.methods): the loop calls the hooks,
the built-in methods are found through the registry, and a new method needs no change to the loop."""
from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import gradwise.registry as registry
from gradwise.preference import ONLINE_METHODS, OnlineMethod, OnlinePreferenceLoop, PreferenceOracle, online_method
from gradwise.preference.online.methods import online_method_classes

PAD, EOS, A, B = 0, 1, 2, 3


class Bigram(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(4, 4)

    def forward(self, ids):
        return self.emb(ids)


def frac_a(prompt, response) -> float:
    body = [t for t in response if t != EOS]
    return sum(t == A for t in body) / max(1, len(body))


def _loop(method, **kw):
    m = Bigram()
    base = dict(samples_per_prompt=4, steps_per_iteration=3, batch_size=4, max_new_tokens=3, eos_token_id=EOS)
    base.update(kw)
    return m, OnlinePreferenceLoop(m, method, torch.optim.SGD(m.parameters(), lr=0.1),
                                   PreferenceOracle(reward=frac_a), [[A], [B]] * 4, **base)


def test_the_online_methods_are_the_registry_records_that_name_one():
    named = [rec.info["online"] for rec in registry.methods(family="preference") if "online" in rec.info]
    classes = online_method_classes()
    assert ONLINE_METHODS == tuple(classes) and len(named) == len(classes)
    assert set(ONLINE_METHODS) == {"dpo", "inpo", "dno", "apo", "egpo", "hypo"}
    for name, cls in classes.items():
        assert issubclass(cls, OnlineMethod) and cls.name == name
        assert f"{cls.__module__}:{cls.__qualname__}" in named


def test_online_method_builds_each_and_checks_its_hyperparameters():
    kw = {"inpo": {"eta": 0.5, "tau": 0.1}, "dno": {"eta": 1.0}, "apo": {"alpha": 0.3}, "egpo": {"beta": 0.1},
          "hypo": {"lam": 0.1}}
    for name in ONLINE_METHODS:
        spec = online_method(name, **kw.get(name, {}))
        assert isinstance(spec, OnlineMethod) and spec.name == name
    with pytest.raises(ValueError, match=r"Invalid name: 'nope' \(accepted: .*dpo"):
        online_method("nope")
    with pytest.raises(ValueError, match="Invalid hyperparameter for dpo: 'eta'"):
        online_method("dpo", eta=1.0)


class Replay(OnlineMethod):
    """A made-up method: trains on fixed pairs with a plain DPO-style loss, counting the hooks' calls."""

    name = "replay"

    def __init__(self, *, beta: float = 1.0) -> None:
        super().__init__("replay", (), kind="replay", hyperparameters={"beta": beta})
        self.calls = []

    def check(self, loop):
        self.calls.append("check")

    def begin_iteration(self, loop):
        self.calls.append("begin")

    def make_pairs(self, loop):
        self.calls.append("pairs")
        return [{"prompt": [A], "chosen": [A, EOS], "rejected": [B, EOS]}] * 5

    def prepare(self, loop, pairs):
        self.calls.append("prepare")

    def step(self, loop, pairs, indices):
        self.calls.append(("step", tuple(indices)))
        from gradwise.preference import response_logps
        batch = [pairs[i] for i in indices]
        prompts = [p["prompt"] for p in batch]
        lp = response_logps(loop.policy, prompts * 2, [p["chosen"] for p in batch] + [p["rejected"] for p in batch])
        loss = -torch.nn.functional.logsigmoid(self.hyperparameters["beta"] * (lp[:len(batch)] - lp[len(batch):]))
        loop.apply_loss(loss.mean())
        return float(loss.mean().detach()), 0


def test_the_loop_calls_a_new_methods_hooks_and_shuffles_its_pairs():
    spec = Replay()
    m, loop = _loop(spec, steps_per_iteration=3, batch_size=2)
    h = loop.run_iteration()
    assert spec.calls[:4] == ["check", "begin", "pairs", "prepare"]
    steps = [c[1] for c in spec.calls[4:]]
    assert len(steps) == 3 and all(len(s) == 2 for s in steps)
    assert sorted(i for s in steps[:2] for i in s) == sorted(set(i for s in steps[:2] for i in s))  # no repeats
    assert h == {"iteration": 0, "pairs": 5, "steps": 3, "loss_first": h["loss_first"], "loss_last": h["loss_last"]}
    assert loop.step == 3 and h["loss_last"] < h["loss_first"]
    assert loop.ref_model is None and loop.prev is None  # keeps nothing


def test_a_registered_method_is_found_by_name(monkeypatch):
    # a record whose info names an online method class is all the loop needs to accept the name
    rec = registry.Method(name="replay_loss", kind="preference", paper="x", year=2020, arxiv=None, code=None,
                          entry=f"{__name__}:Replay", summary="x", info=types.MappingProxyType(
                              {"online": f"{__name__}:Replay"}), family="preference")
    real = registry.methods
    monkeypatch.setattr(registry, "methods", lambda *a, **k: real(*a, **k) + [rec])
    assert "replay" in online_method_classes()
    _, loop = _loop("replay", method_kwargs={"beta": 2.0})
    assert isinstance(loop.method, Replay) and loop.method.hyperparameters == {"beta": 2.0}
    assert loop.run_iteration()["steps"] == 3


def test_a_plain_spec_with_another_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        _loop(OnlineMethod("x", ("ref",), lambda q, t: q["policy_chosen"], kind="egpo"))
