"""The one driver every study runs on (gradwise.arena.driver), with toy studies registered in the test:
seeds x methods, per-seed shared work, summary with tied ranks, leaderboard, results folder."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gradwise.arena import study as registry
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option
from gradwise.cli import main


@dataclass(frozen=True)
class ToyConfig:
    scale: float = option(1.0, "how far apart the methods are", at_least=0.0)
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    first_seed: int = option(0, "first seed", at_least=0)
    threads: int = 1


# what each method scores: its offset plus a seed-dependent wobble (deterministic)
OFFSETS = {"good": 2.0, "fine": 1.9, "bad": 0.0}


def _run_one(run: Run, method: str, seed: int, shared) -> dict:
    return {"method": method, "seed": seed, "score": run.cfg.scale * OFFSETS[method] + 0.01 * (seed % 3),
            "shared": shared, "wall_s": 0.0}


def _write_plot(out: Path, run: Run, rows, summary, title: str) -> None:
    (out / "toy.txt").write_text(f"{title}: {[s['method'] for s in summary]}")


def _toy(**kw) -> Study:
    base = dict(name="toy", help="a toy study for the driver's tests", description="Study ``toy``: made up.",
                config=ToyConfig, methods=lambda: tuple(OFFSETS), run_one=_run_one, summary_keys=("score",),
                rank_on="score", title=lambda run, rows: f"toy, {len(rows)} runs",
                notes=lambda run, summary: "best first by score",
                columns=(Column("method", lambda s: s["method"], "left"), ci_column("score", "score")),
                csv_skip=("shared",), write_files=_write_plot, outputs=("toy.txt",),
                select=Selection("methods", "toy methods"), smoke=("--seeds", "2"))
    return Study(**{**base, **kw})


@pytest.fixture
def register(monkeypatch):
    def add(study: Study) -> Study:
        monkeypatch.setitem(registry._STUDIES, study.name, study)
        return study
    return add


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_a_registered_study_runs_end_to_end(register, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    register(_toy())
    out = tmp_path / "run"
    assert main(["arena", "toy", "--seeds", "2", "--first-seed", "1", "--scale", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "toy.txt"]
    rows = _rows(out)
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for m in OFFSETS for s in ("1", "2")]  # method-major
    assert list(rows[0]) == ["method", "seed", "score", "wall_s"]  # csv_skip
    doc = json.loads((out / "results.json").read_text())
    assert doc["study"] == "toy" and doc["config"] == {"scale": 1.0, "seeds": 2, "first_seed": 1, "threads": 1}
    assert doc["versions"]["machine"]["cpu"] and doc["total_wall_s"] >= 0
    summary = {s["method"]: s for s in doc["summary"]}
    assert [s["method"] for s in doc["summary"]] == ["good", "fine", "bad"]
    assert summary["good"]["runs"] == 2 and summary["good"]["score_mean"] == pytest.approx(2.015)
    # good and fine overlap (=1), bad is clear of them (rank 3)
    assert [(s["rank"], s["tied"]) for s in doc["summary"]] == [(1, True), (1, True), (3, False)]
    printed = capsys.readouterr().out
    assert "toy, 6 runs" in printed and "best first by score" in printed and "machine:" in printed
    assert "=1" in printed and f"results: {out}/ (results.csv, results.json, toy.txt)" in printed
    assert (out / "toy.txt").read_text() == "toy, 6 runs: ['good', 'fine', 'bad']"


def test_same_config_same_numbers(register, tmp_path):
    register(_toy())
    for name in ("a", "b"):
        assert main(["arena", "toy", "--methods", "bad,good", "--out", str(tmp_path / name)]) == 0
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(tmp_path / "a")]
    assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in _rows(tmp_path / "b")]
    assert {r["method"] for r in strip} == {"bad", "good"}


def test_bad_values_are_one_line_and_exit_2(register, tmp_path, capsys):
    register(_toy())
    for argv, says in ((["--seeds", "0"], "argument --seeds: expected an integer >= 1, got '0'"),
                       (["--scale", "-1"], "argument --scale: expected a finite number with 0.0 <= scale, got '-1'"),
                       (["--methods", "good,nope"], "argument --methods: unknown 'nope'; accepted: comma-separated "
                                                    "toy methods from good, fine, bad")):
        with pytest.raises(SystemExit) as exc:
            main(["arena", "toy", *argv, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "x").exists()


def test_per_seed_work_is_shared_and_its_reference_row_reported(register, tmp_path, capsys):
    setups = []

    def seed_setup(run: Run, seed: int):
        setups.append(seed)
        return f"shared-{seed}", {"method": "reference", "seed": seed, "score": -1.0, "wall_s": 0.0}

    def summarize(run: Run, rows):
        from gradwise.arena.driver import summarize_rows

        ref = {"method": "reference", "runs": len(run.references), "score_mean": -1.0, "score_ci": 0.0,
               "rank": None, "tied": False}
        return summarize_rows(study, rows, run.methods) + [ref]

    study = register(_toy(seed_setup=seed_setup, seeds_outer=True, summarize=summarize,
                          csv_skip=()))
    out = tmp_path / "run"
    assert main(["arena", "toy", "--seeds", "2", "--out", str(out)]) == 0
    assert setups == [0, 1]
    rows = _rows(out)
    assert [(r["method"], r["seed"]) for r in rows[:2]] == [("reference", "0"), ("reference", "1")]  # first
    assert [(r["method"], r["seed"], r["shared"]) for r in rows[2:5]] == [(m, "0", "shared-0") for m in OFFSETS]
    doc = json.loads((out / "results.json").read_text())
    assert doc["summary"][-1]["method"] == "reference" and doc["summary"][-1]["rank"] is None
    assert "reference" in capsys.readouterr().out  # shown, dimmed, without a rank


def test_run_seed_gives_every_methods_row_at_once(register, tmp_path):
    calls = []

    def run_seed(run: Run, seed: int):
        calls.append(seed)
        return [{"method": m, "seed": seed, "score": OFFSETS[m]} for m in run.methods]

    register(_toy(run_one=None, run_seed=run_seed, select=None))
    assert main(["arena", "toy", "--seeds", "2", "--out", str(tmp_path / "run")]) == 0
    assert calls == [0, 1] and len(_rows(tmp_path / "run")) == 6


def test_a_failed_run_leaves_no_results_folder(register, tmp_path):
    def fail(run, method, seed, shared):
        if seed == 1:
            raise RuntimeError("interrupted mid-run")
        return _run_one(run, method, seed, shared)

    register(_toy(run_one=fail))
    with pytest.raises(RuntimeError, match="interrupted"):
        main(["arena", "toy", "--out", str(tmp_path / "run")])
    assert list(tmp_path.iterdir()) == []


def test_adjust_changes_the_config_that_is_run_and_recorded(register, tmp_path):
    from dataclasses import replace

    register(_toy(adjust=lambda cfg: replace(cfg, scale=cfg.scale / 2)))
    assert main(["arena", "toy", "--scale", "4", "--seeds", "1", "--out", str(tmp_path / "run")]) == 0
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert doc["config"]["scale"] == 2.0 and doc["summary"][0]["score_mean"] == pytest.approx(4.0)
