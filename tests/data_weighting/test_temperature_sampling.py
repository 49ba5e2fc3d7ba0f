"""Temperature sampling: probability limits and draws that match them."""
from __future__ import annotations

import math

import pytest
import torch

from gradwise.data_weighting import TemperatureSampler, class_weights, temperature_probabilities


# ---------------------------------------------------------------- temperature sampling

def test_temperature_probability_limits():
    counts = [500, 100, 20, 5]
    c = torch.tensor(counts, dtype=torch.float64)
    assert torch.allclose(temperature_probabilities(counts, 1.0), c / c.sum())
    assert torch.allclose(temperature_probabilities(counts, math.inf), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(temperature_probabilities(counts, 2.0), c.sqrt() / c.sqrt().sum())
    assert torch.allclose(class_weights(counts, 1.0), torch.ones(4, dtype=torch.float64))
    w = class_weights(counts, math.inf)
    assert torch.allclose(w * c, (w * c)[0].expand(4))  # w ∝ 1/n
    assert (w * c / c.sum()).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="temperature"):
        temperature_probabilities(counts, 0.0)
    with pytest.raises(ValueError, match="counts"):
        class_weights([3, 0], 1.0)


def test_sampler_draws_match_probabilities():
    groups = torch.tensor([0] * 400 + [1] * 80 + [2] * 16 + [3] * 4)
    s = TemperatureSampler(groups, temperature=3.0, generator=torch.Generator().manual_seed(0))
    p = s.group_probabilities()
    assert torch.allclose(p, temperature_probabilities([400, 80, 16, 4], 3.0))
    assert s.sample_probabilities().sum().item() == pytest.approx(1.0)
    n = 200_000
    drawn = torch.bincount(groups[s.draw(n)], minlength=4).double()
    chi2 = ((drawn - n * p) ** 2 / (n * p)).sum().item()
    assert chi2 < 16.3  # chi-square, 3 dof, p = 0.001
    # within a group every sample is equally likely
    per_sample = torch.bincount(s.draw(n), minlength=500).double()
    within = per_sample[496:]  # the four samples of group 3 share its probability evenly
    assert within.min() > 0.85 * within.mean() and within.sum() == pytest.approx(n * p[3].item(), rel=0.05)
    s.temperature = 1.0
    assert torch.allclose(s.group_probabilities(), torch.tensor([400, 80, 16, 4], dtype=torch.float64) / 500)
    assert len(list(iter(s))) == len(s) == 500
    with pytest.raises(ValueError, match="groups"):
        TemperatureSampler(torch.tensor([0.5, 1.0]))
