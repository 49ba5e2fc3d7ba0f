"""AdAdaGrad's adaptive batch-size tests: the authors' tests.py outputs, per-sample gradients, bad input."""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from gradwise.schedules import inner_product_test, norm_test, orthogonality_test, per_sample_grads

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "data", "adadagrad_golden.pt")
TESTS = {"norm": norm_test, "inner_product": inner_product_test, "orthogonality": orthogonality_test}


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=False)


@pytest.mark.numerics
def test_matches_the_authors_tests(golden):
    for case in golden["cases"]:
        psg = case["per_sample_grads"]
        batch = psg[0].shape[0]
        rtol = 1e-10 if psg[0].dtype == torch.float64 else 1e-5
        for (test, param), (ceiled, stat, sq_norm) in case["results"].items():
            ours = TESTS[test](psg, param)
            # their pre-ceiling value, rebuilt from the two statistics they return
            denom = param ** 2 * (sq_norm ** 2 if test == "inner_product" else sq_norm)
            assert ours == pytest.approx(max(batch, stat / denom), rel=rtol), (case["name"], test, param)
            assert math.ceil(ours) == ceiled, (case["name"], test, param)
            # a mapping works as well as a list (theirs takes the dict torch.func gives)
            assert TESTS[test]({str(k): t for k, t in enumerate(psg)}, param) == ours


@pytest.mark.numerics
def test_per_sample_grads_match_the_authors(golden):
    ref = golden["per_sample"]
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    model.load_state_dict(ref["state_dict"])
    ours = per_sample_grads(model, nn.functional.cross_entropy, ref["inputs"], ref["targets"])
    assert ours.keys() == ref["grads"].keys()
    for k in ours:
        torch.testing.assert_close(ours[k], ref["grads"][k], rtol=1e-12, atol=1e-14)


def test_per_sample_grads_equal_single_sample_backward():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 4)).double()
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (5,))
    ours = per_sample_grads(model, nn.functional.cross_entropy, x, y)
    for i in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(ours[name][i], p.grad, rtol=1e-12, atol=1e-14)
    # a frozen parameter gets no entry
    model[0].bias.requires_grad_(False)
    assert "0.bias" not in per_sample_grads(model, nn.functional.cross_entropy, x, y)


def test_formulas_and_max():
    # one tensor, B = 2: hand-computable; the batch size never goes below B
    g = [torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)]  # mean (2, 1), var (2, 2)
    assert norm_test(g, 1.0) == pytest.approx(max(2.0, 4.0 / 5.0))
    assert norm_test(g, 0.5) == pytest.approx(4.0 / (0.25 * 5.0))
    # inner products <g_i, g> = 2 and 8: variance 18; ||g||^4 = 25
    assert inner_product_test(g, 0.5) == pytest.approx(18.0 / (0.25 * 25.0))
    # orthogonal parts: g_i - <g_i,g> g / 5 -> (1,0) - 0.4 (2,1) = (0.2, -0.4); (3,2) - 1.6 (2,1) = (-0.2, 0.4)
    assert orthogonality_test(g, 0.1) == pytest.approx((0.08 + 0.32) / (0.01 * 5.0))
    assert orthogonality_test(g, 10.0) == 2.0


def test_orthogonality_zero_block_is_its_variance():
    torch.manual_seed(1)
    a = torch.randn(4, 3, dtype=torch.float64) + 1.0
    z = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)  # zero mean block
    both = orthogonality_test([a, z], 0.01)
    alone = orthogonality_test([a], 0.01)
    assert both == pytest.approx(alone + z.var(0).sum().item() / (0.01 ** 2 * a.mean(0).square().sum().item()))


def test_bad_inputs():
    g = [torch.randn(4, 3), torch.randn(4)]
    for pname, p in (("eta", norm_test), ("theta", inner_product_test), ("nu", orthogonality_test)):
        for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True):
            with pytest.raises(ValueError, match=pname):
                p(g, bad)
        with pytest.raises(ValueError, match="empty"):
            p([], 1.0)
        with pytest.raises(ValueError, match="empty"):
            p({}, 1.0)
        with pytest.raises(ValueError, match="batch dimension"):
            p([torch.randn(4, 3), torch.randn(5)], 1.0)
        with pytest.raises(ValueError, match="B >= 2"):
            p([torch.randn(1, 3)], 1.0)
        with pytest.raises(ValueError, match="floating-point"):
            p([torch.ones(4, 3, dtype=torch.long)], 1.0)
        with pytest.raises(ValueError, match="floating-point"):
            p([torch.tensor(1.0)], 1.0)
        with pytest.raises(ValueError, match="non-finite"):
            p([torch.tensor([[1.0], [float("nan")]])], 1.0)
        with pytest.raises(ValueError, match="accepted"):
            p(torch.randn(4, 3), 1.0)
        with pytest.raises(ValueError, match="zero"):
            p([torch.tensor([[1.0, 2.0], [-1.0, -2.0]])], 1.0)
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="targets"):
        per_sample_grads(model, nn.functional.cross_entropy, torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="model"):
        per_sample_grads(lambda x: x, nn.functional.cross_entropy, torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="scalar"):
        per_sample_grads(model, lambda o, t: o, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
