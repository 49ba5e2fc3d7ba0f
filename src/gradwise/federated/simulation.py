"""Run a Flower strategy on the digits task with Flower's Simulation Engine (Ray backend)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from gradwise._validate import check_int, check_positive
from gradwise.federated._flwr import require_flwr, state_to_arrays
from gradwise.federated.digits import DigitsTask, accuracy, digits_client_app, digits_model

__all__ = ["FederatedRun", "digits_server_app", "run_digits_simulation", "node_partitions"]


@dataclass
class FederatedRun:
    """What :func:`run_digits_simulation` returns: the global model's test accuracy before round 1 and
    after each round (``accuracy[r]``), Flower's ``Result`` (final arrays, per-round metrics), and the
    ``partition-id`` of each node (``partitions[node_id]``)."""

    accuracy: list[float] = field(default_factory=list)
    result: object = None
    partitions: dict = field(default_factory=dict)


def node_partitions(grid, num_nodes: int, timeout: float = 600.0) -> dict[int, int]:
    """``{node_id: partition-id}`` of the ``num_nodes`` nodes of ``grid``, asked with one query message each
    (:func:`~gradwise.federated.digits.digits_client_app` answers it), after waiting up to ``timeout``
    seconds for that many nodes to connect."""
    import time

    flwr_app = require_flwr("flwr.app")
    end = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < num_nodes and time.monotonic() < end:
        time.sleep(0.1)
    if len(nodes) < num_nodes:
        raise RuntimeError(f"{len(nodes)} of {num_nodes} nodes connected within {timeout:g} s")
    messages = [flwr_app.Message(content=flwr_app.RecordDict({"config": flwr_app.ConfigRecord({})}),
                                 dst_node_id=n, message_type=flwr_app.MessageType.QUERY) for n in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} did not say its partition: {reply.error}")
        out[reply.metadata.src_node_id] = int(reply.content["metrics"]["partition-id"])
    if set(out) != set(nodes):
        raise RuntimeError(f"{len(out)} of {len(nodes)} nodes said their partition within {timeout:g} s")
    return out


def digits_server_app(strategy, *, num_rounds: int, num_clients: int, alpha: float = 0.3, seed: int = 0,
                      hidden: int = 32, run: FederatedRun | dict | None = None, timeout: float = 600.0,
                      report: str | None = None, alphas: dict | None = None):
    """A Flower ``ServerApp`` that runs ``strategy`` for ``num_rounds`` from :func:`digits_model` (``seed``),
    evaluating the global model on the digits test split after each round (into ``run.accuracy``).

    ``strategy`` may be a dict ``{name: strategy}``: each runs in turn from the same initial model on the
    same clients, and ``run`` is then a dict ``{name: FederatedRun}`` (filled in place when given).
    ``alphas`` (``{name: alpha}``, for a dict of strategies) sets the label skew per strategy: its train
    messages carry ``alpha``, and the clients train on that Dirichlet split (the test split does not depend
    on it); a strategy not named there runs on the clients' own ``alpha``.
    ``report`` names a JSON file that receives ``{name: accuracies}`` when the app ends (an app run by
    ``flwr run`` lives in another process, so this is how a caller reads its results).

    Before the first strategy starts, the app asks every node its ``partition-id``
    (:func:`node_partitions`) and hands the mapping to each strategy that has ``bind_partitions``
    (:func:`~gradwise.federated.participation.with_participation`'s wrapper): Flower draws node ids at
    random (``os.urandom``) and returns replies as they arrive, so only by partition do the participation
    draws and the order of the replies, hence the run, repeat for a seed.
    """
    check_int("num_rounds", num_rounds, 1)
    check_int("num_clients", num_clients, 1)
    check_positive("timeout", timeout)
    serverapp = require_flwr("flwr.serverapp")
    strategies = strategy if isinstance(strategy, dict) else {None: strategy}
    if not strategies:
        raise ValueError("Invalid strategy: {} (accepted: a strategy or a non-empty dict of them)")
    runs = run if isinstance(run, dict) else {None: FederatedRun() if run is None else run}
    alphas = dict(alphas or {})
    unknown = [k for k in alphas if k not in strategies]
    if unknown:
        raise ValueError(f"Invalid alphas: no strategy named {unknown} (accepted: names of the strategy dict)")
    for name, a in alphas.items():
        check_positive(f"alphas[{name!r}]", a)
    for name in strategies:
        runs.setdefault(name, FederatedRun())
    app = serverapp.ServerApp()

    @app.main()
    def main(grid, context):
        flwr_app = require_flwr("flwr.app")
        task = DigitsTask(num_clients, alpha, seed)
        model = digits_model(hidden, seed)

        initial = state_to_arrays(model.state_dict())
        partitions = node_partitions(grid, num_clients, timeout)
        for name, strat in strategies.items():
            this = runs[name]
            this.partitions = dict(partitions)
            bind = getattr(strat, "bind_partitions", None)
            if callable(bind):
                bind(partitions)

            def evaluate(server_round, arrays, this=this):
                model.load_state_dict(arrays.to_torch_state_dict())
                acc = accuracy(model, task.x_test, task.y_test)
                this.accuracy.append(acc)
                return flwr_app.MetricRecord({"accuracy": acc})

            train_config = flwr_app.ConfigRecord({"alpha": float(alphas[name])} if name in alphas else {})
            this.result = strat.start(grid=grid, initial_arrays=initial, num_rounds=num_rounds, timeout=timeout,
                                      train_config=train_config, evaluate_fn=evaluate)
        if report is not None:
            with open(report, "w") as f:
                json.dump({str(k): r.accuracy for k, r in runs.items()}, f)

    return app


def run_digits_simulation(strategy, *, num_clients: int = 5, num_rounds: int = 5, alpha: float = 0.3,
                          seed: int = 0, lr: float = 0.1, local_epochs: int = 2, batch_size: int = 32,
                          hidden: int = 32, num_cpus: int = 1, quiet: bool = True, alphas: dict | None = None):
    """Run ``strategy`` for ``num_rounds`` on ``num_clients`` simulated digits clients (Dirichlet(``alpha``)
    split) with ``flwr.simulation.run_simulation`` on the Ray backend, and return the global model's
    test accuracy per round (a :class:`FederatedRun`).

    ``strategy`` may be a dict ``{name: strategy}``: they run one after another in the same simulation
    (one Ray start), each from the same initial model, and the result is ``{name: FederatedRun}``;
    ``alphas`` (``{name: alpha}``) gives a strategy its own label skew (see :func:`digits_server_app`).

    Ray starts with ``num_cpus`` CPUs (one client at a time per CPU), no dashboard and no log forwarding,
    and Flower shuts it down when the run ends. Flower's logs are lowered to WARNING when ``quiet``.

    Example::

        from flwr.serverapp.strategy import FedAvg
        run = run_digits_simulation(FedAvg(fraction_evaluate=0.0), num_clients=5, num_rounds=5)
        run.accuracy   # [before round 1, after round 1, ..., after round 5]
    """
    check_int("num_cpus", num_cpus, 1)
    simulation = require_flwr("flwr.simulation")
    runs: dict = {}
    server = digits_server_app(strategy, num_rounds=num_rounds, num_clients=num_clients, alpha=alpha,
                               seed=seed, hidden=hidden, run=runs, alphas=alphas)
    client = digits_client_app(alpha, seed, lr=lr, local_epochs=local_epochs, batch_size=batch_size,
                               hidden=hidden)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "log_to_driver": False,
                             "logging_level": logging.ERROR}}
    logger = logging.getLogger("flwr")
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        simulation.run_simulation(server_app=server, client_app=client, num_supernodes=num_clients,
                                  backend_name="ray", backend_config=backend)
    finally:
        logger.setLevel(level)
    for name, run in runs.items():
        if len(run.accuracy) != num_rounds + 1:
            raise RuntimeError(f"the simulation of {name or 'the strategy'} ended after "
                               f"{max(len(run.accuracy) - 1, 0)} of {num_rounds} rounds (see Flower's log above)")
    return runs if isinstance(strategy, dict) else runs[None]
