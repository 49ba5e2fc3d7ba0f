"""benchmarks/tta_step.py at a tiny size: Tent and both EATA settings run, and EATA is compared with Tent."""
from gradwise import _benchmarks

tta_step = _benchmarks.load("tta_step")


def test_every_candidate_runs_and_gets_its_ratio_to_tent():
    res = tta_step.run(channels=4, size=8, classes=3, batch=4, rounds=2, reps=1, warmup=1)
    rows = {r["name"]: r for r in res["rows"]}
    assert len(rows) == 3 and rows[tta_step.TENT]["ratio"] == 1.0
    assert not [n for n in res["notes"] if "failed" in n]
    # with e_margin above ln C and d_margin 1 EATA backpropagates every sample of every call
    assert rows["EATA (every sample selected)"]["selected"] == "100%"
    for name, r in rows.items():
        assert r["verdict"] == ("" if name == tta_step.TENT else "PASS" if r["ratio"] <= tta_step.TARGET else "MISS")
    md = tta_step.to_markdown(res)
    assert "| EATA (defaults) | " in md and res["machine"] in md
