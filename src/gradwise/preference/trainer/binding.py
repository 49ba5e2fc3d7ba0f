"""Objective binding: how an objective function's parameters are matched to the per-pair tensors
the trainer computes (:data:`QUANTITIES`, :data:`REVISION_QUANTITIES`, extra models' log-probs,
per-example numbers), and which rewards its metrics report (:class:`PreferenceObjective`).

Pure: nothing here runs a model. The names a trainer and the online loop share (which quantity
belongs to which extra model, the reserved model names) are public here.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

__all__ = ["PreferenceObjective", "QUANTITIES", "REVISION_QUANTITIES"]

#: Names of the per-pair tensors (one row per preference pair) the trainer can
#: hand to an objective. ``*_logps`` [P] are summed over completion tokens,
#: ``*_avg_logps`` [P] averaged, ``*_lengths`` [P] count completion tokens;
#: ``policy_*_token_logps`` [P, Tc] are the policy's per-token log-probs of the
#: completion, left-aligned (step 0 = first completion token) and 0-padded to
#: the longest completion of the micro-batch, with ``*_mask`` [P, Tc] true on
#: real tokens (for per-step objectives such as CPL's discounted sums).
QUANTITIES = (
    "policy_chosen_logps", "policy_rejected_logps",
    "ref_chosen_logps", "ref_rejected_logps",
    "policy_chosen_avg_logps", "policy_rejected_avg_logps",
    "ref_chosen_avg_logps", "ref_rejected_avg_logps",
    "chosen_lengths", "rejected_lengths",
    "policy_chosen_token_logps", "policy_rejected_token_logps", "chosen_mask", "rejected_mask",
)
TOKEN_LEVEL_QUANTITIES = QUANTITIES[-4:]
DPO_ORDER = QUANTITIES[:4]

#: Revision (self-improvement) log-probs [P], summed over the revised
#: response's tokens: ``improve_{a}_given_{b}_logps`` is the policy's
#: ``log pi(y_a | revision_prompt(x, y_b))`` and ``ref_{a}_given_{b}_logps`` the
#: reference's, with ``w`` the pair's chosen and ``l`` its rejected response
#: (SRPO's ``pi(y'|y, x)``; the names are :func:`~gradwise.preference.srpo_loss`'s).
REVISION_QUANTITIES = tuple(f"{who}_{a}_given_{b}_logps" for who in ("improve", "ref") for a in "wl" for b in "wl")

# log-probs of an extra frozen model ``<name>``: <name>_chosen_logps, <name>_rejected_avg_logps, ...
_EXTRA_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*?)_(chosen|rejected)_(avg_)?logps$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED_MODEL_NAMES = ("policy", "ref", "improve")


def extra_model_of(name: str) -> str | None:
    """The extra model whose log-prob ``name`` is (``"prev"`` for ``prev_chosen_logps``), else None."""
    if name in QUANTITIES or name in REVISION_QUANTITIES:
        return None
    m = _EXTRA_RE.match(name)
    if m is None or m.group(1) in RESERVED_MODEL_NAMES:
        return None
    return m.group(1)


def is_quantity(name: str) -> bool:
    """Whether ``name`` is a log-prob quantity the trainer can compute."""
    return name in QUANTITIES or name in REVISION_QUANTITIES or extra_model_of(name) is not None


_ACCEPTED = (f"{', '.join(QUANTITIES)}, {', '.join(REVISION_QUANTITIES)}, or <model>_chosen_logps, "
             "<model>_rejected_logps, <model>_chosen_avg_logps, <model>_rejected_avg_logps of an extra model")


_REWARDS = ("auto", "ratio", "avg_ratio", "logps", "avg_logps")


class PreferenceObjective:
    """Adapter between a pairwise objective function and the trainer.

    ``fn`` is called with per-pair tensors chosen by parameter **name**: its
    required positional parameters named in :data:`QUANTITIES` receive those
    tensors, and so do its required keyword-only ones. So
    ``dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
    ref_rejected_logps, *, beta)`` gets the four summed log-probs, and
    ``simpo_loss(policy_chosen_avg_logps, policy_rejected_avg_logps, *, beta,
    gamma)`` the two averaged ones (and needs no reference model). A function
    whose required positional parameters have other names gets, by position,
    the four summed log-probs (DPO order) if it has four, the two policy
    summed log-probs if it has two; ``inputs=`` overrides this with an
    explicit tuple of names, passed positionally. Optional parameters that name
    a quantity are **not** filled, because passing them changes the
    objective's form (``ipo_loss``'s ``chosen_lengths`` switches to TRL's
    token-averaged IPO, ``rpo_loss``'s to the averaged NLL); opt in with
    ``keyword_inputs=("chosen_lengths", "rejected_lengths")``.

    Beyond :data:`QUANTITIES`, an objective may take

    * log-probs of **extra frozen models**: ``<name>_chosen_logps``,
      ``<name>_rejected_logps``, ``<name>_chosen_avg_logps``,
      ``<name>_rejected_avg_logps`` for the trainer's ``extra_models={name:
      model}``; ``inpo_loss(policy_chosen_logps, policy_rejected_logps,
      prev_chosen_logps, prev_rejected_logps, ref_chosen_logps,
      ref_rejected_logps, *, eta, tau)`` so needs ``extra_models={"prev":
      pi_t}`` (:attr:`extra_models` lists the names an objective needs);
    * **revision log-probs** (:data:`REVISION_QUANTITIES`, SRPO's
      ``pi(y'|y, x)``), scored on the trainer's ``revision_prompt``;
    * **per-example numbers** with ``example_inputs``: a list of example keys
      passed as keywords of the same name, or a mapping ``{parameter: key}``
      (``example_inputs={"reward_1": "chosen_win_rate", "reward_2":
      "rejected_win_rate"}`` for DNO's soft labels); each becomes a tensor [P]
      with the value of the example each pair comes from.

    ``hyperparameters`` are passed as keywords on every call
    (``functools.partial`` works too).

    ``fn`` returns per-pair losses [P] (a scalar is read as their mean), or a
    tuple ``(losses, chosen_rewards, rejected_rewards)``. Otherwise the
    rewards reported in the metrics follow ``reward``:

    * ``"ratio"``: ``beta * (policy_logps - ref_logps)`` (DPO's implicit reward;
      against the extra model when the objective takes one extra model's summed
      log-probs and no reference, e.g. DNO's ``pi_t``),
    * ``"avg_ratio"``: the same with averaged log-probs,
    * ``"logps"`` / ``"avg_logps"``: ``beta * policy (avg) logps`` (SimPO's reward
      is ``"avg_logps"``),
    * ``"auto"`` (default): ``"ratio"`` when ``fn`` takes summed reference
      log-probs, ``"avg_ratio"`` for averaged ones, ``"avg_logps"`` when it takes
      averaged policy log-probs and no reference, else ``"logps"``,
    * or a callable ``q -> (chosen_rewards, rejected_rewards)`` on the dict of
      quantities.

    ``beta`` (the reward scale) comes from the trainer's ``beta`` argument, else
    the objective's ``beta`` hyperparameter or default, else 1.

    Example:
        >>> obj = PreferenceObjective(lambda pc, pr, rc, rr, *, beta: -torch.nn.functional.logsigmoid(
        ...     beta * ((pc - rc) - (pr - rr))), beta=0.5)
        >>> obj.inputs, obj.needs_reference
        (('policy_chosen_logps', 'policy_rejected_logps', 'ref_chosen_logps', 'ref_rejected_logps'), True)
    """

    def __init__(self, fn: Callable, *, inputs: Sequence[str] | None = None,
                 keyword_inputs: Sequence[str] | None = None,
                 example_inputs: Sequence[str] | Mapping[str, str] | None = None, reward: str | Callable = "auto",
                 **hyperparameters) -> None:
        if isinstance(fn, PreferenceObjective):
            raise ValueError("Invalid fn: already a PreferenceObjective")
        if not callable(fn):
            raise ValueError(f"Invalid fn: expected a callable objective, got {type(fn).__name__}")
        if not (callable(reward) or reward in _REWARDS):
            raise ValueError(f"Invalid reward: {reward!r} (accepted: {', '.join(map(repr, _REWARDS))} or a callable)")
        self.fn = fn
        self.hyperparameters = dict(hyperparameters)
        self.reward = reward
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            params = []
        self._param_names = {p.name for p in params}
        self._accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
        self._beta_default = next((p.default for p in params if p.name == "beta" and p.default is not p.empty),
                                  None)
        #: keyword parameter -> example key, read from each example
        self.example_inputs: dict[str, str] = {}
        if example_inputs is not None:
            pairs = (list(example_inputs.items()) if isinstance(example_inputs, Mapping)
                     else [(k, k) for k in example_inputs] if not isinstance(example_inputs, (str, bytes)) else None)
            if pairs is None or any(not (isinstance(a, str) and isinstance(b, str) and MODEL_NAME_RE.match(a))
                                    for a, b in pairs):
                raise ValueError(f"Invalid example_inputs: {example_inputs!r} (accepted: a list of example keys or a "
                                 "mapping {parameter name: example key})")
            for a, b in pairs:
                if is_quantity(b) or is_quantity(a):
                    raise ValueError(f"Invalid example_inputs: {a!r} -> {b!r} names a log-prob quantity; pass it "
                                     "through inputs= or keyword_inputs=")
            self.example_inputs = dict(pairs)
        self.keyword_inputs: tuple[str, ...] = ()
        if keyword_inputs is not None:
            keyword_inputs = tuple(keyword_inputs)
            bad = [n for n in keyword_inputs if not is_quantity(n)]
            if bad:
                raise ValueError(f"Invalid keyword_inputs: unknown quantity {bad[0]!r} (accepted: {_ACCEPTED})")
        if inputs is not None:
            inputs = tuple(inputs)
            bad = [n for n in inputs if not is_quantity(n)]
            if bad:
                raise ValueError(f"Invalid inputs: unknown quantity {bad[0]!r} (accepted: {_ACCEPTED})")
            self.inputs = inputs
        else:
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = [p for p in positional if p.default is p.empty]
            named = [p.name for p in required if is_quantity(p.name)]
            if len(named) == len(required) and required:
                self.inputs = tuple(named)
            elif len(required) == 4:
                self.inputs = DPO_ORDER
            elif len(required) == 2:
                self.inputs = DPO_ORDER[:2]
            else:
                raise ValueError(f"Invalid fn: cannot tell which log-probs {getattr(fn, '__name__', fn)!r} takes "
                                 f"from its signature; pass inputs=(names from {_ACCEPTED})")
        if keyword_inputs is not None:
            self.keyword_inputs = keyword_inputs
        else:  # required keyword-only quantities; optional ones change an objective's form, so opt in
            self.keyword_inputs = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty
                                        and is_quantity(p.name) and p.name not in hyperparameters
                                        and p.name not in self.example_inputs)
        used = self.inputs + self.keyword_inputs
        self.needs_reference = any(n.startswith("ref_") and extra_model_of(n) is None for n in used)
        #: extra frozen models whose log-probs the objective takes (trainer's ``extra_models`` keys)
        self.extra_models: tuple[str, ...] = tuple(dict.fromkeys(m for m in map(extra_model_of, used) if m))
        #: revision quantities the objective takes (:data:`REVISION_QUANTITIES`)
        self.revision_inputs: tuple[str, ...] = tuple(n for n in used if n in REVISION_QUANTITIES)
        self._ratio_base = "ref"
        if reward == "auto":
            summed_extra = [m for m in self.extra_models
                            if f"{m}_chosen_logps" in used and f"{m}_rejected_logps" in used]
            if any(n in ("ref_chosen_logps", "ref_rejected_logps") for n in used):
                reward = "ratio"
            elif any(n in ("ref_chosen_avg_logps", "ref_rejected_avg_logps") for n in used):
                reward = "avg_ratio"
            elif len(summed_extra) == 1:
                reward, self._ratio_base = "ratio", summed_extra[0]
            elif any(n.startswith("policy_") and "avg" in n for n in used):
                reward = "avg_logps"
            else:
                reward = "logps"
        self.reward_kind = reward

    @property
    def name(self) -> str:
        fn = getattr(self.fn, "func", self.fn)  # functools.partial
        return getattr(fn, "__name__", type(fn).__name__)

    @property
    def parameters(self) -> frozenset[str]:
        """The names of ``fn``'s parameters (empty when its signature cannot be read)."""
        return frozenset(self._param_names)

    def accepts(self, name: str) -> bool:
        return name in self._param_names or self._accepts_kwargs

    def default_beta(self) -> float | None:
        b = self.hyperparameters.get("beta", self._beta_default)
        return None if b is None else float(b)

    def __call__(self, q: Mapping[str, Tensor], *, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """(per-pair losses [P], chosen rewards [P], rejected rewards [P])."""
        kw = dict(self.hyperparameters)
        for n in self.keyword_inputs:
            kw[n] = q[n]
        for n, key in self.example_inputs.items():
            kw[n] = q[key]
        out = self.fn(*(q[n] for n in self.inputs), **kw)
        rewards = None
        if isinstance(out, tuple):
            if len(out) != 3:
                raise ValueError(f"{self.name} returned a tuple of {len(out)}; expected a loss tensor or "
                                 "(losses, chosen_rewards, rejected_rewards)")
            out, *rewards = out
        if callable(self.reward_kind):
            rewards = self.reward_kind(q)
        if rewards is None:
            r = self.reward_kind
            if r == "ratio":
                b = self._ratio_base
                rewards = (q["policy_chosen_logps"] - q[f"{b}_chosen_logps"],
                           q["policy_rejected_logps"] - q[f"{b}_rejected_logps"])
            elif r == "avg_ratio":
                rewards = (q["policy_chosen_avg_logps"] - q["ref_chosen_avg_logps"],
                           q["policy_rejected_avg_logps"] - q["ref_rejected_avg_logps"])
            elif r == "avg_logps":
                rewards = (q["policy_chosen_avg_logps"], q["policy_rejected_avg_logps"])
            else:
                rewards = (q["policy_chosen_logps"], q["policy_rejected_logps"])
            rewards = tuple(beta * x.detach() for x in rewards)
        return out, rewards[0].detach(), rewards[1].detach()
