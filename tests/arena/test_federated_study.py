"""The federated study (gradwise arena federated). The default tests replace Flower's simulation by a stand-in
that records what the study asked for (a real simulation starts Ray: about a minute on 2 shared cores); the
real run, and its repeatability for a seed (what ``--ray`` relies on), are marked slow."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gradwise.arena import federated_study as fs
from gradwise.arena.study import Run


class _Fed:
    def __init__(self, accuracy):
        self.accuracy = accuracy


def _fake_simulation(calls):
    """A stand-in for run_digits_simulation: accuracy climbs by a rate that depends on the strategy's class,
    its participation and its alpha, so that every row and setting can be told apart."""
    def simulate(strategies, *, num_clients, num_rounds, alpha, seed, alphas, **kw):
        calls.append(dict(strategies=strategies, num_clients=num_clients, num_rounds=num_rounds, seed=seed,
                          alphas=alphas, **kw))
        out = {}
        for name, strat in strategies.items():
            rate = 0.1 + 0.01 * len(type(strat.strategy).__name__) + 0.02 * alphas[name] \
                - 0.05 * (strat.probabilities.min() < 1) + 0.001 * seed
            out[name] = _Fed([0.1 + 0.85 * (1 - math.exp(-rate * r)) for r in range(num_rounds + 1)])
        return out
    return simulate


@pytest.fixture
def fake_sim(monkeypatch):
    pytest.importorskip("flwr.serverapp")
    import gradwise.federated as fed

    calls = []
    monkeypatch.setattr(fed, "run_digits_simulation", _fake_simulation(calls))
    return calls


def test_one_simulation_per_seed_holds_every_method_in_every_setting(fake_sim):
    cfg = fs.Config(clients=6, rounds=5, alpha_strong=0.2, alpha_mild=2.0, seeds=1)
    run = Run(cfg=cfg, task=None, methods=("FedAvg", "FedAU"), seeds=(4,))
    rows = fs.run_seed(run, 4)
    assert len(fake_sim) == 1
    call = fake_sim[0]
    assert call["seed"] == 4 and call["num_clients"] == 6 and call["num_rounds"] == 5
    names = [f"{m}/{k}" for k in fs.setting_keys() for m in ("FedAvg", "FedAU")]
    assert sorted(call["strategies"]) == sorted(names)
    for name, strat in call["strategies"].items():
        method, setting = name.split("/")
        assert call["alphas"][name] == (0.2 if setting.startswith("strong") else 2.0)
        assert strat.seed == 4 and strat.fraction_train == 1.0 and strat.fraction_evaluate == 0.0
        assert type(strat.strategy).__name__ == ("FedAvg" if method == "FedAvg" else "FedAUStrategy")
        if setting.endswith("full"):
            assert (strat.probabilities == 1).all()
        else:  # FedAU's rule on this seed's split: heterogeneous, the same for every method
            expect = fs.participation_probabilities(cfg, call["alphas"][name], 4)
            assert np.array_equal(strat.probabilities, expect) and expect.std() > 0
    # fresh strategies: no two settings share a strategy's state
    assert len({id(s.strategy) for s in call["strategies"].values()}) == len(names)
    assert [r["method"] for r in rows] == ["FedAvg", "FedAU"]
    for r in rows:
        accs = [r[f"acc_{k}"] for k in fs.setting_keys()]
        assert len(set(accs)) == 4 and math.isclose(r["acc_avg"], np.mean(accs))
        for k in fs.setting_keys():
            curve = r[f"curve_{k}"]
            assert len(curve) == 6 and r[f"acc_{k}"] == curve[-1]
            first = r[f"round_{k}"]
            assert first is None or (curve[first] >= cfg.target and all(a < cfg.target for a in curve[1:first]))
    assert set(run.state["participation"]) == {"strong seed 4", "mild seed 4"}


def test_a_new_strategy_is_one_entry(fake_sim, monkeypatch):
    from flwr.serverapp.strategy import FedAvg

    class FedNew(FedAvg):
        pass

    monkeypatch.setitem(fs.STRATEGIES, "FedNew", lambda cfg, kw: FedNew(**kw))
    assert "FedNew" in fs.STUDY.methods()
    rows = fs.run_seed(Run(cfg=fs.Config(clients=4, rounds=2), task=None, methods=("FedNew",), seeds=(0,)), 0)
    assert rows[0]["method"] == "FedNew"
    assert all(type(s.strategy) is FedNew for s in fake_sim[0]["strategies"].values())


def test_study_runs_through_the_cli_and_reports_gains_over_fedavg(fake_sim, tmp_path, capsys):
    from gradwise.cli import main

    out = tmp_path / "run"
    assert main(["arena", "federated", "--seeds", "2", "--clients", "4", "--rounds", "6", "--target", "0.5",
                 "--methods", "fedau,FEDAVG,FedHyper", "--out", str(out)]) == 0
    assert len(fake_sim) == 2  # one simulation per seed
    printed = capsys.readouterr().out
    assert "paired gain over FedAvg" in printed and "α=0.1 unknown" in printed
    doc = json.loads((out / "results.json").read_text())
    summary = {s["method"]: s for s in doc["summary"]}
    assert set(summary) == {"FedAU", "FedAvg", "FedHyper"}
    for k in fs.setting_keys():
        assert summary["FedAvg"][f"gain_{k}_mean"] == 0.0
        gains = [r[f"acc_{k}"] for r in doc["runs"] if r["method"] == "FedAU"]
        base = [r[f"acc_{k}"] for r in doc["runs"] if r["method"] == "FedAvg"]
        assert math.isclose(summary["FedAU"][f"gain_{k}_mean"], np.mean(np.subtract(gains, base)))
        assert summary["FedAU"][f"round_{k}_reached"] == "2/2"
    assert set(doc["participation_probabilities"]) == {"strong seed 0", "mild seed 0", "strong seed 1",
                                                        "mild seed 1"}
    assert "curve_strong-full" not in (out / "results.csv").read_text()
    assert (out / "federated_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_real_simulation_is_repeatable_for_a_seed():
    """Two runs of one seed give the same numbers (Flower's node ids differ between them)."""
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    cfg = fs.Config(clients=4, rounds=3, participation_mean=0.5)
    methods = tuple(fs.STRATEGIES)
    first, second = (fs.run_seed(Run(cfg=cfg, task=None, methods=methods, seeds=(0,)), 0) for _ in range(2))
    strip = [{k: v for k, v in r.items() if k not in ("wall_s",)} for r in first]
    assert strip == [{k: v for k, v in r.items() if k not in ("wall_s",)} for r in second]
    for r in first:  # every method learned in the full-participation settings
        assert r["curve_mild-full"][-1] > r["curve_mild-full"][0] + 0.05, r["method"]


@pytest.mark.slow
def test_on_ray_the_rows_are_the_serial_ones(tmp_path):
    """``--ray``: each seed's simulation runs in a process of its own (Flower's Ray inside a Ray task would
    wait for CPUs the tasks hold), and gives the serial run's rows."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("flwr.simulation")
    from gradwise.cli import main

    argv = ["arena", "federated", "--seeds", "2", "--clients", "3", "--rounds", "2", "--local-epochs", "1",
            "--methods", "FedAvg,FedAU"]
    docs = []
    for out, extra in ((tmp_path / "serial", []), (tmp_path / "ray", ["--ray"])):
        assert main([*argv, "--out", str(out), *extra]) == 0
        docs.append(json.loads((out / "results.json").read_text()))
    serial, on_ray = ([{k: v for k, v in r.items() if k != "wall_s"} for r in d["runs"]] for d in docs)
    assert len(serial) == 4 and on_ray == serial
    assert docs[0]["participation_probabilities"] == docs[1]["participation_probabilities"]
    assert not ray.is_initialized()
