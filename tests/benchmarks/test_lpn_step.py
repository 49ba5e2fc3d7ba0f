"""benchmarks/lpn_step.py in a small mode: gradwise's LPN against the authors' module (read from their repository,
so skipped where no copy of it is at hand)."""
import os
from pathlib import Path

import pytest

from gradwise import _benchmarks

lpn_step = _benchmarks.load("lpn_step")
pytestmark = pytest.mark.usefixtures("one_thread")

if not Path(os.environ.get("LPN_REPO", lpn_step.DEFAULT_REPO)).exists():
    pytest.skip("the authors' repository is not here (set LPN_REPO)", allow_module_level=True)


def test_rows_compare_gradwise_with_their_module():
    res = lpn_step.run(rounds=1, reps=1, warmup=1, sizes=("laplacian",))
    (r,) = res["rows"]
    assert r["size"] == "laplacian" and not res["notes"]
    assert r["ours_ms"] > 0 and r["theirs_ms"] > 0 and r["ratio"] == pytest.approx(r["ours_ms"] / r["theirs_ms"])
    assert r["verdict"] == ("PASS" if r["ratio"] <= lpn_step.TARGET else "MISS")
    md = lpn_step.to_markdown(res)
    assert md.startswith("## LPN training-step time") and res["machine"] in md and "| laplacian |" in md
