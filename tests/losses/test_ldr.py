"""LDR / ALDR losses: golden values from the authors' loss.py, limits and variants."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradwise.losses as L
from loss_inputs import logits_target as _data


DATA = Path(__file__).parents[1] / "data"
f64 = torch.float64


# ----- LDR / ALDR (golden values from the authors' loss.py) ----------------------------------------------------

GOLD = torch.load(DATA / "ldr_golden.pt", weights_only=True)


@pytest.mark.parametrize("case", [c for c in GOLD["cases"] if c["kind"] == "ldr"], ids=lambda c: f"ldr-{c['lam']}")
def test_ldr_matches_authors_code(case):
    x = case["logits"].clone().requires_grad_(True)
    loss = L.ldr_loss(x, case["target"], lam=case["lam"], margin=case["margin"])
    loss.backward()
    torch.testing.assert_close(loss, case["loss"], rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, case["grad"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in GOLD["cases"] if c["kind"] == "aldr"], ids=lambda c: f"aldr-{c['lam']}")
def test_aldr_matches_authors_code_over_two_visits(case):
    lambdas = None
    for step in case["steps"]:
        x = step["logits"].clone().requires_grad_(True)
        loss, lambdas = L.aldr_loss(x, case["target"], lambdas, lam=case["lam"], alpha=case["alpha"],
                                    margin=case["margin"], softplus=case["softplus"], return_lambdas=True)
        loss.backward()
        torch.testing.assert_close(loss, step["loss"], rtol=0, atol=1e-12)
        torch.testing.assert_close(x.grad, step["grad"], rtol=0, atol=1e-12)
        torch.testing.assert_close(lambdas, step["lambdas"], rtol=0, atol=1e-12)


def test_ldr_limits_and_variants():
    x, y = _data()
    # raw scores, margin 0, lam 1: cross-entropy - log K
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1.0, margin=0.0, normalize="none"),
                               F.cross_entropy(x, y) - math.log(x.shape[1]))
    d = x - x.gather(1, y[:, None]) + 1.0
    d = d.scatter(1, y[:, None], 0.0)
    # lam -> 0: Crammer-Singer hinge; lam -> inf: mean of margin differences
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1e-4, margin=1.0, normalize="none", reduction="none"),
                               d.max(1).values, rtol=0, atol=1e-3)
    torch.testing.assert_close(L.ldr_loss(x, y, lam=1e6, margin=1.0, normalize="none", reduction="none"),
                               d.mean(1), rtol=0, atol=1e-4)
    for norm in ("l1", "none"):
        xx = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: L.ldr_loss(t, y, normalize=norm, reduction="none"), (xx,))
    xx = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: L.ldr_loss(t, y, lam=0.3, margin=0.5, reduction="none"), (xx,))


def test_aldr_module_keeps_per_instance_temperatures():
    x, y = _data(n=6)
    crit = L.ALDRLoss(10, lam=2.0, alpha=3.0)
    idx = torch.tensor([1, 3, 5, 7, 8, 9])
    loss = crit(x, y, idx)
    ref, lam = L.aldr_loss(x, y, lam=2.0, alpha=3.0, return_lambdas=True)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(crit.lambdas[idx], lam.float())
    assert float(crit.lambdas[0]) == 2.0 and "lambdas" in crit.state_dict()
    assert float(lam.min()) >= 2.0 * (1 - 1 / 3.0) - 1e-12  # lambda >= lam0 (1 - 1/alpha)
