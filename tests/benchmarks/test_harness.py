"""The benchmark harness (benchmarks/harness.py) and the scripts that use it, in their small modes."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import math
import random
import sys
import warnings

import pytest
import torch

from gradwise import _benchmarks, registry

HAVE_PEER = importlib.util.find_spec("pytorch_optimizer") is not None

harness = _benchmarks.load("harness")
optim_step = _benchmarks.load("optim_step")
optim_rows = _benchmarks.load("optim_rows")
loss_step = _benchmarks.load("loss_step")


# --------------------------------------------------------------------------- the harness itself

def test_interleave_blocks_times_every_candidate_and_drops_one_that_fails_at_warm_up():
    calls: list[str] = []

    def ok(name):
        return harness.Candidate(name, lambda: calls.append(name), lambda: calls.append("prep"))

    def broken():
        raise RuntimeError("no step for you")

    cands = {"a": ok("a"), "b": ok("b"), "bad": harness.Candidate("bad", broken)}
    notes: list[str] = []
    harness.interleave(cands, rounds=3, steps=2, warmup=1, seed=0, notes=notes)
    assert set(cands) == {"a", "b"} and notes == ["bad: step failed (RuntimeError: no step for you)"]
    for c in cands.values():
        assert len(c.samples_ms) == 6 and c.rounds == [0, 0, 1, 1, 2, 2]
        assert all(t >= 0 for t in c.samples_ms)
    # every step is prepared (untimed) first; blocks of 2 steps per candidate per round
    assert calls[:4] == ["prep", "a", "prep", "b"] and calls.count("prep") == calls.count("a") + calls.count("b")


def test_interleave_shuffled_mixes_steps_and_marks_a_candidate_failing_later():
    order: list[str] = []
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] > 2:  # its two warm-up steps pass, its first timed step fails
            raise ValueError("later")

    cands = {"x": harness.Candidate("x", lambda: order.append("x")),
             "y": harness.Candidate("y", lambda: order.append("y")),
             "f": harness.Candidate("f", flaky)}
    notes: list[str] = []
    harness.interleave(cands, rounds=4, steps=3, warmup=2, seed=1, mode="shuffled", notes=notes)
    assert order[:4] == ["x", "y", "x", "y"]  # warm-up: rounds of one step each, in order
    assert len(cands["x"].samples_ms) == 12 and len(cands["y"].samples_ms) == 12
    assert cands["f"].error == "ValueError: later" and notes == ["f: step failed (ValueError: later)"]
    # each round: every candidate's 3 steps shuffled together, from one Random(seed) (as loss_step did)
    rng, expected = random.Random(1), []
    for _ in range(4):
        todo = [label for label in ("x", "y", "f") for _ in range(3)]
        rng.shuffle(todo)
        expected += [label for label in todo if label != "f"]
    assert order[4:] == expected
    with pytest.raises(ValueError, match="Invalid mode: 'zigzag'"):
        harness.interleave({}, rounds=1, steps=1, warmup=0, mode="zigzag")


def test_stats_ratios_and_paired_ratio():
    s = harness.stats([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["n"] == 5 and s["q1_ms"] == 2.0
    assert harness.stats([]) is None
    assert harness.ratio(2.0, 4.0) == 0.5 and harness.ratio(None, 1.0) is None and harness.ratio(1.0, 0.0) is None
    a = harness.Candidate("a", lambda: None, samples_ms=[2.0, 2.0, 9.0], rounds=[0, 1, 2])
    b = harness.Candidate("b", lambda: None, samples_ms=[1.0, 1.0, 1.0], rounds=[0, 1, 2])
    assert harness.paired_ratio(a, b) == 2.0
    b.error = "x"
    assert harness.paired_ratio(a, b) is None


def test_markdown_table_aligns_columns():
    lines = harness.markdown_table(("name", "ms", "note"), [("a", "1.00", "ok")], left=(0, 2))
    assert lines == ["| name | ms | note |", "|---|---:|---|", "| a | 1.00 | ok |"]


def test_machine_info_names_versions_asked_for():
    info = harness.machine_info("cpu", versions=("torch", "no_such_package_here"))
    assert info["cores"] >= 1 and info["torch"] == torch.__version__ and info["no_such_package_here"] is None
    assert list(info)[:4] == ["cpu", "cores", "torch_threads", "torch"] and info["device"] == "cpu"


# --------------------------------------------------------------------------- optimizer step benchmark

@pytest.fixture(scope="module")
def small_result():
    return optim_step.run(small=True, steps=1, rounds=2, warmup=1)


def test_references_are_timed(small_result):
    refs = {r["name"]: r for r in small_result["references"]}
    assert set(refs) == {"Adam(foreach)", "AdamW(fused)"}
    for r in refs.values():
        assert r["ms"] > 0
    assert refs["Adam(foreach)"]["ratio_adam"] == pytest.approx(1.0)
    assert refs["AdamW(fused)"]["ratio_adamw"] == pytest.approx(1.0)


def test_rows_come_from_the_registry_and_have_positive_times(small_result):
    rows = small_result["rows"]
    benched = [r.name for r in registry.methods(kind="optimizer", family="optim") if "bench" in r.info]
    assert [r["name"] for r in rows] == benched and benched
    for r in rows:
        if HAVE_PEER or r["peer_source"] == "torch":
            assert r["peer_ms"] > 0, r
            assert r["peer_ratio_adam"] > 0
        assert r["gradwise_ms"] > 0
        assert r["ratio_adam"] > 0 and r["ratio_adamw"] > 0
        if HAVE_PEER:
            assert r["ratio_peer"] > 0 and r["ratio_peer_paired"] > 0
    # Every optimizer could be built and stepped.
    failures = [n for n in small_result["notes"] if "failed" in n]
    assert failures == []


def test_samples_and_targets(small_result):
    for label, samples in small_result["samples_ms"].items():
        assert len(samples) == 2, label  # rounds x steps
        assert all(t > 0 and math.isfinite(t) for t in samples)
    statuses = [t["status"] for t in small_result["targets"]]
    with_adam_target = [r["name"] for r in small_result["rows"] if r["max_ratio_adam"] is not None]
    assert len(statuses) == 2 + len(with_adam_target)
    assert set(statuses) <= {"PASS", "MISS", "n/a"}


def test_main_writes_markdown_and_json(tmp_path, capsys):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    rc = optim_step.main(["--small", "--steps", "1", "--rounds", "1", "--warmup", "0", "--quiet",
                          "--only", "adabelief,Lion", "--markdown", str(md), "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    assert [r["name"] for r in res["rows"]] == ["AdaBelief", "Lion"]
    assert res["machine"]["cores"] >= 1 and res["machine"]["torch"]
    text = md.read_text()
    assert "<!-- BEGIN optim_step -->" in text and "| optimizer | gradwise ms | peer | peer ms |" in text
    assert "| torch Adam(foreach) |" in text and "|---|---:|---|---:|" in text and "Targets:" in text
    out = capsys.readouterr().out
    assert "AdaBelief" in out and "(c) AdaBelief" in out


def test_only_rejects_unknown_names():
    with pytest.raises(SystemExit):
        optim_step.main(["--small", "--only", "NoSuchOptimizer"])


def test_full_tensor_set_is_resnet_ish():
    specs = harness.tensor_specs()
    kinds = {k for _, k in specs}
    n_params = sum(math.prod(s) for s, _ in specs)
    assert kinds == {"conv", "linear", "bias", "norm"}
    assert 140 <= len(specs) <= 180
    assert 3_500_000 <= n_params <= 4_500_000
    assert any(len(s) == 4 and s[2:] == (3, 3) for s, _ in specs)


def test_gradwise_kwargs_are_mapped_and_dropped():
    class Fake(torch.optim.SGD):
        def __init__(self, params, lr=0.1, *, spike_threshold=1.0, **kwargs):
            super().__init__(params, lr=lr, **kwargs)

    kw, renamed, dropped = optim_rows.gradwise_kwargs(Fake, {"lr": 0.5, "threshold": 7.0, "density": 1.0})
    assert kw == {"lr": 0.5, "spike_threshold": 7.0}
    assert renamed == ["threshold->spike_threshold"] and dropped == ["density"]

    rejected: list[str] = []
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optim_rows.construct(Fake, [p], {"lr": 0.5, "bogus": 1}, rejected)
    assert isinstance(opt, Fake) and rejected == ["bogus"]


class MadeUpAdamW(torch.optim.AdamW):
    """A made-up gradwise optimizer whose record names a torch.optim peer (its class is torch's AdamW)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.01, fused=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@pytest.fixture
def made_up_record(monkeypatch):
    registry.methods()  # the real packages first, into the real registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(kind="optimizer", family="optim", paper="A Made-Up AdamW", year=2033, arxiv=None, code=None,
                      info={"bench": {"kwargs": {"lr": 1e-3, "weight_decay": 0.01}, "peer": "torch.optim.AdamW",
                                      "peer_paths": {"foreach": {"foreach": True}, "fused": {"fused": True}},
                                      "note": "made up", "max_ratio_adam": 50.0}})(MadeUpAdamW)
    return "MadeUpAdamW"


def test_a_torch_optim_peer_from_a_record_is_built_generically(made_up_record):
    rows = {m.name: m for m in optim_rows.methods_from_registry()}
    m = rows[made_up_record]
    assert m.peer_source == "torch" and m.peer_name == "torch.optim.AdamW"
    assert m.peer_paths == {"foreach": {"foreach": True}, "fused": {"fused": True}}
    p = [torch.nn.Parameter(torch.zeros(3))]
    built = m.peer(p, {"lr": 0.1, "fused": True})
    assert type(built) is torch.optim.AdamW and built.defaults["fused"] is True

    res = optim_step.run(small=True, steps=1, rounds=2, warmup=1, methods=[m])
    row, = res["rows"]
    assert set(row["peer_paths_ms"]) == {"foreach", "fused"} and all(v > 0 for v in row["peer_paths_ms"].values())
    assert row["peer"] == "torch.optim.AdamW" and row["peer_path"] in ("foreach", "fused") and row["ratio_peer"] > 0
    assert row["notes"] == ["made up"]
    # a torch.optim peer is a reference, not one of the pytorch_optimizer targets (a), (b); its (c) line is there
    assert [t["status"] for t in res["targets"][:2]] == ["n/a", "n/a"]
    assert res["targets"][2]["target"] == "(c) MadeUpAdamW <= 50x torch Adam(foreach)"
    assert "| MadeUpAdamW |" in optim_step.to_markdown(res)


def test_an_unknown_torch_optim_peer_is_a_clear_error(monkeypatch, made_up_record):
    rec = registry.get(made_up_record)
    monkeypatch.setitem(registry._REGISTRY, made_up_record, dataclasses.replace(
        rec, info={"bench": {**rec.info["bench"], "peer": "torch.optim.NoSuchThing"}}))
    with pytest.raises(ValueError, match=r"Invalid peer: 'torch.optim.NoSuchThing'"):
        optim_rows.methods_from_registry()


# --------------------------------------------------------------------------- loss step benchmark

def test_loss_step_small_run_and_table(tmp_path):
    res = loss_step.run(n=64, c=10, rounds=2, reps=2, warmup=1)
    names = [r["name"] for r in res["rows"]]
    assert names[0] == "F.cross_entropy" and "ldr_loss" in names and res["rows"][0]["ratio"] == 1.0
    assert all(r["ms"] > 0 and r["verdict"] in ("", "PASS", "MISS") for r in res["rows"])
    md = loss_step.to_markdown(res)
    assert "| loss | ms | ratio to F.cross_entropy | target |\n|---|---:|---:|---|\n| F.cross_entropy |" in md


# --------------------------------------------------------------------------- the old import path

def test_gradwise_bench_still_imports_from_a_checkout_with_a_deprecation_warning():
    sys.modules.pop("gradwise.bench", None)
    with pytest.warns(DeprecationWarning, match=r"gradwise.bench is deprecated; import from "
                                                r"benchmarks/optim_step.py.*removal planned after version 0.2"):
        bench = importlib.import_module("gradwise.bench")
    assert bench.main is optim_step.main and bench.METHODS is optim_step.METHODS
    assert bench.tensor_specs is harness.tensor_specs and "AdaBelief" in bench.GRADWISE_NAMES
    sys.modules.pop("gradwise.bench", None)


def test_gradwise_bench_without_the_benchmarks_folder_is_an_import_error_naming_it(monkeypatch):
    monkeypatch.setattr(_benchmarks, "benchmarks_dir", lambda: None)
    sys.modules.pop("gradwise.bench", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ImportError, match=r"benchmarks/ folder of a gradwise source checkout"):
            importlib.import_module("gradwise.bench")
    sys.modules.pop("gradwise.bench", None)


def test_every_benchmark_script_uses_the_harness():
    folder = _benchmarks.benchmarks_dir()
    scripts = sorted(p for p in folder.glob("*.py") if p.name not in ("harness.py", "optim_rows.py"))
    assert [p.name for p in scripts] == ["adapter_step.py", "bandit_step.py", "diffusion_step.py", "dynmole_step.py",
                                          "lame_step.py", "layer_step.py", "loss_step.py", "lpn_step.py",
                                          "ntk_step.py", "ode_step.py", "optim_step.py", "pinn_step.py",
                                          "preference_step.py",
                                          "reste_step.py", "rl_step.py", "sara_step.py", "state_bits.py",
                                          "tta_step.py", "unlearning_step.py"]
    for p in scripts:
        text = p.read_text()
        assert "\nimport harness" in text, p.name
        assert "harness.save(" in text or "harness.int_options_main(" in text, p.name
        assert "save_results" not in text and "getloadavg" not in text, p.name  # the harness's job


def test_ode_step_small_run_reports_ratios_and_the_r_e_overhead():
    ode_step = _benchmarks.load("ode_step")
    res = ode_step.run(batch=8, hidden=8, rounds=1, reps=1, warmup=0)
    names = [r["name"] for r in res["rows"]]
    assert "gradwise dopri5" in names and "gradwise dopri5 + R_E" in names
    rows = {r["name"]: r for r in res["rows"]}
    if "torchdiffeq dopri5" in rows:  # the controller reproduces odeint's steps: the same NFE
        assert rows["gradwise dopri5"]["nfe"] == rows["torchdiffeq dopri5"]["nfe"]
        assert rows["gradwise dopri5"]["verdict"] in ("PASS", "MISS")
    assert res["reg_ratio"] > 0 and res["reg_verdict"] in ("PASS", "MISS")
    assert "## Neural-ODE solve time per function evaluation" in ode_step.to_markdown(res)
