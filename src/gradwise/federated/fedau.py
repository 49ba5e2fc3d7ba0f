"""FedAU (Wang & Ji, ICLR 2024): FedAvg whose aggregation weights are online estimates of each client's
mean participation interval, for participation statistics the server does not know."""
from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable

import numpy as np

from gradwise._validate import check_int, check_real
from gradwise.federated._flwr import require_flwr
from gradwise.federated._strategy import apply_update, client_updates, remember_global
from gradwise.registry import register

__all__ = ["ParticipationIntervals", "fedau_weights", "fedau_strategy_class", "fedau_strategy"]

PAPER = "A Lightweight Method for Tackling Unknown Participation Statistics in Federated Averaging"
CODE = "https://github.com/IBM/fedau"
DEFAULT_CUTOFF = 100000  # the authors' -k-adaptive default


class ParticipationIntervals:
    """FedAU's online estimate of each client's aggregation weight, one round at a time.

    Per client it keeps the rounds since its last participation ``c`` and the sum and count of its
    completed intervals. In each round, as in the authors' ``main.py`` (``-weighting adaptive``):

    - a participating client's weight is the mean of its completed intervals (1 when it has none yet);
      then the interval ``c + 1`` is completed and ``c <- 0``;
    - an absent client has ``c <- c + 1``; when ``c`` reaches the cutoff ``K``, the interval ``c`` is
      completed and ``c <- 0`` (so no interval is longer than ``K``).

    The mean interval estimates ``1 / p_n`` for a client that participates with probability ``p_n``.
    """

    def __init__(self, cutoff: int = DEFAULT_CUTOFF):
        self.cutoff = check_int("cutoff", cutoff, 1)
        self.absent: dict[Hashable, int] = {}
        self.total: dict[Hashable, int] = {}
        self.count: dict[Hashable, int] = {}

    def weight(self, client: Hashable) -> float:
        """The weight ``client`` would get if it participated now."""
        n = self.count.get(client, 0)
        return self.total[client] / n if n else 1.0

    def step(self, clients: Iterable[Hashable], participating: Iterable[Hashable]) -> dict[Hashable, float]:
        """Record one round over ``clients`` (all known clients; those in ``participating`` took part, which
        are added to ``clients`` if missing) and return the participating clients' weights."""
        present = set(participating)
        weights = {}
        for c in list(dict.fromkeys([*clients, *present])):
            self.absent.setdefault(c, 0)
            if c in present:
                weights[c] = self.weight(c)
                self._complete(c, self.absent[c] + 1)
            else:
                self.absent[c] += 1
                if self.absent[c] >= self.cutoff:
                    self._complete(c, self.absent[c])
        return weights

    def _complete(self, c, interval: int) -> None:
        self.total[c] = self.total.get(c, 0) + interval
        self.count[c] = self.count.get(c, 0) + 1
        self.absent[c] = 0

    def state_dict(self) -> dict:
        return {"cutoff": self.cutoff, "absent": dict(self.absent), "total": dict(self.total),
                "count": dict(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.cutoff = check_int("cutoff", state["cutoff"], 1)
        self.absent, self.total, self.count = dict(state["absent"]), dict(state["total"]), dict(state["count"])


def fedau_weights(participation, cutoff: int = DEFAULT_CUTOFF) -> np.ndarray:
    """FedAU's aggregation weights for a whole participation record (arXiv 2306.03401).

    ``participation`` is a ``(rounds, clients)`` boolean matrix; the result has the same shape, holding in
    round ``t`` the weight :class:`ParticipationIntervals` gives each participating client (the mean of
    its participation intervals completed before ``t``, 1 before the first) and NaN for absent clients.

    Example::

        fedau_weights([[1, 1], [0, 1], [1, 1], [1, 1]])   # [[1, 1], [nan, 1], [1, 1], [1.5, 1]]
    """
    try:
        p = np.asarray(participation)
    except (TypeError, ValueError):
        p = np.zeros(0)
    if p.ndim != 2 or not (p.dtype == bool or np.isin(p, (0, 1)).all()):
        raise ValueError(f"Invalid participation: shape {p.shape} (accepted: a (rounds, clients) matrix of "
                         "booleans or 0/1)")
    est = ParticipationIntervals(cutoff)
    out = np.full(p.shape, np.nan)
    for t, row in enumerate(p.astype(bool)):
        for c, w in est.step(range(p.shape[1]), np.flatnonzero(row).tolist()).items():
            out[t, c] = w
    return out


@functools.cache  # built once, on first use: flwr is imported only then
def fedau_strategy_class() -> type:
    """The Flower strategy class of FedAU (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedau_strategy`."""
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedAUStrategy(base):
        """FedAvg with FedAU's aggregation weights (see :func:`fedau_strategy`)."""

        def __init__(self, *, cutoff: int = DEFAULT_CUTOFF, server_lr: float = 1.0, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            self.intervals = ParticipationIntervals(cutoff)
            self.server_lr = check_real("server_lr", server_lr, 0.0, lo_open=True)
            self.last_weights: dict[int, float] = {}

        def configure_train(self, server_round, arrays, config, grid):
            remember_global(self, arrays, grid)
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            nodes, updates, contents = client_updates(self, replies)
            weights = self.intervals.step(self.known_nodes, nodes)
            self.last_weights = weights
            if not nodes:
                return None, None
            n_all = len(set(self.known_nodes) | set(nodes))
            omega = np.array([weights[n] for n in nodes])
            step = {k: self.server_lr * np.tensordot(omega, u, axes=1) / n_all for k, u in updates.items()}
            return apply_update(self, step), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return FedAUStrategy


@register(kind="fl-strategy", name="FedAU", paper=PAPER, year=2024, arxiv="2306.03401", code=CODE,
          summary="FedAU: FedAvg weighting each client's update by its online mean participation interval")
def fedau_strategy(*, cutoff: int = DEFAULT_CUTOFF, server_lr: float = 1.0, **fedavg_kwargs):
    """FedAU as a Flower strategy (Wang & Ji, "A Lightweight Method for Tackling Unknown Participation
    Statistics in Federated Averaging", ICLR 2024, arXiv 2306.03401; authors' code github.com/IBM/fedau).

    With clients that take part at unknown, unequal rates ``p_n``, FedAvg over the participants optimizes a
    ``p``-weighted objective; weighting client ``n``'s update by ``omega_n ~ 1 / p_n`` restores the uniform
    one. FedAU estimates ``omega_n`` online as the mean of ``n``'s participation intervals, each capped at
    the cutoff ``K`` (:class:`ParticipationIntervals`), and updates

        w <- w + eta_g * (1 / N) * sum_{n in S_t} omega_n (w_n - w),

    with ``N`` all known clients (every node connected when the round was configured) and ``S_t`` those
    that replied. The stored pages held only the paper's abstract, so this follows the authors' ``main.py``
    (``-weighting adaptive``; defaults ``K = 100000``, ``eta_g = 1``): updates count equally, not by data
    size, and a client's weight comes from the intervals completed before the current one.

    Participation is the environment's, not the strategy's: keep ``fraction_train=1.0`` (the default) and
    let clients be absent (real dropouts, or :func:`~gradwise.federated.participation.with_participation`
    in simulation). Other keyword arguments go to ``flwr.serverapp.strategy.FedAvg``. The last round's
    weights are in ``strategy.last_weights`` (node id -> weight), the estimator in ``strategy.intervals``.

    Example::

        strategy = with_participation(fedau_strategy(fraction_evaluate=0.0), [0.9, 0.5, 0.2, 0.1, 0.6])
        run_digits_simulation(strategy, num_clients=5, num_rounds=10)
    """
    return fedau_strategy_class()(cutoff=cutoff, server_lr=server_lr, **fedavg_kwargs)
