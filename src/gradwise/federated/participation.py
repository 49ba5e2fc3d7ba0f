"""Client participation that the server does not control: each client shows up at random, at its own rate."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from gradwise._validate import check_int, check_positive, check_unit
from gradwise.federated._flwr import require_flwr

__all__ = ["bernoulli_participation", "label_participation_probabilities", "with_participation"]


def bernoulli_participation(probabilities: Sequence[float], rounds: int, seed: int = 0) -> np.ndarray:
    """A ``(rounds, N)`` boolean matrix: client ``n`` takes part in round ``t`` with probability
    ``probabilities[n]``, independently over rounds and clients (FedAU's Bernoulli participation);
    row ``t`` depends only on ``seed`` and ``t``."""
    p = _check_probabilities(probabilities)
    check_int("rounds", rounds, 0)
    check_int("seed", seed, 0)
    rows = [np.random.default_rng([seed, t]).random(p.size) < p for t in range(1, rounds + 1)]
    return np.array(rows, dtype=bool).reshape(rounds, p.size)


def label_participation_probabilities(label_fractions, mean: float = 0.1, minimum: float = 0.02,
                                      alpha: float = 0.1, seed: int = 0) -> np.ndarray:
    """Per-client participation probabilities tied to the clients' labels, as FedAU's experiments draw them
    (authors' code github.com/IBM/fedau@6e9cce9, ``util/util.py`` ``data_participation_each_node``; defaults
    from its ``config.py``): one multiplier per class ``m ~ Dir(alpha 1_C)`` (from ``seed``), and client
    ``n`` with label fractions ``q_n`` takes part with probability

        p_n = min(1, max(minimum, mean * C * sum_c q_{n,c} m_c)),

    so the clients holding the favoured classes show up often and the others rarely (``minimum``); the
    mean over clients is about ``mean``. The cap at 1 is gradwise's (their ``mean * C`` is 1 by default,
    so ``p_n <= 1`` there). ``label_fractions``: an ``(N, C)`` array, each row summing to 1."""
    q = np.asarray(label_fractions, dtype=np.float64)
    if q.ndim != 2 or q.size == 0 or not np.all(q >= 0) or not np.allclose(q.sum(1), 1.0):
        raise ValueError(f"Invalid label_fractions: shape {q.shape} (accepted: an (N, C) array of "
                         "non-negative rows that sum to 1)")
    check_unit("mean", mean)
    check_unit("minimum", minimum)
    check_positive("alpha", alpha)
    check_int("seed", seed, 0)
    m = np.random.default_rng(seed).dirichlet(np.full(q.shape[1], float(alpha)))
    return np.clip(mean * q.shape[1] * (q @ m), minimum, 1.0)


def _check_probabilities(probabilities) -> np.ndarray:
    try:
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.array([np.nan])
    if p.ndim != 1 or p.size == 0 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"Invalid probabilities: {probabilities!r} (accepted: a non-empty sequence of "
                         "numbers in [0, 1], one per client)")
    return p


@functools.cache  # built once, on first use: flwr is imported only then
def _participation_class() -> type:
    base = require_flwr("flwr.serverapp.strategy").Strategy

    class ParticipationStrategy(base):
        """``strategy`` whose train messages reach only the clients that show up this round."""

        def __init__(self, strategy, probabilities, seed):
            self.strategy = strategy
            self.probabilities = _check_probabilities(probabilities)
            self.seed = check_int("seed", seed, 0)
            self.partitions: dict[int, int] | None = None

        def bind_partitions(self, partitions: dict) -> None:
            """Match probabilities to nodes by ``partitions[node_id]`` (each node's ``partition-id``)
            instead of by node id, and hand the strategy its train replies in that order too: Flower's
            Simulation Engine draws node ids at random and returns replies as they arrive, so without this
            a run is not repeatable (see :func:`~gradwise.federated.simulation.digits_server_app`)."""
            ranks = sorted(partitions.values())
            if len(set(ranks)) != len(ranks):
                raise ValueError(f"Invalid partitions: {partitions!r} (accepted: a distinct partition-id per node)")
            self.partitions = dict(partitions)

        def __getattr__(self, name):  # the wrapped strategy's attributes (its estimates, its settings)
            if name == "strategy":
                raise AttributeError(name)
            return getattr(self.strategy, name)

        def _order(self, node_ids) -> list:
            if self.partitions is None:
                return sorted(node_ids)
            missing = [n for n in node_ids if n not in self.partitions]
            if missing:
                raise ValueError(f"Invalid partitions: no partition-id for nodes {missing} (accepted: one per node)")
            return sorted(node_ids, key=self.partitions.__getitem__)

        def available(self, server_round: int, node_ids) -> set:
            nodes = self._order(node_ids)
            if len(nodes) > self.probabilities.size:
                raise ValueError(f"Invalid probabilities: {self.probabilities.size} given for {len(nodes)} "
                                 "nodes (accepted: one per node)")
            draw = np.random.default_rng([self.seed, server_round]).random(len(nodes))
            return {n for n, u, p in zip(nodes, draw, self.probabilities) if u < p}

        def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, **kwargs):
            # a strategy that sizes itself to the run in its own start() (the federated curriculum) offers
            # prepare_run(); this loop is the wrapper's, so call it here
            prepare = getattr(self.strategy, "prepare_run", None)
            if callable(prepare):
                prepare(num_rounds, timeout)
            return super().start(grid, initial_arrays, num_rounds=num_rounds, timeout=timeout, **kwargs)

        def configure_train(self, server_round, arrays, config, grid):
            messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
            present = self.available(server_round, grid.get_node_ids())
            return [m for m in messages if m.metadata.dst_node_id in present]

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            if self.partitions is not None:  # a fixed order: sums over clients then round the same way
                replies.sort(key=lambda m: self.partitions.get(m.metadata.src_node_id, len(self.partitions)))
            return self.strategy.aggregate_train(server_round, replies)

        def configure_evaluate(self, server_round, arrays, config, grid):
            return self.strategy.configure_evaluate(server_round, arrays, config, grid)

        def aggregate_evaluate(self, server_round, replies):
            return self.strategy.aggregate_evaluate(server_round, replies)

        def summary(self):
            self.strategy.summary()

    return ParticipationStrategy


def with_participation(strategy, probabilities: Sequence[float], seed: int = 0):
    """Wrap a Flower (Message API) strategy so that in each round node ``n`` takes part with probability
    ``probabilities[n]``, unknown to the strategy: the train messages of absent nodes are dropped, and
    the strategy sees only the replies of those present (as with clients that go offline).

    Nodes are matched to probabilities in the order of their node ids, or, once the wrapper's
    ``bind_partitions({node_id: partition_id})`` was called (:func:`~gradwise.federated.simulation.digits_server_app`
    does it), ``probabilities[k]`` is the probability of partition ``k`` and the strategy gets its train
    replies sorted by partition. Draws depend on ``seed`` and the round only, so FedAvg and FedAU wrapped
    with the same arguments see the same participation. ``probabilities`` all 1 keep every client
    (full participation, in a repeatable reply order). The
    wrapper is itself a ``flwr.serverapp.strategy.Strategy``; the wrapped strategy's attributes are
    reachable through it.

    Example::

        strategy = with_participation(FedAvg(fraction_evaluate=0.0), [0.9, 0.5, 0.2, 0.1, 0.6], seed=1)
    """
    for name in ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate"):
        if not callable(getattr(strategy, name, None)):
            raise TypeError(f"Invalid strategy: {type(strategy).__name__} has no {name}() (accepted: a "
                            "flwr.serverapp.strategy.Strategy)")
    return _participation_class()(strategy, probabilities, seed)
