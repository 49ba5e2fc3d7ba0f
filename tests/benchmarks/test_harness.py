"""Smoke tests for the step-time benchmark (gradwise.bench), on a tiny tensor set."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from gradwise import bench

HAVE_PEER = importlib.util.find_spec("pytorch_optimizer") is not None


@pytest.fixture(scope="module")
def small_result():
    return bench.run(small=True, steps=1, rounds=2, warmup=1)


def test_references_are_timed(small_result):
    refs = {r["name"]: r for r in small_result["references"]}
    assert set(refs) == {"Adam(foreach)", "AdamW(fused)"}
    for r in refs.values():
        assert r["ms"] > 0
    assert refs["Adam(foreach)"]["ratio_adam"] == pytest.approx(1.0)
    assert refs["AdamW(fused)"]["ratio_adamw"] == pytest.approx(1.0)


def test_rows_have_positive_times(small_result):
    rows = small_result["rows"]
    assert [r["name"] for r in rows] == list(bench.GRADWISE_NAMES)
    for r in rows:
        if HAVE_PEER:
            assert r["peer_ms"] > 0, r
            assert r["peer_ratio_adam"] > 0
        if r["gradwise_ms"] is None:  # not implemented yet: skipped, with a note
            continue
        assert r["gradwise_ms"] > 0
        assert r["ratio_adam"] > 0 and r["ratio_adamw"] > 0
        if HAVE_PEER:
            assert r["ratio_peer"] > 0 and r["ratio_peer_paired"] > 0
    # Every optimizer that exists could be built and stepped.
    failures = [n for n in small_result["notes"] if "failed" in n]
    assert failures == []


def test_samples_and_targets(small_result):
    for label, samples in small_result["samples_ms"].items():
        assert len(samples) == 2, label  # rounds x steps
        assert all(t > 0 and math.isfinite(t) for t in samples)
    statuses = [t["status"] for t in small_result["targets"]]
    assert len(statuses) == 4
    assert set(statuses) <= {"PASS", "MISS", "n/a"}


def test_main_writes_markdown_and_json(tmp_path, capsys):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    rc = bench.main(["--small", "--steps", "1", "--rounds", "1", "--warmup", "0", "--quiet",
                     "--only", "adabelief,Lion", "--markdown", str(md), "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    assert [r["name"] for r in res["rows"]] == ["AdaBelief", "Lion"]
    assert res["machine"]["cores"] >= 1 and res["machine"]["torch"]
    text = md.read_text()
    assert "| optimizer |" in text and "torch Adam(foreach)" in text and "torch" in text
    out = capsys.readouterr().out
    assert "AdaBelief" in out and "(c)" in out


def test_only_rejects_unknown_names():
    with pytest.raises(SystemExit):
        bench.main(["--small", "--only", "NoSuchOptimizer"])


def test_full_tensor_set_is_resnet_ish():
    specs = bench.tensor_specs()
    kinds = {k for _, k in specs}
    n_params = sum(math.prod(s) for s, _ in specs)
    assert kinds == {"conv", "linear", "bias", "norm"}
    assert 140 <= len(specs) <= 180
    assert 3_500_000 <= n_params <= 4_500_000
    assert any(len(s) == 4 and s[2:] == (3, 3) for s, _ in specs)


def test_gradwise_kwargs_are_mapped_and_dropped():
    import torch

    class Fake(torch.optim.SGD):
        def __init__(self, params, lr=0.1, *, spike_threshold=1.0, **kwargs):
            super().__init__(params, lr=lr, **kwargs)

    kw, renamed, dropped = bench._gradwise_kwargs(Fake, {"lr": 0.5, "threshold": 7.0, "density": 1.0})
    assert kw == {"lr": 0.5, "spike_threshold": 7.0}
    assert renamed == ["threshold->spike_threshold"] and dropped == ["density"]

    rejected: list[str] = []
    p = torch.nn.Parameter(torch.zeros(2))
    opt = bench._construct(Fake, [p], {"lr": 0.5, "bogus": 1}, rejected)
    assert isinstance(opt, Fake) and rejected == ["bogus"]
