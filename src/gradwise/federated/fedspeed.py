"""FedSpeed (Sun et al., ICLR 2023): local steps with a prox-correction term and an ascent-perturbed
gradient, and a server step that adds the mean of the clients' accumulated corrections."""
from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_int, check_nonneg, check_positive
from gradwise.federated._flwr import require_flwr, state_to_arrays
from gradwise.federated._strategy import apply_update, client_updates, per_parameter, remember_global
from gradwise.registry import register

__all__ = ["fedspeed_local_step", "fedspeed_local_train", "fedspeed_global_step", "FedSpeedDuals",
           "fedspeed_strategy_class", "fedspeed_strategy"]

PAPER = "FedSpeed: Larger Local Interval, Less Communication Round, and Higher Generalization Accuracy"
CODE = "https://github.com/woodenchild95/FL-Simulator"
CORRECTION_KEY = "fedspeed-correction"  # the per-client ArrayRecord in a FedSpeed train message


def _grads(model, loss_fn, inputs, target, params):
    loss = loss_fn(model(inputs), target)
    return loss, torch.autograd.grad(loss, params)


def fedspeed_local_step(model: nn.Module, loss_fn, inputs: torch.Tensor, target: torch.Tensor, correction,
                        *, lr: float, prox_lambda: float = 0.1, rho: float = 0.1, weight_decay: float = 1e-3,
                        max_norm: float = 10.0) -> float:
    """One FedSpeed local step on ``model`` (in place); returns the minibatch loss at the current weights.

    With ``w`` the weights, ``w0`` the global weights of the round and ``h_i`` the client's accumulated
    updates, ``correction`` is ``c = h_i - w0`` (one tensor per parameter, in ``model.parameters()``
    order, or a dict by parameter name). As the authors' ``fedspeed`` client (ESAM step, then the
    correction term, clipping and SGD with weight decay ``weight_decay + prox_lambda``):

        g  = grad L(w);   e = rho g / (||g|| + 1e-7)                 (gradient-ascent perturbation)
        d  = grad L(w + e) + prox_lambda c                           (perturbed gradient + prox-correction)
        d <- d min(1, max_norm / (||d|| + 1e-6))                     (clip_grad_norm_)
        w <- w - lr (d + (weight_decay + prox_lambda) w)

    so the step descends ``L`` at the ascent point (the vanilla gradient plus the change the perturbation
    makes to it) and the prox term ``prox_lambda/2 ||w - w0||^2`` with its correction
    ``prox_lambda <h_i, w>``. Norms run over all parameters together.

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (FL-Simulator: client/fedspeed.py, server/FedSpeed.py,
    optimizer/ESAM.py), arXiv 2302.10429.
    """
    prox_lambda = check_nonneg("prox_lambda", prox_lambda)
    rho = check_nonneg("rho", rho)
    weight_decay = check_nonneg("weight_decay", weight_decay)
    check_positive("lr", lr)
    check_positive("max_norm", max_norm)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    correction = per_parameter(named, correction, "correction")
    loss, g = _grads(model, loss_fn, inputs, target, params)
    scale = rho / (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g])) + 1e-7)
    with torch.no_grad():
        e = [t * scale for t in g]
        torch._foreach_add_(params, e)
    _, g2 = _grads(model, loss_fn, inputs, target, params)
    with torch.no_grad():
        torch._foreach_sub_(params, e)
        d = [a + prox_lambda * torch.as_tensor(c, dtype=a.dtype, device=a.device) for a, c in zip(g2, correction)]
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in d]))
        clip = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for p, t in zip(params, d):
            p.sub_(lr * (t * clip + (weight_decay + prox_lambda) * p))
    return float(loss.detach())


def fedspeed_local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, correction, *, epochs: int = 1,
                         lr: float = 0.1, batch_size: int = 32, prox_lambda: float = 0.1, rho: float = 0.1,
                         weight_decay: float = 1e-3, max_norm: float = 10.0, seed: int = 0) -> float:
    """FedSpeed's local training: ``epochs`` passes of shuffled minibatches (cross-entropy), each a
    :func:`fedspeed_local_step` with the same ``correction``; returns the last epoch's mean loss."""
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    last = 0.0
    for _ in range(epochs):
        total, count = 0.0, 0
        for batch in torch.randperm(len(y), generator=gen).split(batch_size):
            value = fedspeed_local_step(model, nn.functional.cross_entropy, x[batch], y[batch], correction,
                                        lr=lr, prox_lambda=prox_lambda, rho=rho, weight_decay=weight_decay,
                                        max_norm=max_norm)
            total += value * len(batch)
            count += len(batch)
        last = total / max(count, 1)
    return last


def fedspeed_global_step(updates, dual_sum, num_clients: int) -> np.ndarray:
    """FedSpeed's server step from the round's client updates ``Δ_i = w_i - w`` (``(m, ...)``):

        w <- w + mean_i Δ_i + (1 / N) sum_{j<N} h_j,

    where ``h_j`` is the sum of client ``j``'s updates over the rounds it took part in (this round's
    included; zero for a client not yet seen), ``dual_sum = sum_j h_j`` and ``N = num_clients`` counts
    every client, selected or not (the authors' ``global_update``: the average of the local models plus
    the mean of ``h_params_list``).

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (FL-Simulator: client/fedspeed.py, server/FedSpeed.py,
    optimizer/ESAM.py), arXiv 2302.10429.
    """
    u = np.asarray(updates, dtype=np.float64)
    if u.ndim < 1 or u.shape[0] == 0:
        raise ValueError(f"Invalid updates: shape {u.shape} (accepted: (clients, ...), at least one client)")
    s = np.asarray(dual_sum, dtype=np.float64)
    if s.shape != u.shape[1:]:
        raise ValueError(f"Invalid dual_sum: shape {s.shape} (accepted: {u.shape[1:]})")
    check_int("num_clients", num_clients, 1)
    return u.mean(0) + s / num_clients


class FedSpeedDuals:
    """FedSpeed's server state: per client ``h_i = sum`` of its past updates (the authors' ``h_params_list``),
    one array per model entry (``{name: array}``)."""

    def __init__(self):
        self.duals: dict[Hashable, dict[str, np.ndarray]] = {}
        self.total: dict[str, np.ndarray] = {}

    def correction(self, client: Hashable, global_arrays: dict) -> dict[str, np.ndarray]:
        """What ``client`` is sent with the global weights ``w``: ``h_i - w`` (``-w`` for a new client)."""
        h = self.duals.get(client, {})
        return {k: (h[k] if k in h else 0.0) - np.asarray(w, dtype=np.float64) for k, w in global_arrays.items()}

    def step(self, clients: Iterable[Hashable], updates: dict, num_clients: int) -> dict[str, np.ndarray]:
        """Add each participant's update (``{name: (m, *shape)}``, rows in ``clients`` order) to its ``h_i``
        and return the server step :func:`fedspeed_global_step` over ``num_clients`` clients."""
        clients = list(clients)
        check_int("num_clients", num_clients, max(1, len(self.duals | dict.fromkeys(clients))))
        out = {}
        for name, u in updates.items():
            u = np.asarray(u, dtype=np.float64)
            if u.shape[0] != len(clients):
                raise ValueError(f"Invalid updates: {name!r} has {u.shape[0]} rows for {len(clients)} clients")
            for c, row in zip(clients, u):
                h = self.duals.setdefault(c, {})
                h[name] = h.get(name, 0.0) + row
            self.total[name] = self.total.get(name, 0.0) + u.sum(0)
            out[name] = fedspeed_global_step(u, self.total[name], num_clients)
        return out


@functools.cache  # built once, on first use: flwr is imported only then
def fedspeed_strategy_class() -> type:
    """The Flower strategy class of FedSpeed (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedspeed_strategy`."""
    flwr_app = require_flwr("flwr.app")
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedSpeedStrategy(base):
        """FedAvg with FedSpeed's local rule (asked for in the train config, each client sent its own
        prox-correction) and FedSpeed's server step."""

        def __init__(self, *, prox_lambda: float = 0.1, rho: float = 0.1, local_weight_decay: float = 1e-3,
                     max_norm: float = 10.0, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            self.prox_lambda = check_nonneg("prox_lambda", prox_lambda)
            self.rho = check_nonneg("rho", rho)
            self.local_weight_decay = check_nonneg("local_weight_decay", local_weight_decay)
            self.max_norm = check_positive("max_norm", max_norm)
            self.duals = FedSpeedDuals()

        def configure_train(self, server_round, arrays, config, grid):
            remember_global(self, arrays, grid)
            config["local-rule"] = "fedspeed"
            config["prox-lambda"] = self.prox_lambda
            config["rho"] = self.rho
            config["weight-decay"] = self.local_weight_decay
            config["max-norm"] = self.max_norm
            return super().configure_train(server_round, arrays, config, grid)

        def _construct_messages(self, record, node_ids, message_type):
            messages = super()._construct_messages(record, node_ids, message_type)
            if message_type != flwr_app.MessageType.TRAIN:
                return messages
            out = []
            for m in messages:  # FedAvg shares one payload; each client gets its own correction
                content = flwr_app.RecordDict({k: v for k, v in record.items()})
                corr = self.duals.correction(m.metadata.dst_node_id, self.global_arrays)
                content[CORRECTION_KEY] = state_to_arrays(
                    {k: v.astype(self.global_arrays[k].dtype) for k, v in corr.items()})
                out.append(flwr_app.Message(content=content, message_type=message_type,
                                            dst_node_id=m.metadata.dst_node_id))
            return out

        def aggregate_train(self, server_round, replies):
            nodes, updates, contents = client_updates(self, replies)
            if not nodes:
                return None, None
            num = len(set(self.known_nodes) | set(self.duals.duals) | set(nodes))
            arrays = apply_update(self, self.duals.step(nodes, updates, num))
            return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return FedSpeedStrategy


@register(kind="fl-strategy", name="FedSpeed", paper=PAPER, year=2023, arxiv="2302.10429", code=CODE,
          summary="FedSpeed: local prox-correction with ascent-perturbed gradients; server adds the mean "
                  "accumulated correction")
def fedspeed_strategy(*, prox_lambda: float = 0.1, rho: float = 0.1, local_weight_decay: float = 1e-3,
                      max_norm: float = 10.0, **fedavg_kwargs):
    """FedSpeed as a Flower strategy (Sun et al., "FedSpeed: Larger Local Interval, Less Communication
    Round, and Higher Generalization Accuracy", ICLR 2023, arXiv 2302.10429; authors' code
    github.com/woodenchild95/FL-Simulator).

    Clients run :func:`fedspeed_local_step`: the gradient at an ascent-perturbed point (radius ``rho``)
    plus a prox term towards the global weights corrected by the client's accumulated updates ``h_i``;
    the server keeps every ``h_i`` (:class:`FedSpeedDuals`), sends each sampled client its own
    ``h_i - w`` (the train message's ``"fedspeed-correction"`` ArrayRecord) and moves the global weights by
    :func:`fedspeed_global_step`. Every array of the global model is treated as a parameter.

    The train config carries ``local-rule="fedspeed"``, ``prox-lambda``, ``rho``, ``weight-decay``,
    ``max-norm`` (the authors' defaults ``--lamb 0.1``, ``--rho 0.1``, ``--weight-decay 1e-3``, clip norm
    10), which :func:`~gradwise.federated.digits.digits_client_app` honours. Their runs also decay the
    local learning rate by 0.998 a round (for every method); that is left to the caller. Other keyword
    arguments go to ``flwr.serverapp.strategy.FedAvg``.

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (FL-Simulator: client/fedspeed.py, server/FedSpeed.py,
    optimizer/ESAM.py), arXiv 2302.10429.

    Example::

        strategy = fedspeed_strategy(fraction_evaluate=0.0, min_available_nodes=5)
        run_digits_simulation(strategy, num_clients=5, num_rounds=5)
    """
    return fedspeed_strategy_class()(prox_lambda=prox_lambda, rho=rho, local_weight_decay=local_weight_decay,
                                     max_norm=max_norm, **fedavg_kwargs)
