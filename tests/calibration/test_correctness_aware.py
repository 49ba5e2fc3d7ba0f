"""Correctness-aware calibrator: training matches the authors' code; features and shapes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradwise.calibration import (CorrectnessAwareCalibrator, fit_correctness_aware_calibrator,
                                  transformation_features)
from gradwise.losses import correctness_aware_loss
from loss_inputs import calibration_case as _random_case


DATA = Path(__file__).parents[1] / "data"


def test_ca_calibrator_training_matches_authors_code():
    gold = torch.load(DATA / "correctness_aware_golden.pt", weights_only=True)["calibrator"]
    names = {"embed.0.weight": "embed_layer.0.weight", "embed.0.bias": "embed_layer.0.bias",
             "temperature_layer.weight": "temperature_layer.weight", "temperature_layer.bias": "temperature_layer.bias"}
    for case in gold:
        cal = CorrectnessAwareCalibrator(12, 5)
        cal.load_state_dict({k: case["init"][v] for k, v in names.items()})
        if case["optimizer"] == "adam":
            fit_correctness_aware_calibrator(cal, case["logits"], case["features"], case["labels"],
                                             epochs=case["epochs"], lr=case["lr"], batch_size=case["batch_size"])
        else:  # the golden run swapped their Adam for SGD to expose the gradient's size
            opt = torch.optim.SGD(cal.parameters(), lr=case["lr"])
            for _ in range(case["epochs"]):
                opt.zero_grad()
                correctness_aware_loss(cal(case["logits"], case["features"]), case["labels"]).backward()
                opt.step()
        for k, v in names.items():
            moved = (case["final"][v] - case["init"][v]).abs().max()
            err = (cal.state_dict()[k] - case["final"][v]).abs().max()
            assert err <= 1e-6 + 1e-4 * moved, (case["optimizer"], k, err, moved)


def test_transformation_features_and_calibrator_shapes():
    logits, y = _random_case(0, n=20, c=6)
    logits = logits.float()
    views = [logits + 0.1, logits.flip(1), logits * 0.5]
    f = transformation_features(logits, views, k=4)
    assert f.shape == (20, 12)
    idx = logits.topk(4, 1).indices
    assert torch.allclose(f[:, 4:8], views[1].softmax(1).gather(1, idx))
    cal = CorrectnessAwareCalibrator(12)
    out = cal(logits, f)
    assert torch.equal(out.argmax(1), logits.argmax(1))
    t = cal.temperature(f)
    assert ((t >= 0.1) & (t <= 10)).all()
    with pytest.raises(ValueError, match="k"):
        transformation_features(logits, views, k=7)
