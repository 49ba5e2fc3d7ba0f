"""dirichlet_partition: an exact, seeded cover whose label skew follows alpha; bernoulli_participation."""
import numpy as np
import pytest

from gradwise.federated import bernoulli_participation, dirichlet_partition

LABELS = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("alpha,clients", [(0.1, 5), (0.3, 7), (100.0, 4)])
def test_parts_cover_every_index_once(alpha, clients):
    parts = dirichlet_partition(LABELS, clients, alpha, seed=3)
    assert len(parts) == clients and all(p.dtype == np.int64 and (np.diff(p) > 0).all() for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(LABELS.size))
    assert min(p.size for p in parts) >= 1


def test_seeded_and_seed_dependent():
    a, b = dirichlet_partition(LABELS, 5, 0.3, seed=1), dirichlet_partition(LABELS, 5, 0.3, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = dirichlet_partition(LABELS, 5, 0.3, seed=2)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def _skew(parts):
    """Mean total-variation distance between each client's label mix and the global (uniform) one."""
    return np.mean([0.5 * np.abs(np.bincount(LABELS[p], minlength=10) / p.size - 0.1).sum() for p in parts])


def test_small_alpha_skews_labels_large_alpha_does_not():
    assert _skew(dirichlet_partition(LABELS, 5, 0.1, seed=0)) > 0.5
    assert _skew(dirichlet_partition(LABELS, 5, 1000.0, seed=0)) < 0.05


def test_each_class_is_split_by_its_own_proportions():
    # per class, the shares differ (Dirichlet per class), unlike a per-client label distribution
    parts = dirichlet_partition(LABELS, 3, 0.5, seed=4)
    shares = np.array([[np.sum(LABELS[p] == c) for p in parts] for c in range(10)]) / 100
    assert np.allclose(shares.sum(1), 1) and np.ptp(shares[:, 0]) > 0.3


def test_min_size_is_enforced_by_redrawing():
    sizes = [min(p.size for p in dirichlet_partition(LABELS, 6, 0.3, seed=s, min_size=1)) for s in range(20)]
    assert min(sizes) < 60  # some draws leave a client small...
    for s in range(20):  # ...and min_size redraws them
        assert min(p.size for p in dirichlet_partition(LABELS, 6, 0.3, seed=s, min_size=60)) >= 60


@pytest.mark.parametrize("kwargs,match", [
    (dict(labels=np.zeros((2, 2), int)), "labels"), (dict(labels=[0.5, 1.5]), "labels"), (dict(labels=[]), "labels"),
    (dict(num_clients=0), "num_clients"), (dict(num_clients=2.0), "num_clients"), (dict(alpha=0.0), "alpha"),
    (dict(alpha=float("nan")), "alpha"), (dict(seed=-1), "seed"), (dict(min_size=10_000), "min_size"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    args = dict(labels=LABELS, num_clients=3, alpha=0.5, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(**args)


def test_impossible_min_size_says_so():
    with pytest.raises(ValueError, match="min_size"):
        dirichlet_partition(np.array([0, 0, 1, 1, 1, 1]), 3, 0.01, seed=0, min_size=2, max_tries=3)


def test_bernoulli_participation_rates_and_rows():
    p = [0.9, 0.5, 0.1, 0.0, 1.0]
    m = bernoulli_participation(p, 4000, seed=1)
    assert m.shape == (4000, 5) and m.dtype == bool
    assert np.allclose(m.mean(0), p, atol=0.03)
    assert np.array_equal(bernoulli_participation(p, 10, seed=1), m[:10])
    with pytest.raises(ValueError, match="probabilities"):
        bernoulli_participation([0.5, 1.5], 3)
    with pytest.raises(ValueError, match="rounds"):
        bernoulli_participation([0.5], -1)
