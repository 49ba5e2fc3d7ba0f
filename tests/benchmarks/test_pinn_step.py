"""benchmarks/pinn_step.py in its small mode: the step and the weights are timed and the share is reported."""
import pytest

from gradwise import _benchmarks

pinn_step = _benchmarks.load("pinn_step")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny model: intra-op threads only wait


def test_share_is_weights_over_step_and_the_verdict_follows_the_target():
    res = pinn_step.run(small=True, rounds=1, reps=1, warmup=0)
    assert res["step_ms"] > 0 and res["weights_ms"] > 0
    assert res["share"] == pytest.approx(res["weights_ms"] / res["step_ms"])
    assert res["verdict"] == ("PASS" if res["share"] < pinn_step.TARGET else "MISS")
    md = pinn_step.to_markdown(res)
    assert "causal_weights" in md and res["verdict"] in md and "8 x 16" in md
