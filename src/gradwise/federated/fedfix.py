"""FedFix (Fraboni, Vidal, Kameni & Lorenzi, JMLR 2023): asynchronous FedAvg whose server aggregates, at the
end of every window of fixed length, the clients that finished in it, each weighted by the number of
windows its work takes."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from gradwise._validate import check_int, check_positive, check_real
from gradwise.federated._flwr import arrays_to_numpy, require_flwr, state_to_arrays
from gradwise.registry import register

__all__ = ["FixedWindowClock", "linear_compute_times", "fedfix_weights", "fedfix_schedule", "fedfix_step",
           "fedfix_simulate", "fedfix_strategy_class", "fedfix_strategy"]

PAPER = "A General Theory for Federated Optimization with Asynchronous and Heterogeneous Clients Updates"
CODE = "https://github.com/Accenture/Labs-Federated-Learning/tree/asynchronous_FL"


def _times(name: str, values) -> np.ndarray:
    try:
        t = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        t = np.array([np.nan])
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t) & (t > 0)):
        raise ValueError(f"Invalid {name}: {values!r} (accepted: a non-empty sequence of finite numbers > 0, "
                         "one per client)")
    return t


def _importance(importance, n: int | None) -> np.ndarray:
    """The clients' importance ``p`` (summing to 1): uniform when ``importance`` is None; ``n`` clients
    (any number when None)."""
    if importance is None:
        return np.ones(n) / n  # the authors' P_type "uniform"
    try:
        p = np.asarray(importance, dtype=np.float64)
    except (TypeError, ValueError):
        p = np.array([np.nan])
    if p.ndim != 1 or p.size == 0 or (n is not None and p.size != n) or not np.all(np.isfinite(p) & (p >= 0)) \
            or p.sum() <= 0:
        count = "" if n is None else f"{n} "
        raise ValueError(f"Invalid importance: {importance!r} (accepted: None for uniform, or {count}finite "
                         "numbers >= 0, not all 0, one per client)")
    return p / np.sum(p)  # the authors' P_type "ratio" normalizes the same way


def linear_compute_times(num_clients: int, slowdown: float = 80.0) -> np.ndarray:
    """The authors' time scenario ``F-<slowdown>``: client ``i`` of ``M`` takes
    ``tau_i = 1 - i * slowdown / 100 / (M - 1)``, so client 0 is the slowest (1.0) and the last is
    ``slowdown`` percent faster (``F-80``, used in their experiments: times from 1.0 down to 0.2)."""
    check_int("num_clients", num_clients, 1)
    check_real("slowdown", slowdown, 0.0, 100.0, hi_open=True)
    if num_clients == 1:
        return np.ones(1)
    return np.array([1 - i * slowdown / 100 / (num_clients - 1) for i in range(num_clients)])


def fedfix_weights(compute_times: Sequence[float], delta: float, importance=None) -> np.ndarray:
    """FedFix's aggregation weights ``d_i = ceil(tau_i / delta) * p_i``: a client whose work takes ``k``
    windows is aggregated once every ``k`` windows, so its update counts ``k`` times (``p_i``: its
    importance, uniform ``1/M`` by default). From the authors' ``Server.clients_importances``
    (``FedFix-<delta>_weight``)."""
    tau = _times("compute_times", compute_times)
    delta = check_positive("delta", delta)
    return np.ceil(tau / delta) * _importance(importance, tau.size)


class FixedWindowClock:
    """FedFix's virtual clock: window ``n`` (1, 2, ...) ends at time ``n * delta``. A client given the
    global model at the end of window ``n - 1`` (round ``n`` of the server) finishes its work at
    ``(n - 1) * delta + tau_i`` and is aggregated at the end of the first window ``m >= n`` with
    ``finish <= m * delta``: after ``ceil(tau_i / delta)`` windows, on a model ``m - n`` versions old. The
    arithmetic is the authors' (``clients_time_schedule``, ``FedFix``), so the windows agree with theirs
    to the last bit.

    ``compute_times`` maps each client (any hashable id) to its time ``tau_i > 0``.
    """

    def __init__(self, compute_times: Mapping[Hashable, float], delta: float):
        self.delta = check_positive("delta", delta)
        keys = list(compute_times)
        tau = _times("compute_times", [compute_times[k] for k in keys]) if keys else np.zeros(0)
        self.compute_times = dict(zip(keys, tau.tolist()))
        self.started: dict[Hashable, int] = {}    # client -> window in which it received its model
        self.finish: dict[Hashable, float] = {}   # client -> virtual time at which its work is done

    def busy(self) -> set:
        """The clients working on a model (sent, not yet aggregated)."""
        return set(self.finish)

    def start(self, client: Hashable, window: int) -> float:
        """``client`` receives the global model at the start of ``window``; returns its finish time."""
        if client not in self.compute_times:
            raise KeyError(f"client {client!r} has no compute time (known: {sorted(self.compute_times, key=str)})")
        if client in self.finish:
            raise ValueError(f"client {client!r} is still working (it started in window {self.started[client]})")
        self.started[client] = window
        self.finish[client] = (window - 1) * self.delta + self.compute_times[client]
        return self.finish[client]

    def finished(self, window: int) -> list:
        """The clients whose work is done by the end of ``window`` (in the order they were started); they
        become idle."""
        end = window * self.delta
        done = [c for c, f in self.finish.items() if f <= end]
        for c in done:
            del self.finish[c]
        return done

    def drop(self, client: Hashable) -> None:
        """Forget ``client``'s work (it failed); it is idle again."""
        self.finish.pop(client, None)

    def state_dict(self) -> dict:
        return {"delta": self.delta, "compute_times": dict(self.compute_times), "started": dict(self.started),
                "finish": dict(self.finish)}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(state["compute_times"], state["delta"])
        self.started, self.finish = dict(state["started"]), dict(state["finish"])


def fedfix_schedule(compute_times: Sequence[float], delta: float, windows: int) -> np.ndarray:
    """Which clients FedFix aggregates in each window, and on which global model they worked.

    Returns a ``(windows, M)`` int matrix: entry ``[n, i]`` is the index (0 = the initial model) of the
    global model that client ``i`` trained on, when its update is aggregated at the end of window
    ``n + 1``, and -1 when it is not aggregated then. Every client starts at time 0 on model 0 and, once
    aggregated, restarts on the new model (the authors' ``schedule_global`` for ``FedFix-<delta>``).
    """
    tau = _times("compute_times", compute_times)
    check_int("windows", windows, 0)
    clock = FixedWindowClock(dict(enumerate(tau)), delta)
    for i in range(tau.size):
        clock.start(i, 1)
    out = -np.ones((windows, tau.size), dtype=np.int64)
    for n in range(1, windows + 1):
        for i in clock.finished(n):
            out[n - 1, i] = clock.started[i] - 1
            clock.start(i, n + 1)
    return out


def fedfix_step(global_arrays: Mapping[str, np.ndarray], contributions, server_lr: float = 1.0) -> dict:
    """``w + server_lr * sum_i d_i (w_i - w_sent_i)`` in float64, for ``contributions`` a sequence of
    ``(d_i, w_sent_i, w_i)`` (dicts of arrays named as ``global_arrays``): the update a client computed
    on the model it was sent (possibly an older one) is added to the current model."""
    new = {k: np.asarray(v, dtype=np.float64).copy() for k, v in global_arrays.items()}
    for k, w in new.items():
        if contributions:
            d = np.array([c[0] for c in contributions], dtype=np.float64)
            diff = np.stack([np.asarray(c[2][k], dtype=np.float64) - np.asarray(c[1][k], dtype=np.float64)
                             for c in contributions])
            w += server_lr * np.tensordot(d, diff, axes=1)
    return new


def fedfix_simulate(initial: Mapping[str, np.ndarray], local_work: Callable[[int, dict], dict],
                    compute_times: Sequence[float], delta: float, windows: int, importance=None,
                    server_lr: float = 1.0) -> list[dict]:
    """Run FedFix for ``windows`` windows on ``M = len(compute_times)`` clients and return the global model
    before window 1 and after each window (``windows + 1`` dicts of float64 arrays).

    ``local_work(i, w_sent)`` returns client ``i``'s model after its local training from ``w_sent`` (the
    global model it was sent). Clients start together on ``initial``; at the end of each window those
    done (:func:`fedfix_schedule`) are aggregated by :func:`fedfix_step` with :func:`fedfix_weights`, and
    receive the new model.
    """
    server_lr = check_real("server_lr", server_lr, 0.0, lo_open=True)
    tau = _times("compute_times", compute_times)
    d = fedfix_weights(tau, delta, importance)
    schedule = fedfix_schedule(tau, delta, windows)
    w = {k: np.asarray(v, dtype=np.float64).copy() for k, v in initial.items()}
    sent = [w] * tau.size
    out = [w]
    for row in schedule:
        working = np.flatnonzero(row >= 0)
        w = fedfix_step(w, [(d[i], sent[i], local_work(int(i), sent[i])) for i in working], server_lr)
        for i in working:
            sent[i] = w
        out.append(w)
    return out


@functools.cache  # built once, on first use: flwr is imported only then
def fedfix_strategy_class() -> type:
    """The Flower strategy class of FedFix (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedfix_strategy`."""
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedFixStrategy(base):
        """FedAvg made FedFix by a virtual clock (see :func:`fedfix_strategy`)."""

        def __init__(self, *, delta: float, compute_times, importance=None, server_lr: float = 1.0,
                     **fedavg_kwargs):
            if fedavg_kwargs.get("fraction_train", 1.0) != 1.0:
                raise ValueError(f"Invalid fraction_train: {fedavg_kwargs['fraction_train']!r} (accepted: 1.0; "
                                 "FedFix sends the global model to every idle client)")
            super().__init__(**fedavg_kwargs)
            self.delta = check_positive("delta", delta)
            self.server_lr = check_real("server_lr", server_lr, 0.0, lo_open=True)
            _times("compute_times", list(compute_times.values()) if isinstance(compute_times, Mapping)
                   else compute_times)
            if importance is not None:
                _importance(list(importance.values()) if isinstance(importance, Mapping) else importance, None)
            self.compute_times, self.importance = compute_times, importance
            self.clock: FixedWindowClock | None = None
            self.weights: dict[int, float] = {}
            self.sent: dict[int, dict] = {}      # node -> the global arrays it is working on
            self.buffer: dict[int, object] = {}  # node -> its reply, kept until its window ends
            self.last_aggregated: dict[int, tuple[float, int]] = {}  # node -> (weight, staleness)
            self.history: list[dict[int, tuple[float, int]]] = []   # last_aggregated of every round

        def _setup(self, nodes: list[int]) -> None:
            """Compute times and weights per node, matched to the nodes in id order when given as lists."""
            def per_node(name, values):
                if isinstance(values, Mapping):
                    missing = [n for n in nodes if n not in values]
                    if missing:
                        raise ValueError(f"Invalid {name}: no value for nodes {missing} (accepted: one per node)")
                    return [values[n] for n in nodes]
                if len(values) != len(nodes):
                    raise ValueError(f"Invalid {name}: {len(values)} given for {len(nodes)} nodes (accepted: "
                                     "one per node, in node id order)")
                return list(values)
            tau = per_node("compute_times", self.compute_times)
            imp = None if self.importance is None else per_node("importance", self.importance)
            self.clock = FixedWindowClock(dict(zip(nodes, tau)), self.delta)
            self.weights = dict(zip(nodes, fedfix_weights(tau, self.delta, imp).tolist()))

        def configure_train(self, server_round, arrays, config, grid):
            self.global_arrays = arrays_to_numpy(arrays)
            if self.clock is None:
                self._setup(sorted(grid.get_node_ids()))
            messages = list(super().configure_train(server_round, arrays, config, grid))
            busy = self.clock.busy()
            idle = [m for m in messages if m.metadata.dst_node_id not in busy]
            for m in idle:  # idle clients get the current model; busy ones keep working on theirs
                node = m.metadata.dst_node_id
                self.clock.start(node, server_round)
                self.sent[node] = self.global_arrays
            return idle

        def aggregate_train(self, server_round, replies):
            valid, _ = self._check_and_log_replies(list(replies), is_train=True)
            for m in valid:
                if m.metadata.src_node_id in self.sent:
                    self.buffer[m.metadata.src_node_id] = m.content
            for node in [n for n, r in self.clock.started.items() if r == server_round and n not in self.buffer]:
                self.clock.drop(node)  # no valid reply (an error, a timeout): its work is lost, it is idle again
                self.sent.pop(node, None)
            done = sorted(self.clock.finished(server_round))
            self.last_aggregated = {n: (self.weights[n], server_round - self.clock.started[n]) for n in done}
            self.history.append(self.last_aggregated)
            if not done:
                return None, None
            contents = [self.buffer.pop(n) for n in done]
            received = [{k: v.numpy() for k, v in c[self.arrayrecord_key].items()} for c in contents]
            step = fedfix_step(self.global_arrays,
                               [(self.weights[n], self.sent.pop(n), r) for n, r in zip(done, received)],
                               self.server_lr)
            new = state_to_arrays({k: v.astype(self.global_arrays[k].dtype) for k, v in step.items()})
            return new, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return FedFixStrategy


@register(kind="fl-strategy", name="FedFix", paper=PAPER, year=2023, arxiv="2206.10189", code=CODE,
          summary="FedFix: asynchronous FedAvg aggregating at fixed time windows, each update weighted by "
                  "the windows its client needs")
def fedfix_strategy(*, delta: float, compute_times, importance=None, server_lr: float = 1.0, **fedavg_kwargs):
    """FedFix as a Flower strategy (Fraboni, Vidal, Kameni & Lorenzi, "A General Theory for Federated
    Optimization with Asynchronous and Heterogeneous Clients Updates", JMLR 24(110), 2023, arXiv
    2206.10189; authors' code github.com/Accenture/Labs-Federated-Learning, branch ``asynchronous_FL``).

    Asynchronous FedAvg with heterogeneous client speeds optimizes a surrogate objective in which fast
    clients count more. FedFix lets each client work at its own pace but aggregates at fixed times: at the
    end of every window of length ``delta`` the server adds the updates of the clients that finished in it,
    and sends them the new model; the others keep working on the model they were sent. Client ``i``, with
    compute time ``tau_i`` and importance ``p_i``, is aggregated every ``k_i = ceil(tau_i / delta)``
    windows, so its update is weighted by ``d_i = k_i p_i``; with ``S_n`` the clients done in window ``n``
    and ``w^{rho_i}`` the (possibly older) model client ``i`` trained on,

        w^{n+1} = w^n + eta_g * sum_{i in S_n} d_i (w_i(w^{rho_i}) - w^{rho_i}).

    The stored pages of the paper held only its abstract and the start of its introduction, so this
    follows the authors' simulation (commit 1c896f0): ``clients_time_schedule`` for the windows,
    ``Server.clients_importances`` (``FedFix-<delta>_weight``) for ``d_i`` and ``Server.aggregation`` for
    the step. A stale update gets no discount: its weight is ``d_i`` whatever its staleness.

    **Virtual clock.** Flower's strategy loop is synchronous (one ``send_and_receive`` per round), so the
    asynchrony is simulated on the server: round ``n`` is window ``n``, ending at virtual time
    ``n * delta`` (:class:`FixedWindowClock`). In ``configure_train`` only the idle clients get a message
    (the current global model); a client sent the model in round ``n`` finishes at
    ``(n - 1) * delta + tau_i``. Its reply, computed at once by the real client, is buffered with the
    model it trained on, and ``aggregate_train`` uses it at the end of the window where its virtual
    finish time falls, as a stale update when that is a later round; until then the client is busy and
    gets no message. A client whose message fails or times out is idle again in the next round (its work
    is lost). The schedule therefore depends on the given times only, not on wall-clock speed: the server
    waits each round for the real replies of the idle clients, so this reproduces FedFix's optimization
    trajectory, not its wall-clock savings.

    Arguments: ``delta`` the window length; ``compute_times`` the clients' ``tau_i`` (the authors'
    are fixed per client: :func:`linear_compute_times` gives their ``F-<X>`` scenarios), a sequence
    matched to the nodes in node id order, or a dict ``{node_id: tau}``; ``importance`` the ``p_i`` in the
    same forms (None: uniform ``1/M``, as in all their experiments; else normalized to sum 1);
    ``server_lr`` is ``eta_g`` (their ``lr_g``, 1 in their experiments). Other keyword arguments go to
    ``flwr.serverapp.strategy.FedAvg``; ``fraction_train`` must stay 1.0 (every idle client works).

    Departures from the authors' code: none in the rule; the client times are known to the strategy (as to
    their server), one client per node; a client that fails is handled (their simulation has none).
    ``strategy.last_aggregated`` (and ``strategy.history``, one per round) maps each aggregated node to
    ``(d_i, staleness)``; ``strategy.clock`` is the virtual clock.

    Example::

        strategy = fedfix_strategy(delta=0.5, compute_times=linear_compute_times(5, 80), fraction_evaluate=0.0)
        run_digits_simulation(strategy, num_clients=5, num_rounds=10)
    """
    return fedfix_strategy_class()(delta=delta, compute_times=compute_times, importance=importance,
                                   server_lr=server_lr, **fedavg_kwargs)
