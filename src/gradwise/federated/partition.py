"""Non-IID splits of a labelled data set among federated clients."""
from __future__ import annotations

import numpy as np

from gradwise._validate import check_int, check_positive

__all__ = ["dirichlet_partition"]


def dirichlet_partition(labels, num_clients: int, alpha: float, seed: int = 0, *,
                        min_size: int = 1, max_tries: int = 1000) -> list[np.ndarray]:
    """Split sample indices among ``num_clients`` with per-class Dirichlet(``alpha``) proportions.

    The standard label-skew split of federated benchmarks (Hsu et al. 2019; NIID-Bench's ``noniid-labeldir``):
    for each class ``c`` independently, draw ``q_c ~ Dir(alpha * 1_N)`` over the ``N`` clients, shuffle the
    class's indices and cut them at the cumulative proportions ``floor(n_c * cumsum(q_c))``. Small
    ``alpha`` gives each client few classes; ``alpha -> inf`` gives every client the global mix. Draws are
    repeated (up to ``max_tries``) until every client holds at least ``min_size`` samples.

    Returns one sorted int64 index array per client; together they cover ``range(len(labels))`` exactly
    once. Deterministic in ``seed``.

    Example::

        parts = dirichlet_partition(y, num_clients=5, alpha=0.3, seed=0)
        x0, y0 = x[parts[0]], y[parts[0]]
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise ValueError(f"Invalid labels: shape {y.shape}, dtype {y.dtype} (accepted: a non-empty 1-D "
                         "array of integer class labels)")
    check_int("num_clients", num_clients, 1)
    check_positive("alpha", alpha)
    check_int("seed", seed, 0)
    check_int("min_size", min_size, 0)
    check_int("max_tries", max_tries, 1)
    if min_size * num_clients > y.size:
        raise ValueError(f"Invalid min_size: {min_size} (accepted: at most len(labels) // num_clients = "
                         f"{y.size // num_clients})")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            q = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = (np.cumsum(q)[:-1] * idx.size).astype(np.int64)
            for i, chunk in enumerate(np.split(idx, cuts)):
                parts[i].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(p.size for p in out) >= min_size:
            return out
    raise ValueError(f"Invalid min_size: {min_size} (no split with alpha={alpha} gave every one of "
                     f"{num_clients} clients that many samples in {max_tries} tries; lower min_size or raise alpha)")
