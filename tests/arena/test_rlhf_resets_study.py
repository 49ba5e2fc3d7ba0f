"""The rlhf-resets study's pieces at a small size: the proxy judges, the token log-probs it trains on, a run's
row, the claims' verdicts. (Its smallest command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

from gradwise.arena import rlhf_resets_study as rs
from gradwise.arena.preference_study import CONFIG as P, EOS, tiny_lm
from gradwise.arena.study import Run
from gradwise.preference import response_logps

TINY = dataclasses.replace(rs.Config(), seeds=1, steps=2, sft_steps=2, eval_prompts=6, batch=4, eval_every=1)


def test_proxy_judges():
    prompt = [1, 4, 5, 6, 2]  # letters 4 5 6: the reversal is 6 5 4
    assert rs.proxy_rewards(prompt, [6, 5, 4, EOS]) == (1.0, 1 / 3)
    assert rs.proxy_rewards(prompt, [6, 6, 6, 6, 6, 6, EOS]) == (2.0, 1.0)  # over-optimised: more of both
    assert rs.proxy_rewards(prompt, [6, 5, 4]) == (0.0, 0.0)  # no EOS


def test_token_logps_sum_to_response_logps():
    torch.manual_seed(0)
    lm = tiny_lm(P).eval()
    prompts = [[1, 4, 5, 2], [1, 4, 5, 6, 7, 2]]
    ys = [[5, 4, EOS], [7, EOS]]
    with torch.no_grad():
        lp, m = rs._token_logps(lm, prompts, ys)
        ref = response_logps(lm, prompts, ys)
    assert m.sum(1).tolist() == [3, 2]
    torch.testing.assert_close(lp.sum(1), ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def shared():
    run = Run(cfg=TINY, task=None, methods=rs.METHODS, seeds=(0,))
    return run, *rs._seed_setup(run, 0)


@pytest.mark.parametrize("method", rs.METHODS)
def test_every_method_runs_and_reports(shared, method):
    run, seed_data, ref_row = shared
    assert ref_row["kl"] == 0.0 and seed_data.thresholds[0] == 1.0
    row = rs._run_one(run, method, 0, seed_data)
    assert row["method"] == method and -1 <= row["gold"] <= 1 and row["gold_peak"] >= row["gold"]
    assert math.isfinite(row["kl"]) and len(run.state["curves"][f"{method}/0"]) == TINY.steps + 1
    if method == "constrained":
        assert len(row["weights"]) == 2 and all(0 < w < 1 for w in row["weights"])


def _row(name, gold, ci, peak=None, drop=0.0, drop_ci=0.01):
    return {"method": name, "gold_mean": gold, "gold_ci": ci, "gold_peak_mean": peak if peak is not None else gold,
            "gold_peak_ci": ci, "gold_drop_mean": drop, "gold_drop_ci": drop_ci}


def test_claims_verdicts():
    shown = rs.claims([_row("fixed weights", 0.1, 0.05, peak=0.6, drop=0.5), _row("constrained", 0.55, 0.05),
                       _row("from prompt", 0.3, 0.05), _row("resets", 0.5, 0.05)])
    assert shown[0].endswith("SHOWN") and "NOT" not in shown[0] and shown[1].endswith("SHOWN (better)")
    not_shown = rs.claims([_row("fixed weights", 0.5, 0.05, peak=0.5, drop=0.0), _row("constrained", 0.55, 0.05),
                           _row("from prompt", 0.6, 0.01), _row("resets", 0.3, 0.01)])
    assert not_shown[0].endswith("NOT SHOWN") and not_shown[1].endswith("NOT SHOWN")
