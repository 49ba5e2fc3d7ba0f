"""SRPO through PreferenceTrainer: revision prompts, revision log-probs in the policy's forward pass, cached
reference revisions, and inference-time revisions (gradwise.preference.trainer / .online)."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from gradwise.preference import generate, generate_revisions, srpo_loss
from gradwise.preference.logprobs import sequence_logps
from gradwise.preference.trainer import (REVISION_QUANTITIES, PreferenceObjective, PreferenceTrainer,
                                         build_revision_prompt)
from lm_fixtures import CountingLM as Counting
from lm_fixtures import TinyGRULM as _TinyGRULM

torch.set_num_threads(1)
V, SEP, BOS = 12, 11, 10


def TinyGRULM(seed: int = 0) -> nn.Module:
    return _TinyGRULM(seed, vocab=V)


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = [BOS] + torch.randint(1, 9, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        last = prompt[-1]
        out.append({"id": i, "prompt": prompt, "chosen": [last, last], "rejected": [last % 8 + 1] * 3})
    return out


def logp(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    m = torch.zeros_like(ids, dtype=torch.bool)
    m[0, len(prompt):] = True
    with torch.no_grad():
        return sequence_logps(model(ids), ids, m)[0]


def frozen(seed):
    m = TinyGRULM(seed).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def make(objective=srpo_loss, policy=None, ref=None, **kw):
    policy = policy or TinyGRULM(0)
    kw.setdefault("revision_prompt", SEP)
    return PreferenceTrainer(policy, objective, torch.optim.Adam(policy.parameters(), lr=1e-2), ref_model=ref,
                             batch_size=4, progress=False, **kw)


def expected_revision(model, ex, a, b, revise):
    y = {"w": ex["chosen"], "l": ex["rejected"]}
    return logp(model, revise(ex["prompt"], y[b]), y[a])


# --------------------------------------------------------------------- revision prompts

def test_build_revision_prompt_and_validation():
    assert build_revision_prompt([1, 2], [3], separator=SEP) == [1, 2, 3, SEP]
    assert build_revision_prompt([1, 2], [3, 4], separator=[7, 8]) == [1, 2, 3, 4, 7, 8]
    assert build_revision_prompt([1], torch.tensor([5])) == [1, 5]
    for bad in ("x", 1.0, [1, None], True):
        with pytest.raises(ValueError, match="separator"):
            build_revision_prompt([1], [2], separator=bad)
    assert make(revision_prompt=[SEP, SEP])._revision([1], [2]) == [1, 2, SEP, SEP]
    assert set(REVISION_QUANTITIES) >= set(p for p in inspect.signature(srpo_loss).parameters
                                           if "_given_" in p)
    with pytest.raises(ValueError, match="revision_prompt"):
        make(revision_prompt=None)  # srpo_loss takes revision log-probs
    for bad in ("sep", 1.5, [1, "a"], True):
        with pytest.raises(ValueError, match="revision_prompt"):
            make(revision_prompt=bad)
    with pytest.raises(ValueError, match="revision_prompt"):
        make(revision_prompt=lambda x, y: []).compute_logps(data(1))
    with pytest.warns(UserWarning, match="revision_prompt ignored"):
        tr = make(objective=lambda a, b: a - b)
    assert tr._revision is None


# --------------------------------------------------------------------- revision log-probs

@pytest.mark.parametrize("revise", [SEP, lambda x, y: [BOS, SEP] + x[1:] + y + [SEP]], ids=["separator", "callable"])
def test_revision_log_probs_match_separate_forwards(revise):
    ds = data(6)
    policy, ref = TinyGRULM(0), frozen(1)
    obj = PreferenceObjective(srpo_loss, keyword_inputs=("improve_w_given_w_logps", "ref_w_given_w_logps"),
                              beta=0.1, alpha=0.5)
    tr = make(obj, policy=policy, ref=ref, revision_prompt=revise)
    assert set(tr._revision_combos) == {("w", "l"), ("l", "l"), ("l", "w"), ("w", "w")}
    q = tr.compute_logps(ds)
    fn = revise if callable(revise) else (lambda x, y: x + y + [SEP])
    for i, ex in enumerate(ds):
        for a, b in tr._revision_combos:
            torch.testing.assert_close(q[f"improve_{a}_given_{b}_logps"][i],
                                       expected_revision(policy, ex, a, b, fn), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(q[f"ref_{a}_given_{b}_logps"][i], expected_revision(ref, ex, a, b, fn),
                                       rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(q["policy_chosen_logps"][i], logp(policy, ex["prompt"], ex["chosen"]),
                                   rtol=1e-5, atol=1e-5)
    # the trainer's loss is srpo_loss on these quantities
    args = {n: q[n] for n in inspect.signature(srpo_loss).parameters if n in q}
    expected = srpo_loss(**args, beta=0.1, alpha=0.5).mean().item()
    assert tr.evaluate(ds)["loss"] == pytest.approx(expected, rel=1e-5)


def test_one_policy_forward_per_micro_batch_and_cached_reference_revisions():
    ds = data(8)
    policy, ref = Counting(TinyGRULM(0)), Counting(frozen(1))
    tr = make(policy=policy, ref=ref)  # srpo_loss's required inputs: 3 revision rows per pair
    assert len(tr._revision_combos) == 3
    tr.train(ds, epochs=3)
    assert policy.calls == 6 and policy.rows == 6 * 4 * (2 + 3)  # pair rows and revision rows together
    assert ref.rows == len(ds) * (2 + 3) and tr.ref_forward_rows == 40  # each sequence scored once


def test_srpo_gradients_reach_the_policy_and_steps_lower_the_loss():
    ds = data(12)
    tr = make(ref=frozen(0), beta=0.5)  # reference = the policy's start
    q = tr.compute_logps(ds, grad=True)
    assert q["improve_w_given_l_logps"].requires_grad and not q["ref_w_given_l_logps"].requires_grad
    # the revision rows carry gradient on their own
    grads = torch.autograd.grad(q["improve_w_given_l_logps"].sum(), list(tr.model.parameters()), allow_unused=True,
                                retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    losses, *_ = tr.objective(q, beta=tr.beta)
    losses.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tr.model.parameters())
    assert sum(p.grad.abs().sum() for p in tr.model.parameters()) > 0
    tr.model.zero_grad(set_to_none=True)
    before = tr.evaluate(ds)["loss"]
    tr.train(ds, steps=15)
    after = tr.evaluate(ds)
    assert after["loss"] < 0.7 * before, (before, after["loss"])
    # the revision toward y_w became likelier than keeping y_l
    q = tr.compute_logps(ds)
    g_wl = q["improve_w_given_l_logps"] - q["ref_w_given_l_logps"]
    g_ll = q["improve_l_given_l_logps"] - q["ref_l_given_l_logps"]
    assert (g_wl - g_ll).mean() > 0


def test_reference_free_srpo_and_truncation():
    ds = data(4)
    tr = make(reference_free=True)
    q = tr.compute_logps(ds)
    assert tr.ref_model is None and (q["ref_w_given_l_logps"] == 0).all()
    # max_prompt_length keeps the end of the revision prompt (the draft and the separator)
    tr = make(ref=frozen(1), max_prompt_length=3)
    q = tr.compute_logps(ds[:1])
    ex = ds[0]
    expected = logp(tr.model, (ex["prompt"] + ex["rejected"] + [SEP])[-3:], ex["chosen"])
    torch.testing.assert_close(q["improve_w_given_l_logps"][0], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- inference-time revisions

class Recorder(nn.Module):
    """Next token = (last token + 1) mod V, greedy; records the prompts it is run on."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, ids):
        self.seen.append(ids.tolist())
        return nn.functional.one_hot((ids + 1) % V, V).float() * 10 + self.w


def test_generate_revisions_conditions_on_the_previous_draft():
    m = Recorder()
    chains = generate_revisions(m, [[BOS, 2], [BOS, 5, 6]], revision_prompt=SEP, revisions=2, max_new_tokens=2,
                                temperature=0)
    assert chains[0] == [[3, 4], [0, 1], [0, 1]]  # draft after [BOS, 2]; revisions after x + draft + [SEP]
    first_calls = {tuple(r) for call in m.seen for r in call}
    assert (BOS, 2, 3, 4, SEP) in first_calls and (BOS, 2, 0, 1, SEP) in first_calls
    assert chains[1][0] == [7, 8] and len(chains[1]) == 3
    # given drafts: no draft generation; revisions=0 returns the drafts
    assert generate_revisions(m, [[BOS, 2]], revision_prompt=SEP, revisions=0, drafts=[[4]], max_new_tokens=2) \
        == [[[4]]]
    out = generate_revisions(m, [[BOS, 2]], revision_prompt=lambda x, y: y, revisions=1, drafts=[[4]],
                             max_new_tokens=1, temperature=0)
    assert out == [[[4], [5]]]
    for kw in (dict(revision_prompt=None), dict(revision_prompt=SEP, revisions=-1),
               dict(revision_prompt=SEP, drafts=[[1], [2]])):
        with pytest.raises(ValueError):
            generate_revisions(m, [[BOS]], max_new_tokens=1, **kw)


def test_generate_revisions_is_reproducible_and_matches_generate():
    m = TinyGRULM(3)
    prompts = [[BOS, 1, 2], [BOS, 4]]
    a = generate_revisions(m, prompts, revision_prompt=SEP, revisions=2, max_new_tokens=3,
                           generator=torch.Generator().manual_seed(5))
    b = generate_revisions(m, prompts, revision_prompt=SEP, revisions=2, max_new_tokens=3,
                           generator=torch.Generator().manual_seed(5))
    assert a == b
    g = torch.Generator().manual_seed(5)
    drafts = generate(m, prompts, max_new_tokens=3, generator=g)
    first = generate(m, [x + y + [SEP] for x, y in zip(prompts, drafts)], max_new_tokens=3, generator=g)
    assert [c[0] for c in a] == drafts and [c[1] for c in a] == first
