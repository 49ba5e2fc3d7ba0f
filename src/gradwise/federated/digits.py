"""A federated task on scikit-learn's digits: the data split, a small MLP, local SGD, and its ClientApp.

``digits_client_app(alpha=0.3, seed=0)`` is a Flower ``ClientApp``: on a train message it loads the
global arrays into the MLP, runs local SGD on its Dirichlet partition (``partition-id`` of
``num-partitions`` from the node config) and replies with the new arrays and ``num-examples``. The local
loss and optimizer come from the message's config, so a strategy (FedLD) can ask for its own loss:

- ``alpha`` (float): the Dirichlet alpha of the split to train on, default the app's (so one simulation can
  run strategies under different label skews: the server app sends it per strategy);
- ``lr`` (float), ``local-epochs`` (int), ``batch-size`` (int), ``momentum``, ``weight-decay`` (floats):
  torch.optim.SGD on minibatches, default from the app's arguments;
- ``loss``: ``"ce"`` (cross-entropy) or ``"margin-control"`` (FedLD's
  :func:`~gradwise.federated.fedld.margin_control_loss`, weight ``margin-lambda``);
- ``local-rule``: ``"sgd"`` (the above), ``"fedspeed"``: FedSpeed's
  :func:`~gradwise.federated.fedspeed.fedspeed_local_train` (cross-entropy; ``prox-lambda``, ``rho``,
  ``weight-decay``, ``max-norm``) with the message's own ``"fedspeed-correction"`` ArrayRecord, or
  ``"fedhyper"``: FedHyper's :func:`~gradwise.federated.fedhyper.fedhyper_local_train` (SGD with
  ``momentum``, hypergradient-scaled learning rate; ``hyper-clients``) with the message's
  ``"fedhyper-global-update"`` ArrayRecord, or ``"curriculum"``: the federated curriculum's
  :func:`~gradwise.federated.curriculum.curriculum_client_rule` (loss-ordered, paced local data:
  ``ordering``, ``pacing``, ``pacing-a``, ``pacing-b``, ``min-examples``; with ``curriculum-score-only``
  no training, and the client's mean example loss under the received arrays as ``train-loss``).
- ``local-rule="fedlex"``: FedLEx's :func:`~gradwise.federated.fedlex.fedlex_client_train`: exploration
  (``fedlex-phase="explore"``) or training with gradients scaled by the message's ``"fedlex-guidance"``
  ArrayRecord (``"guided"``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_int, check_positive, check_unit
from gradwise.federated._flwr import require_flwr, state_to_arrays
from gradwise.federated.curriculum import curriculum_client_rule
from gradwise.federated.fedhyper import GLOBAL_UPDATE_KEY, fedhyper_local_train
from gradwise.federated.fedld import margin_control_loss
from gradwise.federated.fedlex import fedlex_client_train
from gradwise.federated.fedspeed import CORRECTION_KEY, fedspeed_local_train
from gradwise.federated.partition import dirichlet_partition

__all__ = ["DigitsTask", "digits_model", "local_sgd", "accuracy", "digits_client_app"]


class DigitsTask:
    """scikit-learn's digits (1,797 8x8 images, pixels scaled to [0, 1]), split once into train and test
    (``test_fraction``, seeded), and the train part split among ``num_clients`` by
    :func:`~gradwise.federated.partition.dirichlet_partition` (``alpha``, ``seed``)."""

    def __init__(self, num_clients: int, alpha: float, seed: int = 0, test_fraction: float = 0.25):
        from sklearn.datasets import load_digits

        check_int("num_clients", num_clients, 1)
        check_positive("alpha", alpha)
        check_int("seed", seed, 0)
        check_unit("test_fraction", test_fraction)
        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(seed).permutation(len(y))
        n_test = int(round(test_fraction * len(y)))
        test, train = order[:n_test], order[n_test:]
        self.x_train = torch.tensor(x[train] / 16.0, dtype=torch.float32)
        self.y_train = torch.tensor(y[train], dtype=torch.int64)
        self.x_test = torch.tensor(x[test] / 16.0, dtype=torch.float32)
        self.y_test = torch.tensor(y[test], dtype=torch.int64)
        self.parts = dirichlet_partition(y[train], num_clients, alpha, seed)

    def client_data(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        check_int("partition_id", partition_id, 0, len(self.parts) - 1)
        idx = torch.as_tensor(self.parts[partition_id])
        return self.x_train[idx], self.y_train[idx]


def digits_model(hidden: int = 32, seed: int = 0) -> nn.Module:
    """The MLP 64 -> ``hidden`` -> 10 (ReLU) that the digits clients train, initialized from ``seed``."""
    check_int("hidden", hidden, 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def local_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, lr: float = 0.1,
              batch_size: int = 32, momentum: float = 0.0, weight_decay: float = 0.0, loss: str = "ce",
              margin_lambda: float = 0.03, seed: int = 0) -> float:
    """Train ``model`` in place for ``epochs`` passes of shuffled minibatches with torch.optim.SGD;
    returns the mean training loss of the last epoch."""
    check_int("epochs", epochs, 1)
    check_positive("lr", lr)
    check_int("batch_size", batch_size, 1)
    if loss not in ("ce", "margin-control"):
        raise ValueError(f"Invalid loss: {loss!r} (accepted: 'ce' or 'margin-control')")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            logits = model(x[batch])
            value = (nn.functional.cross_entropy(logits, y[batch]) if loss == "ce"
                     else margin_control_loss(logits, y[batch], margin_lambda))
            opt.zero_grad()
            value.backward()
            opt.step()
            total += float(value) * len(batch)
            count += len(batch)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y``."""
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def digits_client_app(alpha: float = 0.3, seed: int = 0, *, lr: float = 0.1, local_epochs: int = 2,
                      batch_size: int = 32, hidden: int = 32):
    """A Flower ``ClientApp`` training :func:`digits_model` on its Dirichlet(``alpha``) partition of digits.

    Its partition is ``partition-id`` of ``num-partitions`` in the node config (the Simulation Engine sets
    both; a real ``flower-supernode`` gets them with ``--node-config``). The train reply holds ``arrays``
    and ``metrics`` (``num-examples``, ``train-loss``); the evaluate reply holds the accuracy of the
    received arrays on the shared test split (``accuracy``, ``num-examples``); a query message is
    answered with the node's ``partition-id`` and ``num-partitions`` (``metrics``).
    """
    check_positive("alpha", alpha)
    check_int("seed", seed, 0)
    check_positive("lr", lr)
    check_int("local_epochs", local_epochs, 1)
    check_int("batch_size", batch_size, 1)
    check_int("hidden", hidden, 1)
    flwr_app = require_flwr("flwr.app")
    clientapp = require_flwr("flwr.clientapp")
    app = clientapp.ClientApp()
    tasks: dict[tuple[int, float], DigitsTask] = {}  # per process: the split is the same for every message

    def setup(msg, context):
        torch.set_num_threads(1)
        num = int(context.node_config["num-partitions"])
        pid = int(context.node_config["partition-id"])
        cfg = msg.content["config"] if "config" in msg.content else {}
        key = (num, check_positive("alpha", float(cfg.get("alpha", alpha))))
        if key not in tasks:
            tasks[key] = DigitsTask(num, key[1], seed)
        task = tasks[key]
        model = digits_model(hidden, seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return task, pid, model

    @app.train()
    def train(msg, context):
        task, pid, model = setup(msg, context)
        cfg = msg.content["config"] if "config" in msg.content else {}
        rnd = int(cfg.get("server-round", 0))
        x, y = task.client_data(pid)
        rule = str(cfg.get("local-rule", "sgd"))
        if rule not in ("sgd", "fedspeed", "fedhyper", "fedlex", "curriculum"):
            raise ValueError(f"Invalid local-rule: {rule!r} (accepted: 'sgd', 'fedspeed', 'fedhyper', 'fedlex' or "
                             "'curriculum')")
        if rule == "fedlex":
            loss = fedlex_client_train(msg.content, cfg, model, x, y, epochs=local_epochs, lr=lr,
                                       batch_size=batch_size, seed=seed * 1_000_003 + rnd * 1009 + pid)
        elif rule == "curriculum":
            loss = curriculum_client_rule(model, x, y, cfg, epochs=local_epochs, lr=lr, batch_size=batch_size,
                                          seed=seed * 1_000_003 + rnd * 1009 + pid)
        elif rule == "fedhyper":
            if GLOBAL_UPDATE_KEY not in msg.content:
                raise ValueError(f"Invalid message: local-rule 'fedhyper' needs its {GLOBAL_UPDATE_KEY!r} arrays")
            last = {k: torch.as_tensor(v.numpy()) for k, v in msg.content[GLOBAL_UPDATE_KEY].items()}
            loss = fedhyper_local_train(
                model, x, y, last, clients=float(cfg.get("hyper-clients", 1.0)),
                epochs=int(cfg.get("local-epochs", local_epochs)), lr=float(cfg.get("lr", lr)),
                batch_size=int(cfg.get("batch-size", batch_size)), momentum=float(cfg.get("momentum", 0.5)),
                seed=seed * 1_000_003 + rnd * 1009 + pid)
        elif rule == "fedspeed":
            if CORRECTION_KEY not in msg.content:
                raise ValueError(f"Invalid message: local-rule 'fedspeed' needs its {CORRECTION_KEY!r} arrays")
            corr = {k: torch.as_tensor(v.numpy()) for k, v in msg.content[CORRECTION_KEY].items()}
            loss = fedspeed_local_train(
                model, x, y, corr, epochs=int(cfg.get("local-epochs", local_epochs)), lr=float(cfg.get("lr", lr)),
                batch_size=int(cfg.get("batch-size", batch_size)), prox_lambda=float(cfg.get("prox-lambda", 0.1)),
                rho=float(cfg.get("rho", 0.1)), weight_decay=float(cfg.get("weight-decay", 1e-3)),
                max_norm=float(cfg.get("max-norm", 10.0)), seed=seed * 1_000_003 + rnd * 1009 + pid)
        else:
            loss = local_sgd(model, x, y, epochs=int(cfg.get("local-epochs", local_epochs)),
                             lr=float(cfg.get("lr", lr)), batch_size=int(cfg.get("batch-size", batch_size)),
                             momentum=float(cfg.get("momentum", 0.0)),
                             weight_decay=float(cfg.get("weight-decay", 0.0)),
                             loss=str(cfg.get("loss", "ce")),
                             margin_lambda=float(cfg.get("margin-lambda", 0.03)),
                             seed=seed * 1_000_003 + rnd * 1009 + pid)
        content = flwr_app.RecordDict({
            "arrays": state_to_arrays(model.state_dict()),
            "metrics": flwr_app.MetricRecord({"num-examples": int(len(y)), "train-loss": loss}),
        })
        return flwr_app.Message(content=content, reply_to=msg)

    @app.query()
    def query(msg, context):  # which partition this node holds: the server app orders nodes by it
        content = flwr_app.RecordDict({"metrics": flwr_app.MetricRecord({
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"])})})
        return flwr_app.Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg, context):
        task, _, model = setup(msg, context)
        acc = accuracy(model, task.x_test, task.y_test)
        content = flwr_app.RecordDict({"metrics": flwr_app.MetricRecord(
            {"num-examples": int(len(task.y_test)), "accuracy": acc})})
        return flwr_app.Message(content=content, reply_to=msg)

    return app
