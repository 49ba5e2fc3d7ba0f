"""benchmarks/rl_step.py at a tiny size: both candidates run (the authors' update needs their checkout)."""
from pathlib import Path

import pytest

from gradwise import _benchmarks

rl_step = _benchmarks.load("rl_step")


@pytest.mark.skipif(not Path(rl_step.REPO).exists(), reason="the authors' ODICE-Pytorch checkout ($ODICE_REPO) is absent")
def test_both_candidates_run_and_get_their_ratio():
    res = rl_step.run(obs=3, hidden=8, batch=4, rounds=2, reps=1, warmup=1)
    names = [r["name"] for r in res["rows"]]
    assert names[0] == rl_step.REF and len(names) == 2
    assert not [n for n in res["notes"] if "failed" in n]
    assert res["rows"][0]["ratio"] == 1.0
    assert res["rows"][1]["verdict"] == ("PASS" if res["rows"][1]["ratio"] <= rl_step.TARGET else "MISS")
    assert "| gradwise odice_value_backward | " in rl_step.to_markdown(res)
