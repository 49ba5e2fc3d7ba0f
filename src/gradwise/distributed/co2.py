"""CO2: local steps, an all-reduce of the parameters that overlaps the next local steps, and an outer momentum
update with a staleness gap penalty and outer momentum clipping (Sun et al., ICLR 2024)."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from gradwise._validate import check_bool, check_int, check_positive, check_real
from gradwise.registry import register

__all__ = ["CO2", "co2_outer_update_"]

_REF = dict(paper="CO2: Efficient Distributed Training with Full Communication-Computation Overlap", year=2024,
            arxiv="2401.16265", code="https://github.com/weigao266/fairscale-CO2")


def co2_outer_update_(anchor: Tensor, momentum: Tensor, average: Tensor, *, outer_lr: float, outer_momentum: float,
                      gap_penalty: float = 1.0, clip_threshold: float | None = None) -> Tensor:
    r"""One CO2 outer step, in place on ``anchor`` and ``momentum`` (flat or same-shape tensors); returns ``anchor``.

    .. math:: m \leftarrow \beta m + (x_{\text{anchor}} - \bar x) / \lambda,\quad
              m \leftarrow \operatorname{clip}(m, -c, c),\quad x_{\text{anchor}} \leftarrow x_{\text{anchor}} - \alpha m

    with ``average`` :math:`\bar x` the all-reduced mean of the workers' parameters, :math:`\lambda` the
    staleness gap penalty, :math:`c` the clip threshold (no clipping when ``None``), :math:`\alpha` the outer
    learning rate. This is the update of ``_perform_local_optimization`` in the authors' code.
    """
    momentum.mul_(outer_momentum).add_(anchor - average, alpha=1.0 / gap_penalty)
    if clip_threshold is not None:
        momentum.clamp_(-clip_threshold, clip_threshold)
    return anchor.sub_(momentum, alpha=outer_lr)


@register(kind="training-helper", **_REF, aliases=("co2",),
          summary="CO2: local steps with an asynchronous parameter all-reduce overlapping the next local steps, "
                  "outer momentum with staleness gap penalty and clipping")
class CO2:
    r"""CO2 (Sun et al., arXiv 2401.16265) around any inner optimizer, on any ``torch.distributed`` group.

    Each worker runs its inner optimizer alone (no DDP, no gradient all-reduce); every ``local_steps`` inner
    steps comes an outer step. With ``overlap=True`` (the paper's CO2) the outer step at round ``k``:

    1. copies the local parameters :math:`x_k` (divided by the world size) into a flat buffer and launches
       their all-reduce with ``dist.all_reduce(..., async_op=True)``; it runs while the next ``local_steps``
       inner steps compute;
    2. waits for the all-reduce launched at round ``k-1``, whose mean :math:`\bar x_{k-1}` is one round stale;
    3. applies :func:`co2_outer_update_` to the anchor (the parameters every worker restarted from) with
       :math:`\bar x_{k-1}`: :math:`m \leftarrow \beta m + (x_{\text{anchor}} - \bar x_{k-1})/\lambda`,
       clip, :math:`x_{\text{anchor}} \leftarrow x_{\text{anchor}} - \alpha m`;
    4. copies the anchor into the parameters: all workers restart the same point.

    Since the mean of round ``k-1`` started from the anchor of round ``k-2``, the difference
    :math:`x_{\text{anchor}} - \bar x_{k-1}` holds the last outer move as well as the local progress: that
    gap is what the penalty :math:`\lambda \ge 1` scales down. At the first outer step nothing has been
    averaged yet: the parameters go on from their local values. ``overlap=False`` waits for the all-reduce
    of the current round and uses it at once (SlowMo with a gap penalty; with ``local_steps=1``,
    ``gap_penalty=1``, no clipping and inner SGD at learning rate :math:`\gamma`, this is synchronous
    data-parallel SGD with heavy-ball momentum :math:`\beta` at learning rate :math:`\alpha\gamma`).

    Use, with a plain (not DDP-wrapped) model, the same initial weights on every worker::

        inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
        co2 = CO2(inner, model.parameters(), local_steps=4, outer_lr=1.0, outer_momentum=0.5)
        for x, y in loader:
            inner.zero_grad()
            loss_fn(model(x), y).backward()
            inner.step()
            co2.step()          # an outer step every local_steps calls
        co2.synchronize()       # wait for the last all-reduce before evaluating or saving

    Source: the paper's method section and Algorithm 1 could not be read here (the stored copy gives only
    the abstract and the caption of Figure 1: "the outer update starts after every two local steps,
    concurrently launching an AAR operation on model parameters"). The outer update, its defaults
    (``outer_momentum=0.5``, ``outer_lr=1``, ``gap_penalty=1``, no clipping, ``clip_threshold=1`` when on) and
    the penalty as a constant divisor follow the authors' code (github.com/weigao266/fairscale-CO2, commit
    55aaca5, ``fairscale/experimental/nn/data_parallel/gossip/co2.py``). ``local_steps`` defaults to their
    ``localsgd_frequency=3`` (their ``outer_frequency`` default, 48, is the outer period of their SlowMo-style
    loop). Departures: (a) their clip calls ``torch.clamp`` out of place and drops the result, so clipping
    there changes nothing; here ``clip_threshold=c`` clamps each entry of the outer momentum to ``[-c, c]``
    (``None``, the default, is their default, off). (b) Their all-reduce runs in a Python thread on the live
    parameters, with the outer update itself done by a synchronous reduce/broadcast in their default
    (memory-efficient) mode; here the all-reduce works on a copy, is waited for at the next outer step, and
    the staleness is exactly one round, which makes runs deterministic and resumable. (c) Only parameters
    are averaged: buffers (BatchNorm statistics) stay local. All parameters must share one dtype and device.

    :meth:`state_dict` / :meth:`load_state_dict` carry the step count, anchor, outer momentum and the stale
    mean (waited for at saving, so a resumed run equals an uninterrupted one).
    """

    def __init__(self, inner_optimizer: torch.optim.Optimizer, params: Iterable[Tensor] | None = None, *,
                 local_steps: int = 3, outer_lr: float = 1.0, outer_momentum: float = 0.5, gap_penalty: float = 1.0,
                 clip_threshold: float | None = None, overlap: bool = True, process_group=None):
        if not isinstance(inner_optimizer, torch.optim.Optimizer):
            raise TypeError(f"Invalid inner_optimizer: {type(inner_optimizer).__name__} "
                            "(accepted: a torch.optim.Optimizer)")
        self.inner_optimizer = inner_optimizer
        if params is None:
            params = [p for g in inner_optimizer.param_groups for p in g["params"]]
        if isinstance(params, Tensor):
            raise TypeError("Invalid params: a single Tensor (accepted: an iterable of Tensors, e.g. "
                            "model.parameters())")
        self.params = list(params)
        if not self.params or not all(isinstance(p, Tensor) for p in self.params):
            raise ValueError("Invalid params: (accepted: a non-empty iterable of Tensors)")
        if len({(p.dtype, p.device) for p in self.params}) != 1 or not self.params[0].is_floating_point():
            raise ValueError("Invalid params: mixed or non-floating dtypes/devices (accepted: floating tensors "
                             "of one dtype on one device)")
        self.local_steps = check_int("local_steps", local_steps, 1)
        self.outer_lr = check_positive("outer_lr", outer_lr)
        self.outer_momentum = check_real("outer_momentum", outer_momentum, 0.0, 1.0, hi_open=True)
        self.gap_penalty = check_positive("gap_penalty", gap_penalty)
        self.clip_threshold = None if clip_threshold is None else check_positive("clip_threshold", clip_threshold)
        self.overlap = check_bool("overlap", overlap)
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.num_steps = 0
        flat = self._flat()
        self.anchor = flat.clone()
        self.momentum = torch.zeros_like(flat)
        self._mean: Tensor | None = None   # the averaged parameters of the last round, once waited for
        self._work = None

    def _flat(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _copy_anchor_to_params(self) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.detach().copy_(self.anchor[offset:offset + n].view_as(p))
            offset += n

    def _launch(self) -> None:
        buf = self._flat().div_(self.world_size)
        self._work = dist.all_reduce(buf, group=self.process_group, async_op=True)
        self._mean = buf

    def synchronize(self) -> None:
        """Wait for the all-reduce in flight, if any (its mean stays held for the next outer step)."""
        if self._work is not None:
            self._work.wait()
            self._work = None

    @torch.no_grad()
    def step(self) -> bool:
        """Count one inner step; at every ``local_steps``-th call run the outer step. Returns whether it ran."""
        self.num_steps += 1
        if self.num_steps % self.local_steps:
            return False
        if self.overlap:
            self.synchronize()
            stale = self._mean
            self._launch()
            if stale is None:
                return True
        else:
            self._launch()
            self.synchronize()
            stale, self._mean = self._mean, None
        co2_outer_update_(self.anchor, self.momentum, stale, outer_lr=self.outer_lr,
                          outer_momentum=self.outer_momentum, gap_penalty=self.gap_penalty,
                          clip_threshold=self.clip_threshold)
        self._copy_anchor_to_params()
        return True

    def state_dict(self) -> dict:
        self.synchronize()
        return {"num_steps": self.num_steps, "anchor": self.anchor.clone(), "momentum": self.momentum.clone(),
                "mean": None if self._mean is None else self._mean.clone()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or not {"num_steps", "anchor", "momentum", "mean"} <= set(state):
            raise ValueError("Invalid state: (accepted: a dict from CO2.state_dict())")
        if state["anchor"].shape != self.anchor.shape:
            raise ValueError(f"Invalid state: anchor of {state['anchor'].numel()} entries for parameters of "
                             f"{self.anchor.numel()} (accepted: a state of the same parameters)")
        self.synchronize()
        self.num_steps = int(state["num_steps"])
        self.anchor.copy_(state["anchor"])
        self.momentum.copy_(state["momentum"])
        self._mean = None if state["mean"] is None else state["mean"].to(self.anchor).clone()
