"""benchmarks/sara_step.py at a tiny size: every candidate runs, gets its time and state ratios to AdamW."""
from gradwise import _benchmarks

sara_step = _benchmarks.load("sara_step")


def test_every_candidate_runs_and_gets_its_ratios():
    res = sara_step.run(small=1, fraction=10, rounds=2, reps=1, warmup=1)
    rows = {r["name"]: r for r in res["rows"]}
    assert set(sara_step.ADAMW_NAMES) | {"SaRA (dense)", "SaRA (sparse)"} == set(rows)
    assert not [n for n in res["notes"] if "failed" in n]
    assert min(rows[n]["ratio"] for n in sara_step.ADAMW_NAMES) == 1.0
    assert rows["SaRA (sparse)"]["mem_ratio"] < rows["SaRA (dense)"]["mem_ratio"]
    assert rows["SaRA (sparse)"]["mem_verdict"] == ("PASS" if rows["SaRA (sparse)"]["mem_ratio"] <= 0.5 else "MISS")
    md = sara_step.to_markdown(res)
    assert "| SaRA (sparse) | " in md and res["machine"] in md
