"""benchmarks/diffusion_step.py at a tiny size: every loss runs beside its torch twin, ot_pair is timed."""
from gradwise import _benchmarks

diffusion_step = _benchmarks.load("diffusion_step")


def test_every_candidate_runs_and_gets_its_ratio():
    res = diffusion_step.run(batch=8, side=4, ot_batch=8, ot_dim=4, rounds=2, reps=1, warmup=1)
    assert not [n for n in res["notes"] if "failed" in n]
    names = [r["name"] for r in res["rows"]]
    assert len(names) == 12 and names[-1] == "ot_pair [8, 4]"
    for r in res["rows"][:-1]:
        assert r["ratio"] > 0 and r["verdict"] == ("PASS" if r["ratio"] <= diffusion_step.TARGET else "MISS")
    md = diffusion_step.to_markdown(res)
    assert "| pseudo_huber_loss (sum, ECT) | " in md and res["machine"] in md
