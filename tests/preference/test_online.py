"""Online preference loop (generation, oracle, pairs, kept iterates) and the `preference` arena study."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from gradwise.preference import (OnlinePreferenceLoop, PreferenceOracle, build_pairs, generate, online_method,
                                 response_logps, sampled_kl)
from gradwise.preference.logprobs import token_logps

PAD, EOS, A, B = 0, 1, 2, 3


class Bigram(nn.Module):
    """logits[t] depend on token t only: a tiny causal LM."""

    def __init__(self, vocab: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.emb(ids)


def frac_a(prompt, response) -> float:
    body = [t for t in response if t != EOS]
    return sum(t == A for t in body) / max(1, len(body))


# ----------------------------------------------------------------- generation

def test_generate_shapes_eos_and_determinism():
    m = Bigram()
    prompts = [[A], [B, A], [A], [B, B, A]]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    y1 = generate(m, prompts, max_new_tokens=5, eos_token_id=EOS, generator=g1)
    y2 = generate(m, prompts, max_new_tokens=5, eos_token_id=EOS, generator=g2)
    assert y1 == y2 and len(y1) == len(prompts)
    for y in y1:
        assert 1 <= len(y) <= 5
        assert EOS not in y[:-1]  # cut after the first EOS
    y3 = generate(m, prompts, max_new_tokens=5, eos_token_id=EOS, generator=torch.Generator().manual_seed(4))
    assert y3 != y1 or all(len(y) == 1 for y in y1)
    # batch_size splits the work without changing the greedy result
    assert generate(m, prompts, max_new_tokens=4, temperature=0) == \
        generate(m, prompts, max_new_tokens=4, temperature=0, batch_size=1)
    # without EOS every response has max_new_tokens tokens
    assert all(len(y) == 3 for y in generate(m, prompts, max_new_tokens=3))
    assert m.training  # mode restored


def test_generate_greedy_follows_argmax_and_topk1():
    m = Bigram()
    with torch.no_grad():
        m.emb.weight.zero_()
        m.emb.weight[A, B] = 5.0   # after A comes B
        m.emb.weight[B, EOS] = 5.0  # after B comes EOS
    assert generate(m, [[A]], max_new_tokens=4, temperature=0, eos_token_id=EOS) == [[B, EOS]]
    g = torch.Generator().manual_seed(0)
    assert generate(m, [[A]], max_new_tokens=4, top_k=1, eos_token_id=EOS, generator=g) == [[B, EOS]]


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(max_new_tokens=2, temperature=-1.0),
                                dict(max_new_tokens=2, top_k=0)])
def test_generate_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        generate(Bigram(), [[A]], **kw)


def test_response_logps_and_sampled_kl():
    m, other = Bigram(seed=0), Bigram(seed=1)
    prompts, resp = [[A, B], [B]], [[A, EOS], [B, B, EOS]]
    lp = response_logps(m, prompts, resp)
    ids = torch.tensor([[A, B, A, EOS], [B, B, B, EOS]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]).bool()
    torch.testing.assert_close(lp, token_logps(m(ids), ids, mask).sum(-1))
    avg = response_logps(m, prompts, resp, average=True)
    torch.testing.assert_close(avg, lp / torch.tensor([2.0, 3.0]))
    assert torch.all(sampled_kl(m, m, prompts, resp) == 0)
    assert torch.all(sampled_kl(m, other, prompts, resp) > 0)


# ----------------------------------------------------------------- oracle and pairs

def test_oracle_from_reward_and_preference():
    r = PreferenceOracle(reward=frac_a)
    assert r.prob([A], [A, EOS], [B, EOS]) == 1.0
    assert r.prob([A], [B, EOS], [A, EOS]) == 0.0
    assert r.prob([A], [A, EOS], [A, A, EOS]) == 0.5
    bt = PreferenceOracle(reward=frac_a, temperature=1.0)
    assert bt.prob([A], [A, EOS], [B, EOS]) == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
    p = PreferenceOracle(lambda x, a, b: 0.8 if len(a) < len(b) else 0.2)
    m = p.win_matrix([A], [[A], [A, A], [A, A, A]])
    assert m[0, 1] == 0.8 and m[1, 0] == pytest.approx(0.2) and m[1, 1] == 0.5
    assert r.win_rate([[A], [A]], [[A], [B]], [[B], [B]]) == 0.75
    with pytest.raises(ValueError):
        PreferenceOracle()
    with pytest.raises(ValueError):
        PreferenceOracle(frac_a, reward=frac_a)
    with pytest.raises(ValueError):
        PreferenceOracle(lambda x, a, b: 2.0).prob([A], [A], [B])


def test_build_pairs_best_vs_worst_random_and_ties():
    judge = PreferenceOracle(reward=frac_a)
    samples = [[[B, EOS], [A, EOS], [A, B, EOS]], [[A, EOS], [A, A, EOS]]]  # second prompt: all tie
    pairs = build_pairs([[A], [B]], samples, judge)
    assert len(pairs) == 1
    p = pairs[0]
    assert p["chosen"] == [A, EOS] and p["rejected"] == [B, EOS] and p["pref"] == 1.0
    assert p["chosen_win_rate"] == 1.0 and p["rejected_win_rate"] == 0.0
    rnd = build_pairs([[A]], [[[B, EOS], [A, EOS], [A, A, EOS], [A, A, EOS]]], judge, strategy="random")
    assert [(q["chosen"], q["rejected"]) for q in rnd] == [([A, EOS], [B, EOS])]  # (2, 3) tie dropped
    soft = PreferenceOracle(lambda x, a, b: 0.7)
    got = build_pairs([[A]] * 200, [[[A], [B]]] * 200, soft, strategy="random", label="sample",
                      generator=torch.Generator().manual_seed(0))
    share = sum(q["chosen"] == [A] for q in got) / len(got)
    assert 0.6 < share < 0.8
    for kw in (dict(strategy="nope"), dict(label="nope")):
        with pytest.raises(ValueError):
            build_pairs([[A]], [[[A], [B]]], judge, **kw)


# ----------------------------------------------------------------- the loop

def _loop(method, seed=0, **kw):
    m = Bigram(seed=seed)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    prompts = [[A], [B], [A, B], [B, A]] * 4
    base = dict(samples_per_prompt=4, steps_per_iteration=5, batch_size=8, max_new_tokens=4, eos_token_id=EOS,
                seed=seed)
    base.update(kw)
    return m, OnlinePreferenceLoop(m, method, opt, PreferenceOracle(reward=frac_a), prompts, **base)


def test_inpo_keeps_frozen_pi_t_and_replaces_it_after_the_iteration():
    m, loop = _loop("inpo", method_kwargs={"eta": 2.0, "tau": 0.1})
    start = [p.detach().clone() for p in m.parameters()]
    loop.run_iteration()
    pi_t = loop.prev
    assert pi_t is not None and not pi_t.training
    assert all(not p.requires_grad for p in pi_t.parameters())
    for p, s in zip(pi_t.parameters(), start):  # pi_t is the policy at the start of the iteration
        assert torch.equal(p, s)
    assert any(not torch.equal(p, s) for p, s in zip(m.parameters(), start))  # the policy moved
    after = [p.detach().clone() for p in m.parameters()]
    loop.run_iteration()
    assert loop.prev is not pi_t
    for p, s in zip(loop.prev.parameters(), after):  # replaced by the updated policy
        assert torch.equal(p, s)
    for p, s in zip(loop.ref_model.parameters(), start):  # pi_ref never moves
        assert torch.equal(p, s)
    assert [h["iteration"] for h in loop.history] == [0, 1] and loop.step == 10


def test_apo_extrapolates_the_trained_weights_and_samples_from_the_extrapolated_policy():
    m, loop = _loop("apo", method_kwargs={"alpha": 0.5})
    theta0 = [p.detach().clone() for p in m.parameters()]
    loop.run_iteration()
    assert [k for k in ("ref", "prev", "prev2") if getattr(loop, k if k != "ref" else "ref_model") is not None] == \
        ["ref", "prev"]
    theta1 = [p.detach().clone() for p in m.parameters()]   # trained in iteration 0
    sampled = []
    loop.sample = lambda model, prompts, k=1, _s=loop.sample: (sampled.append(model), _s(model, prompts, k))[1]
    loop.run_iteration()
    # iteration 1 starts from theta1 + alpha (theta1 - theta0): that policy is frozen as pi_t, samples and is
    # the DPO reference, and training continues from it
    for p, a, b in zip(loop.prev.parameters(), theta1, theta0):
        torch.testing.assert_close(p, a + 0.5 * (a - b), rtol=0, atol=1e-6)
    assert sampled == [loop.prev]
    for p, a, b in zip(loop.method_state["apo_trained"].values(), theta1, theta0):
        assert torch.equal(p, a)
    theta2 = [p.detach().clone() for p in m.parameters()]
    assert any(not torch.equal(p, q) for p, q in zip(theta2, [x.detach() for x in loop.prev.parameters()]))
    with pytest.raises(ValueError, match="extrapolate"):
        online_method("apo", alpha=0.3, extrapolate="weights")


def test_apo_logprob_mode_keeps_two_iterates_and_dno_no_reference():
    _, loop = _loop("apo", method_kwargs={"alpha": 0.5, "extrapolate": "logprobs"})
    loop.run_iteration()
    first = loop.prev
    assert loop.prev2 is None
    loop.run_iteration()
    assert loop.prev2 is first and loop.prev is not first
    _, dno = _loop("dno", method_kwargs={"eta": 1.0, "soft": True})
    assert dno.ref_model is None
    m = dno.run_iteration()
    assert m["pairs"] > 0 and torch.isfinite(torch.tensor(m["loss_last"]))


def test_loop_is_deterministic():
    m1, l1 = _loop("dno", method_kwargs={"eta": 1.0})
    m2, l2 = _loop("dno", method_kwargs={"eta": 1.0})
    l1.run(2)
    l2.run(2)
    assert l1.history == l2.history
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_egpo_and_hypo_iterations_run():
    m, loop = _loop("egpo", method_kwargs={"beta": 0.5}, steps_per_iteration=3)
    before = [p.detach().clone() for p in m.parameters()]
    h = loop.run_iteration()
    assert loop.step == 3 and h["steps"] == 3 and torch.isfinite(torch.tensor(h["loss_last"]))
    assert any(not torch.equal(p, s) for p, s in zip(m.parameters(), before))
    assert loop.optimizer.state_dict()["state"][0]["step"] == 3  # the half steps' state was restored
    offline = [{"prompt": [A], "chosen": [A, EOS], "rejected": [B, EOS]}] * 8
    _, hy = _loop("hypo", method_kwargs={"lam": 0.1}, offline_pairs=offline, steps_per_iteration=3)
    h = hy.run_iteration()
    assert h["pairs"] == 8 and torch.isfinite(torch.tensor(h["loss_last"]))
    with pytest.raises(ValueError, match="offline_pairs"):
        _loop("hypo", method_kwargs={"lam": 0.1})


def test_bad_loop_arguments():
    with pytest.raises(ValueError, match="name"):
        online_method("nope")
    with pytest.raises(ValueError, match="eta"):
        online_method("inpo", tau=0.1)
    with pytest.raises(ValueError, match="eta|tau"):
        online_method("inpo", eta=2.0, tau=3.0)  # out of inpo_loss's range
    with pytest.raises(ValueError, match="extra"):
        online_method("dpo", extra=1)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        _loop("dpo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="strategy"):
        _loop("dpo", pair_strategy="nope")


@pytest.mark.parametrize("method,kw", [("dno", {"eta": 1.0}), ("inpo", {"eta": 0.5, "tau": 0.05})])
def test_one_online_iteration_raises_the_oracle_win_rate(method, kw):
    m, loop = _loop(method, method_kwargs=kw, steps_per_iteration=20)
    judge = loop.oracle
    prompts = [[A], [B]] * 100
    ref = generate(m, prompts, max_new_tokens=4, eos_token_id=EOS, generator=torch.Generator().manual_seed(9))
    base = judge.win_rate(prompts, generate(m, prompts, max_new_tokens=4, eos_token_id=EOS,
                                            generator=torch.Generator().manual_seed(10)), ref)
    loop.run_iteration()
    after = judge.win_rate(prompts, generate(m, prompts, max_new_tokens=4, eos_token_id=EOS,
                                             generator=torch.Generator().manual_seed(10)), ref)
    assert after > base + 0.1, (base, after)


# ----------------------------------------------------------------- the arena study

def test_preference_study_smoke(tmp_path):
    from gradwise.arena import load_study
    from gradwise.arena.preference_study import METHODS, judge_reward, EOS as S_EOS

    assert judge_reward([1, 4, 5, 2], [5, 4, S_EOS]) == 1.0
    assert judge_reward([1, 4, 5, 2], [4, 5, S_EOS]) == 0.0
    assert judge_reward([1, 4, 5, 2], [5, 4]) == -1.0
    study = load_study("preference")
    p = argparse.ArgumentParser()
    study.add_arguments(p)
    args = p.parse_args(["--seeds", "1", "--steps", "2", "--iterations", "1", "--sft-steps", "3",
                         "--pairs-prompts", "24", "--eval-prompts", "8", "--out", str(tmp_path)])
    out = study.run(args, Console(width=160, record=True, quiet=True))
    doc = json.loads((out / "results.json").read_text())
    assert {s["name"] for s in doc["summary"]} == {"SFT", *METHODS}
    assert (out / "results.csv").exists() and (out / "preference.png").exists()
    assert all(0.0 <= r["win_rate"] <= 1.0 and r["kl"] >= 0 for r in doc["runs"])
    kinds = {r["method"]: r["kind"] for r in doc["runs"]}
    assert kinds["HyPO"] == "hybrid" and kinds["INPO"] == "online" and kinds["DPO"] == "offline"
    assert all(("online_pairs" in r) == (r["kind"] == "online") for r in doc["runs"])


def test_hypo_with_several_samples_uses_the_rloo_kl_term(monkeypatch):
    # samples=3: every step draws 3 fresh responses per prompt and passes their log-probs as [B, 3], so the
    # step's loss is hypo_loss with the leave-one-out baseline on exactly those samples
    import gradwise.preference.online.hypo as online_mod  # the module whose step calls hypo_loss
    from gradwise.preference import hypo_loss

    offline = [{"prompt": [A], "chosen": [A, EOS], "rejected": [B, EOS]}] * 4
    m, loop = _loop("hypo", method_kwargs={"lam": 0.5, "samples": 3}, offline_pairs=offline, steps_per_iteration=1,
                    batch_size=4)
    drawn = []
    real = loop.sample
    loop.sample = lambda model, prompts, k=1: (drawn.append((model, list(prompts), k)), real(model, prompts, k))[1]
    seen = {}
    real_hypo = online_mod.hypo_loss

    def spy(*args, **kw):
        seen["shapes"] = (args[4].shape, args[5].shape)
        seen["value"] = hypo_loss(*[a.detach() for a in args], **kw)
        return real_hypo(*args, **kw)

    monkeypatch.setattr(online_mod, "hypo_loss", spy)
    h = loop.run_iteration()
    assert drawn[0][0] is m and drawn[0][2] == 3
    assert seen["shapes"] == (torch.Size([4, 3]), torch.Size([4, 3]))
    assert h["loss_last"] == pytest.approx(float(seen["value"].mean()), rel=1e-6)
    with pytest.raises(ValueError, match="samples"):
        online_method("hypo", lam=0.1, samples=0)


def test_apo_extrapolates_parameters_not_buffers():
    class WithBuffer(Bigram):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros(2))

    m = WithBuffer()
    loop = OnlinePreferenceLoop(m, "apo", torch.optim.Adam(m.parameters(), lr=0.05), PreferenceOracle(reward=frac_a),
                                [[A], [B]] * 4, method_kwargs={"alpha": 0.5}, samples_per_prompt=4,
                                steps_per_iteration=2, batch_size=4, max_new_tokens=3, eos_token_id=EOS)
    loop.run_iteration()
    m.count += torch.tensor([1.0, -1.0])  # as a BatchNorm's running statistics would move during training
    loop.begin_iteration()
    assert torch.equal(m.count, torch.tensor([1.0, -1.0]))
    assert "count" not in loop.method_state["apo_trained"]
