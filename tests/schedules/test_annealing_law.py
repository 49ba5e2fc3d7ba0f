"""The LR-annealing loss law (Tissue et al. 2024): the areas S1/S2, fitting, prediction, bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradwise.schedules import AnnealingLaw, annealing_areas

PEAK, T = 3e-4, 2000


def cosine(n=T):
    return [PEAK * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / n))) for i in range(n)]


def wsd(n=T, frac=0.2):
    d = int(n * (1 - frac))
    return [PEAK if i < d else PEAK * (0.01 + 0.99 * (1 - (i - d) / (n - d))) for i in range(n)]


def hand_areas(lrs, lam, eta0=None):
    s1 = s2 = m = 0.0
    prev = lrs[0] if eta0 is None else eta0
    out1, out2 = [], []
    for lr in lrs:
        m = lam * m + (prev - lr)
        s1 += lr
        s2 += m
        prev = lr
        out1.append(s1), out2.append(s2)
    return out1, out2


def test_areas_match_a_hand_loop_and_accept_torch_and_numpy():
    lrs = cosine(300)
    e1, e2 = hand_areas(lrs, 0.999)
    for inp in (lrs, np.array(lrs), torch.tensor(lrs, dtype=torch.float32).double()):
        s1, s2 = annealing_areas(inp)
        assert s1.dtype == s2.dtype == torch.float64 and s1.shape == (300,)
        torch.testing.assert_close(s1, torch.tensor(e1, dtype=torch.float64))
        torch.testing.assert_close(s2, torch.tensor(e2, dtype=torch.float64))
    s1, _ = annealing_areas(torch.tensor(lrs, dtype=torch.float32))  # float32 in, float64 out
    assert s1.dtype == torch.float64


def test_constant_lr_has_no_annealing_area_and_s1_is_the_lr_sum():
    s1, s2 = annealing_areas([1e-3] * 50)
    assert torch.all(s2 == 0)
    torch.testing.assert_close(s1, 1e-3 * torch.arange(1, 51, dtype=torch.float64))


def test_single_drop_follows_the_geometric_momentum():
    lam, d = 0.9, 0.5
    lrs = [1.0] * 5 + [1.0 - d] * 20           # the drop happens at step 6 (index 5)
    _, s2 = annealing_areas(lrs, decay=lam)
    assert torch.all(s2[:5] == 0)
    # m_k = d * lam^(k-6) for k >= 6, so S2 after step k = d * (1 - lam^(k-5)) / (1 - lam)
    k = torch.arange(6, 26, dtype=torch.float64)
    torch.testing.assert_close(s2[5:], d * (1 - lam ** (k - 5)) / (1 - lam))


def test_first_step_convention():
    # default: eta_0 = eta_1, no drop before step 1; initial_lr sets eta_0 (e.g. the peak)
    lrs = [0.5, 0.5, 0.25]
    _, s2 = annealing_areas(lrs, decay=0.5)
    torch.testing.assert_close(s2, torch.tensor([0.0, 0.0, 0.25], dtype=torch.float64))
    _, s2 = annealing_areas(lrs, decay=0.5, initial_lr=1.0)
    e = hand_areas(lrs, 0.5, eta0=1.0)[1]
    torch.testing.assert_close(s2, torch.tensor(e, dtype=torch.float64))
    assert s2[0].item() == 0.5


def test_fit_recovers_parameters_and_predicts_an_unseen_wsd_curve():
    truth = AnnealingLaw().set_params(L0=2.4, A=0.55, alpha=0.42, C=1.7)  # alpha off the start grid
    steps = np.arange(20, T + 1, 20)
    gen = np.random.default_rng(0)
    curves = []
    for lrs in (cosine(), [PEAK] * T):
        clean = truth.predict(lrs, steps)
        curves.append((lrs, steps, clean * torch.from_numpy(1 + 1e-4 * gen.standard_normal(len(steps)))))
    law = AnnealingLaw().fit(curves)
    got = law.params
    assert got["L0"] == pytest.approx(2.4, rel=0.05) and got["alpha"] == pytest.approx(0.42, rel=0.05)
    assert got["A"] == pytest.approx(0.55, rel=0.1) and got["C"] == pytest.approx(1.7, rel=0.05)
    pred, true = law.predict(wsd()), truth.predict(wsd())
    assert pred.dtype == torch.float64 and pred.shape == (T,)
    assert ((pred - true).abs() / true).max() < 2e-3
    # the annealing term is what separates WSD's end from a constant run's
    assert truth.predict(wsd())[-1] < truth.predict([PEAK] * T)[-1]


def test_fit_on_exact_single_curve_is_exact():
    truth = AnnealingLaw().set_params(3.0, 0.8, 0.5, 2.0)
    steps = np.arange(1, T + 1, 7)
    law = AnnealingLaw().fit((cosine(), steps, truth.predict(cosine(), steps)))
    for k, v in truth.params.items():
        assert law.params[k] == pytest.approx(v, rel=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="decay"):
        annealing_areas([1.0], decay=1.0)
    with pytest.raises(ValueError, match="lrs"):
        annealing_areas([])
    with pytest.raises(ValueError, match="lrs"):
        annealing_areas([1.0, -1.0])
    with pytest.raises(ValueError, match="lrs"):
        annealing_areas([[1.0, 2.0]])
    with pytest.raises(ValueError, match="lrs"):
        annealing_areas([1.0, float("nan")])
    with pytest.raises(ValueError, match="initial_lr"):
        annealing_areas([1.0], initial_lr=-1.0)
    with pytest.raises(RuntimeError, match="fit"):
        AnnealingLaw().params
    law = AnnealingLaw().set_params(2.0, 0.5, 0.5, 1.0)
    with pytest.raises(ValueError, match="steps"):
        law.predict([1e-3] * 10, steps=[0, 3])
    with pytest.raises(ValueError, match="steps"):
        law.predict([1e-3] * 10, steps=[11])
    with pytest.raises(ValueError, match="S1"):
        law.predict([0.0, 1e-3])
    with pytest.raises(ValueError, match="losses"):
        AnnealingLaw().fit(([1e-3] * 10, [1, 2, 3, 4], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="losses"):
        AnnealingLaw().fit(([1e-3] * 10, [1, 2, 3, 4], [1.0, 2.0, -3.0, 1.0]))
    with pytest.raises(ValueError, match="at least 4"):
        AnnealingLaw().fit(([1e-3] * 10, [1, 2], [1.0, 2.0]))
    with pytest.raises(ValueError, match="curves"):
        AnnealingLaw().fit([])
    with pytest.raises(ValueError, match="huber_delta"):
        AnnealingLaw(huber_delta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        AnnealingLaw().set_params(2.0, 0.5, 0.0, 1.0)
