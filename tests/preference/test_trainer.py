"""Log-prob helpers, collate and PreferenceTrainer (gradwise.preference.logprobs / .trainer)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.preference import logprobs as lpmod
from gradwise.preference.logprobs import collate_preferences, concat_pairs, ranked_pairs, sequence_logps, token_logps
from gradwise.preference.trainer import PreferenceObjective, PreferenceTrainer
from lm_fixtures import CountingLM as _Counting
from lm_fixtures import TinyGRULM

torch.set_num_threads(1)


# --------------------------------------------------------------------- private objectives (develop-against)

def _dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta=0.1):
    """Sigmoid DPO (Rafailov et al. 2023), per pair."""
    logits = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * logits)


def _simpo(policy_chosen_avg_logps, policy_rejected_avg_logps, *, beta=2.0, gamma=0.5):
    """SimPO (Meng et al. 2024), per pair; gamma is the reward margin."""
    return -F.logsigmoid(beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma)


# --------------------------------------------------------------------- naive references

def _naive_token_logps(logits, labels, mask, shift):
    B, T, V = logits.shape
    out = torch.zeros(B, T, dtype=torch.promote_types(logits.dtype, torch.float32))
    for b in range(B):
        for t in range(T):
            src = t - 1 if shift else t
            if src < 0 or not bool(mask[b, t]):
                continue
            out[b, t] = torch.log_softmax(logits[b, src].to(out.dtype), -1)[labels[b, t]]
    return out


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_token_and_sequence_logps_match_naive_loop(shift, dtype):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 6, 7, generator=g)).to(dtype)
    labels = torch.randint(0, 7, (3, 6), generator=g)
    mask = torch.rand(3, 6, generator=g) > 0.3
    ref = _naive_token_logps(logits, labels, mask, shift)
    got = token_logps(logits, labels, mask, shift=shift)
    assert got.dtype == dtype and got.shape == (3, 6)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    # ignore_index instead of a mask (labels at ignored positions are arbitrary)
    lab = labels.masked_fill(~mask, -100)
    torch.testing.assert_close(token_logps(logits, lab, shift=shift), ref, rtol=1e-6, atol=1e-6)
    counted = (mask[:, 1:] if shift else mask).sum(-1).clamp_min(1)
    torch.testing.assert_close(sequence_logps(logits, labels, mask, shift=shift), ref.sum(-1))
    torch.testing.assert_close(sequence_logps(logits, lab, shift=shift, average=True), ref.sum(-1) / counted)


def test_token_logps_blocked_path_and_half_precision(monkeypatch):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 9, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    full = token_logps(logits, labels, mask)
    gfull, = torch.autograd.grad(full.sum(), logits)
    for elems in (20, 3):  # whole sequences per block / blocks along time
        monkeypatch.setattr(lpmod, "_BLOCK_ELEMS", elems)
        got = token_logps(logits, labels, mask)
        torch.testing.assert_close(got, full)
        gg, = torch.autograd.grad(got.sum(), logits)
        torch.testing.assert_close(gg, gfull)
    # the gradient is that of log_softmax + gather
    naive = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels[:, 1:, None]).sum()
    torch.testing.assert_close(gfull, torch.autograd.grad(naive, logits)[0])
    half = token_logps(logits.detach().bfloat16(), labels, mask)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, _naive_token_logps(logits.detach().bfloat16(), labels, mask, True),
                               rtol=1e-5, atol=1e-5)


def test_logps_bad_arguments():
    with pytest.raises(ValueError, match="logits"):
        token_logps(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        token_logps(torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        token_logps(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(3, 3))


def test_concat_pairs_layout_masks_and_truncation():
    exs = [{"prompt": [5, 6], "chosen": [7], "rejected": [8, 9]},
           {"prompt": [4], "chosen": [3, 3, 3], "rejected": [2]}]
    b = concat_pairs(exs, pad_token_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [4, 3, 3, 3], [5, 6, 8, 9], [4, 2, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["loss_mask"].int().tolist() == [[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 0]]
    assert b["labels"][0].tolist() == [-100, -100, 7, -100]
    assert b["chosen_index"].tolist() == [0, 1] and b["rejected_index"].tolist() == [2, 3]
    # prompt keeps its end, then the sequence keeps its start
    t = concat_pairs([{"prompt": [1, 2, 3, 4], "chosen": [5, 6, 7], "rejected": [8]}], pad_token_id=0,
                     max_length=4, max_prompt_length=2)
    assert t["input_ids"].tolist() == [[3, 4, 5, 6], [3, 4, 8, 0]]
    with pytest.raises(ValueError, match="no tokens left"):
        concat_pairs([{"prompt": [1, 2, 3], "chosen": [5], "rejected": [8]}], pad_token_id=0, max_length=3)
    with pytest.raises(ValueError, match="chosen"):
        concat_pairs([{"prompt": [1], "completions": [[2], [3]]}], pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        concat_pairs(exs, pad_token_id=None)
    with pytest.raises(ValueError, match="prompt"):
        concat_pairs([{"prompt": "text", "chosen": [1], "rejected": [2]}], pad_token_id=0)
    with pytest.raises(ValueError, match="BOS"):
        concat_pairs([{"prompt": [], "chosen": [1], "rejected": [2]}], pad_token_id=0)



def test_wrong_keys_name_the_expected_and_given_ones():
    """A TRL-tokenized row used to fail with "Invalid prompt: empty ... BOS token"."""
    trl_row = {"prompt_input_ids": [1, 5], "chosen_input_ids": [6, 2], "rejected_input_ids": [7, 2]}
    with pytest.raises(ValueError) as exc:
        concat_pairs([trl_row], pad_token_id=0)
    msg = str(exc.value)
    assert "BOS" not in msg and "no 'prompt'" in msg
    assert "expected 'prompt' with 'chosen' and 'rejected'" in msg and "'completions'" in msg
    assert "got keys ['chosen_input_ids', 'prompt_input_ids', 'rejected_input_ids']" in msg
    assert "'prompt_input_ids' -> 'prompt', 'chosen_input_ids' -> 'chosen', 'rejected_input_ids' -> 'rejected'" \
        in msg
    with pytest.raises(ValueError, match=r"no 'chosen' and 'rejected' .* got keys \['chosen', 'prompt'\]"):
        collate_preferences([{"prompt": [1], "chosen": [2]}], pad_token_id=0)
    trainer = PreferenceTrainer(TinyGRULM(0), _dpo, torch.optim.SGD(TinyGRULM(0).parameters(), lr=0.1),
                                progress=False)
    with pytest.raises(ValueError, match="got keys \\['chosen_input_ids'"):  # the trainer says the same
        trainer.train([trl_row])


@pytest.mark.parametrize("example, name", [
    ({"prompt": [1, 5], "chosen": [], "rejected": [7]}, "chosen"),
    ({"prompt": [1, 5], "chosen": [6], "rejected": torch.tensor([], dtype=torch.long)}, "rejected"),
    ({"prompt": [1, 5], "completions": [[6], []]}, r"completions\[1\]"),
])
def test_empty_completion_is_called_empty(example, name):
    """It used to be blamed on truncation ("no tokens left after truncation to max_length=None")."""
    with pytest.raises(ValueError, match=f"Invalid {name}: empty; a completion needs at least one token") as exc:
        collate_preferences([example], pad_token_id=0)
    assert "truncation" not in str(exc.value)


def test_ranked_lists_expand_to_pairs():
    assert ranked_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert ranked_pairs(3, strategy="adjacent") == [(0, 1), (1, 2)]
    assert ranked_pairs(3, strategy="best_vs_rest") == [(0, 1), (0, 2)]
    assert ranked_pairs(3, scores=[0.1, 0.9, 0.1]) == [(1, 0), (1, 2)]  # ties form no pair
    with pytest.raises(ValueError, match="strategy"):
        ranked_pairs(3, strategy="bogus")
    b = collate_preferences([{"prompt": [1], "completions": [[2], [3], [4]]},
                             {"prompt": [1], "chosen": [5], "rejected": [6]}], pad_token_id=0)
    rows = b["input_ids"][:, 1].tolist()
    assert rows == [2, 5, 3, 6, 4]  # first completions, then second, then third
    pairs = [(rows[c], rows[r]) for c, r in zip(b["chosen_index"].tolist(), b["rejected_index"].tolist())]
    assert pairs == [(2, 3), (2, 4), (3, 4), (5, 6)]
    assert b["pair_example"].tolist() == [0, 0, 0, 1]


# --------------------------------------------------------------------- tiny models and data

V = 10


class TinyTransformerLM(nn.Module):
    """Embedding + one causal transformer layer + head; takes an attention mask."""

    def __init__(self, vocab=V, dim=16, max_len=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        T = input_ids.shape[1]
        x = self.emb(input_ids) + self.pos(torch.arange(T))
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        pad = None if attention_mask is None else attention_mask == 0
        return self.head(self.layer(x, src_mask=causal, src_key_padding_mask=pad))


def _data(n=32, seed=0):
    """Chosen continues the prompt's last token twice; rejected with the next token: learnable."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, V, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        last = prompt[-1]
        out.append({"id": i, "prompt": prompt, "chosen": [last, last], "rejected": [last % (V - 1) + 1] * 2})
    return out


def _trainer(model, objective=_dpo, opt=None, **kw):
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-2)
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 8)
    return PreferenceTrainer(model, objective, opt, **kw)


# --------------------------------------------------------------------- trainer

def test_dpo_training_lowers_loss_and_raises_reward_accuracy():
    torch.manual_seed(0)
    data = _data(32)
    tr = _trainer(TinyGRULM(), beta=0.5)
    before = tr.evaluate(data)
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at start
    assert before["reward_accuracy"] == 0.0 and before["pairs"] == 32
    hist = tr.train(data, epochs=5)
    assert len(hist) == 20 and hist[-1]["step"] == 20 and hist[-1]["epoch"] == 4
    after = tr.evaluate(data)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["reward_accuracy"] >= 0.9 and after["reward_margin"] > 0
    assert set(hist[0]) >= {"loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                            "chosen_logps", "rejected_logps", "pairs", "step", "epoch", "lr"}


@pytest.mark.parametrize("model_cls", [TinyGRULM, TinyTransformerLM])
def test_concatenated_forward_equals_separate_forwards(model_cls):
    torch.manual_seed(0)
    model = model_cls().eval()
    data = _data(6, seed=3)
    data[0]["chosen"] = [1, 2, 3, 4, 5]  # uneven lengths -> padding
    tr = _trainer(model)
    q = tr.compute_logps(data)
    with torch.no_grad():
        for i, ex in enumerate(data):
            for which in ("chosen", "rejected"):
                ids = torch.tensor([ex["prompt"] + ex[which]])
                m = torch.zeros_like(ids, dtype=torch.bool)
                m[0, len(ex["prompt"]):] = True
                s = sequence_logps(model(ids), ids, m)
                a = sequence_logps(model(ids), ids, m, average=True)
                torch.testing.assert_close(q[f"policy_{which}_logps"][i], s[0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(q[f"policy_{which}_avg_logps"][i], a[0], rtol=1e-5, atol=1e-5)
                assert q[f"{which}_lengths"][i] == len(ex[which])
                # left-aligned per-token log-probs of the completion
                n = len(ex[which])
                tok = token_logps(model(ids), ids, m)[0, len(ex["prompt"]):]
                torch.testing.assert_close(q[f"policy_{which}_token_logps"][i, :n], tok, rtol=1e-5, atol=1e-5)
                assert q[f"{which}_mask"][i].tolist() == [True] * n + [False] * (q[f"{which}_mask"].shape[1] - n)
                assert (q[f"policy_{which}_token_logps"][i, n:] == 0).all()
    # padded to the longest completion of the batch (data[0]["chosen"], 5 tokens)
    assert q["chosen_mask"].shape[1] == q["rejected_mask"].shape[1] == 5
    # reference == policy at start
    torch.testing.assert_close(q["ref_chosen_logps"], q["policy_chosen_logps"], rtol=1e-5, atol=1e-5)


def test_reference_log_probs_computed_once_per_example_and_cached():
    torch.manual_seed(0)
    data = _data(12)
    model = TinyGRULM()
    ref = _Counting(TinyGRULM())
    tr = _trainer(model, ref_model=ref, batch_size=4)
    tr.train(data, epochs=3)
    tr.evaluate(data)
    assert ref.rows == 2 * len(data) and ref.calls == 3  # one pass over the data, chosen+rejected per example
    assert tr.ref_forward_rows == 24 and len(tr.ref_cache) == 24
    # the key is the content, with or without ids: the same sequences as a ranked list, or without ids, hit
    tr.evaluate([{"id": 0, "prompt": data[0]["prompt"], "completions": [data[0]["chosen"], data[0]["rejected"]]}])
    tr.evaluate([{k: v for k, v in ex.items() if k != "id"} for ex in data[:2]])
    assert ref.rows == 24
    # a new sequence under a known id is scored, not served another example's log-probs
    tr.evaluate([{"id": 0, "prompt": data[0]["prompt"], "chosen": [1, 2, 3], "rejected": data[0]["rejected"]}])
    assert ref.rows == 25
    # precompute fills the cache up front
    tr2 = _trainer(TinyGRULM(), ref_model=_Counting(TinyGRULM()))
    assert tr2.precompute_reference(data) == 24
    tr2.train(data, steps=2)
    assert tr2.ref_model.rows == 24


def test_reference_free_objectives_build_no_reference():
    torch.manual_seed(0)
    model = TinyGRULM()
    tr = _trainer(model, _simpo)
    assert tr.ref_model is None and not tr.uses_reference and tr.beta == 2.0
    assert tr.objective.reward_kind == "avg_logps"
    data = _data(8)
    m = tr.train(data, steps=1)[0]
    q = tr.compute_logps(data)
    assert "ref_chosen_logps" not in q and tr.ref_cache == {}
    assert math.isfinite(m["loss"])
    # DPO with reference_free=True: zero reference, reward = beta * summed log-prob
    with pytest.warns(UserWarning, match="ignored"):
        tr2 = _trainer(model, _dpo, reference_free=True, ref_model=TinyGRULM(), beta=0.2)
    assert tr2.ref_model is None
    ev = tr2.evaluate(data)
    q = tr2.compute_logps(data)
    assert ev["chosen_reward"] == pytest.approx(0.2 * q["policy_chosen_logps"].mean().item(), rel=1e-6)
    expected = _dpo(q["policy_chosen_logps"], q["policy_rejected_logps"], 0 * q["policy_chosen_logps"],
                    0 * q["policy_chosen_logps"], beta=0.2).mean().item()
    assert ev["loss"] == pytest.approx(expected, rel=1e-6)


def _grads_after_one_step(batch_size, accum):
    torch.manual_seed(0)
    model = TinyGRULM(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tr = _trainer(model, opt=opt, batch_size=batch_size, grad_accum_steps=accum, beta=1.0)
    data = _data(8)
    tr.train(data, steps=1)  # policy == reference at step 1: take a second step for a non-trivial check
    m = tr.train(data, steps=2)[0]
    return [p.grad.clone() for p in model.parameters()], [p.detach().clone() for p in model.parameters()], m


def test_gradient_accumulation_of_half_batches_equals_full_batch():
    g_full, p_full, m_full = _grads_after_one_step(4, 1)
    g_acc, p_acc, m_acc = _grads_after_one_step(2, 2)
    for a, b in zip(g_full, g_acc):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for a, b in zip(p_full, p_acc):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert m_full["pairs"] == m_acc["pairs"] == 4
    for k in ("loss", "reward_accuracy", "reward_margin"):
        assert m_full[k] == pytest.approx(m_acc[k], abs=1e-9)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=1e-2),
    lambda ps: __import__("gradwise.optim", fromlist=["Lion"]).Lion(ps, lr=1e-3, fused=False),
])
def test_checkpoint_resume_continues_identically(tmp_path, make_opt):
    data = _data(12)

    def build():
        torch.manual_seed(0)
        model = TinyGRULM(dropout=0.2)  # dropout kept: the RNG state must be restored
        sched_opt = make_opt(model.parameters())
        sched = torch.optim.lr_scheduler.StepLR(sched_opt, step_size=2, gamma=0.5)
        return _trainer(model, opt=sched_opt, scheduler=sched, batch_size=2, grad_accum_steps=2,
                        disable_dropout=False)

    full = build()
    full.train(data, steps=7)  # crosses an epoch boundary (3 steps per epoch)
    part = build()
    part.train(data, steps=4)
    part.save_checkpoint(tmp_path / "ck.pt")
    torch.manual_seed(123)  # disturb the RNG and the weights
    for p in part.model.parameters():
        p.data.normal_()
    resumed = build()
    resumed.load_checkpoint(tmp_path / "ck.pt")
    assert resumed.step == 4 and len(resumed.ref_cache) == len(part.ref_cache)
    rows = resumed.ref_forward_rows
    resumed.train(data, steps=7)
    assert resumed.ref_forward_rows == rows  # the reference cache came back
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("opt_name", ["Lion", "AdaBelief", "AdamW"])
def test_works_with_gradwise_and_torch_optimizers(opt_name):
    import gradwise.optim as gopt

    torch.manual_seed(0)
    model = TinyGRULM()
    if opt_name == "AdamW":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    elif opt_name == "Lion":
        opt = gopt.Lion(model.parameters(), lr=1e-3, fused=False)
    else:
        opt = gopt.AdaBelief(model.parameters(), lr=1e-2, fused=False)
    data = _data(16)
    tr = _trainer(model, opt=opt, beta=0.5, max_grad_norm=1.0)
    start = tr.evaluate(data)["loss"]
    tr.train(data, epochs=3)
    assert tr.evaluate(data)["loss"] < start


def test_objective_adapter_binding_and_validation():
    o = PreferenceObjective(_dpo)
    assert o.inputs == ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    assert o.needs_reference and o.default_beta() == 0.1 and o.reward_kind == "ratio"
    p = PreferenceObjective(functools.partial(_simpo, gamma=1.0))
    assert p.inputs == ("policy_chosen_avg_logps", "policy_rejected_avg_logps") and not p.needs_reference
    # unnamed positional parameters: 4 -> DPO order, 2 -> policy summed log-probs
    assert PreferenceObjective(lambda a, b, c, d: a).inputs == o.inputs
    assert PreferenceObjective(lambda a, b: a).inputs == ("policy_chosen_logps", "policy_rejected_logps")
    # an extra quantity by keyword (e.g. an SFT term on the chosen average)
    rpo = PreferenceObjective(lambda policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                              ref_rejected_logps, *, policy_chosen_avg_logps, alpha=1.0: -alpha
                              * policy_chosen_avg_logps)
    assert rpo.keyword_inputs == ("policy_chosen_avg_logps",)
    with pytest.raises(ValueError, match="inputs"):
        PreferenceObjective(lambda a, b, c: a)
    with pytest.raises(ValueError, match="inputs"):
        PreferenceObjective(_dpo, inputs=("nonsense",))
    with pytest.raises(ValueError, match="reward"):
        PreferenceObjective(_dpo, reward="bogus")
    model = TinyGRULM()
    with pytest.raises(ValueError, match="beta"):
        _trainer(model, PreferenceObjective(_dpo, beta=0.3), beta=0.5)
    for kw, name in [(dict(batch_size=0), "batch_size"), (dict(grad_accum_steps=1.5), "grad_accum_steps"),
                     (dict(beta=-1.0), "beta"), (dict(max_length=0), "max_length"),
                     (dict(ranked_strategy="x"), "ranked_strategy"), (dict(max_grad_norm=0), "max_grad_norm")]:
        with pytest.raises(ValueError, match=name):
            _trainer(model, **kw)
    tr = _trainer(model, beta=0.5)
    assert tr.objective.hyperparameters["beta"] == 0.5  # forwarded to the objective
    with pytest.raises(ValueError, match="epochs/steps"):
        tr.train(_data(4), epochs=1, steps=1)
    # objectives may return their own rewards, and ranked lists train
    own = PreferenceObjective(lambda a, b: (-F.logsigmoid(a - b), a.detach() * 0 + 1, b.detach() * 0))
    tr = _trainer(TinyGRULM(), own)
    ranked = [{"prompt": [1, 2], "completions": [[3, 3], [4], [5, 6, 7]]}] * 3
    m = tr.train(ranked, steps=1)[0]
    assert m["pairs"] == 9 and m["reward_accuracy"] == 1.0 and m["chosen_reward"] == 1.0


def test_optional_quantity_parameters_are_opt_in():
    def ipo_like(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *,
                 beta=0.1, chosen_lengths=None, rejected_lengths=None):
        return policy_chosen_logps if chosen_lengths is None else policy_chosen_logps / chosen_lengths

    assert PreferenceObjective(ipo_like).keyword_inputs == ()
    o = PreferenceObjective(ipo_like, keyword_inputs=("chosen_lengths", "rejected_lengths"))
    q = {"policy_chosen_logps": torch.tensor([-6.0]), "policy_rejected_logps": torch.tensor([-1.0]),
         "ref_chosen_logps": torch.tensor([0.0]), "ref_rejected_logps": torch.tensor([0.0]),
         "chosen_lengths": torch.tensor([3.0]), "rejected_lengths": torch.tensor([1.0])}
    assert o(q, beta=1.0)[0].item() == -2.0
    with pytest.raises(ValueError, match="keyword_inputs"):
        PreferenceObjective(ipo_like, keyword_inputs=("lengths",))


def _library_objectives():
    import gradwise.preference as pref

    cases = []
    for name, kw in [("dpo_loss", {}), ("simpo_loss", {}), ("ipo_loss", {"keyword_inputs": ("chosen_lengths",
                                                                                             "rejected_lengths")}),
                     ("rpo_loss", {"keyword_inputs": ("chosen_lengths",)}), ("fdpo_loss", {"divergence": "js"}),
                     ("cpl_loss", {"inputs": ("policy_chosen_token_logps", "policy_rejected_token_logps"),
                                   "keyword_inputs": ("chosen_mask", "rejected_mask"), "discount": 0.9})]:
        if hasattr(pref, name):
            cases.append(pytest.param(getattr(pref, name), kw, id=name))
    return cases or [pytest.param(None, {}, marks=pytest.mark.skip("no library objectives yet"))]


@pytest.mark.parametrize("fn,kw", _library_objectives())
def test_library_objectives_plug_in(fn, kw):
    torch.manual_seed(0)
    data = _data(16)
    obj = PreferenceObjective(fn, **kw)
    tr = _trainer(TinyGRULM(), obj)
    assert tr.uses_reference == obj.needs_reference
    start = tr.evaluate(data)
    hist = tr.train(data, epochs=3)
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert tr.evaluate(data)["loss"] < start["loss"]


def test_with_the_library_dpo_loss_when_present():
    import gradwise.preference as pref

    if not hasattr(pref, "dpo_loss"):
        pytest.skip("gradwise.preference.dpo_loss not there yet")
    torch.manual_seed(0)
    data = _data(8)
    q_tr = _trainer(TinyGRULM(), pref.dpo_loss, beta=0.5)
    q_tr.train(data, steps=2)
    q = q_tr.compute_logps(data)
    ours = _dpo(*(q[k] for k in PreferenceObjective(_dpo).inputs), beta=0.5)
    theirs = pref.dpo_loss(*(q[k] for k in PreferenceObjective(_dpo).inputs), beta=0.5)
    torch.testing.assert_close(theirs, ours)


def test_hugging_face_gpt2_from_config():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                  resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    data = _data(8)
    data[0]["chosen"] = [1, 2, 3, 4, 5]
    tr = _trainer(model, beta=0.5, batch_size=4)  # dropout disabled by default
    q = tr.compute_logps(data)
    model.eval()
    with torch.no_grad():  # the padded, concatenated batch equals unpadded single forwards
        for i, ex in enumerate(data):
            ids = torch.tensor([ex["prompt"] + ex["chosen"]])
            m = torch.zeros_like(ids, dtype=torch.bool)
            m[0, len(ex["prompt"]):] = True
            s = sequence_logps(model(ids).logits, ids, m)[0]
            torch.testing.assert_close(q["policy_chosen_logps"][i], s, rtol=1e-5, atol=1e-5)
    start = tr.evaluate(data)["loss"]
    tr.train(data, epochs=4)
    assert tr.evaluate(data)["loss"] < start


# --------------------------------------------------------------------- host reads per step

class _Reads(torch.Tensor):
    """Logits that record every read of their (derived) values back to Python."""
    reads: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("item", "tolist", "__int__", "__float__", "__bool__", "numpy"):
            cls.reads.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


class _ReadsLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = TinyGRULM()

    def forward(self, input_ids):
        return self.inner(input_ids).as_subclass(_Reads)


@pytest.mark.parametrize("objective, kw", [
    (_dpo, {}),
    (PreferenceObjective(lambda policy_chosen_token_logps, policy_rejected_token_logps, *, chosen_mask, rejected_mask:
                         -F.logsigmoid((policy_chosen_token_logps * chosen_mask).sum(-1)
                                       - (policy_rejected_token_logps * rejected_mask).sum(-1))), {}),
])
def test_train_step_reads_the_device_once(objective, kw):
    # the documented one read per optimizer step (the metrics), with two micro-batches and cached references
    torch.manual_seed(0)
    data = _data(16)
    data[3]["chosen"] = [1, 2, 3, 4, 5]
    tr = _trainer(_ReadsLM(), objective, batch_size=4, grad_accum_steps=2, **kw)
    tr.precompute_reference(data)
    _Reads.reads.clear()
    tr.train(data, steps=2)
    assert _Reads.reads == ["tolist", "tolist"]
    # uncached references are read back once per micro-batch that has any, to fill the cache
    if tr.uses_reference:
        tr.ref_cache.clear()
        _Reads.reads.clear()
        tr.train(data, steps=3)
        assert _Reads.reads == ["tolist"] * 3   # one per micro-batch, then the metrics


def test_tensor_learning_rate_is_reported_without_a_separate_read():
    torch.manual_seed(0)
    model = TinyGRULM()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.02))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    tr = _trainer(model, opt=opt, scheduler=sched)
    hist = tr.train(_data(16), steps=2)
    assert [h["lr"] for h in hist] == pytest.approx([0.02, 0.01])   # the rate each step used
    assert all(isinstance(h["lr"], float) for h in hist)
