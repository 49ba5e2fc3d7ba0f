"""benchmarks/reste_step.py in its small mode: every candidate runs at each size and the ratio is theirs."""
import pytest

from gradwise import _benchmarks

reste_step = _benchmarks.load("reste_step")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: intra-op threads only wait


def test_rows_compare_reste_with_the_plain_ste():
    res = reste_step.run([16, 64], rounds=1, reps=1, warmup=1)
    assert [r["n"] for r in res["rows"]] == [16, 64] and not res["notes"]
    for r in res["rows"]:
        assert r["ste_ms"] > 0 and r["reste_ms"] > 0 and r["ste_sign_ms"] > 0
        assert r["ratio"] == pytest.approx(r["reste_ms"] / r["ste_ms"])
        assert r["verdict"] == ("PASS" if r["ratio"] <= reste_step.TARGET else "MISS")
    md = reste_step.to_markdown(res)
    assert md.startswith("## ReSTE estimator time") and res["machine"] in md and "| 64 | " in md
