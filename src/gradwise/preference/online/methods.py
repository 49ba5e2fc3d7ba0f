"""Online methods: objects with hooks that :class:`~gradwise.preference.online.loop.OnlinePreferenceLoop`
calls, and their discovery from the registry.

An iteration of the loop is, for every method::

    method.begin_iteration(loop)          # e.g. APO's weight extrapolation; then the loop freezes pi_t
    pairs = method.make_pairs(loop)       # the iteration's pairs, or None: the method draws data every step
    method.prepare(loop, pairs)           # e.g. the iteration's trainer, cached reference log-probs
    for each step:
        loss, pairs_used = method.step(loop, pairs, indices)   # one optimizer step

:class:`OnlineMethod` implements these hooks for *iterative* methods (sample once per iteration from
``pi_t``, then train on those pairs through a :class:`~gradwise.preference.trainer.PreferenceTrainer`);
a method that works otherwise (EGPO's extragradient steps, HyPO's offline pairs plus fresh samples)
subclasses it and overrides the hooks.

Which methods exist is read from the registry: a preference record whose ``info`` has
``"online": "module:Class"`` names the class of its online method, and that class's ``name`` is
what :func:`online_method` and the loop accept. Registering an objective with that field is all it
takes to add an online method.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from gradwise.preference.trainer import PreferenceObjective, PreferenceTrainer

if TYPE_CHECKING:
    from gradwise.preference.online.loop import OnlinePreferenceLoop

__all__ = ["OnlineMethod", "online_method"]

#: numbers the oracle puts on every pair, which objectives may read through ``example_inputs``
PAIR_FIELDS = ("pref", "chosen_win_rate", "rejected_win_rate")


@dataclass
class OnlineMethod:
    """What an online method needs from the loop and how its loss is computed.

    ``keeps``: frozen models whose log-probs of each pair the loss takes: ``"ref"`` (``pi_ref``),
    ``"prev"`` (``pi_t``, frozen at the start of the iteration), ``"prev2"`` (``pi_{t-1}``).
    ``begin(loop)``: optional, called at the start of every iteration before ``pi_t`` is frozen;
    ``loop.method_state`` is a dict it may keep things in (per loop, so one spec can serve two loops).
    ``kind``: what the loop does in an iteration, for reading only (the loop calls the hooks, see the
    module): ``"iterative"`` here, other values in subclasses (``"egpo"``, ``"hypo"``).

    An ``"iterative"`` method gives its loss in one of two ways; either way it is trained through
    :meth:`PreferenceTrainer.train_step <gradwise.preference.trainer.PreferenceTrainer.train_step>`
    with ``ref_model = pi_ref`` and ``extra_models = {"prev": pi_t, "prev2": pi_{t-1}}``:

    * ``objective(iteration)`` returns the iteration's objective (a function of named log-probs or a
      :class:`~gradwise.preference.trainer.PreferenceObjective`): it may take ``policy_*``, ``ref_*``,
      ``prev_*``, ``prev2_*`` log-probs (``prev2`` from the second iteration on) and, through
      ``example_inputs``, the pair's ``pref``, ``chosen_win_rate``, ``rejected_win_rate``;
    * ``loss(q, iteration)`` gets a dict with ``policy_chosen``, ``policy_rejected`` (gradient),
      ``<kept>_chosen``/``<kept>_rejected`` (no gradient; a kept iterate that does not exist yet is
      absent), ``pref``, ``chosen_win_rate``, ``rejected_win_rate`` (tensors ``[B]``) and returns per-pair
      losses ``[B]``.
    """

    name: str
    keeps: tuple[str, ...]
    loss: Callable[[Mapping[str, Tensor], int], Tensor] | None = None
    kind: str = "iterative"
    hyperparameters: dict = field(default_factory=dict)
    objective: Callable[[int], Callable | PreferenceObjective] | None = None
    begin: Callable[["OnlinePreferenceLoop"], None] | None = None  # called first thing in each iteration

    # -------------------------------------------------------------- hooks the loop calls

    def check(self, loop: "OnlinePreferenceLoop") -> None:
        """Refuse a loop this method cannot run (called once, by the loop's constructor)."""
        if self.kind != "iterative":
            raise ValueError(f"Invalid method.kind: {self.kind!r} for a plain OnlineMethod (accepted: "
                             "'iterative'; the other kinds are the built-in methods of online_method())")
        if self.objective is None and self.loss is None:
            raise ValueError(f"Invalid method: iterative method {self.name!r} has neither objective nor loss")

    def begin_iteration(self, loop: "OnlinePreferenceLoop") -> None:
        """Start of an iteration, before the loop freezes ``pi_t``: runs ``begin``."""
        if self.begin is not None:
            self.begin(loop)

    def make_pairs(self, loop: "OnlinePreferenceLoop") -> list[dict] | None:
        """The iteration's training pairs (here: sampled from ``pi_t`` and judged,
        :meth:`~gradwise.preference.online.loop.OnlinePreferenceLoop.collect_pairs`); an empty list skips the
        iteration's steps; ``None`` means the method draws its data in every :meth:`step`."""
        return loop.collect_pairs()

    def prepare(self, loop: "OnlinePreferenceLoop", pairs: list[dict] | None) -> None:
        """After the pairs, before the first step: the iteration's trainer (``loop.trainer``)."""
        loop.trainer = self.make_trainer(loop)

    def step(self, loop: "OnlinePreferenceLoop", pairs: list[dict] | None,
             indices: list[int] | None) -> tuple[float, int]:
        """One optimizer step on ``pairs[i] for i in indices`` (the loop's shuffled order; ``None`` when
        :meth:`make_pairs` gave ``None``). Returns the step's loss and the pairs it drew itself (0 when it
        trained on ``pairs``)."""
        m = loop.trainer.train_step([pairs[i] for i in indices])
        return m["loss"], 0

    # -------------------------------------------------------------- iterative methods

    def iteration_objective(self, iteration: int, kept: Sequence[str]) -> PreferenceObjective:
        """The objective of ``iteration``: ``objective(iteration)``, or ``loss`` over the kept models'
        log-probs (``kept``: the kept iterates that exist now)."""
        if self.objective is not None:
            obj = self.objective(iteration)
            return obj if isinstance(obj, PreferenceObjective) else PreferenceObjective(obj)
        return _loss_objective(self, iteration, kept)

    def make_trainer(self, loop: "OnlinePreferenceLoop") -> PreferenceTrainer:
        """The :class:`PreferenceTrainer` that takes this iteration's steps: the objective for
        ``loop.iteration``, ``pi_ref`` as ``ref_model``, the kept iterates as ``extra_models`` (``"prev"``,
        ``"prev2"``; only those the objective takes), one micro-batch of ``batch_size`` pairs per step,
        dropout left as it is, ``pi_ref``'s cache shared across iterations."""
        t = loop.iteration
        kept = {"ref": loop.ref_model, "prev": loop.prev, "prev2": loop.prev2}
        obj = self.iteration_objective(t, [k for k in self.keeps if kept.get(k) is not None])
        if obj.needs_reference and loop.ref_model is None:
            raise ValueError(f"Invalid method: {self.name!r} takes reference log-probs but does not keep 'ref'")
        missing = [k for k in obj.extra_models if kept.get(k) is None]
        if missing:
            raise ValueError(f"Invalid method: {self.name!r} at iteration {t} takes log-probs of "
                             f"{missing[0]!r}, which the loop does not keep at that point (keeps: "
                             f"{', '.join(self.keeps)}; 'prev2' exists from iteration 1 on)")
        trainer = PreferenceTrainer(loop.policy, obj, loop.optimizer,
                                    ref_model=loop.ref_model if obj.needs_reference else None,
                                    extra_models={k: kept[k] for k in obj.extra_models},
                                    batch_size=loop.batch_size, pad_token_id=loop.pad_token_id,
                                    max_grad_norm=loop.max_grad_norm, shuffle=False, disable_dropout=False,
                                    progress=False, device=loop.device)
        trainer.ref_cache = loop.ref_cache  # pi_ref does not move: its cache outlives the iteration
        return trainer


def _loss_objective(method: OnlineMethod, iteration: int, kept: Sequence[str]) -> PreferenceObjective:
    """A custom ``loss(q, iteration)`` as a trainer objective over the kept models' log-probs."""
    names = ["policy_chosen", "policy_rejected"] + [f"{k}_{side}" for k in kept for side in ("chosen", "rejected")]

    def objective(*logps, pref, chosen_win_rate, rejected_win_rate):
        q = dict(zip(names, logps))
        q.update(pref=pref, chosen_win_rate=chosen_win_rate, rejected_win_rate=rejected_win_rate)
        return method.loss(q, iteration)

    objective.__name__ = f"{method.name}_loss"
    return PreferenceObjective(objective, inputs=tuple(f"{n}_logps" for n in names), example_inputs=PAIR_FIELDS)


# ------------------------------------------------------------------ discovery

def _load(entry: str) -> Any:
    module, _, attr = entry.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def online_method_classes() -> dict[str, type[OnlineMethod]]:
    """``{name: class}`` of the online methods the registry's preference records name (``info["online"]``),
    in registry order."""
    from gradwise.registry import methods

    out: dict[str, type[OnlineMethod]] = {}
    for rec in methods(family="preference"):
        entry = rec.info.get("online")
        if entry is None:
            continue
        cls = _load(entry)
        if not (isinstance(cls, type) and issubclass(cls, OnlineMethod) and isinstance(cls.__dict__.get("name"), str)):
            raise TypeError(f"registry record {rec.name}: info['online'] = {entry!r} is not an OnlineMethod "
                            "subclass with a class attribute 'name'")
        if out.get(cls.name, cls) is not cls:
            raise TypeError(f"two online methods named {cls.name!r}: {out[cls.name].__qualname__}, {cls.__qualname__}")
        out[cls.name] = cls
    return out


def online_method_names() -> tuple[str, ...]:
    """The names :func:`online_method` accepts (``ONLINE_METHODS``), read from the registry."""
    return tuple(online_method_classes())


def online_method(name: str, **hp) -> OnlineMethod:
    """A built-in online method by name, with its hyperparameters (``ONLINE_METHODS`` lists the names).

    * ``"dpo"`` (``beta=0.1``): iterative DPO against ``pi_ref`` on pairs sampled from ``pi_t``;
    * ``"inpo"`` (``eta``, ``tau``): :func:`inpo_loss` with the frozen ``pi_t`` and ``pi_ref``;
    * ``"dno"`` (``eta``, ``soft=False``): :func:`dno_loss` with ``pi_t``; ``soft=True`` passes the win
      rates among the K samples (Algorithm 1), else hard labels (DNO-Prct);
    * ``"apo"`` (``alpha``, ``beta=0.1``, ``extrapolate="parameters"``): :func:`apo_dpo_loss` with reference
      ``pi_ref`` at iteration 0; after, the extrapolated policy is sampler and reference: with
      ``"parameters"`` (the paper's experiments) the policy's weights are extrapolated
      (:func:`apo_extrapolated_parameters`) at the start of each iteration, with ``"logprobs"`` the reference
      is :func:`apo_extrapolated_logps` of ``pi_t``, ``pi_{t-1}`` (exact at the sequence level, but the pairs
      are sampled from the trained ``pi_t``);
    * ``"egpo"`` (``beta``): extragradient online IPO (:func:`egpo_half_step_loss`,
      :func:`egpo_full_step_loss`);
    * ``"hypo"`` (``lam``, ``beta=0.1``, ``samples=1``): :func:`hypo_loss` on offline pairs plus ``samples``
      fresh on-policy samples per prompt for the KL term (``samples >= 2``: leave-one-out baseline, the RLOO
      estimator the paper names).

    The iterative ones (dpo, inpo, dno, apo) are trainer objectives (``spec.objective(t)``), so the same
    objective trains offline too, e.g. ``PreferenceTrainer(model, spec.objective(0), opt,
    extra_models={"prev": pi_t})`` for INPO.
    """
    classes = online_method_classes()
    if name not in classes:
        raise ValueError(f"Invalid name: {name!r} (accepted: {', '.join(classes)})")
    params = inspect.signature(classes[name]).parameters
    missing = [p for p, v in params.items() if v.default is v.empty and p not in hp]
    if missing:
        raise ValueError(f"Invalid {name}: {missing[0]}= is required")
    unknown = sorted(k for k in hp if k not in params)
    if unknown:
        raise ValueError(f"Invalid hyperparameter for {name}: {unknown[0]!r}")
    return classes[name](**hp)
