"""Each arena study of the losses-side families runs end to end on a few steps (noisy labels with EnsLoss,
distillation, calibration, imbalance) and writes its results; the studies' numbers are the arena's tests."""
from __future__ import annotations

import torch


def test_noisy_labels_study_smoke(tmp_path):
    import argparse

    from rich.console import Console

    from gradwise.arena import load_study
    from gradwise.arena.noisy_labels_study import noisy_labels

    y = torch.arange(10).repeat(100)
    yn, flip = noisy_labels(y, 10, 0.4, seed=0)
    assert abs(float(flip.float().mean()) - 0.4) < 0.05 and (yn[flip] != y[flip]).all() and (yn[~flip] == y[~flip]).all()
    study = load_study("noisy-labels")
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(["--steps", "20", "--seeds", "1", "--losses", "CE,ALDR-KL", "--out", str(tmp_path)])
    out = study.run(args, Console(quiet=True))
    assert (out / "results.csv").exists() and (out / "results.json").exists() and (out / "test_accuracy.png").exists()



def test_distillation_study_smoke(tmp_path):
    import argparse

    from rich.console import Console

    from gradwise.arena import STUDIES, load_study

    assert "distillation" in STUDIES
    study = load_study("distillation")
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(["--seeds", "1", "--teacher-epochs", "2", "--epochs", "2", "--out", str(tmp_path)])
    out = study.run(args, Console(file=open(tmp_path / "log.txt", "w"), width=160))
    import json
    doc = json.loads((out / "results.json").read_text())
    names = {s["name"] for s in doc["summary"]}
    assert {"CE only", "KD", "DHKD", "KD++ (ND)", "BD-KD (online)", "DML (online)"} <= names
    assert (out / "distillation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.csv").stat().st_size > 0



def _run_study(name, tmp_path, argv):
    import argparse

    from rich.console import Console

    from gradwise.arena import load_study

    study = load_study(name)
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args([*argv, "--out", str(tmp_path)])
    console = Console(record=True, width=160)
    out = study.run(args, console)
    return out, console.export_text()


def test_calibration_study_smoke(tmp_path):
    out, text = _run_study("calibration", tmp_path, ["--seeds", "1", "--epochs", "2", "--ca-epochs", "2"])
    for f in ("results.csv", "results.json", "reliability.png"):
        assert (out / f).stat().st_size > 0
    assert "temperature scaling" in text and "CA balanced" in text


def test_imbalance_study_smoke(tmp_path):
    out, text = _run_study("imbalance", tmp_path, ["--seeds", "1", "--steps", "5"])
    for f in ("results.csv", "results.json", "per_class_recall.png"):
        assert (out / f).stat().st_size > 0
    assert "cooldown" in text and "upweight" in text


def test_noisy_labels_study_runs_ensloss(tmp_path):
    import argparse

    from rich.console import Console

    from gradwise.arena import load_study

    study = load_study("noisy-labels")
    parser = argparse.ArgumentParser()
    study.add_arguments(parser)
    args = parser.parse_args(["--steps", "20", "--seeds", "1", "--losses", "EnsLoss (one-vs-rest)",
                              "--out", str(tmp_path)])
    out = study.run(args, Console(quiet=True))
    assert (out / "results.csv").exists() and (out / "test_accuracy.png").exists()
    assert "EnsLoss (one-vs-rest)" in (out / "results.json").read_text()
