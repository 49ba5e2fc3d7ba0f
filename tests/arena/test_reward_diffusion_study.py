"""The reward-diffusion study's pieces at a tiny size: the noisy reward model, the DDIM policy's log-probabilities,
the labelled pairs, AdjointDPM's memory measurement, one seed of every method. (Its smallest command line runs
in tests/arena/test_studies.py.)"""
import dataclasses

import pytest
import torch

from gradwise.arena import reward_diffusion_runs as rr
from gradwise.arena import reward_diffusion_study as rs
from gradwise.diffusion.toy import TEACHER_FILE, DigitsClassifier, build_teacher, digits_8x8

torch.set_num_threads(1)

TINY = dataclasses.replace(rs.Config(), seeds=1, eval_samples=10, eval_steps=2, reward_steps=1, batch_size=4,
                           adjoint_updates=1, adjoint_batch=2, adjoint_steps=2, ddim_steps=2, pairs=4,
                           pref_updates=1, pref_batch=2, judge_epochs=1, memory=0)


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    x, y = digits_8x8("train")
    xt, _ = digits_8x8("test")
    clf = build_teacher("classifier").eval().requires_grad_(False)
    return rr.Task(build_teacher("digits").eval().requires_grad_(False), clf, clf, x[:64], y[:64], xt[:32], {})


def test_the_methods_table_is_the_study_s_list():
    assert tuple(rr.METHODS) == rs.NAMES == rs.STUDY.methods()
    assert not set(rr.NOT_TESTED) & set(rr.METHODS)


def test_noisy_classifier_corrupts_a_fixed_fraction_as_a_function_of_the_image():
    torch.manual_seed(0)
    clf = DigitsClassifier().eval()
    noisy = rr.NoisyClassifier(clf, 0.3, seed=0)
    x = torch.randn(2000, 1, 8, 8)
    mask, shift = noisy.corrupted(x)
    assert 0.25 < mask.double().mean().item() < 0.35 and shift.min() >= 1 and shift.max() <= 9
    with torch.no_grad():
        out, clean = noisy(x), clf(x)
        assert torch.equal(noisy(x[:7]), out[:7])  # the same image, the same output
        assert torch.equal(out[~mask], clean[~mask])
        assert (out[mask].argmax(1) != clean[mask].argmax(1)).all()  # rolled: another class wins
    assert rr.NoisyClassifier(clf, 0.0).corrupted(x)[0].sum() == 0


def test_ddim_logprobs_of_stored_trajectories_are_those_of_sampling(task):
    y = torch.arange(6) % 10
    states, logps = rr.ddim_trajectories(task.teacher, y, 3, torch.Generator().manual_seed(0))
    assert states.shape == (4, 6, 1, 8, 8) and logps.shape == (6, 3) and torch.isfinite(logps).all()
    with torch.no_grad():
        again = rr.policy_logps(task.teacher, states, y, 3)
    torch.testing.assert_close(again, logps, rtol=1e-4, atol=1e-3)


def test_pairs_winners_have_the_higher_reward(task):
    from gradwise.diffusion.toy import classifier_reward

    cfg = dataclasses.replace(TINY, pairs=8)
    p = rr.preference_pairs(task, cfg, 0)
    win = classifier_reward(task.clf, rr.ddim_images(p["win"], cfg.ddim_steps), p["y"])
    lose = classifier_reward(task.clf, rr.ddim_images(p["lose"], cfg.ddim_steps), p["y"])
    assert (win >= lose).all() and p["ref_win"].shape == (8, cfg.ddim_steps)


def test_adjoint_memory_flat_autograd_grows(task):
    mem = rr.adjoint_memory(task.teacher, (2, 8), batch=2)
    assert mem["log"][1] <= 1.3 * mem["log"][0]
    assert mem["autograd"][1] > 1.5 * mem["autograd"][0]


def test_one_seed_of_every_method(task):
    rows = rr.run_seed(rs.NAMES, task, TINY, 0)
    assert [r["method"] for r in rows] == list(rs.NAMES)
    for r in rows:
        assert 0 <= r["acc"] <= 1 and 0 <= r["acc_judge"] <= 1 and r["reward"] <= 0
        assert r["sampler"] == ("ddim" if r["method"] in ("teacher-ddim", "sft-winners", "d3po") else "edm")


@pytest.mark.skipif(not TEACHER_FILE.is_file(), reason="no cached teachers")
def test_the_teacher_row_is_the_untouched_teacher():
    from gradwise.diffusion.toy import load_teacher

    t = rr.Task(load_teacher("digits"), load_teacher("classifier"), load_teacher("classifier"),
                *digits_8x8("train"), digits_8x8("test")[0], {})
    row = rr.run_seed(("teacher",), t, dataclasses.replace(TINY, eval_samples=20, eval_steps=6), 0)[0]
    assert row["acc"] >= 0.3 and row["train_seconds"] < 1.0  # the cached teacher samples digits
