"""Decentralized SGD whose gossip is concentrated late in training, then one global merge
("A Single Merging Suffices", Zhu et al., arXiv 2507.06542), over a ``torch.distributed`` group."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_real
from gradwise.registry import register

__all__ = ["LateGossip", "communication_degree", "gossip_", "gossip_weights", "global_merge"]

_REF = dict(paper="A Single Merging Suffices: Recovering Server-based Learning Performance in Decentralized Learning",
            year=2025, arxiv="2507.06542",
            code="https://github.com/Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning")
SCHEDULES = ("fixed", "linear", "cosine", "slow_decrease", "slow_grow", "truncate", "truncate_v2")
TOPOLOGIES = ("ring", "left", "complete", "exponential", "random", "localtraining")


def communication_degree(step: int, max_steps: int, *, schedule: str = "truncate", r_start: float = 0.2,
                         r_end: float = 31.0, point1: float = 0.997, window_size: float = 0.05,
                         start_step: int = 0) -> float:
    r"""The number of extra neighbours ``r`` a worker mixes with at ``step`` (the authors' ``compute_r``).

    With progress :math:`p = (\text{step} - \text{start})/(\text{max} - \text{start})`: before ``start_step``
    ``r_start``, from ``max_steps`` on ``r_end``; in between ``linear`` interpolates, ``cosine`` decays as
    :math:`r_e + (r_s - r_e)(1 + \cos \pi p)/2`, ``slow_decrease`` as :math:`r_e + (r_s - r_e)e^{-10p}`,
    ``slow_grow`` grows as :math:`r_s + (16 - r_s)\log_{10}(1 + 9p^{80})`, ``truncate`` is ``r_start``
    while :math:`p <` ``point1`` and ``r_end`` after (late-concentrated communication), ``truncate_v2`` is
    ``r_end`` only in the window :math:`[\text{point1}, \text{point1} + \text{window})`; ``fixed`` is always
    ``r_start``. Never negative.
    """
    check_choice("schedule", schedule, SCHEDULES)
    if schedule == "fixed" or step < start_step:
        return max(float(r_start), 0.0)
    if step >= max_steps:
        return max(float(r_end), 0.0)
    p = (step - start_step) / (max_steps - start_step)
    if schedule == "linear":
        r = r_start - (r_start - r_end) * p
    elif schedule == "cosine":
        r = r_end + 0.5 * (r_start - r_end) * (1 + math.cos(math.pi * p))
    elif schedule == "slow_decrease":
        r = r_end + (r_start - r_end) * math.exp(-10 * p)
    elif schedule == "slow_grow":
        r = r_start + (16 - r_start) * math.log10(1 + 9 * p ** 80)
    elif schedule == "truncate":
        r = r_start if p < point1 else r_end
    else:
        r = r_end if point1 <= p < point1 + window_size else r_start
    return max(float(r), 0.0)


def gossip_weights(world_size: int, topology: str = "ring", r: float = 1.0,
                   generator: np.random.Generator | None = None) -> Tensor:
    r"""A row-stochastic mixing matrix ``W`` (float64, ``world_size x world_size``); row ``i`` mixes worker ``i``.

    ``ring``: self and both ring neighbours, 1/3 each (with two workers the neighbour counts twice, 2/3, as
    in the authors' row form); ``left``: self and the left neighbour, 1/2 each; ``complete``: 1/n each;
    ``exponential``: self and the workers at distances 1, 2, 4, ..., uniform; ``random``: self plus
    ``floor(r)`` workers drawn without replacement and one more with probability ``r - floor(r)``
    (``r`` clipped to ``[0, n-1]``), uniform over the chosen ones (row-stochastic, not symmetric: it does
    not keep the average); ``localtraining``: the identity. Draws use ``generator``, which must then give
    the same draws on every worker (seed it the same).
    """
    n = check_int("world_size", world_size, 1)
    check_choice("topology", topology, TOPOLOGIES)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        if topology == "ring":
            cols = [i, (i - 1) % n, (i + 1) % n]
        elif topology == "left":
            cols = [i, (i - 1) % n]
        elif topology == "complete":
            cols = list(range(n))
        elif topology == "exponential":
            cols = [j for j in range(n) if (j - i) % n == 0 or ((j - i) % n) & ((j - i) % n - 1) == 0]
        elif topology == "localtraining":
            cols = [i]
        else:
            if generator is None:
                raise ValueError("Invalid generator: None (accepted: a numpy Generator seeded alike on every "
                                 "worker, for topology='random')")
            r_total = max(1.0, min(float(check_real("r", r, 0.0, finite=False)) + 1.0, float(n)))
            others = [j for j in range(n) if j != i]
            k = int(r_total - 1)
            chosen = list(generator.choice(others, size=k, replace=False)) if k else []
            rest = [j for j in others if j not in chosen]
            if r_total - 1 - k > 0 and rest and generator.random() < r_total - 1 - k:
                chosen.append(int(generator.choice(rest)))
            cols = [i, *chosen]
        for j in cols:
            w[i, j] += 1.0 / len(cols)
    return w


def _params_of(model_or_params) -> list[Tensor]:
    if isinstance(model_or_params, torch.nn.Module):
        params = list(model_or_params.parameters())
    elif isinstance(model_or_params, Tensor):
        raise TypeError("Invalid model_or_params: a single Tensor (accepted: an nn.Module or an iterable of "
                        "Tensors)")
    else:
        params = list(model_or_params)
    if not all(isinstance(p, Tensor) for p in params):
        raise TypeError("Invalid model_or_params: (accepted: an nn.Module or an iterable of Tensors)")
    return [p for p in params if p.is_floating_point()]


@torch.no_grad()
def gossip_(model_or_params, weights: Tensor, process_group=None) -> None:
    r"""One gossip round in place: worker ``i`` takes :math:`x_i \leftarrow \sum_j W_{ij} x_j`.

    ``weights`` is the whole matrix (the same on every worker, e.g. from :func:`gossip_weights`). The
    parameters travel by ``all_gather`` of one flat buffer per dtype and device, then each worker keeps its
    row; workers with a zero weight are gathered too (simple and right on gloo, not bandwidth-optimal).
    """
    n, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    if not isinstance(weights, Tensor) or weights.shape != (n, n):
        raise ValueError(f"Invalid weights: (accepted: a {n} x {n} tensor, the world size of the group)")
    params = _params_of(model_or_params)
    groups: dict = {}
    for p in params:
        groups.setdefault((p.dtype, p.device), []).append(p)
    for (dtype, device), ps in groups.items():
        flat = torch.cat([p.detach().reshape(-1) for p in ps])
        gathered = [torch.empty_like(flat) for _ in range(n)]
        dist.all_gather(gathered, flat, group=process_group)
        row = weights[rank].to(torch.float64)
        mixed = torch.zeros_like(flat, dtype=torch.float64)
        for j in range(n):
            if row[j] != 0:
                mixed.add_(gathered[j].to(torch.float64), alpha=float(row[j]))
        offset = 0
        for p in ps:
            p.detach().copy_(mixed[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


@torch.no_grad()
def global_merge(model_or_params, process_group=None) -> None:
    """The single global merge: every worker's floating parameters become their mean over the group
    (one all-reduce). As in the authors' final merge, buffers (BatchNorm statistics) are left alone:
    re-estimate them on the merged model with a few forward passes in train mode."""
    n = dist.get_world_size(process_group)
    params = _params_of(model_or_params)
    for p in params:
        buf = p.detach().clone()
        dist.all_reduce(buf, group=process_group)
        p.detach().copy_(buf.div_(n))


@register(kind="training-helper", **_REF, aliases=("single-merge", "late-gossip"),
          summary="Decentralized SGD with communication concentrated late in training and one final global "
                  "merge of all models")
class LateGossip:
    r"""Decentralized training whose communication is concentrated late, ending in one global merge.

    Zhu et al. (arXiv 2507.06542): decentralized SGD (each worker steps on its own data, then mixes
    parameters with its neighbours, :math:`x_i \leftarrow \sum_j W_{ij} x_j`) generalizes far better when
    the communication budget is spent at the end, and a single global merge (the average of all models) at
    the final step recovers server-based (parallel SGD) performance under heavy data heterogeneity.

    Each worker calls :meth:`step` after each local optimizer step. Every ``k_steps`` steps (and at
    ``max_steps``) comes a gossip round whose number of extra neighbours ``r`` is
    :func:`communication_degree` at the current step; the matrix is :func:`gossip_weights` for
    ``topology`` (for ``random``, drawn from a generator seeded with ``(seed, step)``, so every worker
    draws the same matrix without talking). With the default ``truncate`` schedule, ``r = r_start`` (0.2:
    a neighbour one round in five) until ``point1`` of training and ``r = r_end`` after; ``r_end=None`` is
    ``world_size - 1``, i.e. the complete graph: the last round is the single global merge. Call
    :func:`global_merge` yourself to merge at any other time. ``history`` lists ``(step, r)`` of each round.

    Defaults are the authors' Figure 1 configuration (``configs/examples/figure1_single_merge_resnet18.yaml``
    of Raiden-Zhu/ICLR-2026-Grokking-in-Decentralized-Learning, commit 6a5c139): ``random`` topology,
    ``truncate`` schedule, ``r_start=0.2``, ``r_end = n - 1`` (their 31 for 32 nodes), ``point1=0.997``,
    ``k_steps=100``. Their code simulates the nodes on shared buffers with one central mixing step; here
    each worker is one process and the mixing is an ``all_gather`` (:func:`gossip_`). The paper's method
    section could not be read here (the stored copy gives only its abstract and introduction); the schedule
    and the matrices follow their code (``core/communication.py``, ``core/gossip_matrix.py``). Their random
    draws come from numpy's global generator; ours from a seeded one shared by the workers, so the drawn
    neighbours differ from theirs (same law).
    """

    def __init__(self, params: Iterable[Tensor] | torch.nn.Module, *, max_steps: int, k_steps: int = 100,
                 topology: str = "random", schedule: str = "truncate", r_start: float = 0.2,
                 r_end: float | None = None, point1: float = 0.997, window_size: float = 0.05, seed: int = 0,
                 process_group=None):
        self.params = _params_of(params)
        if not self.params:
            raise ValueError("Invalid params: no floating tensors (accepted: an nn.Module or an iterable of "
                             "floating Tensors)")
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.k_steps = check_int("k_steps", k_steps, 1)
        self.topology = check_choice("topology", topology, TOPOLOGIES)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.r_start = check_real("r_start", r_start, 0.0)
        self.point1 = check_real("point1", point1, 0.0, 1.0)
        self.window_size = check_real("window_size", window_size, 0.0)
        self.seed = check_int("seed", seed, 0)
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.r_end = float(self.world_size - 1) if r_end is None else check_real("r_end", r_end, 0.0)
        self.num_steps = 0
        self.history: list[tuple[int, float]] = []

    def degree(self, step: int) -> float:
        """``r`` at ``step`` under this schedule."""
        return communication_degree(step, self.max_steps, schedule=self.schedule, r_start=self.r_start,
                                    r_end=self.r_end, point1=self.point1, window_size=self.window_size)

    def step(self) -> bool:
        """Count one local step; gossip when a round ends. Returns whether a round ran."""
        self.num_steps += 1
        if self.num_steps % self.k_steps and self.num_steps != self.max_steps:
            return False
        r = self.degree(self.num_steps)
        w = gossip_weights(self.world_size, self.topology, r,
                           np.random.default_rng([self.seed, self.num_steps]))
        self.history.append((self.num_steps, r))
        if not torch.equal(w, torch.eye(self.world_size, dtype=w.dtype)):
            gossip_(self.params, w, self.process_group)
        return True

    def state_dict(self) -> dict:
        return {"num_steps": self.num_steps, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "num_steps" not in state:
            raise ValueError("Invalid state: (accepted: a dict from LateGossip.state_dict())")
        self.num_steps = int(state["num_steps"])
        self.history = [tuple(h) for h in state.get("history", [])]
