"""Federated learning strategies on Flower (flwr 1.42), run on its Simulation Engine or real processes.

Base: Flower's **Message API** (``flwr.serverapp.strategy.Strategy`` and its ``FedAvg``, driven by a
``ServerApp`` whose ``main`` calls ``strategy.start(grid, initial_arrays, num_rounds, evaluate_fn=...)``;
clients are ``flwr.clientapp.ClientApp``\\ s with ``@app.train()``/``@app.evaluate()`` handlers). It is
what ``flwr run``, ``flower-superlink``/``flower-supernode`` and ``flwr.simulation.run_simulation``
(Ray backend) all run in 1.42; the legacy ``flwr.server.strategy`` (``fit``/``NDArrays``) is kept by
Flower only for old apps, so gradwise's strategies subclass the Message API's ``FedAvg``.

flwr is an optional dependency (``pip install gradwise[federated]``): every module here imports without
it, and a strategy class is built from flwr's ``FedAvg`` on first use (``fedau_strategy_class()``).
What the strategies compute is also offered as pure functions (``fedau_weights``,
``principal_gradient_aggregate``) that need torch/numpy only.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
