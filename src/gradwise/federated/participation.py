"""Client participation that the server does not control: each client shows up at random, at its own rate."""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from gradwise._validate import check_int, check_unit
from gradwise.federated._flwr import require_flwr

__all__ = ["bernoulli_participation", "with_participation"]


def bernoulli_participation(probabilities: Sequence[float], rounds: int, seed: int = 0) -> np.ndarray:
    """A ``(rounds, N)`` boolean matrix: client ``n`` takes part in round ``t`` with probability
    ``probabilities[n]``, independently over rounds and clients (FedAU's Bernoulli participation);
    row ``t`` depends only on ``seed`` and ``t``."""
    p = _check_probabilities(probabilities)
    check_int("rounds", rounds, 0)
    check_int("seed", seed, 0)
    rows = [np.random.default_rng([seed, t]).random(p.size) < p for t in range(1, rounds + 1)]
    return np.array(rows, dtype=bool).reshape(rounds, p.size)


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

        def __getattr__(self, name):  # the wrapped strategy's attributes (its estimates, its settings)
            if name == "strategy":
                raise AttributeError(name)
            return getattr(self.strategy, name)

        def available(self, server_round: int, node_ids) -> set:
            nodes = sorted(node_ids)
            if len(nodes) > self.probabilities.size:
                raise ValueError(f"Invalid probabilities: {self.probabilities.size} given for {len(nodes)} "
                                 "nodes (accepted: one per node)")
            draw = np.random.default_rng([self.seed, server_round]).random(len(nodes))
            return {n for n, u, p in zip(nodes, draw, self.probabilities) if u < p}

        def configure_train(self, server_round, arrays, config, grid):
            messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
            present = self.available(server_round, grid.get_node_ids())
            return [m for m in messages if m.metadata.dst_node_id in present]

        def aggregate_train(self, server_round, replies):
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

    Nodes are matched to probabilities in the order of their node ids. Draws depend on ``seed`` and the
    round only, so FedAvg and FedAU wrapped with the same arguments see the same participation. The
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
