"""benchmarks/unlearning_step.py at a tiny size: every candidate runs and SalUn is compared with SGD."""
from gradwise import _benchmarks

unlearning_step = _benchmarks.load("unlearning_step")


def test_every_candidate_runs_and_gets_its_ratio_to_sgd():
    res = unlearning_step.run(d=8, hidden=16, classes=3, batch=4, rounds=2, reps=1, warmup=1)
    names = [r["name"] for r in res["rows"]]
    assert set(unlearning_step.SGD_NAMES) <= set(names) and len(names) == 4
    assert not [n for n in res["notes"] if "failed" in n]
    assert min(r["ratio"] for r in res["rows"] if r["name"] in unlearning_step.SGD_NAMES) == 1.0
    for r in res["rows"]:
        assert r["verdict"] == ("" if r["name"] in unlearning_step.SGD_NAMES else
                                "PASS" if r["ratio"] <= unlearning_step.TARGET else "MISS")
    md = unlearning_step.to_markdown(res)
    assert "| SalUn (mask ratio 0.5) | " in md and res["machine"] in md
