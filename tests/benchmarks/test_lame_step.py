"""benchmarks/lame_step.py in its small mode: both candidates run at each size and the ratio is theirs."""
import pytest

from gradwise import _benchmarks

lame_step = _benchmarks.load("lame_step")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait


def test_rows_compare_lame_with_the_bare_forward(tmp_path):
    res = lame_step.run([4, 6], rounds=1, reps=1, warmup=1, epochs=0)
    assert [r["n"] for r in res["rows"]] == [4, 6] and not res["notes"]
    for r in res["rows"]:
        assert r["forward_ms"] > 0 and r["lame_ms"] > 0
        assert r["ratio"] == pytest.approx(r["lame_ms"] / r["forward_ms"])
        assert r["verdict"] == ("PASS" if r["ratio"] <= lame_step.TARGET else "MISS")
        assert 0 <= r["steps"] <= 100
    md = lame_step.to_markdown(res)
    assert md.startswith("## LAME call time") and res["machine"] in md and "| 6 | " in md
