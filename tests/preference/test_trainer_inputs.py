"""PreferenceTrainer under bad input and faults (issue 8, items 4 and 5): cached reference log-probs are never
another example's, bad token ids get a ValueError naming the field and the example, and checkpoint loads are
all or nothing with one clear error for a file that is not a trainer checkpoint."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise.preference.logprobs import collate_preferences
from gradwise.preference.trainer import CHECKPOINT_FORMAT, PreferenceTrainer
from lm_fixtures import TinyGRULM

torch.set_num_threads(1)
V = 10  # TinyGRULM's vocabulary


def _dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta=0.1):
    return -F.logsigmoid(beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)))


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, V, (3,), generator=g).tolist()
        out.append({"id": i, "prompt": prompt, "chosen": [prompt[-1]] * 2, "rejected": [prompt[-1] % (V - 1) + 1]})
    return out


def _trainer(model=None, **kw):
    model = model if model is not None else TinyGRULM(0)
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 2)
    opt = kw.pop("opt", None) or torch.optim.AdamW(model.parameters(), lr=1e-2)
    return PreferenceTrainer(model, _dpo, opt, ref_model=kw.pop("ref_model", TinyGRULM(1)), **kw)


def _fresh_ref(examples):
    """Reference log-probs of ``examples`` from a trainer with an empty cache (the same reference weights)."""
    return _trainer().compute_logps(examples)


# --------------------------------------------------------------------- item 4: the reference cache

def test_duplicate_ids_within_a_dataset_get_their_own_reference_logps():
    a, b = _data(2)
    b = {**b, "id": a["id"]}  # the same id, other tokens: a copy-paste slip in a real dataset
    tr = _trainer()
    tr.precompute_reference([a])  # a is cached first; b, one batch later, must not be served a's numbers
    got = tr.compute_logps([b])
    want = _fresh_ref([b])
    torch.testing.assert_close(got["ref_chosen_logps"], want["ref_chosen_logps"])
    torch.testing.assert_close(got["ref_rejected_logps"], want["ref_rejected_logps"])
    assert not torch.allclose(got["ref_chosen_logps"], _fresh_ref([a])["ref_chosen_logps"])
    # within one batch, too
    both = _trainer().compute_logps([a, b])
    torch.testing.assert_close(both["ref_chosen_logps"], _fresh_ref([a])["ref_chosen_logps"].new_tensor(
        [_fresh_ref([a])["ref_chosen_logps"].item(), want["ref_chosen_logps"].item()]))


def test_train_and_eval_sets_sharing_ids_do_not_share_cached_reference_logps():
    train, evals = _data(4, seed=0), _data(4, seed=1)  # both number their examples 0..3
    tr = _trainer()
    tr.train(train, steps=1)
    got = tr.compute_logps(evals)
    want = _fresh_ref(evals)
    torch.testing.assert_close(got["ref_chosen_logps"], want["ref_chosen_logps"])
    torch.testing.assert_close(got["ref_rejected_logps"], want["ref_rejected_logps"])
    # and evaluate's loss is that of a trainer that never saw the training set's cache
    tr2 = _trainer()
    tr2.model.load_state_dict(tr.model.state_dict())
    assert tr.evaluate(evals)["loss"] == pytest.approx(tr2.evaluate(evals)["loss"], rel=1e-6)


# --------------------------------------------------------------------- item 4: token ids

@pytest.mark.parametrize("field, value, expect", [
    ("prompt", [1.0, 2.0, 3.0], r"Invalid prompt: position 0 holds 1\.0 \(float\); token ids must be integers"),
    ("chosen", [4, 2.7], r"Invalid chosen: position 1 holds 2\.7"),
    ("rejected", [-100, 3], r"Invalid rejected: token id -100 at position 0; accepted: 0 <= id < 10 .*-100 marks"),
    ("chosen", [3, V], rf"Invalid chosen: token id {V} at position 1; accepted: 0 <= id < {V}"),
    ("prompt", torch.tensor([1.0, 2.0]), r"Invalid prompt: expected a 1-D integer tensor"),
    ("chosen", [True, 2], r"Invalid chosen: position 0 holds True"),
])
@pytest.mark.parametrize("entry", ["train", "evaluate", "precompute_reference"])
def test_bad_token_ids_name_the_field_and_the_example(field, value, expect, entry):
    data = _data(4)
    data[3] = {**data[3], field: value}
    tr = _trainer(shuffle=False, batch_size=4)  # one step: it must be refused as a whole
    before = copy.deepcopy(tr.model.state_dict())
    with pytest.raises(ValueError, match=expect) as exc:
        getattr(tr, entry)(data)
    assert r"[in dataset[3] (id 3)]" in str(exc.value)
    if entry == "train":  # the step was refused before any update
        assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items()) and tr.step == 0


def test_collate_names_the_example_by_place_and_id_and_checks_vocab_size():
    ok = {"prompt": [1, 2], "chosen": [3], "rejected": [4]}
    with pytest.raises(ValueError, match=r"token id -100 .* \[in examples\[1\] \(id 'b'\)\]"):
        collate_preferences([ok, {**ok, "id": "b", "chosen": [-100]}], pad_token_id=0)
    with pytest.raises(ValueError, match=r"Invalid completions\[1\]: token id 7 .*< 5 .*\[in examples\[0\]\]"):
        collate_preferences([{"prompt": [1], "completions": [[2], [7]]}], pad_token_id=0, vocab_size=5)
    with pytest.raises(ValueError, match="Invalid vocab_size"):
        collate_preferences([ok], pad_token_id=0, vocab_size=0)
    # numpy-style integers are fine; nothing is truncated
    import numpy as np
    b = collate_preferences([{"prompt": np.array([1, 2]).tolist(), "chosen": [np.int64(3)], "rejected": [4]}],
                            pad_token_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [1, 2, 4]]


class _TwoEmbeddings(nn.Module):
    """Token and position embeddings (the trainer cannot tell which is the vocabulary), a head of 10 logits
    but a token table of 16: ids 10..15 pass the embedding and would index past the logits."""

    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(16, 8), nn.Embedding(32, 8)
        self.head = nn.Linear(8, V)

    def forward(self, input_ids):
        return self.head(self.tok(input_ids) + self.pos(torch.arange(input_ids.shape[1])))


def test_vocab_read_from_the_logits_when_the_model_does_not_say_it():
    data = _data(4)
    data[2] = {**data[2], "rejected": [12]}
    tr = PreferenceTrainer(_TwoEmbeddings(), _dpo, torch.optim.SGD(_TwoEmbeddings().parameters(), lr=0.1),
                           ref_model=_TwoEmbeddings(), progress=False, batch_size=4, shuffle=False)
    assert tr.vocab_size is None
    with pytest.raises(ValueError, match=r"Invalid token ids in dataset\[2\] \(id 2\): id 12 is outside the model's "
                                         r"vocabulary \(accepted: 0 <= id < 10"):
        tr.train(data, steps=1)
    # an explicit vocab_size checks before any forward
    tr2 = PreferenceTrainer(_TwoEmbeddings(), _dpo, torch.optim.SGD(_TwoEmbeddings().parameters(), lr=0.1),
                            ref_model=_TwoEmbeddings(), progress=False, vocab_size=V)
    with pytest.raises(ValueError, match=r"Invalid rejected: token id 12 .*\[in dataset\[2\] \(id 2\)\]"):
        tr2.evaluate(data)
    with pytest.raises(ValueError, match="Invalid vocab_size"):
        PreferenceTrainer(TinyGRULM(0), _dpo, torch.optim.SGD(TinyGRULM(0).parameters(), lr=0.1), vocab_size=-1)


# --------------------------------------------------------------------- item 5: checkpoints

def _snapshot(tr):
    return (copy.deepcopy(tr.model.state_dict()), copy.deepcopy(tr.optimizer.state_dict()), tr.step,
            dict(tr.ref_cache), list(tr.history), copy.deepcopy(tr.ref_model.state_dict()))


def _assert_unchanged(tr, snap):
    model, opt, step, cache, hist, ref = snap
    now = tr.model.state_dict()
    assert all(torch.equal(v, now[k]) for k, v in model.items())
    o = tr.optimizer.state_dict()
    assert o["param_groups"] == opt["param_groups"]
    assert o["state"].keys() == opt["state"].keys()
    for i, st in opt["state"].items():
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(o["state"][i][k]))
    assert tr.step == step and tr.ref_cache == cache and tr.history == hist
    assert all(torch.equal(v, tr.ref_model.state_dict()[k]) for k, v in ref.items())


@pytest.fixture
def trained():
    tr = _trainer(ref_model=None)  # the trainer's own reference copy goes into checkpoints
    tr.train(_data(4), steps=2)
    return tr


def _other(tmp_path, name, build):
    """A checkpoint of a trainer built by ``build``, trained a step so every part differs."""
    tr = build()
    tr.train(_data(4, seed=5), steps=1)
    path = tmp_path / name
    tr.save_checkpoint(path)
    return path


def test_checkpoint_round_trip_is_tagged(tmp_path, trained):
    trained.save_checkpoint(tmp_path / "ck.pt")
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["version"] == 2
    fresh = _trainer(ref_model=None)
    fresh.load_checkpoint(tmp_path / "ck.pt")
    assert fresh.step == 2 and fresh.ref_cache == trained.ref_cache


def test_optimizer_that_does_not_fit_leaves_everything_as_it_was(tmp_path, trained):
    """The model used to be loaded before the optimizer refused its state."""
    def build():
        model = TinyGRULM(3)
        opt = torch.optim.AdamW([{"params": [model.emb.weight]}, {"params": list(model.rnn.parameters())
                                                                  + list(model.head.parameters())}], lr=1e-2)
        return _trainer(model, opt=opt, ref_model=None)
    path = _other(tmp_path, "other_groups.pt", build)
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=r"Invalid checkpoint .*optimizer has parameter groups of \[1, 6\] "
                                         r"parameters, this trainer's optimizer \[7\]"):
        trained.load_checkpoint(path)
    _assert_unchanged(trained, snap)


def test_optimizer_refusing_its_state_is_rolled_back(tmp_path, trained, monkeypatch):
    path = _other(tmp_path, "ok.pt", lambda: _trainer(TinyGRULM(4), ref_model=None))
    snap = _snapshot(trained)
    real = trained.optimizer.load_state_dict
    calls = []

    def refuse_first(sd):  # loads (changing the state), then fails: the trainer must put it back
        calls.append(1)
        real(sd)
        if len(calls) == 1:
            raise KeyError("'exp_avg_sq'")
    monkeypatch.setattr(trained.optimizer, "load_state_dict", refuse_first)
    with pytest.raises(ValueError, match=r"refused the saved state \(KeyError.*nothing was loaded"):
        trained.load_checkpoint(path)
    _assert_unchanged(trained, snap)


def test_model_of_another_shape_leaves_everything_as_it_was(tmp_path, trained):
    path = _other(tmp_path, "wide.pt", lambda: _trainer(TinyGRULM(0, dim=8), ref_model=None))
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=r"'model' has 'emb.weight' of shape \(10, 8\), this trainer's model "
                                         r"\(10, 16\)"):
        trained.load_checkpoint(path)
    _assert_unchanged(trained, snap)


@pytest.mark.parametrize("kind", ["bare_state_dict", "optimizer_state", "truncated", "text", "other_format",
                                  "newer_version", "bad_step", "no_rng"])
def test_files_that_are_not_trainer_checkpoints_get_one_clear_error(tmp_path, trained, kind):
    path = tmp_path / f"{kind}.pt"
    trained.save_checkpoint(tmp_path / "good.pt")
    good = torch.load(tmp_path / "good.pt", weights_only=True)
    expect = {
        "bare_state_dict": (lambda: torch.save(trained.model.state_dict(), path),
                            r"it is a bare state_dict of \d+ tensors \(e\.g\. 'emb\.weight'\)"),
        "optimizer_state": (lambda: torch.save(trained.optimizer.state_dict(), path), "an optimizer state_dict"),
        "truncated": (lambda: path.write_bytes((tmp_path / "good.pt").read_bytes()[:300]),
                      "cannot be read as a torch file, so it is truncated, corrupt or of another format"),
        "text": (lambda: path.write_text("step: 3\n"), "cannot be read as a torch file"),
        "other_format": (lambda: torch.save({**good, "format": "trl.DPOTrainer"}, path),
                         r"it is a 'trl\.DPOTrainer' file"),
        "newer_version": (lambda: torch.save({**good, "version": 9}, path),
                          "format version is 9; this gradwise reads versions 1 to 2"),
        "bad_step": (lambda: torch.save({**good, "step": -1}, path), r"'step' is -1"),
        "no_rng": (lambda: torch.save({**good, "rng": {}}, path), "no CPU generator state"),
    }
    write, message = expect[kind]
    write()
    snap = _snapshot(trained)
    with pytest.raises(ValueError, match=message) as exc:
        trained.load_checkpoint(path)
    assert "expected a gradwise.PreferenceTrainer checkpoint" in str(exc.value) and "\n" not in str(exc.value)
    _assert_unchanged(trained, snap)


def test_untagged_checkpoint_of_the_previous_version_loads_without_its_id_keyed_cache(tmp_path, trained):
    state = trained.state_dict()
    del state["format"], state["version"]
    state["ref_cache"] = {**state["ref_cache"], ("0", 0): (-1.0, -0.5)}  # version 1's id key
    torch.save(state, tmp_path / "v1.pt")
    fresh = _trainer(ref_model=None)
    fresh.load_checkpoint(tmp_path / "v1.pt")
    assert fresh.step == 2 and fresh.ref_cache == trained.ref_cache


def test_revision_prompts_with_bad_token_ids_are_refused():
    from gradwise.preference import srpo_loss

    def make(revision_prompt):
        model = TinyGRULM(0)
        return PreferenceTrainer(model, srpo_loss, torch.optim.SGD(model.parameters(), lr=0.1), progress=False,
                                 revision_prompt=revision_prompt)
    data = _data(2)
    with pytest.raises(ValueError, match=r"Invalid revision_prompt: it built a prompt with token id 12; accepted: "
                                         r"0 <= id < 10"):
        make(12).compute_logps(data)
    with pytest.raises(ValueError, match=r"Invalid revision_prompt: the function must return a list of token ids"):
        make(lambda p, d: p + d + [2.5]).compute_logps(data)
    with pytest.raises(ValueError, match=r"Invalid revision_prompt: the function must return a list of token ids"):
        make(lambda p, d: p + d + [-100]).compute_logps(data)
    import numpy as np
    q = make(lambda p, d: [np.int64(t) for t in p + d] + [9]).compute_logps(data)
    assert torch.isfinite(q["improve_w_given_l_logps"] if "improve_w_given_l_logps" in q
                          else next(v for k, v in q.items() if k.startswith("improve_"))).all()
