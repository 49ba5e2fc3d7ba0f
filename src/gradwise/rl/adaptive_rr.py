r"""Adaptive RR: start off-policy training at a low replay ratio and raise it once the critic's plasticity,
measured by its fraction of active units (FAU), has stopped changing.

Paper: Ma, Li, Zhang, Liu, Wang, Chen, Shen, Wang, Tao, "Revisiting Plasticity in Visual Reinforcement
Learning: Data, Modules and Training Stages", arXiv:2310.07418 (ICLR 2024). Authors' code:
github.com/Guozheng-Ma/Adaptive-Replay-Ratio, commit a1539c6, ``train_adapt_rr.py`` (the schedule, in
``Workspace.train``) and ``drqv2_adapt_rr.py`` (``Critic.forward_with_FAU``, ``update_critic``), config
``cfgs/drqv2_adapt_rr_config.yaml`` (``check_freq`` 50 episodes, ``Phi_gap`` 0.001, ``update_every_steps`` 2).
Only the paper's abstract and introduction were readable here (docs/coverage_notes.md); the rule is the code's.

**FAU** (:func:`fraction_active_units`): over the critic's hidden ReLU outputs :math:`h^{(l)}` of a batch
(theirs: the two hidden layers of each of the twin Q heads, not the encoder or trunk),

.. math:: \Phi = \frac{\sum_l \#\{h^{(l)} > 0\}}{\sum_l \operatorname{numel} h^{(l)}}

(pooled over layers, not a mean of per-layer fractions). :class:`ActivationRecorder` collects those outputs
with forward hooks.

**Schedule** (:class:`AdaptiveReplayRatio`). The ratio starts at ``low`` (theirs 0.5: one update every second
environment step). :meth:`~AdaptiveReplayRatio.observe` is called with :math:`\Phi` at every critic update; the
first value is the initial reference. At the end of each episode :meth:`~AdaptiveReplayRatio.end_episode`
counts it (e = 1, 2, ...); when e mod ``check_every`` = ``check_every`` - 1 the running sum is reset, and when
e mod ``check_every`` = 0 the average :math:`\bar\Phi` since then (so the updates of the window's last episode)
is compared with the previous window's: if :math:`|\bar\Phi - \bar\Phi_{\text{prev}}| \le` ``phi_gap`` the ratio
switches to ``high`` (theirs 2: two updates every step), once and for good. Before the first update episodes
are not checked, as theirs (``metrics is not None``). :meth:`~AdaptiveReplayRatio.updates_at` gives the number of
updates to run at an environment step (theirs: ``update`` returns at odd steps while ``update_every_steps`` is 2).

Departures: with ``check_every=1`` theirs resets the sum and then divides by zero; here a window without
updates keeps the previous reference and does not switch. The switch test needs one host sync per
``check_every`` episodes when :math:`\Phi` is a tensor (theirs calls ``.item()`` at every update).
Golden data: tests/data/adaptive_rr_golden.pt, their ``Critic.forward_with_FAU`` on seeded critics and their
schedule block run on a stream of FAU values (tools/golden/make_adaptive_rr_golden.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_real
from gradwise.registry import register

__all__ = ["ActivationRecorder", "AdaptiveReplayRatio", "fraction_active_units"]

ARR_PAPER = "Revisiting Plasticity in Visual Reinforcement Learning: Data, Modules and Training Stages"
ARR_CODE = "https://github.com/Guozheng-Ma/Adaptive-Replay-Ratio/tree/a1539c6a667e2c2161a37424c7a55fcc3b191cd9"


def fraction_active_units(activations: Tensor | Sequence[Tensor], *, threshold: float = 0.0) -> Tensor:
    r"""The pooled fraction of units above ``threshold`` (0: a ReLU unit is active) over ``activations``, one
    tensor or a sequence (one per layer): active count over total count, a 0-dim float64 tensor on the
    activations' device (no host sync). NaN activations count as inactive (``NaN > 0`` is false)."""
    th = check_real("threshold", threshold)
    acts = [activations] if isinstance(activations, Tensor) else list(activations)
    if not acts or not all(isinstance(a, Tensor) for a in acts):
        raise ValueError("Invalid activations: (accepted: a tensor or a non-empty sequence of tensors)")
    total = sum(a.numel() for a in acts)
    if total == 0:
        raise ValueError("Invalid activations: no units (accepted: at least one element)")
    active = torch.stack([(a.detach() > th).sum() for a in acts]).sum()
    return active.to(torch.float64) / total


class ActivationRecorder:
    """Context manager collecting the outputs of ``module``'s submodules of ``layer_types`` (default
    ``nn.ReLU``) during forward passes: ``with ActivationRecorder(critic) as rec: critic(obs, act)``, then
    ``fraction_active_units(rec.outputs)``. ``rec.clear()`` empties the list between updates."""

    def __init__(self, module: nn.Module, layer_types: tuple[type, ...] = (nn.ReLU,)):
        if not isinstance(module, nn.Module):
            raise ValueError(f"Invalid module: {type(module).__name__} (accepted: a torch.nn.Module)")
        self.layers = [m for m in module.modules() if isinstance(m, layer_types)]
        if not self.layers:
            raise ValueError(f"Invalid layer_types: {layer_types!r} (accepted: types that occur in module)")
        self.outputs: list[Tensor] = []
        self._handles = []

    def _hook(self, _m, _inp, out):
        self.outputs.append(out.detach())

    def clear(self) -> None:
        self.outputs.clear()

    def __enter__(self) -> "ActivationRecorder":
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _schedule(ratio: float, name: str) -> tuple[int, int]:
    """(every, n): ``n`` updates at steps divisible by ``every``."""
    if ratio >= 1:
        n = round(ratio)
        if abs(n - ratio) > 1e-9:
            raise ValueError(f"Invalid {name}: {ratio!r} (accepted: an integer >= 1 or 1/k for an integer k)")
        return 1, n
    every = round(1 / ratio)
    if abs(every - 1 / ratio) > 1e-9:
        raise ValueError(f"Invalid {name}: {ratio!r} (accepted: an integer >= 1 or 1/k for an integer k)")
    return every, 1


@register(kind="rl-component", paper=ARR_PAPER, year=2023, arxiv="2310.07418", code=ARR_CODE,
          summary="Adaptive RR: low replay ratio until the critic's fraction of active units stops moving, "
                  "then a high one")
class AdaptiveReplayRatio:
    r"""Adaptive replay ratio (arXiv:2310.07418; rule in the module docstring): ``low`` (0.5) until the critic's
    FAU averaged over a check window moves by at most ``phi_gap`` (theirs 0.001) between two checks
    ``check_every`` episodes apart (theirs 50), then ``high`` (2). Ratios are integers or 1/k.

    Loop: at each environment step run ``updates_at(step)`` updates, calling ``observe(fau)`` at each critic
    update; call ``end_episode()`` at each episode's end (True when it switched). ``replay_ratio``,
    ``switched_at`` (the episode), ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, check_every: int, phi_gap: float, low: float = 0.5, high: float = 2.0):
        self.check_every = check_int("check_every", check_every, 1)
        self.phi_gap = check_real("phi_gap", phi_gap, 0.0)
        self.low = check_real("low", low, 0.0, lo_open=True)
        self.high = check_real("high", high, 0.0, lo_open=True)
        _schedule(self.low, "low")
        _schedule(self.high, "high")
        self.episode = 0
        self.replay_ratio = self.low
        self.switched_at: int | None = None
        self.last_average: float | Tensor | None = None
        self._sum: float | Tensor = 0.0
        self._count = 0

    def observe(self, fau: float | Tensor) -> None:
        """Record the critic's FAU at one update (a float or a 0-dim tensor)."""
        if isinstance(fau, Tensor):
            if fau.numel() != 1:
                raise ValueError(f"Invalid fau: shape {tuple(fau.shape)} (accepted: a number or a 1-element tensor)")
            fau = fau.detach().reshape(())
        else:
            fau = check_real("fau", fau, finite=False)
        if self.last_average is None:
            self.last_average = fau
        self._sum = self._sum + fau
        self._count += 1

    def end_episode(self) -> bool:
        """Count an episode's end and run the check; True when the ratio switched here."""
        self.episode += 1
        if self.last_average is None:  # no update yet: theirs skips the check (metrics is None)
            return False
        k = self.episode % self.check_every
        if k == (self.check_every - 1) % self.check_every:
            self._sum, self._count = 0.0, 0
        if k != 0 or self._count == 0:
            return False
        average = self._sum / self._count
        switched = False
        if self.replay_ratio == self.low and self.switched_at is None and \
                bool(abs(average - self.last_average) <= self.phi_gap):
            self.replay_ratio = self.high
            self.switched_at = self.episode
            switched = True
        self.last_average = average
        self._sum, self._count = 0.0, 0
        return switched

    def updates_at(self, step: int) -> int:
        """How many updates to run at environment step ``step`` under the current ratio."""
        every, n = _schedule(self.replay_ratio, "replay_ratio")
        return n if step % every == 0 else 0

    def state_dict(self) -> dict:
        def plain(x):
            return float(x) if isinstance(x, Tensor) else x
        return {"episode": self.episode, "replay_ratio": self.replay_ratio, "switched_at": self.switched_at,
                "last_average": plain(self.last_average), "sum": plain(self._sum), "count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self.episode = int(state["episode"])
        self.replay_ratio = float(state["replay_ratio"])
        self.switched_at = state["switched_at"]
        self.last_average = state["last_average"]
        self._sum, self._count = state["sum"], int(state["count"])
