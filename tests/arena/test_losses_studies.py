"""What the losses-side studies add beyond tests/arena/test_studies.py (which runs every registered study
in its smallest form): the label-noise generator flips the stated fraction, and EnsLoss, which the smoke
run leaves out, runs in the noisy-labels study."""
from __future__ import annotations

import torch

from gradwise.cli import main


def test_noisy_labels_flip_the_stated_fraction_to_other_classes():
    from gradwise.arena.noisy_labels_study import noisy_labels

    y = torch.arange(10).repeat(100)
    yn, flip = noisy_labels(y, 10, 0.4, seed=0)
    assert abs(float(flip.float().mean()) - 0.4) < 0.05
    assert (yn[flip] != y[flip]).all() and (yn[~flip] == y[~flip]).all()


def test_noisy_labels_study_runs_ensloss(tmp_path):
    out = tmp_path / "run"
    assert main(["arena", "noisy-labels", "--steps", "20", "--seeds", "1", "--losses", "EnsLoss (one-vs-rest)",
                 "--out", str(out)]) == 0
    assert (out / "results.csv").exists() and (out / "test_accuracy.png").exists()
    assert "EnsLoss (one-vs-rest)" in (out / "results.json").read_text()
