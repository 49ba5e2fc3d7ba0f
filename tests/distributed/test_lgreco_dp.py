"""L-GreCo's rank search against the authors' dynamic program (tests/data/lgreco_golden.pt), and its
properties: the chosen ranks meet the error budget and no other choice within it is smaller."""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.distributed import lgreco_dp, lgreco_error_table, lgreco_ranks, lgreco_size_table

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "lgreco_golden.pt", weights_only=False)


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{len(c['shapes'])}layers-r{c['matrix_approximation_rank']}"
                         f"-a{c['alpha']}")
def test_ranks_equal_the_authors_dp(case):
    r0 = case["matrix_approximation_rank"]
    lo, hi = math.floor(r0 * case["gamma"]), math.ceil(r0 * case["beta"])
    sizes = lgreco_size_table(case["shapes"], lo, hi)
    np.testing.assert_array_equal(sizes, case["sizes"])
    assert lgreco_ranks(case["errors"], sizes, r0, lo, alpha=case["alpha"]) == case["ranks"]


def test_golden_cases_are_not_trivial():
    # the search moves ranks away from the uniform default in every case, both up and down overall
    assert all(c["ranks"] != [c["matrix_approximation_rank"]] * len(c["shapes"]) for c in GOLDEN)
    assert any(max(c["ranks"]) > c["matrix_approximation_rank"] for c in GOLDEN)
    assert any(min(c["ranks"]) < c["matrix_approximation_rank"] for c in GOLDEN)


def test_dp_is_optimal_on_a_small_table_by_brute_force():
    rng = np.random.RandomState(3)
    errors = np.sort(rng.uniform(0.1, 2.0, size=(4, 4)), axis=1)[:, ::-1].copy()
    sizes = np.tile(np.arange(1, 5) * 10.0, (4, 1)) + rng.randint(0, 3, size=(4, 4))
    target = float(errors[:, 1].sum())
    picked = lgreco_dp(errors, sizes, target, buckets=10000)
    step = target / 10000
    ebin = np.minimum(np.maximum(np.ceil(np.minimum(errors, target + 1) / step), 1), 10000)
    best = min((sum(sizes[i, c] for i, c in enumerate(combo)), combo)
               for combo in itertools.product(range(4), repeat=4)
               if sum(ebin[i, c] for i, c in enumerate(combo)) < 10000)
    assert sum(sizes[i, c] for i, c in enumerate(picked)) == best[0]
    assert sum(ebin[i, c] for i, c in enumerate(picked)) < 10000


def test_dp_degenerate_targets_keep_the_current_ranks():
    errors = np.ones((2, 3))
    sizes = np.ones((2, 3))
    assert lgreco_dp(errors, sizes, 0.0) is None
    assert lgreco_dp(errors, sizes, float("nan")) is None
    # a NaN error is treated as too large, never chosen when another candidate fits
    errors = np.array([[np.nan, 0.1], [0.2, 0.1]])
    assert lgreco_dp(errors, np.array([[1.0, 5.0], [1.0, 5.0]]), 1.0)[0] == 1


def test_error_table_svd_is_the_eckart_young_error_and_power_is_close():
    torch.manual_seed(0)
    m = torch.randn(30, 20, dtype=torch.float64)
    s = torch.linalg.svdvals(m)
    svd = lgreco_error_table([m], 2, 5, method="svd")
    for j, r in enumerate(range(2, 6)):
        assert svd[0, j] == pytest.approx(float(s[r:].square().sum().sqrt()), rel=1e-12)
    power = lgreco_error_table([m], 2, 5, method="power", iters=30, generator=torch.Generator().manual_seed(0))
    assert np.all(power >= svd - 1e-9) and np.allclose(power, svd, rtol=0.05)
    # ranks above min(n, m) keep error 0 and cost the cap's size plus one
    assert lgreco_error_table([torch.randn(3, 8)], 2, 5)[0, 2:].tolist() == [0.0, 0.0]
    assert lgreco_size_table([(3, 8)], 2, 5)[0].tolist() == [22, 33, 34, 34]


@pytest.mark.parametrize("kwargs, match", [
    (dict(errors=np.ones((2, 3)), sizes=np.ones((2, 2)), target=1.0), "errors/sizes"),
    (dict(errors=np.ones((2, 3)), sizes=np.ones((2, 3)), target=1.0, buckets=0), "buckets"),
])
def test_dp_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lgreco_dp(**kwargs)


def test_tables_bad_input():
    with pytest.raises(ValueError, match="min_rank"):
        lgreco_size_table([(4, 4)], 0, 2)
    with pytest.raises(ValueError, match="shapes"):
        lgreco_size_table([(1, 4)], 2, 3)
    with pytest.raises(ValueError, match="method"):
        lgreco_error_table([torch.ones(4, 4)], 1, 2, method="qr")
    with pytest.raises(ValueError, match="default_rank"):
        lgreco_ranks(np.ones((2, 3)), np.ones((2, 3)), default_rank=9, min_rank=1)
