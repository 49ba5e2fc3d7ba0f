"""FedHyper (Wang, Wang & Li, ICLR 2024): hypergradient descent on the global learning rate (server) and
on the local learning rate (clients)."""
from __future__ import annotations

import functools
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_real
from gradwise.federated._flwr import require_flwr, state_to_arrays
from gradwise.federated._strategy import apply_update, client_updates, remember_global
from gradwise.registry import register

__all__ = ["fedhyper_global_step", "FedHyperGlobal", "fedhyper_local_factor", "fedhyper_local_run",
           "fedhyper_local_train", "fedhyper_strategy_class", "fedhyper_strategy"]

PAPER = ("FedHyper: A Universal and Robust Learning Rate Scheduler for Federated Learning with "
         "Hypergradient Descent")
CODE = "https://github.com/ATP-1010/FedHyper"
GLOBAL_UPDATE_KEY = "fedhyper-global-update"  # the ArrayRecord of last round's average update


def _bounds(agg_bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in agg_bounds)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and -1.0 <= lo <= 0.0 <= hi):
        raise ValueError(f"Invalid agg_bounds: {agg_bounds!r} (accepted: (lo, hi) with -1 <= lo <= 0 <= hi)")
    return lo, hi


def fedhyper_global_step(update, direction, agg: float, *, momentum: float = 0.9,
                         agg_bounds=(-0.2, 4.0)) -> tuple[np.ndarray, float, np.ndarray]:
    """FedHyper's global learning-rate rule for one round; returns ``(step, agg, direction)``.

    ``update`` is the round's average client update ``Δ_t`` (the clients' mean model minus the global
    one), ``agg = α - 1`` the global learning rate less one, ``direction`` the previous round's
    ``d_{t-1}`` (``None`` in the first round, which steps by ``Δ_t`` and sets ``d = Δ_t``). Otherwise,
    as the authors' ``federated_main.py`` (``FedHyper-GM``; ``FedHyper-G`` is ``momentum=0`` with
    ``agg_bounds=(-0.8, 4)``):

        agg  <- clip(agg + <d_{t-1}, Δ_t>, lo, hi)         (hypergradient step on α, rate 1)
        step  = (1 + agg) Δ_t + momentum agg d_{t-1}
        d_t   = Δ_t + momentum d_{t-1}

    The paper's method section could not be read from the stored pages (only its abstract); this
    follows the authors' code (ATP-1010/FedHyper, src/federated_main.py), arXiv 2310.03156.
    """
    u = np.asarray(update, dtype=np.float64)
    check_real("momentum", momentum, 0.0, 1.0)
    lo, hi = _bounds(agg_bounds)
    if direction is None:
        return u.copy(), float(check_real("agg", agg)), u.copy()
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != u.shape:
        raise ValueError(f"Invalid direction: shape {d.shape} (accepted: the update's {u.shape})")
    agg = min(max(float(check_real("agg", agg)) + float(np.vdot(d, u)), lo), hi)
    return (1 + agg) * u + momentum * agg * d, agg, u + momentum * d


class FedHyperGlobal:
    """FedHyper's server rule over rounds, on ``{name: (m, *shape) client updates}``: the plain mean of the
    updates (the authors' ``average_weights``) stepped by :func:`fedhyper_global_step`, the inner product
    running over all entries together. ``agg``, ``direction`` and ``last_update`` (the mean update,
    sent to clients for their local rule) are kept between rounds."""

    def __init__(self, momentum: float = 0.9, agg_bounds=(-0.2, 4.0)):
        self.momentum = check_real("momentum", momentum, 0.0, 1.0)
        self.agg_bounds = _bounds(agg_bounds)
        self.agg = 0.0
        self.direction: dict[str, np.ndarray] | None = None
        self.last_update: dict[str, np.ndarray] | None = None

    def __call__(self, updates: dict) -> dict[str, np.ndarray]:
        names = list(updates)
        means = {k: np.asarray(updates[k], dtype=np.float64).mean(0) for k in names}
        flat = np.concatenate([means[k].ravel() for k in names])
        old = None if self.direction is None else np.concatenate([self.direction[k].ravel() for k in names])
        step, self.agg, new = fedhyper_global_step(flat, old, self.agg, momentum=self.momentum,
                                                   agg_bounds=self.agg_bounds)
        out, self.direction, start = {}, {}, 0
        for k in names:
            n = means[k].size
            out[k] = step[start:start + n].reshape(means[k].shape)
            self.direction[k] = new[start:start + n].reshape(means[k].shape)
            start += n
        self.last_update = means
        return out


def fedhyper_local_factor(beta: float, step, prev_step, global_update, clients: float) -> float:
    """FedHyper's client-side local learning-rate factor after one local step (``lr = lr0 * beta``):

        gamma = min(1.1, 1 + 0.1 <s_k, Δ> / clients + <s_k, s_{k-1}>),    beta <- clip(gamma beta, 0.1, 10),

    with ``s_k`` the step just taken (new minus old weights), ``s_{k-1}`` the step before it (the last
    round's global update ``Δ`` before the first counted step) and ``clients`` the number of clients
    sampled a round (``num_users * frac``), as the authors' ``LocalUpdate.update_weights``
    (``FedHyper-CL``; src/update.py). The paper's method section could not be read from the stored
    pages; this follows the authors' code (arXiv 2310.03156).
    """
    check_positive("clients", clients)
    beta = check_real("beta", beta, 0.1, 10.0)
    s, p, g = (torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, dtype=torch.float64)
               .reshape(-1) for v in (step, prev_step, global_update))
    if not s.shape == p.shape == g.shape:
        raise ValueError(f"Invalid step: sizes {s.numel()}, {p.numel()}, {g.numel()} of step, prev_step and "
                         "global_update differ")
    gamma = min(1.1, 1.0 + 0.1 * float(s @ g) / clients + float(s @ p))
    return min(max(gamma * beta, 0.1), 10.0)


def _flat(values, model) -> torch.Tensor:
    named = [(k, p) for k, p in model.named_parameters()]
    if isinstance(values, dict):
        missing = [k for k, _ in named if k not in values]
        if missing:
            raise ValueError(f"Invalid global_update: no entry for parameters {missing}")
        values = [values[k] for k, _ in named]
    values = [torch.as_tensor(v) for v in values]
    if len(values) != len(named) or any(v.numel() != p.numel() for v, (_, p) in zip(values, named)):
        raise ValueError("Invalid global_update: expected one array per parameter with its size")
    return torch.cat([v.reshape(-1).to(torch.float64) for v in values])


def fedhyper_local_run(model: nn.Module, loss_fn, epochs: Iterable, global_update, *, clients: float,
                       lr: float, momentum: float = 0.5) -> float:
    """Local SGD (``momentum``) with FedHyper's client-side learning-rate rule, in place on ``model``.

    ``epochs`` yields, per local epoch, an iterable of ``(inputs, target)`` minibatches. After every step
    but the first of each epoch, the factor ``beta`` is updated by :func:`fedhyper_local_factor` and the
    learning rate becomes ``lr * beta`` (the authors' ``LambdaLR``; ``beta`` and the previous step carry
    over epochs). Returns the mean loss of the last epoch.
    """
    check_positive("lr", lr)
    check_real("momentum", momentum, 0.0, 1.0, hi_open=True)
    params = list(model.parameters())
    prev = _flat(global_update, model)
    g = prev.clone()
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    beta, last = 1.0, 0.0
    model.train()
    for batches in epochs:
        total, count, first = 0.0, 0, True
        for x, y in batches:
            before = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params])
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if first:
                first = False
            else:
                step = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params]) - before
                beta = fedhyper_local_factor(beta, step, prev, g, clients)
                for group in opt.param_groups:
                    group["lr"] = lr * beta
                prev = step
            total += float(loss.detach()) * len(y)
            count += len(y)
        last = total / max(count, 1)
    return last


def fedhyper_local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, global_update, *, clients: float,
                         epochs: int = 1, lr: float = 0.01, batch_size: int = 32, momentum: float = 0.5,
                         seed: int = 0) -> float:
    """:func:`fedhyper_local_run` with cross-entropy on ``epochs`` passes of shuffled minibatches."""
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    gen = torch.Generator().manual_seed(seed)
    passes = ([(x[b], y[b]) for b in torch.randperm(len(y), generator=gen).split(batch_size)]
              for _ in range(epochs))
    return fedhyper_local_run(model, nn.functional.cross_entropy, passes, global_update, clients=clients, lr=lr,
                              momentum=momentum)


@functools.cache  # built once, on first use: flwr is imported only then
def fedhyper_strategy_class() -> type:
    """The Flower strategy class of FedHyper (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedhyper_strategy`."""
    flwr_app = require_flwr("flwr.app")
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedHyperStrategy(base):
        """FedAvg with FedHyper's global learning-rate rule and (asked for in the train config) its
        client-side local learning-rate rule."""

        def __init__(self, *, global_momentum: float = 0.9, agg_bounds=(-0.2, 4.0), local_scheduler: bool = True,
                     local_momentum: float = 0.5, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            if not isinstance(local_scheduler, bool):
                raise ValueError(f"Invalid local_scheduler: {local_scheduler!r} (accepted: True or False)")
            self.local_scheduler = local_scheduler
            self.local_momentum = check_real("local_momentum", local_momentum, 0.0, 1.0, hi_open=True)
            self.rule = FedHyperGlobal(global_momentum, agg_bounds)

        def configure_train(self, server_round, arrays, config, grid):
            remember_global(self, arrays, grid)
            if self.local_scheduler:
                config["local-rule"] = "fedhyper"
                config["momentum"] = self.local_momentum
            return super().configure_train(server_round, arrays, config, grid)

        def _construct_messages(self, record, node_ids, message_type):
            if message_type == flwr_app.MessageType.TRAIN and self.local_scheduler:
                last = self.rule.last_update or {k: np.zeros_like(v, dtype=np.float64)
                                                 for k, v in self.global_arrays.items()}
                record[GLOBAL_UPDATE_KEY] = state_to_arrays(
                    {k: np.asarray(v).astype(self.global_arrays[k].dtype) for k, v in last.items()})
                record[self.configrecord_key]["hyper-clients"] = float(len(node_ids))
            return super()._construct_messages(record, node_ids, message_type)

        def aggregate_train(self, server_round, replies):
            nodes, updates, contents = client_updates(self, replies)
            if not nodes:
                return None, None
            arrays = apply_update(self, self.rule(updates))
            return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return FedHyperStrategy


@register(kind="fl-strategy", name="FedHyper", paper=PAPER, year=2024, arxiv="2310.03156", code=CODE,
          summary="FedHyper: hypergradient descent on the global and the local learning rates")
def fedhyper_strategy(*, global_momentum: float = 0.9, agg_bounds=(-0.2, 4.0), local_scheduler: bool = True,
                      local_momentum: float = 0.5, **fedavg_kwargs):
    """FedHyper as a Flower strategy (Wang, Wang & Li, "FedHyper: A Universal and Robust Learning Rate
    Scheduler for Federated Learning with Hypergradient Descent", ICLR 2024, arXiv 2310.03156; authors'
    code github.com/ATP-1010/FedHyper).

    The server moves the global model by ``(1 + agg)`` times the clients' plain mean update plus a
    momentum term, ``agg`` learned by hypergradient descent on the inner product of consecutive global
    updates (:class:`FedHyperGlobal`; defaults are the authors' recommended ``FedHyper-GM``; ``FedHyper-G``
    is ``global_momentum=0, agg_bounds=(-0.8, 4)``). With ``local_scheduler`` (their ``FedHyper-FULL``)
    clients also scale their local learning rate by hypergradients (:func:`fedhyper_local_run`): the train
    config carries ``local-rule="fedhyper"``, ``momentum`` (their SGD momentum 0.5) and ``hyper-clients``
    (the number of clients sampled), and the message the last round's mean update
    (``"fedhyper-global-update"``), which :func:`~gradwise.federated.digits.digits_client_app` honours.
    Their ``FedHyper-SL`` (local rate from the global hypergradient) is not offered: in their script the
    rates it sets are reset before the next round's clients train. Other keyword arguments go to
    ``flwr.serverapp.strategy.FedAvg``.

    The paper's method section could not be read from the stored pages (only its abstract); this follows
    the authors' code (src/federated_main.py, src/update.py).

    Example::

        strategy = fedhyper_strategy(fraction_evaluate=0.0, min_available_nodes=5)
        run_digits_simulation(strategy, num_clients=5, num_rounds=5)
    """
    return fedhyper_strategy_class()(global_momentum=global_momentum, agg_bounds=agg_bounds,
                                     local_scheduler=local_scheduler, local_momentum=local_momentum,
                                     **fedavg_kwargs)
