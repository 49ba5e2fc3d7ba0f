"""The consistency study's pieces at a tiny size: each 2-D arm trains and reports, the outliers are where they
should be, the paired claims, the config checks; and the toy teachers' user-cache fallback. (Its smallest
command line runs in tests/arena/test_studies.py.)"""
import dataclasses
import math

import pytest
import torch

from gradwise.arena import consistency_runs as cr
from gradwise.arena import consistency_study as cs
from gradwise.arena.study import UsageError

TINY = dataclasses.replace(cs.Config(), steps=6, batch_size=16, width=16, depth=1, train_samples=200, eval_samples=32,
                           seeds=1)


@pytest.mark.parametrize("method", ["ict", "ema", "out-cauchy-ot", "out-cauchy-diff", "out-cauchy-scalec"])
def test_two_d_arms_train_and_report(method):
    task = cr.make_task(TINY, (method,))
    row = cr.run_one(TINY, method, 0, task)
    assert row["part"] == cr.ARMS[method][0] and math.isfinite(row["train_loss"])
    assert row["ed_1"] >= 0 and row["ed_2"] >= 0


def test_outliers_replace_the_stated_fraction():
    clean = cr._train_data(TINY, "mix", 0)
    dirty = cr._train_data(TINY, "out", 0)
    changed = (clean != dirty).any(1).sum().item()
    assert changed == round(TINY.outlier_frac * TINY.train_samples)


def test_claims_are_paired_differences():
    rows = [{"method": m, "seed": s, "ed_1": e1, "ed_2": e2} for s in range(3)
            for m, e1, e2 in (("ict", 0.5, 0.1 + 0.01 * s), ("ema", 0.6, 0.3 + 0.01 * s))]
    claims = {c[0]: c for c in cs.claim_rows(rows)}
    name = "no-EMA teacher beats EMA (2-D)"
    assert claims[name][1] == pytest.approx(0.2) and claims[name][4] == "SHOWN"
    assert claims["2 steps beat 1 (2-D, iCT)"][4] == "SHOWN"
    assert "Pseudo-Huber beats squared l2 (2-D)" not in claims  # l2 did not run


def test_config_checks():
    with pytest.raises(UsageError, match="s1"):
        cs._check(dataclasses.replace(TINY, s0=20, s1=10), ("ict",))
    with pytest.raises(UsageError, match="mid-sigma"):
        cs._check(dataclasses.replace(TINY, mid_sigma=100.0), ("ict",))

