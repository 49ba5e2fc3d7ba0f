"""Curricula in federated learning (Vahidian et al., ICCV 2023): clients order their local data by a
difficulty score and grow the part they train on by a pacing function; the server orders the clients by
their score and grows the pool it samples rounds from the same way."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_positive, check_real
from gradwise.federated._flwr import require_flwr
from gradwise.registry import register

__all__ = ["PACINGS", "ORDERINGS", "pacing_function", "curriculum_order", "example_losses", "client_score",
           "curriculum_subset_sizes", "curriculum_local_train", "curriculum_client_rule", "ClientCurriculum",
           "curriculum_strategy_class", "curriculum_strategy"]

PAPER = "When Do Curricula Work in Federated Learning?"
CODE = "https://github.com/sreevatsank1999/Curriculum-FL"
PACINGS = ("linear", "quad", "root", "step", "exp", "log")
ORDERINGS = ("curriculum", "anti-curriculum", "random")
# the authors' command-line spellings
_PACING_ALIASES = {"sqrt": "root"}
_ORDERING_ALIASES = {"curr": "curriculum", "anti": "anti-curriculum", "rand": "random"}
_C = 10.0  # the constant c of their exp and log pacing functions


def _pacing_name(pacing: str, name: str = "pacing") -> str:
    return check_choice(name, _PACING_ALIASES.get(pacing, pacing) if isinstance(pacing, str) else pacing, PACINGS)


def _ordering_name(ordering: str, name: str = "ordering") -> str:
    return check_choice(name, _ORDERING_ALIASES.get(ordering, ordering) if isinstance(ordering, str) else ordering,
                        ORDERINGS)


def _check_ab(a, b, a_name: str = "a", b_name: str = "b") -> tuple[float, float]:
    return check_real(a_name, a, 0.0, lo_open=True, finite=False), check_nonneg(b_name, b)


def pacing_function(pacing: str, a: float, b: float, total_steps: int, total_data: int) -> Callable[[int], int]:
    """The pacing function ``g(t)``: how many of the ``total_data`` ordered items (examples, or clients) are
    in use at step ``t`` of ``total_steps``. With ``N = total_data``, ``T = total_steps``, ``N_b = b N`` the
    starting amount and ``T_a = a T`` the step at which all ``N`` are reached (``c = 10``):

        linear  g(t) = N_b + (N - N_b) t / T_a
        quad    g(t) = N_b + (N - N_b) t^2 / T_a^2
        root    g(t) = N_b + (N - N_b) sqrt(t) / sqrt(T_a)        ("sqrt" in the authors' code)
        step    g(t) = N_b + N floor(t / T_a)
        exp     g(t) = N_b + (N - N_b) (exp(c t / T_a) - 1) / (exp(c) - 1)
        log     g(t) = N_b + (N - N_b) (1 + log(t / T_a + exp(-c)) / c)

    each truncated to an integer and clipped to ``[1, N]``, as the authors' ``get_pacing_function``
    computes it (same operations, same order, so the same integers). ``a > 0`` (``inf`` keeps ``g`` at
    ``N_b``); ``b >= 0``. The paper's runs use ``linear`` with ``a = 0.8``, ``b = 0.2`` for data.
    """
    name = _pacing_name(pacing)
    a, b = _check_ab(a, b)
    check_int("total_steps", total_steps, 1)
    check_int("total_data", total_data, 1)
    start = b * total_data
    end = a * total_steps

    def clip(value: float) -> int:
        return int(min(max(int(value), 1), total_data))

    if name == "linear":
        rate = (total_data - start) / end
        return lambda t: clip(rate * t + start)
    if name == "quad":
        rate = (total_data - start) / end ** 2
        return lambda t: clip(rate * t ** 2 + start)
    if name == "root":
        rate = (total_data - start) / end ** 0.5
        return lambda t: clip(rate * t ** 0.5 + start)
    if name == "step":
        return lambda t: clip(total_data * (t // end) + start)
    if name == "exp":
        rate = (total_data - start) / (np.exp(_C) - 1)
        constant = _C / end

        def exp_pacing(t):
            e = np.exp(t * constant)
            return total_data if np.isinf(e) else clip(rate * (e - 1) + start)
        return exp_pacing
    span = total_data - start
    ec = np.exp(-_C)
    return lambda t: clip(span * (1 + (1.0 / _C) * np.log(t / end + ec)) + start)


def _scores_1d(scores, name: str = "scores") -> torch.Tensor:
    # plain lists become float64 (not torch's float32) so that close scores keep their order
    try:
        s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores, dtype=np.float64))
    except (TypeError, ValueError):
        s = torch.zeros(0, dtype=torch.int64)  # reported below as not a float tensor
    if s.ndim == 2:  # several scores per item (e.g. under the global and the local model): their sum ranks
        s = s.sum(1)
    if s.ndim != 1 or s.numel() == 0 or not s.is_floating_point():
        raise ValueError(f"Invalid {name}: shape {tuple(s.shape)}, dtype {s.dtype} (accepted: a non-empty "
                         "float tensor (n,) or (n, k), one row per item)")
    if torch.isnan(s).any():  # once per round, not a hot path
        raise ValueError(f"Invalid {name}: contains NaN (accepted: finite scores)")
    return s


def curriculum_order(scores, ordering: str = "curriculum", generator: torch.Generator | None = None) -> torch.Tensor:
    """The order (indices) in which items with difficulty ``scores`` are presented.

    ``scores`` is ``(n,)`` or ``(n, k)`` (``k`` scores per item are summed, as the authors' ``LG`` scoring
    sums the losses under the global and the local model). ``"curriculum"``: easiest (lowest score) first,
    ties in index order (a stable sort); ``"anti-curriculum"``: that order reversed; ``"random"``: a random
    permutation (``generator``). The authors' ``curr``/``anti``/``rand`` are accepted too.
    """
    name = _ordering_name(ordering)
    s = _scores_1d(scores)
    if name == "random":
        return torch.randperm(s.numel(), generator=generator, device="cpu")
    order = torch.sort(s.detach().cpu(), stable=True).indices
    return order.flip(0) if name == "anti-curriculum" else order


@torch.no_grad()
def example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Each example's cross-entropy under ``model`` (in eval mode; its mode is restored): the paper's scoring
    function, with ``model`` the received global model (``G``), the client's last local model (``L``) or
    a pretrained expert (``E``)."""
    check_int("batch_size", batch_size, 1)
    if len(x) != len(y):
        raise ValueError(f"Invalid y: {len(y)} labels for {len(x)} inputs (accepted: one label per input)")
    was_training = model.training
    model.eval()
    try:
        out = [nn.functional.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="none")
               for i in range(0, len(y), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def client_score(losses) -> torch.Tensor:
    """A client's score for the client curriculum: the mean over its examples of their scores (each
    example's ``k`` scores summed), as the authors' ``ClientScheduler.scoring_func``."""
    s = torch.as_tensor(losses)
    s = s.reshape(-1, 1) if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"Invalid losses: shape {tuple(s.shape)} (accepted: (n,) or (n, k), n >= 1)")
    return s.mean(0).sum()


def curriculum_subset_sizes(num_examples: int, batch_size: int, epochs: int = 1, *, pacing: str = "linear",
                            a: float = 0.8, b: float = 0.2, min_examples: int = 32) -> list[int]:
    """How many of the ordered examples each pass of :func:`curriculum_local_train` uses.

    Local training runs ``T = (n // batch_size + 1) * epochs`` minibatch steps (``n = num_examples``). Each
    pass goes once over the first ``min(n, max(g(t), min_examples))`` examples of the order, ``g`` the
    :func:`pacing_function` over ``T`` steps and ``n`` examples and ``t`` the steps taken so far; passes
    repeat while ``t < T`` (the last may overrun ``T``). ``min_examples = 32`` is the authors' floor.
    """
    check_int("num_examples", num_examples, 1)
    check_int("batch_size", batch_size, 1)
    check_int("epochs", epochs, 1)
    check_int("min_examples", min_examples, 1)
    total = (num_examples // batch_size + 1) * epochs
    g = pacing_function(pacing, a, b, total, num_examples)
    sizes, step = [], 0
    while step < total:
        size = min(num_examples, max(g(step), min_examples))
        sizes.append(size)
        step += math.ceil(size / batch_size)
    return sizes


@register(kind="training-helper", name="FL-curriculum-local", paper=PAPER, year=2023, arxiv="2212.12712", code=CODE,
          summary="A federated client's local training on loss-ordered data, the part in use grown by a pacing "
                  "function (curriculum, anti-curriculum or random order)")
def curriculum_local_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, scores=None,
                           ordering: str = "curriculum", pacing: str = "linear", a: float = 0.8, b: float = 0.2,
                           epochs: int = 1, lr: float = 0.1, batch_size: int = 32, momentum: float = 0.0,
                           weight_decay: float = 0.0, lr_decay: tuple[float, float] = (0.0, 0.0),
                           min_examples: int = 32, shuffle: bool = True, seed: int = 0) -> float:
    """A client's ordered local training (the authors' ``Client_FedAvg_Curr_LG_Loss.train``); trains
    ``model`` in place and returns the mean over passes of each pass's mean minibatch loss.

    The examples are ordered by :func:`curriculum_order` of ``scores`` (default: :func:`example_losses`
    under ``model`` as received, i.e. the global model: the paper's ``G`` scoring). Pass ``p`` covers the
    first :func:`curriculum_subset_sizes` ``[p]`` examples of that order in minibatches of ``batch_size``,
    reshuffled within the pass (``shuffle``; without it they come in curriculum order), with
    ``torch.optim.SGD`` (``momentum``, ``weight_decay``) on cross-entropy. The learning rate of step
    ``i >= 1`` is ``lr (1 + A (i - 1))^-B`` with ``(A, B) = lr_decay`` (their ``exp_lr_decay``, updated
    after each step; ``(0, 0)``: constant ``lr``; their scripts use ``(0.001, 0.75)``).

    From Vahidian et al., "When Do Curricula Work in Federated Learning?", ICCV 2023, arXiv 2212.12712;
    authors' code github.com/sreevatsank1999/Curriculum-FL. Departure: with ``shuffle`` the within-pass
    shuffle uses a torch generator seeded by ``seed`` (theirs: the DataLoader's global RNG); ``random``
    ordering likewise (theirs: ``np.random.shuffle``). The paper's method section could not be read from
    the stored pages (abstract and the opening of the introduction only); this follows the authors' code
    (sreevatsank1999/Curriculum-FL@8cd79cd).
    """
    check_positive("lr", lr)
    check_nonneg("momentum", momentum)
    check_nonneg("weight_decay", weight_decay)
    check_bool("shuffle", shuffle)
    check_int("seed", seed, 0)
    if not (isinstance(lr_decay, (tuple, list)) and len(lr_decay) == 2):
        raise ValueError(f"Invalid lr_decay: {lr_decay!r} (accepted: a pair (A, B) of numbers >= 0)")
    decay_a, decay_b = (check_nonneg("lr_decay", v) for v in lr_decay)
    if len(x) != len(y):
        raise ValueError(f"Invalid y: {len(y)} labels for {len(x)} inputs (accepted: one label per input)")
    sizes = curriculum_subset_sizes(len(y), batch_size, epochs, pacing=pacing, a=a, b=b,
                                    min_examples=min_examples)
    gen = torch.Generator().manual_seed(seed)
    scores = example_losses(model, x, y) if scores is None else scores
    if len(torch.as_tensor(scores)) != len(y):
        raise ValueError(f"Invalid scores: {len(torch.as_tensor(scores))} for {len(y)} examples "
                         "(accepted: one per example)")
    order = curriculum_order(scores, ordering, gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    step, pass_losses = 0, []
    for size in sizes:
        subset = order[:size]
        if shuffle:
            subset = subset[torch.randperm(size, generator=gen)]
        total = torch.zeros((), dtype=torch.float64)
        batches = subset.split(batch_size)
        for batch in batches:
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
            step += 1
            for group in opt.param_groups:
                group["lr"] = lr * (1 + decay_a * (step - 1)) ** (-decay_b)
        pass_losses.append(total / len(batches))
    return float(torch.stack(pass_losses).mean())


def curriculum_client_rule(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config, *, epochs: int,
                           lr: float, batch_size: int, seed: int) -> float:
    """The ``local-rule="curriculum"`` of :func:`~gradwise.federated.digits.digits_client_app`: ordered
    local training configured by the train message's config, or, with ``curriculum-score-only``, no
    training and the client's score (:func:`client_score` of its :func:`example_losses` under the received
    model) returned as its loss, for the server's client curriculum.

    Config keys: ``ordering``, ``pacing``, ``pacing-a``, ``pacing-b``, ``min-examples``, ``lr-decay-a``,
    ``lr-decay-b``, ``momentum``, ``weight-decay`` (:func:`curriculum_local_train`'s arguments), and
    ``local-epochs``, ``lr``, ``batch-size`` (defaults: the app's ``epochs``, ``lr``, ``batch_size``).
    """
    cfg = dict(config)
    if cfg.get("curriculum-score-only", False):
        return float(client_score(example_losses(model, x, y)))
    return curriculum_local_train(
        model, x, y, ordering=str(cfg.get("ordering", "curriculum")), pacing=str(cfg.get("pacing", "linear")),
        a=float(cfg.get("pacing-a", 0.8)), b=float(cfg.get("pacing-b", 0.2)),
        epochs=int(cfg.get("local-epochs", epochs)), lr=float(cfg.get("lr", lr)),
        batch_size=int(cfg.get("batch-size", batch_size)), momentum=float(cfg.get("momentum", 0.0)),
        weight_decay=float(cfg.get("weight-decay", 0.0)),
        lr_decay=(float(cfg.get("lr-decay-a", 0.0)), float(cfg.get("lr-decay-b", 0.0))),
        min_examples=int(cfg.get("min-examples", 32)), seed=seed)


class ClientCurriculum:
    """The server's client curriculum (the authors' ``ClientScheduler`` and the round loop of their
    ``main_fedavg_curr_lg_loss``), counted in client updates.

    With ``U = total_updates`` (rounds times clients per round) and ``u`` the updates made so far, a
    schedule step scores every client (:meth:`schedule`), orders them by :func:`curriculum_order` and keeps
    the first ``g(u)`` as the pool (``g`` the :func:`pacing_function` over ``U`` steps and the number of
    clients). The pool is shuffled and cut into rounds of ``clients_per_round`` (the last may be smaller);
    :meth:`next_round` hands them out one by one, each adding its size to ``u``; once the pool is used up
    the clients are scored again. The authors' defaults are ``linear``, ``a = 0.2``, ``b = 0.4``.
    """

    def __init__(self, total_updates: int, clients_per_round: int, *, ordering: str = "curriculum",
                 pacing: str = "linear", a: float = 0.2, b: float = 0.4, seed: int = 0):
        self.total_updates = check_int("total_updates", total_updates, 1)
        self.clients_per_round = check_int("clients_per_round", clients_per_round, 1)
        self.ordering = _ordering_name(ordering)
        self.pacing = _pacing_name(pacing)
        self.a, self.b = _check_ab(a, b)
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        self.updates = 0
        self.pool: list[int] = []
        self.queue: list[list[int]] = []

    def needs_scores(self) -> bool:
        """Whether the current pool is used up (the next round needs a new :meth:`schedule`)."""
        return not self.queue

    def schedule(self, scores) -> list[int]:
        """Order the clients by ``scores`` (one row per client), keep the first ``g(updates)`` as the pool
        and queue its rounds; returns the pool (client indices, in curriculum order)."""
        s = _scores_1d(scores)
        order = curriculum_order(s, self.ordering, self.generator)
        size = pacing_function(self.pacing, self.a, self.b, self.total_updates, s.numel())(self.updates)
        self.pool = order[:size].tolist()
        shuffled = [self.pool[i] for i in torch.randperm(size, generator=self.generator).tolist()]
        self.queue = [shuffled[i:i + self.clients_per_round] for i in range(0, size, self.clients_per_round)]
        return list(self.pool)

    def next_round(self) -> list[int]:
        """The clients (indices) of the next round; their number is added to ``updates``."""
        if not self.queue:
            raise RuntimeError("ClientCurriculum.next_round: the pool is used up; call schedule(scores) first")
        batch = self.queue.pop(0)
        self.updates += len(batch)
        return batch


@functools.cache  # built once, on first use: flwr is imported only then
def curriculum_strategy_class() -> type:
    """The Flower strategy class of the federated curriculum (a subclass of
    ``flwr.serverapp.strategy.FedAvg``), built on first call; see :func:`curriculum_strategy`."""
    flwr_app = require_flwr("flwr.app")
    strategy_mod = require_flwr("flwr.serverapp.strategy")
    sample_nodes = require_flwr("flwr.serverapp.strategy.strategy_utils").sample_nodes

    class CurriculumStrategy(strategy_mod.FedAvg):
        """FedAvg whose rounds follow a client curriculum and whose clients train on ordered data.

        ``start()`` sizes the client pacing to ``num_rounds * clients_per_round`` updates; rounds driven by
        hand through ``configure_train`` without ``start()`` pace over one round's updates. The scores of
        the last scoring are in ``scores`` (node id -> score), the schedule in ``curriculum``."""

        def __init__(self, *, clients_per_round: int, client_ordering: str = "curriculum",
                     client_pacing: str = "linear", client_a: float = 0.2, client_b: float = 0.4,
                     ordering: str | None = "curriculum", pacing: str = "linear", a: float = 0.8, b: float = 0.2,
                     min_examples: int = 32, seed: int = 0, **fedavg_kwargs):
            super().__init__(**fedavg_kwargs)
            self.clients_per_round = check_int("clients_per_round", clients_per_round, 1)
            client_a, client_b = _check_ab(client_a, client_b, "client_a", "client_b")
            self.client_args = dict(ordering=_ordering_name(client_ordering, "client_ordering"),
                                    pacing=_pacing_name(client_pacing, "client_pacing"), a=client_a, b=client_b,
                                    seed=check_int("seed", seed, 0))
            self.data_config = None
            if ordering is not None:
                a, b = _check_ab(a, b)
                self.data_config = {"local-rule": "curriculum", "ordering": _ordering_name(ordering),
                                    "pacing": _pacing_name(pacing), "pacing-a": a, "pacing-b": b,
                                    "min-examples": check_int("min_examples", min_examples, 1)}
            self.curriculum: ClientCurriculum | None = None
            self.timeout = 3600.0
            self.client_nodes: list[int] = []
            self.scores: dict[int, float] = {}

        def prepare_run(self, num_rounds: int, timeout: float) -> None:
            """Size the client pacing to the run's budget of ``num_rounds * clients_per_round`` updates
            (``start()`` calls it, and so does a wrapper's, e.g.
            :func:`~gradwise.federated.participation.with_participation`)."""
            self.timeout = float(timeout)
            self.curriculum = ClientCurriculum(num_rounds * self.clients_per_round, self.clients_per_round,
                                               **self.client_args)

        def start(self, grid, initial_arrays, num_rounds=3, timeout=3600, **kwargs):
            self.prepare_run(num_rounds, timeout)
            return super().start(grid, initial_arrays, num_rounds=num_rounds, timeout=timeout, **kwargs)

        def score_clients(self, arrays, grid) -> dict[int, float]:
            """Ask every connected node for its score under ``arrays`` (a train message with
            ``curriculum-score-only``); returns ``{node id: score}`` of the nodes that replied."""
            _, nodes = sample_nodes(grid, self.min_available_nodes, 0)
            config = flwr_app.ConfigRecord({"local-rule": "curriculum", "curriculum-score-only": True})
            record = flwr_app.RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            replies = grid.send_and_receive(self._construct_messages(record, sorted(nodes),
                                                                     flwr_app.MessageType.TRAIN),
                                            timeout=self.timeout)
            return {m.metadata.src_node_id: float(m.content["metrics"]["train-loss"])
                    for m in replies if not m.has_error()}

        def configure_train(self, server_round, arrays, config, grid):
            if self.curriculum is None:  # driven round by round without start(): one round of budget each
                self.curriculum = ClientCurriculum(self.clients_per_round, self.clients_per_round,
                                                   **self.client_args)
            if self.curriculum.needs_scores():
                self.scores = self.score_clients(arrays, grid)
                if not self.scores:
                    return []
                self.client_nodes = sorted(self.scores)
                self.curriculum.schedule(torch.tensor([self.scores[n] for n in self.client_nodes],
                                                      dtype=torch.float64))
            nodes = [self.client_nodes[i] for i in self.curriculum.next_round()]
            config["server-round"] = server_round
            if self.data_config is not None:
                for k, v in self.data_config.items():
                    config[k] = v
            record = flwr_app.RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return self._construct_messages(record, nodes, flwr_app.MessageType.TRAIN)

    return CurriculumStrategy


@register(kind="fl-strategy", name="FL-curriculum", paper=PAPER, year=2023, arxiv="2212.12712", code=CODE,
          summary="Federated curricula: clients train on loss-ordered data grown by a pacing function; the "
                  "server draws rounds from a loss-ordered, paced pool of clients")
def curriculum_strategy(*, clients_per_round: int, client_ordering: str = "curriculum",
                        client_pacing: str = "linear", client_a: float = 0.2, client_b: float = 0.4,
                        ordering: str | None = "curriculum", pacing: str = "linear", a: float = 0.8,
                        b: float = 0.2, min_examples: int = 32, seed: int = 0, **fedavg_kwargs):
    """Curricula in federated learning as a Flower strategy (Vahidian, Kadaveru, Baek, Wang, Kungurtsev,
    Chen, Shah, Lin, "When Do Curricula Work in Federated Learning?", ICCV 2023, arXiv 2212.12712;
    authors' code github.com/sreevatsank1999/Curriculum-FL).

    Two orderings, each ``curriculum`` (easy first), ``anti-curriculum`` or ``random``:

    - **data** (``ordering``, ``pacing``, ``a``, ``b``): each sampled client scores its examples by their loss
      under the received global model, orders them and trains on the first ``g(t)`` of them, ``g`` a
      :func:`pacing_function` over its local steps (:func:`curriculum_local_train`). The train config
      carries ``local-rule="curriculum"``, ``ordering``, ``pacing``, ``pacing-a``, ``pacing-b``,
      ``min-examples``, which :func:`~gradwise.federated.digits.digits_client_app` honours.
      ``ordering=None`` leaves the clients' local rule alone (plain local SGD).
    - **clients** (``client_ordering``, ``client_pacing``, ``client_a``, ``client_b``): when its pool is used
      up the server asks every node for its score (mean example loss under the global model; a train
      message with ``curriculum-score-only``), orders the nodes and keeps the first ``g(u)`` as the pool,
      ``u`` the client updates so far out of ``num_rounds * clients_per_round``; each round trains
      ``clients_per_round`` nodes of the shuffled pool (:class:`ClientCurriculum`). Aggregation is FedAvg's
      (weighted by ``num-examples``).

    The paper finds curriculum ordering helps most under strong heterogeneity (the more disparate the
    clients' data, the larger the gain), anti-curriculum and random orderings less, and that the client
    curriculum adds to the data curriculum. Defaults are the authors': data ``linear`` ``a = 0.8``,
    ``b = 0.2`` (their scripts), clients ``linear`` ``a = 0.2``, ``b = 0.4`` (their argparse defaults);
    ``client_pacing="step", client_a=1.0, client_b=1.0`` gives every round a shuffled draw from all clients.

    Departures: the pool's shuffle and the clients' minibatch shuffles use torch generators (theirs: numpy's
    and the DataLoader's global RNG); the learning-rate decay of their scripts is off unless the config
    sets ``lr-decay-a``/``lr-decay-b``; scoring in the app is under the global model only (their ``L``,
    ``LG`` and expert ``E`` scores need state the stateless digits app does not keep: pass such scores
    to :func:`curriculum_local_train` directly). Other keyword arguments go to
    ``flwr.serverapp.strategy.FedAvg`` (its ``fraction_train`` is not used: the curriculum picks the nodes).

    The paper's method section could not be read from the stored pages (abstract and the opening of the
    introduction only); this follows the authors' code (sreevatsank1999/Curriculum-FL@8cd79cd:
    ``src/pacing_fn/get_pacing_function.py``, ``src/client/client_fedavg_curr_lg_loss.py``,
    ``src/utils/client_scheduler.py``, ``src/benchmarks/main_fedavg_curr_lg_loss.py``).

    Example::

        strategy = curriculum_strategy(clients_per_round=2, fraction_evaluate=0.0, min_available_nodes=4)
        run_digits_simulation(strategy, num_clients=4, num_rounds=4)
    """
    return curriculum_strategy_class()(
        clients_per_round=clients_per_round, client_ordering=client_ordering, client_pacing=client_pacing,
        client_a=client_a, client_b=client_b, ordering=ordering, pacing=pacing, a=a, b=b,
        min_examples=min_examples, seed=seed, **fedavg_kwargs)
