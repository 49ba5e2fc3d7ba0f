"""`gradwise arena STUDY --ray`: the seeds x methods as Ray tasks on a real Ray (a local one started by
the test or by gradwise, and a cluster started with `ray start --head`), giving the serial run's rows.

The rows are compared whole but for their wall-time fields (``wall_s``: each run's own timing, measured
in another process), which are the only fields expected to differ.
"""
from __future__ import annotations

import argparse
import builtins
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gradwise.arena.distillation_study import TEACHER
from gradwise.arena.ray_sweep import address_type, merge_state, pieces
from gradwise.arena.study import Run, load_study
from gradwise.cli import main

TIMING = ("wall_s",)  # the per-run wall time: the only fields of a row that differ between the two runs


def _ray():
    return pytest.importorskip("ray")


def _run(name: str, argv: list[str], out: Path, *extra: str) -> dict:
    assert main(["arena", name, *argv, "--out", str(out), *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _ranks(doc: dict) -> list[tuple]:
    key = load_study(doc["study"]).name_key
    return [(s[key], s["rank"], s["tied"]) for s in doc["summary"]]


def _same_results(serial: dict, on_ray: dict) -> None:
    assert len(on_ray["runs"]) == len(serial["runs"]) > 0
    assert all(k in r for r in serial["runs"] for k in TIMING)  # the fields left out are there ...
    assert _untimed(on_ray["runs"]) == _untimed(serial["runs"])  # ... and everything else is equal, in order
    assert _ranks(on_ray) == _ranks(serial)
    assert on_ray["config"] == serial["config"]


# ------------------------------------------------------------------ no Ray needed


def test_ray_not_installed_is_a_usage_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # ray missing: the one thing simulated, since it is about a package
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    out = tmp_path / "never"
    assert main(["arena", "imbalance", "--seeds", "1", "--steps", "5", "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "gradwise arena imbalance: error: --ray" in err
    assert "gradwise[ray]" in err and "`federated`" in err and "ray==2.55.1" in err
    assert not out.exists()  # refused before any work
    # without --ray the arena runs as before, ray or not
    assert main(["arena", "imbalance", "--seeds", "1", "--steps", "5", "--out", str(out)]) == 0
    assert (out / "results.json").exists()


def test_ray_address_values_are_checked_with_what_is_accepted(capsys):
    for good in ("auto", "local", "ray://head.example:10001", "10.0.0.5:6379", "localhost:6379"):
        assert address_type(good) == good
    for bad in ("", "cluster", "ray://", "host:", "host:99999", "host:port", "http://host:80"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected auto, local, ray://HOST:PORT or HOST:PORT"):
            address_type(bad)
    with pytest.raises(SystemExit) as exc:
        main(["arena", "imbalance", "--ray-address", "nowhere"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--ray-address" in err and "expected auto, local, ray://HOST:PORT or HOST:PORT, got 'nowhere'" in err


def test_every_study_has_the_ray_options(capsys):
    for name in ("imbalance", "calibration", "distillation", "optimizers"):
        with pytest.raises(SystemExit):
            main(["arena", name, "--help"])
        out = capsys.readouterr().out
        assert "--ray " in out and "--ray-address ADDR" in out


def test_pieces_keep_the_serial_order_and_each_studys_grouping():
    imbalance, distillation, calibration = (load_study(n) for n in ("imbalance", "distillation", "calibration"))
    run = Run(cfg=None, task=None, methods=("a", "b"), seeds=(3, 4))
    assert pieces(imbalance, run) == [(3, "a"), (4, "a"), (3, "b"), (4, "b")]  # method by method, as serially
    assert pieces(distillation, run) == [(3, None), (4, None)]  # seed_setup: the teacher with its seed's students
    assert pieces(calibration, run) == [(3, None), (4, None)]  # run_seed: one task per seed


def test_state_of_the_tasks_is_merged_in_order():
    state: dict = {}
    merge_state(state, {"pooled": {"CE": [1], "TS": [2]}, "train_s_0": 0.5, "last": "seed 0"})
    merge_state(state, {"pooled": {"CE": [3], "TS": [4]}, "train_s_1": 0.7, "last": "seed 1"})
    assert state == {"pooled": {"CE": [1, 3], "TS": [2, 4]}, "train_s_0": 0.5, "train_s_1": 0.7, "last": "seed 1"}


# ------------------------------------------------------------------ Ray started by gradwise, and a cluster


def test_local_ray_started_and_shut_down_by_gradwise(tmp_path):
    ray = _ray()
    assert not ray.is_initialized()
    argv = ["--seeds", "2", "--steps", "5"]
    serial = _run("imbalance", argv, tmp_path / "serial")
    on_ray = _run("imbalance", argv, tmp_path / "ray", "--ray")
    assert not ray.is_initialized()  # gradwise's own local Ray is shut down after the run
    _same_results(serial, on_ray)
    assert len(on_ray["runs"]) == 2 * len(load_study("imbalance").methods())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a Ray head process of its own: 30-45 s
def test_ray_address_runs_on_a_cluster_started_by_the_test(tmp_path):
    ray = _ray()
    assert not ray.is_initialized()
    exe = Path(sys.executable).parent / "ray"
    if not exe.exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="gwray", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(Path(__file__).parents[2] / "src"),
                                                                   os.environ.get("PYTHONPATH", "")] if p)}
    # --block: the head's processes belong to this one process and end with it (no `ray stop`, which would
    # stop every Ray on the machine)
    head = subprocess.Popen([str(exe), "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--object-store-memory=100000000",
                             "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        seen, deadline = [], time.monotonic() + 60
        assert head.stdout is not None
        while time.monotonic() < deadline:
            line = head.stdout.readline()
            seen.append(line)
            if "block forever" in line or (not line and head.poll() is not None):
                break
        assert head.poll() is None, "".join(seen)
        argv = ["--seeds", "1", "--steps", "5"]
        on_cluster = _run("imbalance", argv, tmp_path / "cluster", "--ray-address", f"127.0.0.1:{port}")
        assert not ray.is_initialized()  # disconnected after the run ...
        assert head.poll() is None  # ... and the cluster left running
        serial = _run("imbalance", argv, tmp_path / "serial")
        _same_results(serial, on_cluster)
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------ a local Ray started by the test


@pytest.fixture(scope="module")
def local_ray():
    ray = _ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100_000_000,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow  # a third Ray-backed study; the default suite keeps the per-method and per-seed groupings
def test_seed_setup_study_on_ray_gives_the_serial_rows(local_ray, tmp_path):
    # distillation: each seed's teacher is trained in the task of that seed's students; its rows are references
    argv = ["--seeds", "2", "--teacher-epochs", "1", "--epochs", "1"]
    serial = _run("distillation", argv, tmp_path / "serial")
    on_ray = _run("distillation", argv, tmp_path / "ray", "--ray")
    assert local_ray.is_initialized()  # a Ray that was running is used and left running
    _same_results(serial, on_ray)
    assert [r["method"] for r in on_ray["runs"]].count(TEACHER) == 2  # seed_setup's references, seed 0 then 1


def test_run_seed_study_on_ray_gives_the_serial_rows_and_state(local_ray, tmp_path):
    import torch
    from rich.console import Console

    from gradwise.arena.driver import train_all

    # calibration: one task per seed gives every method's row, and its pooled test predictions (run.state,
    # which the plot reads) come back merged in the seed order
    study = load_study("calibration")
    cfg = study.config(seeds=2, epochs=2, ca_epochs=2)
    methods = tuple(study.methods())
    quiet = Console(file=open(os.devnull, "w"))
    runs = [Run(cfg=cfg, task=study.setup(cfg, methods), methods=methods, seeds=(0, 1)) for _ in range(2)]
    serial = train_all(study, runs[0], quiet)
    on_ray = train_all(study, runs[1], quiet, ray=True)
    assert _untimed(on_ray) == _untimed(serial) and len(serial) == 2 * len(methods)
    pooled = [run.state["pooled"] for run in runs]
    assert set(pooled[1]) == set(pooled[0]) and all(len(pooled[1][m]) == 2 for m in pooled[0])
    for m in pooled[0]:
        for a, b in zip(pooled[0][m], pooled[1][m]):
            assert torch.equal(a, b), m
