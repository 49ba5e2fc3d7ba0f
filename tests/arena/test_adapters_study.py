"""The adapters study's pieces at a small size. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

pytest.importorskip("peft")

from gradwise.arena import adapters_study as ad  # noqa: E402

SMALL = dataclasses.replace(ad.Config(), steps=3, pre_steps=2, eval_size=16, batch_size=4)


def test_tasks_put_the_answer_after_the_task_token_and_label_only_the_answer():
    cfg = SMALL
    for task, expect in ((ad.COPY, lambda x: x), (ad.REVERSE, lambda x: x.flip(1))):
        tokens, labels = ad.make_batch(cfg, 5, task, torch.Generator().manual_seed(0))
        x = tokens[:, :cfg.length]
        assert (tokens[:, cfg.length] == task).all()
        assert torch.equal(tokens[:, cfg.length + 1:], expect(x))
        assert (labels[:, :cfg.length + 1] == -100).all() and torch.equal(labels[:, cfg.length + 1:],
                                                                            tokens[:, cfg.length + 1:])


def test_budgets_are_equal_and_only_adapters_train():
    model, copy_acc, _ = ad.pretrain(SMALL, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = {m: ad.finetune(SMALL, m, 0, model) for m in ("lora", "bone", "sara", "mole-topk")}
    assert rows["lora"]["trainable"] == rows["bone"]["trainable"] == rows["sara"]["trainable"] == 4096
    assert rows["mole-topk"]["trainable"] == 4096 + 4 * 4 * 64  # + the routers
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the pretrained model is copied
    assert 0 <= rows["lora"]["copy_acc"] <= 1 and math.isfinite(rows["bone"]["rev_auc"])
    assert len(rows["mole-topk"]["entropies"]) == SMALL.steps and math.isnan(rows["lora"]["entropy"])
    assert 0 <= rows["mole-topk"]["switched"] <= 1


def test_claims_need_an_interval_above_zero():
    rows = [dict(method=m, seed=s, rev_auc=v, rev_acc=0.5, copy_acc=0.5)
            for s in range(3) for m, v in (("bone", 1.0 + 0.01 * s), ("lora", 2.0), ("dynmole", 1.0))]
    verdicts = {c[0]: c[1] for c in ad.claims(rows)}
    assert verdicts[ad.CLAIMS[0][0]] == "SHOWN"
    assert verdicts[ad.CLAIMS[1][0]] == "NOT SHOWN"  # equal accuracy
    assert verdicts[ad.CLAIMS[2][0]] == "not run"  # no top-k MoLE rows


def test_summary_over_seeds_leaves_entropy_out_for_methods_without_a_router():
    from gradwise.arena.study import Run

    rows = [dict(method=m, seed=s, trainable=1, rev_auc=1.0 + s, rev_acc=0.5 + 0.1 * s, copy_acc=0.9,
                 entropy=0.5 if m == "dynmole" else math.nan,
                 switched=0.1 if m == "dynmole" else math.nan, entropies=[0.5] if m == "dynmole" else [],
                 losses=[1.0], wall_s=1.0) for s in range(2) for m in ("lora", "dynmole")]
    run = Run(cfg=SMALL, task=None, methods=("lora", "dynmole"), seeds=(0, 1))
    summary = {s["method"]: s for s in ad._summarize(run, rows)}
    assert math.isnan(summary["lora"]["entropy_mean"]) and summary["dynmole"]["entropy_mean"] == 0.5
    assert summary["lora"]["rev_acc_ci"] > 0 and len(run.state["claims"]) == len(ad.CLAIMS)
