"""FedLEx (Internò, Olhofer, Jin & Hammer, IJCNN 2024): a federated loss-exploration phase builds a global
guidance matrix from how far the explorers' weights moved, and clients then scale their gradients by it."""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_choice, check_int, check_nonneg, check_positive, check_real, check_unit
from gradwise.federated._flwr import require_flwr, state_to_arrays
from gradwise.federated._strategy import client_updates, per_parameter, remember_global
from gradwise.registry import register

__all__ = ["fedlex_guidance_matrix", "fedlex_guidance", "fedlex_local_run", "fedlex_local_train",
           "fedlex_client_train", "fedlex_strategy_class", "fedlex_strategy"]

PAPER = "Federated Loss Exploration for Improved Convergence on Non-IID Data"
CODE = "https://github.com/ChristianInterno/FedLEx"
GUIDANCE_KEY = "fedlex-guidance"  # the ArrayRecord of the global guidance matrix in a guided train message
NORMALIZATIONS = ("minmax", "robust")
OPTIMIZERS = ("sgd", "adam")


def _lower_median_and_iqr(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # torch.median (the lower of the two middle values) and torch.quantile's linear interpolation, from one
    # sort: torch.quantile refuses tensors of more than 2**24 entries, which large layers exceed.
    s = flat.sort().values
    n = s.numel()

    def quantile(q):
        pos = q * (n - 1)
        lo = math.floor(pos)
        return torch.lerp(s[lo], s[min(lo + 1, n - 1)], pos - lo)

    return s[(n - 1) // 2], quantile(0.75) - quantile(0.25)


def fedlex_guidance_matrix(deviations, normalization: str = "minmax") -> torch.Tensor:
    """FedLEx's guidance matrix of one parameter tensor from the explorers' deviations.

    ``deviations`` is ``(k, *shape)``: row ``i`` is explorer ``i``'s weights after its exploration minus the
    base weights it started from, ``w_i - w_b``. As the authors' ``create_mask`` (``learning_spread``):

        LS = (1/k) sum_i (w_i - w_b)^2                          (entry-wise, the "learning spread")
        G  = (LS - min LS) / (max LS - min LS)                  (normalization="minmax", their default)
        G  = (LS - median LS) / (Q3(LS) - Q1(LS))               (normalization="robust", their RobustScaler)

    with min, max, median (the lower middle value, as ``torch.median``) and quartiles (linear, as
    ``torch.quantile``) over the tensor's entries. Entries that moved most across explorers get the largest
    weight. Where the denominator is zero (every entry equal, e.g. a one-entry tensor) the authors' code
    divides by zero; here ``G`` is then all ones (the gradient left as it is).

    Returns a tensor of ``shape`` (float64 for numpy input, else the deviations' floating dtype).

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (ChristianInterno/FedLEx@69ed581, src/GTL_utils.py
    ``create_mask``, src/client/fedlexclient.py ``create_scout`` and ``update``).
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    d = torch.as_tensor(deviations)
    if not d.is_floating_point():
        d = d.to(torch.float64)
    if d.ndim < 1 or d.shape[0] == 0 or d[0].numel() == 0:
        raise ValueError(f"Invalid deviations: shape {tuple(d.shape)} (accepted: (explorers, *shape) with at "
                         "least one explorer and one entry)")
    ls = (d * d).mean(0)
    flat = ls.reshape(-1)
    if normalization == "minmax":
        center, scale = flat.min(), flat.max() - flat.min()
    else:
        center, scale = _lower_median_and_iqr(flat)
    return torch.where(scale > 0, (ls - center) / scale, torch.ones_like(ls))


def fedlex_guidance(deviations: dict, normalization: str = "minmax") -> dict[str, np.ndarray]:
    """:func:`fedlex_guidance_matrix` of every entry of ``{name: (k, *shape) deviations}`` (each tensor
    normalized on its own, as the authors' per-parameter ``learning_spread``), as float64 numpy arrays."""
    if not isinstance(deviations, dict) or not deviations:
        raise ValueError(f"Invalid deviations: {type(deviations).__name__} (accepted: a non-empty dict "
                         "{name: (explorers, *shape) array})")
    out = {}
    for k, v in deviations.items():
        out[k] = fedlex_guidance_matrix(np.asarray(v, dtype=np.float64), normalization).numpy()
    return out


def _optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    check_choice("optimizer", name, OPTIMIZERS)
    check_positive("lr", lr)
    check_real("momentum", momentum, 0.0, 1.0, hi_open=True)
    check_nonneg("weight_decay", weight_decay)
    if name == "adam":
        if momentum:
            raise ValueError(f"Invalid momentum: {momentum!r} (accepted: 0 with optimizer='adam')")
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def fedlex_local_run(model: nn.Module, loss_fn, epochs: Iterable, optimizer: torch.optim.Optimizer, *,
                     guidance=None, max_norm: float = 0.0, patience: int | None = None) -> float:
    """FedLEx's local training on ``model`` (in place); returns the mean loss of the last epoch run.

    ``epochs`` yields, per local epoch, an iterable of ``(inputs, target)`` minibatches; ``optimizer`` steps
    ``model``'s parameters. Each step, as the authors' client ``update``:

        g <- grad L(w) * G                       (entry-wise; skipped when ``guidance`` is None)
        g <- clip_grad_norm(g, max_norm)         (over all parameters; skipped when max_norm = 0)
        w <- optimizer step with g

    ``guidance`` holds ``G`` (one tensor per trainable parameter, in ``model.parameters()`` order, or a dict
    by parameter name). Without guidance this is their exploration (``create_scout``): with ``patience``,
    training stops once the last minibatch's loss of an epoch has not beaten the best such loss for
    ``patience`` epochs in a row.

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (ChristianInterno/FedLEx@69ed581, src/GTL_utils.py
    ``create_mask``, src/client/fedlexclient.py ``create_scout`` and ``update``).
    """
    max_norm = check_nonneg("max_norm", max_norm)
    if patience is not None:
        check_int("patience", patience, 1)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    g = None if guidance is None else [torch.as_tensor(v).to(dtype=p.dtype, device=p.device)
                                       for v, p in zip(per_parameter(named, guidance, "guidance"), params)]
    model.train()
    best, wait, last = math.inf, 0, 0.0
    for batches in epochs:
        total, count, loss = None, 0, None
        for x, y in batches:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            if g is not None:  # a parameter that took no part in the loss has no gradient to scale
                pairs = [(p.grad, t) for p, t in zip(params, g) if p.grad is not None]
                torch._foreach_mul_([a for a, _ in pairs], [t for _, t in pairs])
            if max_norm > 0:
                nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            value = loss.detach() * len(y)
            total = value if total is None else total + value
            count += len(y)
        if total is None:
            continue
        last = total / count
        if patience is not None:
            end = float(loss.detach())  # one host sync an epoch: the early-stopping decision needs it
            best, wait = (end, 0) if end < best else (best, wait + 1)
            if wait >= patience:
                break
    return float(last)


def fedlex_local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, guidance=None, *, epochs: int = 1,
                       lr: float = 0.1, batch_size: int = 32, optimizer: str = "sgd", momentum: float = 0.0,
                       weight_decay: float = 0.0, max_norm: float = 0.0, patience: int | None = None,
                       seed: int = 0) -> float:
    """:func:`fedlex_local_run` with cross-entropy on ``epochs`` passes of shuffled minibatches, with
    ``optimizer`` ``"sgd"`` (torch.optim.SGD: ``lr``, ``momentum``, ``weight_decay``) or ``"adam"``
    (torch.optim.Adam: ``lr``, ``weight_decay``; the authors' default). ``guidance=None`` is the
    exploration phase, a guidance matrix the guided phase."""
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 1)
    opt = _optimizer([p for p in model.parameters() if p.requires_grad], optimizer, lr, momentum, weight_decay)
    gen = torch.Generator().manual_seed(seed)
    passes = ([(x[b], y[b]) for b in torch.randperm(len(y), generator=gen).split(batch_size)]
              for _ in range(epochs))
    return fedlex_local_run(model, nn.functional.cross_entropy, passes, opt, guidance=guidance,
                            max_norm=max_norm, patience=patience)


def fedlex_client_train(content, config, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1,
                        lr: float = 0.1, batch_size: int = 32, seed: int = 0) -> float:
    """A client's ``local-rule="fedlex"`` training from a train message's ``content`` and ``config`` (as
    :func:`fedlex_strategy` sends them): :func:`fedlex_local_train` with ``optimizer``, ``momentum``,
    ``weight-decay``, ``lr`` and ``batch-size`` from the config (the keyword arguments are the
    client's defaults), and

    - ``fedlex-phase="explore"``: no guidance and no clipping, ``explore-epochs`` epochs, early stopping
      after ``explore-patience`` epochs (0: none);
    - ``fedlex-phase="guided"``: ``epochs`` (or the config's ``local-epochs``) epochs with gradients scaled
      by the content's ``"fedlex-guidance"`` ArrayRecord and clipped at ``max-norm`` (0: not clipped).
    """
    phase = str(config.get("fedlex-phase", ""))
    if phase not in ("explore", "guided"):
        raise ValueError(f"Invalid fedlex-phase: {phase!r} (accepted: 'explore' or 'guided')")
    guidance, patience, max_norm = None, None, 0.0  # their exploration neither scales nor clips
    if phase == "explore":
        epochs = int(config.get("explore-epochs", epochs))
        patience = int(config.get("explore-patience", 0)) or None
    elif GUIDANCE_KEY not in content:
        raise ValueError(f"Invalid message: fedlex-phase 'guided' needs its {GUIDANCE_KEY!r} arrays")
    else:
        epochs = int(config.get("local-epochs", epochs))
        max_norm = float(config.get("max-norm", 0.0))
        guidance = {k: torch.as_tensor(v.numpy()) for k, v in content[GUIDANCE_KEY].items()}
    return fedlex_local_train(
        model, x, y, guidance, epochs=epochs, lr=float(config.get("lr", lr)),
        batch_size=int(config.get("batch-size", batch_size)), optimizer=str(config.get("optimizer", "sgd")),
        momentum=float(config.get("momentum", 0.0)), weight_decay=float(config.get("weight-decay", 0.0)),
        max_norm=max_norm, patience=patience, seed=seed)


@functools.cache  # built once, on first use: flwr is imported only then
def fedlex_strategy_class() -> type:
    """The Flower strategy class of FedLEx (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedlex_strategy`."""
    flwr_app = require_flwr("flwr.app")
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedLExStrategy(base):
        """FedAvg whose first round is FedLEx's exploration (the guidance matrix is built from its replies)
        and whose later rounds send the guidance matrix for the clients' guided local rule."""

        def __init__(self, *, explore_epochs: int = 5, explore_patience: int | None = None,
                     fraction_explore: float = 1.0, normalization: str = "minmax", local_optimizer: str = "sgd",
                     max_norm: float = 0.0, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            self.explore_epochs = check_int("explore_epochs", explore_epochs, 1)
            self.explore_patience = None if explore_patience is None else check_int("explore_patience",
                                                                                     explore_patience, 1)
            self.fraction_explore = check_unit("fraction_explore", fraction_explore)
            self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
            self.local_optimizer = check_choice("local_optimizer", local_optimizer, OPTIMIZERS)
            self.max_norm = check_nonneg("max_norm", max_norm)
            self.guidance: dict[str, np.ndarray] | None = None  # float64, set by the exploration round
            self.explorers: list[int] = []

        def configure_train(self, server_round, arrays, config, grid):
            remember_global(self, arrays, grid)
            config["local-rule"] = "fedlex"
            config["optimizer"] = self.local_optimizer
            config["max-norm"] = self.max_norm
            if self.guidance is not None:
                config["fedlex-phase"] = "guided"
                return super().configure_train(server_round, arrays, config, grid)
            config["fedlex-phase"] = "explore"
            config["explore-epochs"] = self.explore_epochs
            config["explore-patience"] = self.explore_patience or 0  # 0: no early stopping
            # the explorers are a fraction_explore sample of the nodes (their perc_clients_for_mask)
            saved, self.fraction_train = self.fraction_train, self.fraction_explore
            try:
                return super().configure_train(server_round, arrays, config, grid)
            finally:
                self.fraction_train = saved

        def _construct_messages(self, record, node_ids, message_type):
            if message_type == flwr_app.MessageType.TRAIN and self.guidance is not None:
                record[GUIDANCE_KEY] = state_to_arrays(
                    {k: v.astype(self.global_arrays[k].dtype) for k, v in self.guidance.items()})
            return super()._construct_messages(record, node_ids, message_type)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            if self.guidance is None:
                nodes, updates, _ = client_updates(self, replies)
                if nodes:  # the explorers' deviations from the weights they were sent
                    self.guidance = fedlex_guidance(updates, self.normalization)
                    self.explorers = nodes
            return super().aggregate_train(server_round, replies)

    return FedLExStrategy


@register(kind="fl-strategy", name="FedLEx", paper=PAPER, year=2024, arxiv="2506.18640", code=CODE,
          summary="FedLEx: an exploration round builds a per-entry guidance matrix from the spread of the "
                  "explorers' weight changes; clients multiply their gradients by it")
def fedlex_strategy(*, explore_epochs: int = 5, explore_patience: int | None = None, fraction_explore: float = 1.0,
                    normalization: str = "minmax", local_optimizer: str = "sgd", max_norm: float = 0.0,
                    **fedavg_kwargs):
    """FedLEx as a Flower strategy (Internò, Olhofer, Jin & Hammer, "Federated Loss Exploration for Improved
    Convergence on Non-IID Data", IJCNN 2024, arXiv 2506.18640; authors' code
    github.com/ChristianInterno/FedLEx).

    **Exploration** (the first round, and any round before one gets replies): a ``fraction_explore`` sample
    of the nodes trains the received global weights ``w_b`` for ``explore_epochs`` epochs of plain local
    training (early stopping after ``explore_patience`` epochs without a better last-minibatch loss; None:
    none), and replies its weights ``w_i``. The server keeps the **global guidance matrix**, per parameter
    tensor

        G = normalize( (1/k) sum_i (w_i - w_b)^2 )      (:func:`fedlex_guidance_matrix`; min-max by default,
                                                        ``normalization="robust"``: median / IQR)

    and the round's global model is the FedAvg of the explorers' weights. **Guided rounds** (all later
    ones): each client trains with its gradient multiplied entry-wise by ``G`` before clipping
    (``max_norm``; 0: none) and the optimizer step (:func:`fedlex_local_run`), and the server takes
    Flower's FedAvg of the replies. The train config carries ``local-rule="fedlex"``, ``fedlex-phase``
    (``"explore"`` or ``"guided"``), ``optimizer`` (``local_optimizer``: ``"sgd"`` or ``"adam"``),
    ``max-norm``, ``explore-epochs`` and ``explore-patience`` (0: none), and a guided message the
    ``"fedlex-guidance"`` ArrayRecord, which :func:`~gradwise.federated.digits.digits_client_app` honours.
    Other keyword arguments go to ``flwr.serverapp.strategy.FedAvg``.

    Two consequences of the rule worth knowing: with ``local_optimizer="adam"`` (their default) a fixed
    positive ``G`` mostly cancels, since Adam divides by the root mean square of the scaled gradient; only
    entries with ``G = 0`` (at least the least-moved entry of each tensor under min-max) stay frozen. With
    ``normalization="robust"`` the entries below the median get ``G < 0``: they step up their gradient.

    Departures from the authors' code (ChristianInterno/FedLEx@69ed581):

    - each explorer starts from its own copy of ``w_b``. Their ``create_scout`` trains the server's model
      object itself, so the explorers continue one another's training and every stored scout is the same
      final state; their ``create_mask`` (a mean over a list of scouts) is what is followed here. At that
      commit ``create_scout`` also returns an all-ones placeholder instead of the explored weights.
    - ``w_b`` is the global model sent in the exploration round; their ``tl_base`` is the initial model
      after one epoch on the first explorer's data.
    - ``G`` is built once, from the exploration round's replies. With ``perc_clients_for_mask=1`` their
      server rebuilds it each round from the scouts of that round's sampled clients (all identical, see
      above).
    - ``G`` is all ones in a tensor whose learning spread is constant (their code divides by zero there).
    - the server aggregation is Flower's FedAvg; their framework (Federated-Learning-in-PyTorch) applies the
      averaged update through server momentum (``beta=0.9``) with a per-round learning-rate decay, for
      FedLEx and its FedAvg baseline alike.

    The paper's method section could not be read from the stored pages (only its abstract and
    introduction); this follows the authors' code (src/GTL_utils.py ``create_mask``,
    src/client/fedlexclient.py ``create_scout`` and ``update``).

    Example::

        strategy = fedlex_strategy(explore_epochs=3, fraction_evaluate=0.0, min_available_nodes=5)
        run_digits_simulation(strategy, num_clients=5, num_rounds=5)
    """
    return fedlex_strategy_class()(explore_epochs=explore_epochs, explore_patience=explore_patience,
                                   fraction_explore=fraction_explore, normalization=normalization,
                                   local_optimizer=local_optimizer, max_norm=max_norm, **fedavg_kwargs)
