"""benchmarks/adapter_step.py in a small mode: MiSS-bat (Bone) and DiffoRA against PEFT LoRA at equal budget."""
import pytest

from gradwise import _benchmarks

pytest.importorskip("peft")
adapter_step = _benchmarks.load("adapter_step")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rows_compare_bone_and_diffora_with_lora_at_equal_budget():
    res = adapter_step.run(width=16, tokens=16, rank=2, rounds=1, reps=1, warmup=1)
    assert [r["candidate"] for r in res["rows"]] == list(adapter_step.CANDIDATES) and not res["notes"]
    for r in res["rows"]:
        assert r["lora_ms"] > 0 and r["ms"] > 0
        assert r["ratio"] == pytest.approx(r["ms"] / r["lora_ms"])
        assert r["verdict"] == ("PASS" if r["ratio"] <= adapter_step.TARGET else "MISS")
        # equal trainable budget: Bone exactly, DiffoRA plus its one DAM logit per adapted module
        assert r["trainable"] - r["lora_trainable"] == (0 if r["candidate"].startswith("MiSS") else
                                                        2 if r["candidate"] == "DiffoRA relaxed" else 0)
    md = adapter_step.to_markdown(res)
    assert md.startswith("## MiSS-bat (Bone) and DiffoRA") and res["machine"] in md and "| DiffoRA relaxed |" in md
