"""Temperature scaling: recovers the generating temperature; refuses bad arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradwise.calibration import TemperatureScaler


# ---------------------------------------------------------------- temperature scaling

@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_scaling_recovers_the_generating_temperature(t_true):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20_000, 5, generator=g) * 3
    y = torch.multinomial(torch.softmax(z / t_true, 1), 1, generator=g).squeeze(1)
    ts = TemperatureScaler().fit(z, y)
    assert ts.temperature == pytest.approx(t_true, rel=0.05)
    assert torch.equal(ts(z).argmax(1), z.argmax(1))
    nll_fit = F.cross_entropy(ts(z), y).item()
    for t in (ts.temperature * 0.9, ts.temperature * 1.1):  # it is the minimum
        assert F.cross_entropy(z / t, y).item() > nll_fit


def test_temperature_scaler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(0.0)
    with pytest.raises(ValueError, match="target"):
        TemperatureScaler().fit(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
