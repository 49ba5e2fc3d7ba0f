"""benchmarks/dynmole_step.py in a small mode: both expert counts run and the ratio is DynMoLE over LoRA."""
import pytest

from gradwise import _benchmarks

pytest.importorskip("peft")
dynmole_step = _benchmarks.load("dynmole_step")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_compare_dynmole_with_lora_at_equal_rank():
    res = dynmole_step.run(width=16, tokens=16, rank=2, rounds=1, reps=1, warmup=1)
    assert [r["experts"] for r in res["rows"]] == list(dynmole_step.EXPERTS) and not res["notes"]
    for r in res["rows"]:
        assert r["lora_ms"] > 0 and r["dynmole_ms"] > 0
        assert r["ratio"] == pytest.approx(r["dynmole_ms"] / r["lora_ms"])
        assert r["verdict"] == ("PASS" if r["ratio"] <= dynmole_step.TARGET else "MISS")
    md = dynmole_step.to_markdown(res)
    assert md.startswith("## DynMoLE forward + backward time") and res["machine"] in md and "| 6 | 2 |" in md
