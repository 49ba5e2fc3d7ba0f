"""benchmarks/ntk_step.py in its small mode: both implementations of every workload against the tutorial's code."""
import pytest

from gradwise import _benchmarks

ntk_step = _benchmarks.load("ntk_step")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: intra-op threads only wait


def test_rows_compare_gradwise_with_the_tutorial():
    res = ntk_step.run(small=True, rounds=1, reps=1, warmup=0)
    assert [(r["workload"], r["impl"]) for r in res["rows"]] == [
        (w, i) for w in ("ntkmlp", "mlp", "cnn") for i in ("jacobian", "ntk-vp")] and not res["notes"]
    for r in res["rows"]:
        assert r["tutorial_ms"] > 0 and r["gradwise_ms"] > 0
        assert r["ratio"] == pytest.approx(r["gradwise_ms"] / r["tutorial_ms"])
        assert r["verdict"] == ("PASS" if r["ratio"] <= ntk_step.TARGET else "MISS")
    md = ntk_step.to_markdown(res)
    assert md.startswith("## Empirical NTK time") and res["machine"] in md and "| cnn | 2 x 2 |" in md
