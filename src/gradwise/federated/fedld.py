"""FedLD (Zeng et al., MICCAI 2024): margin-control local loss and principal-gradient aggregation."""
from __future__ import annotations

import functools
import numpy as np
import torch
import torch.nn.functional as F

from gradwise._validate import check_nonneg, check_real
from gradwise.federated._flwr import require_flwr
from gradwise.federated._strategy import apply_update, client_updates, remember_global
from gradwise.registry import register

__all__ = ["margin_control_loss", "principal_gradient_aggregate", "PrincipalGradientAggregator",
           "fedld_strategy_class", "fedld_strategy"]

PAPER = "Tackling Data Heterogeneity in Federated Learning via Loss Decomposition"
CODE = "https://github.com/Zeng-Shuang/FedLD"


def margin_control_loss(logits: torch.Tensor, target: torch.Tensor, lam: float = 0.03) -> torch.Tensor:
    """FedLD's local loss: cross-entropy plus the margin-control regularizer (arXiv 2408.12300),

        L = CE(z, y) + lam * log(1 + ||softmax(z)||_F^2),

    where the Frobenius norm runs over the whole ``(batch, classes)`` matrix of probabilities, as in the
    authors' ``MarginalLogLoss`` (``methods/fedld.py``: ``torch.norm(softmax(output), p=2)``), so the
    penalty grows with the batch size. Penalizing confident (peaked) probabilities keeps local margins
    from growing apart across clients, the paper's "distribution shift loss". Default ``lam`` is the
    authors' ``--margin_loss_penalty`` (0.03).
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: {getattr(logits, 'shape', type(logits))} (accepted: a float "
                         "tensor of shape (batch, classes))")
    if not isinstance(target, torch.Tensor) or target.shape != logits.shape[:1]:
        raise ValueError(f"Invalid target: {getattr(target, 'shape', type(target))} (accepted: class "
                         f"indices of shape ({logits.shape[0]},))")
    lam = check_nonneg("lam", lam)
    p = torch.softmax(logits, dim=1)
    return F.cross_entropy(logits, target) + lam * torch.log1p(p.square().sum())


def principal_gradient_aggregate(updates, k_proportion: float = 0.8) -> np.ndarray:
    """FedLD's principal-gradient aggregation of one layer's client updates ``G`` (``(m, d)``).

    From the authors' ``pcgrad_svd`` (``svd_tools.py``): ``H = G G^T / m = E diag(s) E^T``, the principal
    directions ``w_j = G^T e_j`` for the ``k = int(m * k_proportion)`` largest ``s_j``, each client's update
    replaced by its projections on them rescaled to the client's norm and weighted by ``s_j / sum(s)``:

        g_i' = sum_{j<k} sign(g_i . w_j) (s_j / sum_l s_l) ||g_i|| w_j / ||w_j||,     result = mean_i g_i'.

    (The projection ``(g.w / w.w) w`` rescaled by ``||g|| / ||projection||`` is the signed unit vector above,
    so the result does not depend on the sign of each ``w_j``.) As in their code, a layer of one element
    is averaged plainly, ``k = 0`` (one client with ``k_proportion < 1``) gives a zero update, and an update
    orthogonal to a direction gives NaN (0/0). The paper's method section could not be read from the
    stored pages (only its abstract); this follows the authors' code (arXiv 2408.12300).
    """
    g = torch.as_tensor(np.ascontiguousarray(updates, dtype=np.float64))
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"Invalid updates: shape {tuple(g.shape)} (accepted: (clients, parameters), at "
                         "least one client)")
    check_real("k_proportion", k_proportion, 0.0, 1.0, lo_open=True)
    m, d = g.shape
    if d == 1:
        return g.mean(0).numpy()
    _, s, vh = torch.linalg.svd(g @ g.T / m)
    k = int(m * k_proportion)
    w = vh[:k] @ g                                   # (k, d): rows G^T e_j
    c = g @ w.T                                      # (m, k): g_i . w_j
    coef = torch.sign(c) * torch.where(c == 0, torch.nan, 1.0) * (s[:k] / s.sum()) \
        * g.norm(dim=1, keepdim=True) / w.norm(dim=1)
    return (coef.mean(0) @ w).numpy()


class PrincipalGradientAggregator:
    """FedLD's server rule over rounds, layer by layer (``{name: (m, *shape) updates}`` -> ``{name: step}``).

    As the authors' ``pcgrad_svd`` with its ``grad_history``: in a layer's first round the step is the plain
    mean of the updates, which starts the layer's history ``h``; afterwards the step is
    :func:`principal_gradient_aggregate` (the plain mean while ``h`` is all zeros), and
    ``h <- gamma h + (1 - gamma) step`` with ``gamma = 0.99``. Clients' updates count equally (the
    authors then average identical models with data-size weights, which leaves the step unchanged).
    """

    def __init__(self, k_proportion: float = 0.8, gamma: float = 0.99):
        self.k_proportion = check_real("k_proportion", k_proportion, 0.0, 1.0, lo_open=True)
        self.gamma = check_real("gamma", gamma, 0.0, 1.0)
        self.history: dict[str, np.ndarray] = {}

    def __call__(self, updates: dict) -> dict[str, np.ndarray]:
        out = {}
        for name, u in updates.items():
            u = np.asarray(u, dtype=np.float64)
            flat = u.reshape(u.shape[0], -1)
            if name not in self.history:
                step = flat.mean(0)
                self.history[name] = step
            else:
                step = flat.mean(0) if not np.any(self.history[name]) else \
                    principal_gradient_aggregate(flat, self.k_proportion)
                self.history[name] = self.gamma * self.history[name] + (1 - self.gamma) * step
            out[name] = step.reshape(u.shape[1:])
        return out


@functools.cache  # built once, on first use: flwr is imported only then
def fedld_strategy_class() -> type:
    """The Flower strategy class of FedLD (a subclass of ``flwr.serverapp.strategy.FedAvg``), built on
    first call; see :func:`fedld_strategy`."""
    base = require_flwr("flwr.serverapp.strategy").FedAvg

    class FedLDStrategy(base):
        """FedAvg with FedLD's client loss (asked for in the train config) and principal-gradient aggregation."""

        def __init__(self, *, margin_lambda: float = 0.03, k_proportion: float = 0.8, local_momentum: float = 0.5,
                     local_weight_decay: float = 5e-4, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            self.margin_lambda = check_nonneg("margin_lambda", margin_lambda)
            self.local_momentum = check_real("local_momentum", local_momentum, 0.0, 1.0, hi_open=True)
            self.local_weight_decay = check_nonneg("local_weight_decay", local_weight_decay)
            self.aggregator = PrincipalGradientAggregator(k_proportion)

        def configure_train(self, server_round, arrays, config, grid):
            remember_global(self, arrays, grid)
            config["loss"] = "margin-control"
            config["margin-lambda"] = self.margin_lambda
            config["momentum"] = self.local_momentum
            config["weight-decay"] = self.local_weight_decay
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            nodes, updates, contents = client_updates(self, replies)
            if not nodes:
                return None, None
            arrays = apply_update(self, self.aggregator(updates))
            return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    return FedLDStrategy


@register(kind="fl-strategy", name="FedLD", paper=PAPER, year=2024, arxiv="2408.12300", code=CODE,
          summary="FedLD: margin-control local loss and principal-gradient (SVD) server aggregation")
def fedld_strategy(*, margin_lambda: float = 0.03, k_proportion: float = 0.8, local_momentum: float = 0.5,
                   local_weight_decay: float = 5e-4, **fedavg_kwargs):
    """FedLD as a Flower strategy (Zeng et al., "Tackling Data Heterogeneity in Federated Learning via
    Loss Decomposition", MICCAI 2024, arXiv 2408.12300; authors' code github.com/Zeng-Shuang/FedLD).

    The global loss splits into local loss, distribution-shift loss and aggregation loss; FedLD lowers the
    second on the clients with :func:`margin_control_loss` (``CE + lam log(1 + ||softmax||_F^2)``) and the
    third on the server with :func:`principal_gradient_aggregate`: client updates ``g_i = w_i - w`` are
    projected on the principal directions of their Gram matrix and the global model moves by the mean of
    the revised updates (the plain mean in the first round; :class:`PrincipalGradientAggregator`).

    Clients are told their loss and local optimizer through the train config (``loss="margin-control"``,
    ``margin-lambda``, ``momentum``, ``weight-decay``; the authors' defaults 0.03, SGD momentum 0.5, weight
    decay 5e-4), which :func:`~gradwise.federated.digits.digits_client_app` honours. Other keyword
    arguments go to ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``, ``min_available_nodes``, ...).

    Example::

        strategy = fedld_strategy(fraction_evaluate=0.0, min_available_nodes=5)
        run_digits_simulation(strategy, num_clients=5, num_rounds=5)
    """
    return fedld_strategy_class()(margin_lambda=margin_lambda, k_proportion=k_proportion,
                                  local_momentum=local_momentum, local_weight_decay=local_weight_decay,
                                  **fedavg_kwargs)
