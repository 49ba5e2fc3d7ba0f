"""gradwise objectives inside TRL's DPOTrainer (gradwise.preference.trl_adapter).

Needs TRL 1.16 (``pip install 'gradwise[trl]'``); the TRL tests are skipped without it. A tiny
GPT-2 built from a config and a word-level tokenizer built in code, so nothing is downloaded.
"""
from __future__ import annotations

import copy
import importlib
import random
import sys
from functools import partial

import pytest
import torch

from gradwise.preference import PreferenceObjective, dpo_loss, fdpo_loss, ipo_loss, simpo_loss
from gradwise.preference import trl_adapter

WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    rng = random.Random(0)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = [{"prompt": text(2, 5), "chosen": " " + text(1, 5), "rejected": " " + text(1, 5)} for _ in range(8)]
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(cfg)
    torch.manual_seed(1)  # a reference unlike the policy, so the DPO margin is not 0
    reference = GPT2LMHeadModel(cfg)
    return {"tok": tok, "ds": Dataset.from_list(rows), "policy": policy, "ref": reference}


def make(env, tmp_path, objective=None, **config):
    from trl import DPOConfig, DPOTrainer

    kw = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to=[],
              logging_steps=1, save_strategy="no", train_sampling_strategy="sequential", use_cpu=True,
              disable_tqdm=True, beta=0.1, learning_rate=1e-2,
              bf16=False, gradient_checkpointing=False)  # TRL's defaults are True: autocast to bfloat16 on CPU
    kw.update(config)
    args = DPOConfig(**kw)
    model, ref = copy.deepcopy(env["policy"]), copy.deepcopy(env["ref"])
    common = dict(ref_model=ref, args=args, train_dataset=env["ds"], processing_class=env["tok"])
    if objective is None:
        return DPOTrainer(model, **common)
    return trl_adapter.trl_dpo_trainer(model, objective=objective, **common)


def first_batch_loss_and_grads(trainer):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    return loss.detach(), grads


def assert_same(a, b, tol=1e-6):
    (la, ga), (lb, gb) = a, b
    assert abs(la.item() - lb.item()) <= tol, (la.item(), lb.item())
    assert len(ga) == len(gb) and len(ga) > 0
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


def test_dpo_loss_matches_trl_sigmoid(env, tmp_path):
    native = first_batch_loss_and_grads(make(env, tmp_path))
    adapted = first_batch_loss_and_grads(make(env, tmp_path, dpo_loss))
    assert abs(native[0].item() - 0.6931) > 1e-3  # a real margin, not log 2 from policy == reference
    assert_same(native, adapted)


def test_patching_an_existing_trainer(env, tmp_path):
    native = first_batch_loss_and_grads(make(env, tmp_path, beta=0.3))
    trainer = trl_adapter.use_gradwise_objective(make(env, tmp_path, beta=0.3), dpo_loss)
    assert trainer.gradwise_objective.hyperparameters["beta"] == 0.3  # DPOConfig.beta is passed on
    assert_same(native, first_batch_loss_and_grads(trainer))


def test_fdpo_matches_trl_f_divergence(env, tmp_path):
    native = first_batch_loss_and_grads(make(env, tmp_path, f_divergence_type="js_divergence"))
    adapted = first_batch_loss_and_grads(make(env, tmp_path, partial(fdpo_loss, divergence="js")))
    assert_same(native, adapted)


def test_token_averaged_ipo_matches_trl_ipo(env, tmp_path):
    # checks the averaged convention: *_lengths are the scored completion tokens
    native = first_batch_loss_and_grads(make(env, tmp_path, loss_type=["ipo"]))
    obj = PreferenceObjective(ipo_loss, keyword_inputs=("chosen_lengths", "rejected_lengths"))
    adapted = first_batch_loss_and_grads(make(env, tmp_path, obj))
    assert_same(native, adapted, tol=1e-5)


def test_simpo_runs_a_step_without_the_reference(env, tmp_path):
    trainer = make(env, tmp_path, partial(simpo_loss, beta=2.0, gamma=0.5), beta=2.0)
    ref_calls = []
    trainer.ref_model.register_forward_hook(lambda *a: ref_calls.append(1))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    # SimPO on averaged log-probs, by hand from the policy's per-token log-probs
    with torch.no_grad():
        cm = batch["completion_mask"]
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["input_ids"].masked_fill(cm == 0, -100), fused_lm_head=True)
        avg = out.log_probs.sum(1) / cm[:, 1:].sum(1)
        c, r = avg.chunk(2)
        expected = -torch.nn.functional.logsigmoid(2.0 * (c - r) - 0.5).mean()
    result = trainer.train()
    assert trainer.state.global_step == 1
    assert abs(result.training_loss - expected.item()) < 1e-5
    assert ref_calls == []
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    logged = trainer.state.log_history[0]
    assert abs(logged["rewards/chosen"] - 2.0 * c.mean().item()) < 1e-4  # SimPO's reward: beta * avg log-prob


def test_precomputed_reference_log_probs_give_the_same_loss(env, tmp_path):
    plain = first_batch_loss_and_grads(make(env, tmp_path, dpo_loss))
    trainer = make(env, tmp_path / "pre", dpo_loss, precompute_ref_log_probs=True)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(batch)  # TRL stored the reference's log-probs
    ref_calls = []
    trainer.ref_model.register_forward_hook(lambda *a: ref_calls.append(1))
    pre = first_batch_loss_and_grads(trainer)
    assert ref_calls == []  # the adapter read the stored columns instead of running the reference
    assert abs(plain[0].item() - 0.6931) > 1e-3
    assert_same(plain, pre, tol=1e-5)
    # TRL's own loss on the precomputed columns agrees too
    native = first_batch_loss_and_grads(make(env, tmp_path / "native", precompute_ref_log_probs=True))
    assert_same(native, pre, tol=1e-5)


def test_objectives_needing_more_than_trl_provides_are_rejected(env, tmp_path):
    from gradwise.preference import inpo_loss, srpo_loss

    for obj, match in ((partial(inpo_loss, eta=1.0, tau=0.1), "extra model 'prev'"), (srpo_loss, "revision"),
                       (PreferenceObjective(lambda a, b, *, w: a, example_inputs=("w",)), "example field")):
        with pytest.raises(ValueError, match=f"Invalid objective.*{match}"):
            make(env, tmp_path, obj)


@pytest.mark.parametrize("option", [dict(loss_type=["hinge"]), dict(ld_alpha=0.5), dict(use_weighting=True),
                                    dict(f_divergence_type="forward_kl")])
def test_trl_loss_options_rejected(env, tmp_path, option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        make(env, tmp_path, dpo_loss, **option)


def test_missing_trl_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    monkeypatch.setattr(trl_adapter, "_CLASS", None)
    with pytest.raises(ImportError, match=r"pip install 'gradwise\[trl\]'"):
        trl_adapter.trl_dpo_trainer_class()
    assert importlib.import_module("gradwise.preference").trl_dpo_trainer is trl_adapter.trl_dpo_trainer


def test_benchmark_smoke(env, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "preference_step.py"
    spec = importlib.util.spec_from_file_location("preference_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    rc = bench.main(["--steps", "3", "--warmup", "1", "--block", "2", "--vocab", "60", "--d-model", "16",
                     "--prompt-words", "2", "4", "--completion-words", "2", "4", "--tmp", str(tmp_path / "b"),
                     "--markdown", str(md), "--json", str(js)])
    assert rc == 0
    import json

    res = json.loads(js.read_text())
    assert res["first_loss_diff"] <= 1e-5 and res["verdict"] in ("PASS", "MISS")
    assert [r["steps"] for r in res["rows"]] == [3, 3]
    text = md.read_text()
    assert "<!-- BEGIN preference_step -->" in text and "| TRL DPOTrainer |" in text
