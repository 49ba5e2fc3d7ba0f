"""Constrained RLHF (seed 55): LagrangeMultipliers equal (float64, 1e-12) to the multiplier blocks of
tedmoskovitz/ConstrainedRL4LMs @ 11ac8fe run verbatim (tests/data/lagrange_golden.pt,
tools/golden/make_lagrange_golden.py), the lagrange[1:] departure, nelder_mead_thresholds, bad input."""
import math
from pathlib import Path

import pytest
import torch

from gradwise.preference import LagrangeMultipliers, nelder_mead_thresholds
from gradwise.registry import get

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "lagrange_golden.pt", weights_only=True)


@pytest.mark.parametrize("run", GOLDEN["runs"], ids=lambda r: r["name"])
def test_matches_authors_updates(run):
    lm = LagrangeMultipliers(torch.tensor(run["thresholds"], dtype=torch.float64), squash=run["squash"],
                             lr=run["lr"], init=run["init"], fixed=run["fixed"])
    for k, s in enumerate(run["steps"]):
        if s["mixed"] is not None:
            torch.testing.assert_close(lm.mix_advantages(s["task_adv"], s["constraint_adv"]), s["mixed"],
                                       rtol=1e-12, atol=1e-12, msg=f"mixed, step {k}")
        loss = lm.update(s["returns"])
        torch.testing.assert_close(loss, s["loss"], rtol=1e-12, atol=1e-12, msg=f"loss, step {k}")
        torch.testing.assert_close(lm.multipliers, s["multipliers"], rtol=1e-12, atol=1e-12, msg=f"step {k}")


def test_clamp_and_clipping_cases_are_exercised():
    runs = {r["name"]: r for r in GOLDEN["runs"]}
    assert min(float(s["multipliers"].min()) for s in runs["unsquashed_clamp"]["steps"]) == 0.0
    fixed = runs["fixed"]["steps"]
    assert all(float(s["multipliers"][0]) == 0.7 for s in fixed)
    # the clipped run moves by lr * 0.5 (norm) on the first step: clipping acted
    first = runs["sigmoid_clipped"]["steps"][0]["multipliers"]
    assert math.isclose(float(first.norm()), 0.1 * 0.5, rel_tol=1e-5)


def test_unsquashed_mixing_uses_all_multipliers_unlike_theirs():
    c = GOLDEN["contract"]
    assert c["unsquashed_n3_raises"]  # their lagrange[1:] with N = 3: shape error
    lm = LagrangeMultipliers(torch.tensor([0.1, 0.2], dtype=torch.float64), squash=None, init=c["unsquashed_n2_lambda"])
    adv = c["unsquashed_n2_adv"]
    ours = lm.mix_advantages(torch.zeros(1, dtype=torch.float64), adv)
    assert float(ours) == 2.0 * 1.0 + 3.0 * 10.0
    assert float(c["unsquashed_n2_mixed"]) == 3.0 * 1.0 + 3.0 * 10.0  # theirs: lambda[1] on both columns
    lm3 = LagrangeMultipliers([0.1, 0.2, 0.3], squash=None)
    assert lm3.mix_advantages(torch.zeros(4), torch.ones(4, 3)).tolist() == [1.5] * 4


def test_default_init_is_one_shared_small_draw():
    theirs = GOLDEN["contract"]["default_init"]
    assert len(set(theirs.tolist())) == 1 and abs(float(theirs[0])) < 0.05
    g = torch.Generator().manual_seed(3)
    lm = LagrangeMultipliers([0.1, 0.2, 0.3], generator=g)
    lam = lm.multipliers
    assert len(set(lam.tolist())) == 1 and 0 < abs(float(lam[0])) < 0.05
    assert LagrangeMultipliers([0.1, 0.2], squash=None).multipliers.tolist() == [0.5, 0.5]


def test_multiplier_rises_below_threshold_and_weights_shift():
    lm = LagrangeMultipliers([1.0, 0.0], init=0.0, lr=0.5, momentum=0.0)
    for _ in range(20):
        lm.update(torch.tensor([[0.0, 1.0]]))  # first below its threshold, second above
    lam = lm.multipliers
    assert lam[0] > 0 > lam[1]
    w = lm.weights
    mixed = lm.mix_advantages(torch.tensor([1.0]), torch.tensor([[0.0, 0.0]]))
    assert math.isclose(float(mixed), 2 - float(w.sum()), rel_tol=1e-6)


def test_state_dict_round_trip():
    a = LagrangeMultipliers([0.2, 0.4], init=0.1)
    for _ in range(3):
        a.update(torch.tensor([[0.0, 1.0], [0.5, 0.2]]))
    b = LagrangeMultipliers([0.2, 0.4], init=0.0)
    b.load_state_dict(a.state_dict())
    r = torch.tensor([[1.0, 0.0]])
    a.update(r), b.update(r)
    assert torch.equal(a.multipliers, b.multipliers)


@pytest.mark.parametrize("kwargs, match", [
    ({"thresholds": []}, "thresholds"), ({"thresholds": [0.1, float("nan")]}, "thresholds"),
    ({"squash": "relu"}, "squash"), ({"lr": 0.0}, "lr"), ({"momentum": 1.0}, "momentum"),
    ({"max_grad_norm": -1.0}, "max_grad_norm"), ({"init": [0.1]}, "init"), ({"squash": None, "init": -0.1}, "init"),
    ({"fixed": 1}, "fixed"),
])
def test_bad_construction(kwargs, match):
    kw = {"thresholds": [0.1, 0.2], **kwargs}
    with pytest.raises(ValueError, match=match):
        LagrangeMultipliers(kw.pop("thresholds"), **kw)


def test_bad_shapes_leave_state_unchanged():
    lm = LagrangeMultipliers([0.1, 0.2], init=0.3)
    before = lm.multipliers
    with pytest.raises(ValueError, match="constraint_returns.*N = 2"):
        lm.update(torch.zeros(4, 3))  # threshold count != N
    with pytest.raises(ValueError, match="constraint_returns"):
        lm.update(torch.zeros(4))
    with pytest.raises(ValueError, match="constraint_adv"):
        lm.mix_advantages(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="constraint_adv"):
        lm.mix_advantages(torch.zeros(4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="task_adv"):
        lm.mix_advantages(torch.zeros(4, 1), torch.zeros(4, 2))
    assert torch.equal(lm.multipliers, before)


def test_nan_returns_propagate():
    lm = LagrangeMultipliers([0.1], init=0.0)
    lm.update(torch.tensor([[float("nan")]]))
    assert math.isnan(float(lm.multipliers[0]))


# --- Nelder-Mead -----------------------------------------------------------------------------------------

def _quad(x):
    return float(((x - torch.tensor([0.3, -0.2], dtype=torch.float64)) ** 2).sum())


def test_nelder_mead_finds_minimum_and_caches():
    calls = []

    def f(x):
        calls.append(x.clone())
        return _quad(x)

    out = nelder_mead_thresholds(f, [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], max_iters=60, cache_tol=1e-6)
    torch.testing.assert_close(out["best"], torch.tensor([0.3, -0.2], dtype=torch.float64), atol=2e-3, rtol=0)
    assert out["evaluations"] == len(calls) < 3 * 60
    # a coarse cache merges nearby points: fewer evaluations
    coarse = nelder_mead_thresholds(_quad, [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], max_iters=60, cache_tol=0.05)
    assert coarse["evaluations"] < out["evaluations"]


def test_nelder_mead_matches_authors_loop():
    ref = GOLDEN.get("nelder_mead")
    if ref is None:
        pytest.skip("no Nelder-Mead golden")
    for case in ref:
        out = nelder_mead_thresholds(_quad, case["simplex0"], max_iters=case["iters"], cache_tol=case["cache_tol"])
        torch.testing.assert_close(out["simplex"], case["simplex"], rtol=1e-12, atol=1e-12)
        assert out["evaluations"] == case["evaluations"]


@pytest.mark.parametrize("kwargs, match", [
    ({"simplex": [[0.0, 0.0], [1.0, 0.0]]}, "simplex"), ({"alpha": 0.0}, "alpha"), ({"gamma": 1.0}, "gamma"),
    ({"rho": 1.0}, "rho"), ({"sigma": 0.0}, "sigma"), ({"max_iters": 0}, "max_iters"),
    ({"cache_tol": -1.0}, "cache_tol"), ({"evaluate": 3}, "evaluate"),
])
def test_nelder_mead_bad_input(kwargs, match):
    kw = {"evaluate": _quad, "simplex": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], **kwargs}
    with pytest.raises(ValueError, match=match):
        nelder_mead_thresholds(kw.pop("evaluate"), kw.pop("simplex"), **kw)


def test_registered_with_seed_title():
    for name in ("LagrangeMultipliers", "nelder_mead_thresholds"):
        rec = get(name)
        assert rec.paper == "Confronting Reward Model Overoptimization with Constrained RLHF"
        assert rec.arxiv == "2310.04373" and rec.family == "preference" and rec.seed
