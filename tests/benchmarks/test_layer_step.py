"""benchmarks/layer_step.py in its small mode: every row runs at a tiny shape and gets its ratio to its peer."""
import pytest

from gradwise import _benchmarks

layer_step = _benchmarks.load("layer_step")

TINY = layer_step.Shape(t=4, b=2, c=8, heads=2, ff=16)


def test_every_row_runs_and_is_compared_with_its_peer(tmp_path):
    res = layer_step.run(TINY, rounds=2, reps=1, warmup=1)
    assert [r["name"] for r in res["rows"]] == [r.label for r in layer_step.ROWS]
    for r in res["rows"]:
        assert r["ms"] > 0 and r["peer_ms"] > 0, r
        assert r["ratio"] == pytest.approx(r["ms"] / r["peer_ms"])
        like = next(row for row in layer_step.ROWS if row.label == r["name"]).like_for_like
        assert r["verdict"] == ("more work" if not like else "PASS" if r["ratio"] <= layer_step.TARGET else "MISS")
    assert not [n for n in res["notes"] if "could not be built" in n or "step failed" in n]
    md = layer_step.to_markdown(res)
    assert "| PowerNorm | " in md and "nn.BatchNorm1d on (T*B, C)" in md and res["machine"] in md
    path = tmp_path / "bench.md"
    path.write_text("# Benchmarks\n\nkept\n")
    layer_step.harness.save(res, layer_step.argparse.Namespace(json=None, markdown=path), "layer_step", md)
    text = path.read_text()
    assert "kept" in text and f"<!-- BEGIN layer_step -->\n{md}" in text and "<!-- END layer_step -->" in text


def test_a_row_is_one_line_and_a_bad_peer_is_named():
    row = layer_step.Row("BatchNorm again", "nn.BatchNorm1d on (T*B, C)", layer_step.batchnorm1d)
    res = layer_step.run(TINY, rounds=1, reps=1, warmup=1, rows=[row])
    assert res["rows"][0]["peer_ms"] > 0
    with pytest.raises(ValueError, match="Invalid peer of row 'x': 'nope'"):
        layer_step.run(TINY, rounds=1, reps=1, rows=[layer_step.Row("x", "nope", layer_step.batchnorm1d)])
