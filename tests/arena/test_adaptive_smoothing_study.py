"""The adaptive-smoothing study's pieces at a tiny size (its smallest command line runs in
tests/arena/test_studies.py): the fixed-alpha mixtures, the attack through the whole model, the claim arithmetic."""
import math
from types import SimpleNamespace

import pytest
import torch

from gradwise.arena import adaptive_smoothing_runs as runs
from gradwise.arena.adaptive_smoothing_study import ALPHAS, claims

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = SimpleNamespace(hidden=16, lr=1e-2, epochs=1, batch_size=128, eps=0.2, train_pgd_steps=1, pgd_steps=3,
                      mix_epochs=1, gamma_scale=2.0, alpha_min=0.0, threads=1)


@pytest.fixture(scope="module")
def setting():
    data = runs.load_digits01()
    small = runs.DigitsData(data.x_train[:256], data.y_train[:256], data.x_test[:64], data.y_test[:64])
    std = runs.train_classifier(small, CFG, 0, adversarial=False)
    rob = runs.train_classifier(small, CFG, 0, adversarial=True)
    return small, std, rob


def test_data_in_unit_range_and_fixed_alpha_ends_are_the_base_models(setting):
    data, std, rob = setting
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    x = data.x_test
    for alpha, base in ((0.0, std), (1.0, rob)):
        out, _ = runs.fixed_alpha_model(std, rob, alpha)(x)
        torch.testing.assert_close(out, torch.log_softmax(base(x), 1))
    mid, _ = runs.fixed_alpha_model(std, rob, 0.7)(x)
    torch.testing.assert_close(mid.exp(), 0.3 * std(x).softmax(1) + 0.7 * rob(x).softmax(1))


def test_attack_lowers_accuracy_and_adaptive_model_trains(setting):
    data, std, rob = setting
    res = runs.evaluate(runs.fixed_alpha_model(std, rob, 0.0), data, CFG, 0)
    assert res["pgd_acc"] < res["clean_acc"] and res["score"] == pytest.approx((res["clean_acc"] +
                                                                              res["pgd_acc"]) / 2)
    model = runs.train_mixing_net(std, rob, data, CFG, 0)
    assert not model.training and model.bn.num_batches_tracked.item() > 0
    res = runs.evaluate(model, data, CFG, 0)
    assert 0.0 <= res["alpha_clean"] <= 1.0 and 0.0 <= res["alpha_pgd"] <= 1.0


def test_claims_are_paired_differences_over_seeds():
    rows = []
    for seed in range(3):
        for m, a in ALPHAS.items():
            rows.append({"method": m, "seed": seed, "score": 0.5 + 0.2 * a * (1 - a) + 0.01 * seed})
        rows.append({"method": "adaptive", "seed": seed, "score": 0.5 + 0.04 + 0.01 * seed + 0.001 * seed})
    c = claims(rows)
    best, mean, half = c["mixture_vs_ends"]
    assert best == "alpha-0.5" and mean == pytest.approx(0.05) and half == pytest.approx(0.0, abs=1e-12)
    mean, half = c["adaptive_vs_fixed"]
    assert mean == pytest.approx(-0.01 + 0.001) and math.isfinite(half)
