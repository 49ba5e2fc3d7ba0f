"""OPIS: brute-force loop, zero for identical class geometry, invariances, validation."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradwise.metrics import opis


FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------- TCM + OPIS


def _opis_loop(e, y, lo, hi, k, reference):
    e = torch.nn.functional.normalize(e.double(), dim=1)
    n = len(y)
    pairs = [(i, j, math.sqrt(max(2.0 - 2.0 * float(e[i] @ e[j]), 0.0))) for i in range(n) for j in range(i + 1, n)]
    neg = torch.tensor([d for i, j, d in pairs if y[i] != y[j]], dtype=torch.float64)
    d_lo, d_hi = (float(v) for v in torch.quantile(neg, torch.tensor([lo, hi], dtype=torch.float64)))
    thr = [d_lo + (d_hi - d_lo) * t / (k - 1) for t in range(k)]

    def util(pos_d, neg_d, t):
        tar = sum(d <= t for d in pos_d) / len(pos_d)
        trr = sum(d > t for d in neg_d) / len(neg_d)
        return 0.0 if tar + trr == 0 else 2 * tar * trr / (tar + trr)

    us = {}
    for c in sorted(set(y.tolist())):
        pos_d = [d for i, j, d in pairs if y[i] == c and y[j] == c]
        neg_d = [d for i, j, d in pairs if (y[i] == c) != (y[j] == c)]
        if pos_d and neg_d:
            us[c] = [util(pos_d, neg_d, t) for t in thr]
    if reference == "overall":
        all_pos = [d for i, j, d in pairs if y[i] == y[j]]
        ref = [util(all_pos, neg.tolist(), t) for t in thr]
    else:
        ref = [sum(u[m] for u in us.values()) / len(us) for m in range(k)]
    return sum((u[m] - ref[m]) ** 2 for u in us.values() for m in range(k)) / (len(us) * k)


@FAST
@given(seed=st.integers(0, 10**6), reference=st.sampled_from(["overall", "class_mean"]))
def test_opis_equals_brute_force_loop(seed, reference):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(14, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (14,), generator=g)
    if len(set(y.tolist())) < 2 or len(set(y.tolist())) == 14:
        y[:2] = torch.tensor([0, 0]); y[2] = 1
    got = float(opis(e, y, far_range=(0.0537, 0.6131), num_thresholds=7, reference=reference))
    assert math.isclose(got, _opis_loop(e, y, 0.0537, 0.6131, 7, reference), rel_tol=1e-9, abs_tol=1e-14)


def test_opis_zero_for_identical_class_geometry_and_positive_otherwise():
    # 3 classes on the circle, each a pair (a, a + delta); a rotation by 120 degrees maps class c to c + 1,
    # so every class has the same operating curve (negatives at several distances)
    def config(deltas):
        ang = []
        for c, dl in enumerate(deltas):
            ang += [2 * math.pi * c / 3, 2 * math.pi * c / 3 + dl]
        ang = torch.tensor(ang, dtype=torch.float64)
        return torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    for ref in ("overall", "class_mean"):
        assert float(opis(config([0.5, 0.5, 0.5]), y, far_range=(0.2, 0.75), num_thresholds=37, reference=ref)) < 1e-25
        # one class spread wider: its true-accept rate lags inside the calibration range
        assert float(opis(config([0.5, 0.5, 1.5]), y, far_range=(0.2, 0.75), num_thresholds=37, reference=ref)) > 1e-3


def test_opis_invariances():
    g = torch.Generator().manual_seed(7)
    e = torch.randn(30, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (30,), generator=g)
    base = opis(e, y)
    perm = torch.randperm(30, generator=g)
    torch.testing.assert_close(opis(e[perm], y[perm]), base, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(opis(3.0 * e, y + 100), base, rtol=1e-12, atol=1e-15)  # scale, relabel


@pytest.mark.parametrize("kwargs, name", [
    (dict(far_range=(0.5, 0.1)), "far_range"), (dict(num_thresholds=1), "num_thresholds"),
    (dict(reference="median"), "reference"),
])
def test_opis_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        opis(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), **kwargs)
    with pytest.raises(ValueError, match="labels"):
        opis(torch.randn(3, 3), torch.tensor([0, 1, 2]))
