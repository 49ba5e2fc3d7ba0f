"""LR sensitivity (Wortsman et al. 2023, §2.2): the definition on hand-computed sweeps, divergence, ranges, errors."""
import math

import pytest
import torch

from gradwise.metrics import lr_sensitivity


def _direct(losses, l0):
    """E[min(l, l0)] - min l, transcribed from the paper's formula (diverged: NaN/inf -> capped at l0)."""
    capped = [min(x, l0) if math.isfinite(x) else l0 for x in losses]
    return sum(capped) / len(capped) - min(capped)


def test_matches_the_definition():
    lrs = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    losses = [3.9, 3.4, 3.1, 3.0, 3.3, 6.0, float("nan")]
    got = lr_sensitivity(dict(zip(lrs, losses)), initial_loss=5.2)
    assert got.dtype == torch.float64 and got.dim() == 0
    assert math.isclose(got.item(), _direct(losses, 5.2), rel_tol=1e-12)
    # 6.0 (worse than at init) and NaN (diverged) both count as l0 = 5.2
    expected = ((3.9 + 3.4 + 3.1 + 3.0 + 3.3 + 5.2 + 5.2) / 7) - 3.0
    assert math.isclose(got.item(), expected, rel_tol=1e-12)


def test_flat_curve_is_zero_and_pair_input_and_tensors():
    assert lr_sensitivity({1e-3: 2.0, 1e-2: 2.0}, initial_loss=4.0).item() == 0.0
    lrs, losses = torch.tensor([1e-3, 1e-2, 1e-1]), torch.tensor([2.5, 2.0, float("inf")])
    assert math.isclose(lr_sensitivity((lrs, losses), initial_loss=4.0).item(), (0.5 + 0 + 2.0) / 3, rel_tol=1e-6)
    # every run diverged: all at l0, sensitivity 0 (nothing to compare)
    assert lr_sensitivity([[1e-2, 1e-1], [math.nan, math.inf]], initial_loss=4.0).item() == 0.0


def test_flatter_curve_scores_lower():
    # qk-layernorm's claim in the paper's Figure 1 shape: same optimum, the unmitigated run blows up at high lr
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    assert lr_sensitivity(dict(zip(lrs, [3.2, 3.0, 3.1, 3.3])), initial_loss=10.0) < \
        lr_sensitivity(dict(zip(lrs, [3.2, 3.0, 7.0, math.nan])), initial_loss=10.0)


def test_lr_range_keeps_only_the_interval():
    d = {1e-4: 9.0, 3e-4: 3.5, 1e-3: 3.0, 3e-1: 3.2, 1.0: math.nan}
    got = lr_sensitivity(d, initial_loss=10.0, lr_range=(3e-4, 3e-1))
    assert math.isclose(got.item(), ((3.5 + 3.0 + 3.2) / 3) - 3.0, rel_tol=1e-12)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="Invalid initial_loss"):
        lr_sensitivity({1e-3: 1.0}, initial_loss=math.nan)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity([1.0, 2.0, 3.0], initial_loss=1.0)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity({-1e-3: 1.0}, initial_loss=1.0)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity(([1e-3, 1e-2], [1.0]), initial_loss=1.0)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity({1e-3: "x"}, initial_loss=1.0)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity({}, initial_loss=1.0)
    with pytest.raises(ValueError, match="Invalid final_losses_by_lr"):
        lr_sensitivity({1e-3: 1.0}, initial_loss=2.0, lr_range=(1e-2, 1e-1))
    with pytest.raises(ValueError, match=r"Invalid lr_range\[1\]"):
        lr_sensitivity({1e-3: 1.0}, initial_loss=2.0, lr_range=(1e-2, 1e-3))
    with pytest.raises(ValueError, match="Invalid lr_range"):
        lr_sensitivity({1e-3: 1.0}, initial_loss=2.0, lr_range=1e-2)
