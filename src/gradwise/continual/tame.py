r"""TAME: task-agnostic continual learning with one expert network per detected task, switched by a loss-shift
detector.

Paper: Zhu, Majzoubi, Jain, Choromanska, "TAME: Task Agnostic Continual Learning using Multiple Experts",
arXiv:2210.03869 (CVPR 2024 Workshops). Authors' code: github.com/HaoranZhuExplorer/TAME at commit 277a0a5
(``utils_.py``: ``Expert``, ``add_new_expert``, ``train_wrapper``, ``train_all_experts``). The stored text of
the paper gives its abstract (a shift is "a statistically-significant deviation in the value of the loss
function") and, through a citing source, one sentence of the method ("a smoothed version of the loss is
calculated, through an exponentially weighted moving average (EWMA)"); the rest below is the code's.

Every expert :math:`e` keeps a window :math:`\mathcal{W}_e` of its last ``window`` training losses (seeded with
:math:`\log C`, the loss of a uniform guess over its ``C`` outputs) and two EWMAs with factor
:math:`\alpha` (``smoothing``): :math:`\bar L_e` over its loss on every batch since it was created, and
:math:`\hat L_e` over the batches it trained on. On each batch :math:`(x, y)` every expert's loss
:math:`L_e` is measured (evaluation mode, no gradient) and

.. math:: \bar L_e \leftarrow \alpha L_e + (1-\alpha)\bar L_e, \qquad
          \tau_e = \mu(\mathcal{W}_e) + k\,\max(\sigma(\mathcal{W}_e), 0.005)    \quad (1)

(:math:`\mu, \sigma` the window's mean and population standard deviation, ``threshold`` :math:`k = 3`;
:math:`\tau_e` is recomputed only while :math:`e` is active and kept frozen otherwise). A shift is detected
when the active expert's :math:`\bar L_a > \tau_a`. The experts are then tried in creation order and the first
with

.. math:: \alpha L_e + (1-\alpha)\hat L_e < \tau_e     \quad (2)

becomes active (the one just left included); if none passes, a new expert is created. The active expert takes
one optimizer step on the batch and its pre-step loss :math:`L_a` enters :math:`\mathcal{W}_a` and
:math:`\hat L_a`.

Defaults: ``threshold=3`` and the 0.005 floor (their ``get_threshold``), ``smoothing=0.2`` (their
``SMOOTHING_FACTOR``), ``window=100`` (their CIFAR-100, CIFAR-10 and permuted-MNIST settings in ``test.py`` of
their first commit d9a52ee; their split-MNIST setting, the one left in ``train.py`` at 277a0a5, is 35).

Not built: the selector network that routes test samples to experts (trained after the stream on a buffer of
(input, expert) pairs kept with random priorities), the pruning of experts and selector, and their per-expert
learning-rate schedule (``MultiStepLR`` stepped per epoch of each expert). :meth:`TAME.forward` uses the active
expert or the one named. Their experts end in a sigmoid before the cross-entropy (they say it softens the first
losses): that belongs to ``expert_factory``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_unit
from gradwise.registry import register

__all__ = ["LossShiftDetector", "TAME"]

PAPER = "TAME: Task Agnostic Continual Learning using Multiple Experts"
CODE = "https://github.com/HaoranZhuExplorer/TAME/tree/277a0a5e4709a656f984aff64705b73786196957"


class LossShiftDetector:
    r"""One expert's loss statistics (the authors' ``Expert`` class without the network): Eqs. (1)-(2) of the
    module docstring. ``threshold``: :math:`k`, standard deviations above the window's mean; ``window``: the
    number of training losses kept; ``smoothing``: the EWMA factor :math:`\alpha`; ``min_std``: the floor on
    :math:`\sigma`; ``initial_loss``: the value the window starts with (TAME passes :math:`\log C`; None: the
    first loss recorded).

    In TAME, per batch: :meth:`observe` (every expert), :meth:`limit` (every expert), the shift test
    ``smoothed > limit`` on the active one, :meth:`fits` on the candidates, :meth:`record` on the expert that
    trained. :meth:`update` chains them for a single model's loss stream."""

    def __init__(self, threshold: float = 3.0, window: int = 100, *, smoothing: float = 0.2,
                 min_std: float = 0.005, initial_loss: float | None = None) -> None:
        self.threshold = check_nonneg("threshold", threshold)
        self.window = check_int("window", window, 1)
        self.smoothing = check_unit("smoothing", smoothing)
        if self.smoothing == 0.0:
            raise ValueError("Invalid smoothing: 0.0 (accepted: 0 < smoothing <= 1)")
        self.min_std = check_nonneg("min_std", min_std)
        self.initial_loss = None if initial_loss is None else float(check_nonneg("initial_loss", initial_loss))
        self.reset()

    def reset(self) -> None:
        """Back to a new expert's state: active, the window holding ``initial_loss`` only, no EWMA."""
        self.losses: list[float] = [] if self.initial_loss is None else [self.initial_loss]
        self.smoothed: float | None = None         # EWMA over every observed loss (theirs all_smoothed_losses)
        self.active_smoothed: float | None = None  # EWMA over the recorded ones (smoothed_losses_when_active)
        self.current_limit: float | None = None
        self.active = True

    def _ewma(self, last: float | None, loss: float) -> float:
        return self.smoothing * loss + (1 - self.smoothing) * (loss if last is None else last)

    def observe(self, loss: float) -> float:
        """The loss on this batch, trained on or not: updates and returns :math:`\\bar L` (Eq. 1)."""
        self.smoothed = self._ewma(self.smoothed, float(loss))
        return self.smoothed

    def limit(self) -> float | None:
        """:math:`\\tau` of Eq. (1), recomputed when active, the last one otherwise (None before any)."""
        if self.active and self.losses:
            w = torch.tensor(self.losses, dtype=torch.float64)
            self.current_limit = float(w.mean() + self.threshold * max(float(w.std(correction=0)), self.min_std))
        return self.current_limit

    def shifted(self) -> bool:
        """:math:`\\bar L > \\tau`: this (active) expert no longer explains the stream."""
        lim = self.limit()
        return self.smoothed is not None and lim is not None and self.smoothed > lim

    def fits(self, loss: float) -> bool:
        """Eq. (2): :math:`\\alpha L + (1-\\alpha)\\hat L < \\tau` (the frozen :math:`\\tau` when inactive)."""
        lim = self.current_limit
        return lim is not None and self._ewma(self.active_smoothed, float(loss)) < lim

    def record(self, loss: float) -> None:
        """The loss of a batch this expert trained on: enters the window and :math:`\\hat L` (when active)."""
        if not self.active:
            return
        loss = float(loss)
        self.losses = (self.losses + [loss])[-self.window:]
        self.active_smoothed = self._ewma(self.active_smoothed, loss)

    def update(self, loss: float) -> bool:
        """A single model's stream: observe, test, record; returns True on a shift, after which the detector
        restarts as a new expert's would (window ``[initial_loss]`` or ``[loss]``, then ``loss`` recorded)."""
        self.observe(loss)
        fired = self.shifted()
        if fired:
            self.reset()
        self.record(loss)
        return fired

    def state_dict(self) -> dict[str, Any]:
        return dict(threshold=self.threshold, window=self.window, smoothing=self.smoothing, min_std=self.min_std,
                    initial_loss=self.initial_loss, losses=list(self.losses), smoothed=self.smoothed,
                    active_smoothed=self.active_smoothed, current_limit=self.current_limit, active=self.active)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, list(value) if key == "losses" else value)


@register(kind="continual-learning", paper=PAPER, year=2022, arxiv="2210.03869", code=CODE,
          summary="task-agnostic continual learning: one expert per detected task, a shift detected when the "
                  "active expert's EWMA loss leaves its window's mean + 3 std; switch to the first old expert "
                  "that fits, else a new one")
class TAME(nn.Module):
    r"""TAME's training loop over a stream of batches (arXiv:2210.03869, the authors' ``train_all_experts`` at
    277a0a5; Eqs. (1)-(2) in the module docstring). ``expert_factory()`` returns a new expert network (called
    once per expert, and again by :meth:`load_state_dict` to rebuild them), ``optimizer_factory(params)`` its
    optimizer (theirs: SGD lr 0.1, momentum 0.9, weight decay 5e-4); ``loss_fn(output, y)`` the loss
    (cross-entropy). ``threshold``, ``window``, ``smoothing``: :class:`LossShiftDetector`'s; ``initial_loss``:
    the value each new expert's window starts with (None: :math:`\log C` of its output width, theirs).

    :meth:`step` ``(x, y)`` takes one batch and returns the index of the expert that trained on it;
    :attr:`switches` lists ``(step, new_expert_index, created)`` for each detected shift (as their log: a
    detection after which the expert just left passes Eq. (2) again re-activates it, which happens on the
    batches right after a return to an old expert, whose :math:`\bar L` still holds the losses it had while
    inactive); :attr:`boundaries` the steps at which the training expert changed. ``state_dict`` holds
    the experts, their detectors and optimizers; ``copy.deepcopy`` works."""

    def __init__(self, expert_factory: Callable[[], nn.Module], optimizer_factory: Callable[[Any], Any], *,
                 threshold: float = 3.0, window: int = 100, smoothing: float = 0.2,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 initial_loss: float | None = None) -> None:
        super().__init__()
        for name, fn in (("expert_factory", expert_factory), ("optimizer_factory", optimizer_factory),
                         ("loss_fn", loss_fn)):
            if not callable(fn):
                raise ValueError(f"Invalid {name}: {fn!r} (accepted: a callable)")
        LossShiftDetector(threshold, window, smoothing=smoothing, initial_loss=initial_loss)  # validates
        self.expert_factory, self.optimizer_factory, self.loss_fn = expert_factory, optimizer_factory, loss_fn
        self.threshold, self.window, self.smoothing, self.initial_loss = threshold, window, smoothing, initial_loss
        self.experts = nn.ModuleList()
        self.detectors: list[LossShiftDetector] = []
        self.optimizers: list[Any] = []
        self.active: int | None = None
        self.steps = 0
        self.switches: list[tuple[int, int, bool]] = []
        self.boundaries: list[int] = []

    @torch.no_grad()
    def _eval_loss(self, i: int, x: Tensor, y: Tensor) -> tuple[float, int]:
        expert = self.experts[i]
        expert.eval()
        out = expert(x)
        return float(self.loss_fn(out, y)), out.shape[-1]

    def _add_expert(self, x: Tensor | None = None, y: Tensor | None = None) -> float | None:
        """A new expert, its optimizer and detector (window seeded with ``initial_loss`` or log of the output
        width, measured on ``x``); returns its loss on ``(x, y)``."""
        expert = self.expert_factory()
        if not isinstance(expert, nn.Module):
            raise ValueError(f"Invalid expert_factory: it returned {type(expert).__name__} (accepted: a callable "
                             "returning an nn.Module)")
        self.experts.append(expert)
        self.optimizers.append(self.optimizer_factory(expert.parameters()))
        loss, width = self._eval_loss(len(self.experts) - 1, x, y) if x is not None else (None, None)
        init = self.initial_loss if self.initial_loss is not None or width is None else math.log(width)
        self.detectors.append(LossShiftDetector(self.threshold, self.window, smoothing=self.smoothing,
                                                initial_loss=init))
        return loss

    def _train(self, i: int, x: Tensor, y: Tensor, loss_before: float) -> None:
        expert, opt = self.experts[i], self.optimizers[i]
        expert.train()
        loss = self.loss_fn(expert(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        self.detectors[i].record(loss_before)

    def step(self, x: Tensor, y: Tensor) -> int:
        """One batch of the stream (their loop body): measure every expert, test the active one for a shift,
        switch or create if needed, train the active expert. Returns its index."""
        if not torch.is_tensor(x) or not torch.is_tensor(y) or x.shape[:1] != y.shape[:1] or x.shape[0] == 0:
            raise ValueError(f"Invalid x, y: {getattr(x, 'shape', x)!r}, {getattr(y, 'shape', y)!r} (accepted: "
                             "tensors with the same first dimension, at least one sample)")
        if not self.experts:  # the first batch creates the first expert
            self._add_expert(x, y)
            self.active = 0
        losses = []
        for i, det in enumerate(self.detectors):
            losses.append(self._eval_loss(i, x, y)[0])
            det.observe(losses[-1])
        for det in self.detectors:
            det.limit()
        if self.detectors[self.active].shifted():
            self.detectors[self.active].active = False
            chosen = next((i for i, det in enumerate(self.detectors) if det.fits(losses[i])), None)
            created = chosen is None
            if created:
                losses.append(self._add_expert(x, y))
                chosen = len(self.experts) - 1
            self.detectors[chosen].active = True
            if chosen != self.active:
                self.boundaries.append(self.steps)
            self.active = chosen
            self.switches.append((self.steps, chosen, created))
        self._train(self.active, x, y, losses[self.active])
        self.steps += 1
        return self.active

    def forward(self, x: Tensor, expert: int | None = None) -> Tensor:
        """The output of expert ``expert`` (default: the active one)."""
        idx = self.active if expert is None else expert
        if idx is None or not isinstance(idx, int) or not 0 <= idx < len(self.experts):
            raise ValueError(f"Invalid expert: {expert!r} (accepted: None for the active expert, or an index "
                             f"below {len(self.experts)}; the first step creates the first expert)")
        return self.experts[idx](x)

    def get_extra_state(self) -> dict[str, Any]:
        return dict(n_experts=len(self.experts), active=self.active, steps=self.steps,
                    switches=list(self.switches), boundaries=list(self.boundaries), detectors=[d.state_dict() for d in self.detectors],
                    optimizers=[copy.deepcopy(o.state_dict()) for o in self.optimizers])

    def set_extra_state(self, state: dict[str, Any]) -> None:
        while len(self.experts) < state["n_experts"]:
            self._add_expert()
        if len(self.experts) != state["n_experts"]:
            raise ValueError(f"Invalid state_dict: {state['n_experts']} experts (accepted: a TAME state with at "
                             f"least the {len(self.experts)} experts this one has)")
        for det, s in zip(self.detectors, state["detectors"]):
            det.load_state_dict(s)
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(copy.deepcopy(s))  # its tensors would otherwise be shared with the source's
        self.active, self.steps = state["active"], state["steps"]
        self.switches = [tuple(s) for s in state["switches"]]
        self.boundaries = list(state["boundaries"])
