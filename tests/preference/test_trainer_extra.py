"""PreferenceTrainer's extra frozen models (``extra_models``), per-example inputs (``example_inputs``) and the
online loop's use of the trainer (gradwise.preference.trainer / .online)."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.preference import (OnlineMethod, OnlinePreferenceLoop, PreferenceOracle, apo_dpo_loss,
                                 apo_extrapolated_logps, dno_loss, inpo_loss, online_method)
from gradwise.preference.logprobs import sequence_logps
from gradwise.preference.trainer import PreferenceObjective, PreferenceTrainer
from lm_fixtures import CountingLM as Counting
from lm_fixtures import TinyGRULM

torch.set_num_threads(1)
V = 10


def frozen(seed):
    m = TinyGRULM(seed).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, V, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        last = prompt[-1]
        out.append({"id": i, "prompt": prompt, "chosen": [last, last], "rejected": [last % (V - 1) + 1] * 2,
                    "chosen_win_rate": 0.5 + 0.04 * i, "rejected_win_rate": 0.5 - 0.03 * i})
    return out


def seq_logps(model, ex, which):
    ids = torch.tensor([ex["prompt"] + ex[which]])
    m = torch.zeros_like(ids, dtype=torch.bool)
    m[0, len(ex["prompt"]):] = True
    with torch.no_grad():
        return sequence_logps(model(ids), ids, m)[0]


def trainer(model, objective, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 4)
    return PreferenceTrainer(model, objective, torch.optim.Adam(model.parameters(), lr=1e-2), **kw)


# --------------------------------------------------------------------- objective binding

def test_objective_names_extra_models_and_example_inputs():
    o = PreferenceObjective(inpo_loss, eta=1.0, tau=0.1)
    assert o.inputs == ("policy_chosen_logps", "policy_rejected_logps", "prev_chosen_logps", "prev_rejected_logps",
                        "ref_chosen_logps", "ref_rejected_logps")
    assert o.extra_models == ("prev",) and o.needs_reference and o.reward_kind == "ratio"

    def two(policy_chosen_logps, policy_rejected_logps, prev_chosen_logps, prev_rejected_logps,
            prev2_chosen_avg_logps, *, beta=1.0):
        return policy_chosen_logps

    t = PreferenceObjective(two)
    assert t.extra_models == ("prev", "prev2") and not t.needs_reference
    # DNO: one extra model, no reference: rewards are log-ratios to pi_t
    d = PreferenceObjective(dno_loss, inputs=("policy_chosen_logps", "policy_rejected_logps", "prev_chosen_logps",
                                              "prev_rejected_logps"), eta=1.0,
                            example_inputs={"reward_1": "chosen_win_rate", "reward_2": "rejected_win_rate"})
    assert d.extra_models == ("prev",) and d.reward_kind == "ratio" and d._ratio_base == "prev"
    assert d.example_inputs == {"reward_1": "chosen_win_rate", "reward_2": "rejected_win_rate"}
    # an extra model whose name starts with "ref_" is not the reference
    r = PreferenceObjective(lambda policy_chosen_logps, ref_sft_chosen_logps: policy_chosen_logps)
    assert r.extra_models == ("ref_sft",) and not r.needs_reference
    for bad in (dict(inputs=("policy_chosen_logps", "prev_chosen")), dict(example_inputs="chosen_win_rate"),
                dict(example_inputs={"reward_1": "prev_chosen_logps"}), dict(example_inputs={"1x": "a"})):
        with pytest.raises(ValueError, match="inputs"):
            PreferenceObjective(dno_loss, eta=1.0, **{"inputs": ("policy_chosen_logps", "policy_rejected_logps",
                                                                 "prev_chosen_logps", "prev_rejected_logps"), **bad})


# --------------------------------------------------------------------- extra models in the trainer

def test_inpo_through_the_trainer_uses_cached_prev_log_probs():
    ds = data(12)
    policy, ref, prev = TinyGRULM(0), frozen(1), Counting(frozen(2))
    ref_c = Counting(ref)
    obj = PreferenceObjective(inpo_loss, eta=1.0, tau=0.2)
    tr = trainer(policy, obj, ref_model=ref_c, extra_models={"prev": prev})
    assert not any(p.requires_grad for p in prev.parameters()) and not prev.training
    q = tr.compute_logps(ds[:5])
    for i, ex in enumerate(ds[:5]):
        for side in ("chosen", "rejected"):
            torch.testing.assert_close(q[f"prev_{side}_logps"][i], seq_logps(prev.inner, ex, side), rtol=1e-5,
                                       atol=1e-5)
            torch.testing.assert_close(q[f"ref_{side}_logps"][i], seq_logps(ref, ex, side), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(q[f"policy_{side}_logps"][i], seq_logps(policy, ex, side), rtol=1e-5,
                                       atol=1e-5)
        assert q["prev_chosen_avg_logps"][i] == pytest.approx(q["prev_chosen_logps"][i].item() / 2, rel=1e-6)
    # the trainer's loss is inpo_loss on those log-probs
    expected = inpo_loss(q["policy_chosen_logps"], q["policy_rejected_logps"], q["prev_chosen_logps"],
                         q["prev_rejected_logps"], q["ref_chosen_logps"], q["ref_rejected_logps"], eta=1.0, tau=0.2)
    assert tr.evaluate(ds[:5])["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    # three epochs: pi_t and pi_ref each score every sequence once
    tr.train(ds, epochs=3)
    assert prev.rows == ref_c.rows == 2 * len(ds)
    assert tr.extra_forward_rows == {"prev": 24} and len(tr.extra_cache["prev"]) == 24
    hist = tr.history
    assert hist[-1]["loss"] < hist[0]["loss"]
    # metrics: DPO-style rewards against the reference
    m = tr.evaluate(ds)
    q = tr.compute_logps(ds)
    assert m["chosen_reward"] == pytest.approx((q["policy_chosen_logps"] - q["ref_chosen_logps"]).mean().item(),
                                               rel=1e-5)


def test_extra_models_validation():
    policy = TinyGRULM(0)
    obj = PreferenceObjective(inpo_loss, eta=1.0, tau=0.2)
    with pytest.raises(ValueError, match="extra_models.*'prev'"):
        trainer(policy, obj)
    for bad, match in (({"prev": "x"}, "prev"), ({"ref": frozen(1)}, "name"), ({"1a": frozen(1)}, "name"),
                       ({"prev": policy}, "policy itself"), ([("prev", frozen(1))], "mapping"),
                       ({"prev": Counting(policy)}, "shares parameters")):
        with pytest.raises(ValueError, match=match):
            trainer(policy, obj, extra_models=bad)
    assert all(p.requires_grad for p in policy.parameters())  # a rejected wrapper froze nothing
    with pytest.warns(UserWarning, match="ignored"):
        tr = trainer(policy, lambda a, b: -F.logsigmoid(a - b), extra_models={"prev": frozen(1)})
    assert tr.extra_models == {} and not tr._needs_keys


def test_dpo_path_runs_no_extra_forward():
    policy, ref = Counting(TinyGRULM(0)), Counting(frozen(1))
    tr = trainer(policy, lambda policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
                 -F.logsigmoid(policy_chosen_logps - ref_chosen_logps - policy_rejected_logps + ref_rejected_logps),
                 ref_model=ref)
    assert tr.extra_models == {} and tr._revision is None
    tr.train(data(8), steps=2)
    assert policy.calls == 2 and policy.rows == 16  # one forward of [chosen; rejected] per micro-batch
    assert ref.rows == 16


def test_example_inputs_reach_the_objective_dno_soft_labels():
    ds = data(8)
    prev = frozen(2)
    obj = PreferenceObjective(dno_loss, inputs=("policy_chosen_logps", "policy_rejected_logps", "prev_chosen_logps",
                                                "prev_rejected_logps"), eta=0.5,
                              example_inputs={"reward_1": "chosen_win_rate", "reward_2": "rejected_win_rate"})
    tr = trainer(TinyGRULM(0), obj, extra_models={"prev": prev})
    assert tr.ref_model is None
    q = tr.compute_logps(ds)
    torch.testing.assert_close(q["chosen_win_rate"], torch.tensor([ex["chosen_win_rate"] for ex in ds]))
    expected = dno_loss(q["policy_chosen_logps"], q["policy_rejected_logps"], q["prev_chosen_logps"],
                        q["prev_rejected_logps"], eta=0.5, reward_1=q["chosen_win_rate"],
                        reward_2=q["rejected_win_rate"])
    hard = dno_loss(q["policy_chosen_logps"], q["policy_rejected_logps"], q["prev_chosen_logps"],
                    q["prev_rejected_logps"], eta=0.5)
    ev = tr.evaluate(ds)
    assert ev["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert abs(ev["loss"] - hard.mean().item()) > 1e-3  # the soft labels changed the loss
    # the reward is the log-ratio to pi_t (beta = 1: dno_loss has no beta)
    assert ev["chosen_reward"] == pytest.approx((q["policy_chosen_logps"] - q["prev_chosen_logps"]).mean().item(),
                                                rel=1e-5)
    with pytest.raises(ValueError, match="chosen_win_rate"):
        tr.evaluate([{k: v for k, v in ds[0].items() if k != "chosen_win_rate"}])
    with pytest.raises(ValueError, match="number"):
        tr.evaluate([{**ds[0], "chosen_win_rate": "high"}])
    # ranked lists: the example's value for each of its pairs
    ranked = {"prompt": [1, 2], "completions": [[3], [4], [5]], "chosen_win_rate": 0.9, "rejected_win_rate": 0.1}
    q = tr.compute_logps([ranked])
    assert q["chosen_win_rate"].tolist() == pytest.approx([0.9] * 3)


def test_apo_objective_against_two_iterates():
    ds = data(6)
    prev, prev2 = frozen(2), frozen(3)
    spec = online_method("apo", alpha=0.5, beta=0.2, extrapolate="logprobs")
    first, later = spec.objective(0), spec.objective(1)
    assert first.extra_models == () and first.needs_reference
    assert later.extra_models == ("prev", "prev2") and not later.needs_reference
    tr = trainer(TinyGRULM(0), later, extra_models={"prev": prev, "prev2": prev2})
    q = tr.compute_logps(ds)
    rc = apo_extrapolated_logps(q["prev_chosen_logps"], q["prev2_chosen_logps"], alpha=0.5)
    rr = apo_extrapolated_logps(q["prev_rejected_logps"], q["prev2_rejected_logps"], alpha=0.5)
    expected = apo_dpo_loss(q["policy_chosen_logps"], q["policy_rejected_logps"], rc, rr, beta=0.2)
    assert tr.evaluate(ds)["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    torch.testing.assert_close(q["prev2_rejected_logps"][1], seq_logps(prev2, ds[1], "rejected"), rtol=1e-5,
                               atol=1e-5)


def test_apo_parameter_mode_objective_is_dpo_against_the_frozen_extrapolated_policy():
    ds = data(6)
    prev = frozen(2)
    later = online_method("apo", alpha=0.5, beta=0.2).objective(1)
    assert later.extra_models == ("prev",) and not later.needs_reference
    tr = trainer(TinyGRULM(0), later, extra_models={"prev": prev})
    q = tr.compute_logps(ds)
    expected = apo_dpo_loss(q["policy_chosen_logps"], q["policy_rejected_logps"], q["prev_chosen_logps"],
                            q["prev_rejected_logps"], beta=0.2)
    assert tr.evaluate(ds)["loss"] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_checkpoint_keeps_extra_cache_and_resumes_identically(tmp_path):
    ds = data(12)
    obj = PreferenceObjective(inpo_loss, eta=1.0, tau=0.2)

    def make():
        return trainer(TinyGRULM(0), obj, ref_model=frozen(1), extra_models={"prev": Counting(frozen(2))})

    full = make()
    full.train(ds, steps=4)
    half = make()
    half.train(ds, steps=2)
    half.save_checkpoint(tmp_path / "c.pt")
    resumed = make()
    resumed.load_checkpoint(tmp_path / "c.pt")
    assert resumed.extra_cache == half.extra_cache and len(resumed.extra_cache["prev"]) == 16
    resumed.train(ds, steps=4)
    assert resumed.extra_models["prev"].rows == 8  # only the 4 examples the first half did not see
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    # precompute fills the reference and pi_t caches
    fresh = make()
    assert fresh.precompute_reference(ds) == 48 and fresh.extra_forward_rows == {"prev": 24}


# --------------------------------------------------------------------- the online loop on the trainer

PAD, EOS, A, B = 0, 1, 2, 3


class Bigram(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(4, 4)

    def forward(self, ids):
        return self.emb(ids)


def frac_a(prompt, response):
    body = [t for t in response if t != EOS]
    return sum(t == A for t in body) / max(1, len(body))


def loop_for(method, ref=None, **kw):
    m = Bigram()
    base = dict(samples_per_prompt=4, steps_per_iteration=3, batch_size=8, max_new_tokens=4, eos_token_id=EOS, seed=0)
    base.update(kw)
    return m, OnlinePreferenceLoop(m, method, torch.optim.Adam(m.parameters(), lr=0.05),
                                   PreferenceOracle(reward=frac_a), [[A], [B], [A, B], [B, A]] * 4, ref_model=ref,
                                   **base)


def test_loop_steps_go_through_the_iteration_trainer():
    ref = Counting(frozen_bigram())
    _, loop = loop_for("inpo", ref=ref, method_kwargs={"eta": 1.0, "tau": 0.1})
    loop.run_iteration()
    tr = loop.trainer
    assert isinstance(tr, PreferenceTrainer) and tr.step == 3 and loop.step == 3
    assert set(tr.extra_models) == {"prev"} and tr.extra_models["prev"] is loop.prev
    assert tr.ref_model is ref and tr.ref_cache is loop.ref_cache
    assert [h["loss"] for h in tr.history] == [loop.history[0]["loss_first"], *[h["loss"] for h in tr.history[1:]]]
    assert tr.history[-1]["loss"] == loop.history[0]["loss_last"]
    rows = ref.rows
    n_cached = len(loop.ref_cache)
    loop.run_iteration()  # a new trainer with the new pi_t; pi_ref's cache is reused
    assert loop.trainer is not tr and loop.trainer.extra_models["prev"] is loop.prev
    assert ref.rows - rows == len(loop.ref_cache) - n_cached  # only new sequences were scored


def frozen_bigram(seed=0):
    m = Bigram(seed).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def test_custom_loss_spec_gets_the_kept_log_probs():
    seen = []

    def loss(q, t):
        seen.append((t, sorted(q)))
        return -F.logsigmoid(q["policy_chosen"] - q["policy_rejected"] - q["prev_chosen"] + q["prev_rejected"]
                             + 0 * q["pref"])

    spec = OnlineMethod("mine", ("ref", "prev", "prev2"), loss)
    _, loop = loop_for(spec, steps_per_iteration=2)
    loop.run(2)
    fields = ["chosen_win_rate", "pref", "rejected_win_rate"]
    assert seen[0] == (0, sorted(["policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "prev_chosen",
                                  "prev_rejected", *fields]))
    assert seen[-1][0] == 1 and "prev2_chosen" in seen[-1][1]  # pi_{t-1} exists from iteration 1 on
    assert all(math.isfinite(h["loss_last"]) for h in loop.history)
    with pytest.raises(ValueError, match="neither"):
        loop_for(OnlineMethod("empty", ("ref",)))
    # an objective spec that reads pi_{t-1} at iteration 0 is refused with a clear message
    bad = OnlineMethod("bad", ("ref", "prev", "prev2"), objective=lambda t: PreferenceObjective(
        lambda policy_chosen_logps, policy_rejected_logps, prev2_chosen_logps, prev2_rejected_logps:
        policy_chosen_logps - policy_rejected_logps))
    _, loop = loop_for(bad)
    with pytest.raises(ValueError, match="prev2"):
        loop.run_iteration()


def test_loop_keeps_user_dropout():
    class Dropping(Bigram):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.3)

        def forward(self, ids):
            return self.drop(self.emb(ids))

    m = Dropping()
    loop = OnlinePreferenceLoop(m, "dpo", torch.optim.SGD(m.parameters(), lr=0.1), PreferenceOracle(reward=frac_a),
                                [[A], [B]] * 4, samples_per_prompt=2, steps_per_iteration=1, batch_size=4,
                                max_new_tokens=3, eos_token_id=EOS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loop.run_iteration()
    assert m.drop.p == 0.3
