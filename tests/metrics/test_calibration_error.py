"""Calibration errors (ECE, adaptive, class-wise) and reliability bins: loops over bins, hand-computed
examples, the authors' code."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gradwise.metrics import (adaptive_calibration_error, classwise_calibration_error, expected_calibration_error,
                              reliability_bins)
from loss_inputs import calibration_case as _random_case


DATA = Path(__file__).parents[1] / "data"


# ---------------------------------------------------------------- brute-force references (loops over bins)

def _ece_loop(probs, y, n_bins, norm="l1"):
    conf, pred = probs.max(1)
    acc = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1)
    total, sq, worst = 0.0, 0.0, 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        inb = (conf.float() > lo) & (conf.float() <= hi)
        if inb.any():
            gap = abs(acc[inb].mean().item() - conf[inb].mean().item())
            w = inb.double().mean().item()
            total += w * gap
            sq += w * gap ** 2
            worst = max(worst, gap)
    return {"l1": total, "l2": math.sqrt(sq), "max": worst}[norm]


def _adaptive_loop(probs, y, n_bins):
    conf, pred = probs.max(1)
    acc = (pred == y).double()
    order = torch.sort(conf, stable=True).indices
    n = len(conf)
    total = 0.0
    for b in range(n_bins):
        idx = order[(b * n + n_bins - 1) // n_bins:((b + 1) * n + n_bins - 1) // n_bins]
        if len(idx):
            total += len(idx) / n * abs(acc[idx].mean().item() - conf[idx].mean().item())
    return total


def _classwise_loop(probs, y, n_bins):
    n, k = probs.shape
    edges = torch.linspace(0, 1, n_bins + 1)
    out = 0.0
    for c in range(k):
        p = probs[:, c]
        hit = (y == c).double()
        for b, (lo, hi) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
            inb = (p.float() <= hi) & ((p.float() > lo) | (b == 0))
            if inb.any():
                out += inb.double().sum().item() / n * abs(hit[inb].mean().item() - p[inb].mean().item())
    return out / k


# ---------------------------------------------------------------- calibration metrics

def test_ece_of_perfectly_calibrated_predictions_is_near_zero():
    g = torch.Generator().manual_seed(0)
    n, c = 200_000, 4
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, 1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)  # labels drawn from the predicted distribution
    assert expected_calibration_error(probs, y).item() < 0.01
    assert adaptive_calibration_error(probs, y).item() < 0.01
    assert classwise_calibration_error(probs, y).item() < 0.005
    # an overconfident version of the same predictions is visibly miscalibrated
    sharp = torch.softmax(torch.log(probs) * 3, 1)
    assert expected_calibration_error(sharp, y).item() > 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_loop_over_bins(seed, n_bins, norm):
    logits, y = _random_case(seed)
    probs = logits.softmax(1)
    got = expected_calibration_error(logits, y, n_bins=n_bins, norm=norm).item()
    assert got == pytest.approx(_ece_loop(probs, y, n_bins, norm), abs=1e-12)
    assert expected_calibration_error(probs, y, n_bins=n_bins, norm=norm).item() == pytest.approx(got, abs=1e-12)


def test_ece_hand_computed_example():
    # confidences 0.9 (correct), 0.9 (wrong), 0.6 (correct), 0.3+ rows; 5 bins of width 0.2
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.45, 0.55]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 0])
    # bin (0.8,1]: conf .9, acc .5 -> 2/4*0.4 = 0.2 ; bin (0.4,0.6]: conf (.6+.55)/2=.575, acc .5 -> 2/4*.075
    assert expected_calibration_error(probs, y, n_bins=5).item() == pytest.approx(0.2 + 0.0375, abs=1e-12)
    assert expected_calibration_error(probs, y, n_bins=5, norm="max").item() == pytest.approx(0.4, abs=1e-12)
    # adaptive with 2 bins: sorted conf [.55 (wrong), .6 (ok)], [.9, .9] -> .5*|.5-.575| + .5*|.5-.9|
    assert adaptive_calibration_error(probs, y, n_bins=2).item() == pytest.approx(0.5 * 0.075 + 0.5 * 0.4, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_adaptive_and_classwise_match_loops(seed, n_bins):
    logits, y = _random_case(seed, n=301)
    probs = logits.softmax(1)
    assert adaptive_calibration_error(logits, y, n_bins=n_bins).item() == pytest.approx(
        _adaptive_loop(probs, y, n_bins), abs=1e-12)
    assert classwise_calibration_error(logits, y, n_bins=n_bins).item() == pytest.approx(
        _classwise_loop(probs, y, n_bins), abs=1e-12)


def test_ece_matches_authors_code_golden():
    gold = torch.load(DATA / "correctness_aware_golden.pt", weights_only=True)["ece"]
    for nb, value in gold["values"].items():
        got = expected_calibration_error(gold["logits"], gold["labels"], n_bins=int(nb))
        assert got.item() == pytest.approx(value, abs=2e-6)


def test_reliability_bins_sum_to_ece():
    logits, y = _random_case(3)
    conf, acc, count = reliability_bins(logits, y, n_bins=10)
    ok = count > 0
    ece = ((count[ok] / count.sum()) * (acc[ok] - conf[ok]).abs()).sum()
    assert ece.item() == pytest.approx(expected_calibration_error(logits, y, n_bins=10).item(), abs=1e-12)
    assert torch.isnan(conf[~ok]).all()


def test_metrics_reject_bad_arguments():
    logits, y = _random_case(0, n=10)
    for fn in (expected_calibration_error, adaptive_calibration_error, classwise_calibration_error):
        with pytest.raises(ValueError, match="n_bins"):
            fn(logits, y, n_bins=0)
        with pytest.raises(ValueError, match="norm"):
            fn(logits, y, norm="l3")
        with pytest.raises(ValueError, match="target"):
            fn(logits, y + 10)
        with pytest.raises(ValueError, match="probs_or_logits"):
            fn(logits[0], y)
        with pytest.raises(ValueError, match="probs_or_logits"):
            fn(-logits.softmax(1), y, from_logits=False)


# ---------------------------------------------------------------- loss-based reweighting


def _dirichletcal_classwise_ece(probs, y, bins):
    """Transcription of classwise_ECE / binary_ECE (power=1) in calib/utils/functions.py of
    dirichletcal/experiments_neurips, the code classwise_calibration_error cites."""
    import numpy as np

    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.eye(probs.shape[1])[np.asarray(y)]  # label_binarize
    out = []
    for c in range(probs.shape[1]):
        p, t = probs[:, c], y_true[:, c]
        idx = np.digitize(p, np.linspace(0, 1, bins)) - 1
        out.append(sum(np.abs(np.mean(p[idx == i]) - np.mean(t[idx == i])) * np.sum(idx == i) / len(p)
                       for i in np.unique(idx)))
    return float(np.mean(out))


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 15])
def test_classwise_dirichletcal_binning_matches_the_cited_code(n_bins):
    g = torch.Generator().manual_seed(n_bins)
    probs = torch.softmax(torch.randn(200, 3, generator=g, dtype=torch.float64) * 3, 1)
    # rows that hit the code's special cases: p = 1 exactly (its own bin) and p on a bin edge
    probs[:3] = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)
    want = _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), n_bins)
    got = classwise_calibration_error(probs, y, n_bins=n_bins, binning="dirichletcal").item()
    assert got == pytest.approx(want, abs=1e-12)


def test_classwise_default_binning_and_the_documented_mapping():
    """Default binning, n_bins = M - 1, equals the code's bins=M where no probability is 1 or on an edge,
    and differs where one is exactly 1 (the code gives p = 1 a bin of its own)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 4, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, 4, (300,), generator=g)
    for m in (4, 11, 16):
        assert classwise_calibration_error(probs, y, n_bins=m - 1).item() == pytest.approx(
            _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), m), abs=1e-12)
    # confidently wrong at p = 1 and right at p = 0.95: one bin in the default (0.9, 1], two in the code
    probs[:20] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    y[:20] = 0
    probs[20:40] = torch.tensor([0.0, 0.0, 0.05, 0.95], dtype=torch.float64)
    y[20:40] = 3
    assert classwise_calibration_error(probs, y, n_bins=10).item() != pytest.approx(
        _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), 11), abs=1e-6)
    assert classwise_calibration_error(probs, y, n_bins=11, binning="dirichletcal").item() == pytest.approx(
        _dirichletcal_classwise_ece(probs.numpy(), y.numpy(), 11), abs=1e-12)
    with pytest.raises(ValueError, match=r"Invalid binning: 'numpy' \(accepted: 'equal_width' or 'dirichletcal'\)"):
        classwise_calibration_error(probs, y, binning="numpy")
