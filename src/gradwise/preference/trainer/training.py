"""A small, explicit trainer for offline preference objectives (DPO family,
SimPO, ...) on any model that maps token ids to logits.

The objective is a pure function of sequence log-probabilities (see
``gradwise.preference``); the trainer only produces those log-probabilities:

* every prompt+completion of a micro-batch goes through the policy in **one**
  forward pass (:func:`~gradwise.preference.logprobs.collate_preferences`:
  rows ``[chosen_1..B, rejected_1..B]`` for pairs; ranked lists add rows and
  pairs);
* reference log-probabilities are computed **once per sequence** (frozen
  reference model, eval mode, ``no_grad``) and cached, keyed by a digest of
  the sequence's tokens (never by ``example["id"]``: ids may repeat within a
  dataset or across the train and eval sets); objectives that take no reference quantity never
  trigger a reference forward, and no reference model is built for them;
* log-probs of further frozen models (``extra_models={"prev": pi_t}``, for
  INPO, DNO, APO, ...) are computed and cached the same way, and handed to
  objectives as ``prev_chosen_logps``, ``prev_rejected_logps``, ...; numbers
  stored on each example (win rates, preference probabilities) reach an
  objective through ``PreferenceObjective(example_inputs=...)``;
* revision log-probs ``log pi(y'|x, y)`` for self-improvement objectives
  (SRPO) are scored in the same forward pass as the pair, on revision prompts
  built by ``revision_prompt`` (default: prompt + draft + separator tokens,
  :func:`build_revision_prompt`); none of this runs unless the objective
  asks for it;
* losses of a step are ``sum(per-pair losses) / pairs in the step``, so
  gradient accumulation over micro-batches gives the gradient of the full
  batch;
* ``save_checkpoint``/``load_checkpoint`` carry the model, optimizer,
  scheduler, step counter, torch RNG state, reference cache (and the
  reference weights when the trainer made the reference itself), so a
  resumed run continues exactly as an uninterrupted one. The data order is a
  function of ``(seed, epoch)``, so it needs no saved state.

See docs/preference_trainer.md for a walk-through.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from gradwise.preference.logprobs import (_example_parts, _left_pack, _pad_rows, _truncate, collate_preferences,
                                          example_name, sequence_key, token_logps)

__all__ = ["PreferenceTrainer", "PreferenceObjective", "QUANTITIES", "REVISION_QUANTITIES", "build_revision_prompt",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

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
_TOKEN_LEVEL = QUANTITIES[-4:]
_DPO_ORDER = QUANTITIES[:4]

#: Revision (self-improvement) log-probs [P], summed over the revised
#: response's tokens: ``improve_{a}_given_{b}_logps`` is the policy's
#: ``log pi(y_a | revision_prompt(x, y_b))`` and ``ref_{a}_given_{b}_logps`` the
#: reference's, with ``w`` the pair's chosen and ``l`` its rejected response
#: (SRPO's ``pi(y'|y, x)``; the names are :func:`~gradwise.preference.srpo_loss`'s).
REVISION_QUANTITIES = tuple(f"{who}_{a}_given_{b}_logps" for who in ("improve", "ref") for a in "wl" for b in "wl")

# log-probs of an extra frozen model ``<name>``: <name>_chosen_logps, <name>_rejected_avg_logps, ...
_EXTRA_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*?)_(chosen|rejected)_(avg_)?logps$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED = ("policy", "ref", "improve")


def _extra_model_of(name: str) -> str | None:
    """The extra model whose log-prob ``name`` is (``"prev"`` for ``prev_chosen_logps``), else None."""
    if name in QUANTITIES or name in REVISION_QUANTITIES:
        return None
    m = _EXTRA_RE.match(name)
    if m is None or m.group(1) in _RESERVED:
        return None
    return m.group(1)


def _is_quantity(name: str) -> bool:
    return name in QUANTITIES or name in REVISION_QUANTITIES or _extra_model_of(name) is not None


_ACCEPTED = (f"{', '.join(QUANTITIES)}, {', '.join(REVISION_QUANTITIES)}, or <model>_chosen_logps, "
             "<model>_rejected_logps, <model>_chosen_avg_logps, <model>_rejected_avg_logps of an extra model")


def build_revision_prompt(prompt: Sequence[int], draft: Sequence[int], *, separator: Sequence[int] | int = ()
                          ) -> list[int]:
    """The revision prompt of a token model: ``prompt + draft + separator``.

    SRPO (Choi et al., "Self-Improving Robust Preference Optimization", 2024,
    arXiv 2406.01660; no authors' code) trains a self-improvement policy
    ``pi(y'|y, x)`` that is the same LLM prompted with ``x`` and a previous
    response ``y`` (a text template that shows the prompt and the draft; the
    TRL pull request #1772 reimplementation puts the draft into the prompt
    template as an "EXAMPLE SUMMARY"). For
    token-id models this is the plain concatenation, with ``separator`` (one
    token id or a list, e.g. a dedicated "revise:" token) marking where the
    revised response starts; pass a function ``(prompt, draft) -> ids`` as the
    trainer's ``revision_prompt`` for any other layout (a chat template, a
    prefix).

    Example:
        >>> build_revision_prompt([1, 5, 6, 2], [6, 5, 3], separator=9)
        [1, 5, 6, 2, 6, 5, 3, 9]
    """
    sep = [separator] if isinstance(separator, int) and not isinstance(separator, bool) else separator
    if isinstance(sep, (str, bytes)) or not isinstance(sep, Sequence) or any(
            isinstance(t, bool) or not isinstance(t, int) for t in sep):
        raise ValueError(f"Invalid separator: {separator!r} (accepted: a token id or a list of token ids)")
    return [int(t) for t in prompt] + [int(t) for t in draft] + list(sep)


def _revision_fn(revision_prompt) -> Callable[[list[int], list[int]], list[int]] | None:
    """``revision_prompt`` (None, a separator id / list of ids, or a callable) as a function."""
    if revision_prompt is None:
        return None
    if callable(revision_prompt):
        fn = revision_prompt
    else:
        if isinstance(revision_prompt, bool) or not (
                isinstance(revision_prompt, int)
                or (isinstance(revision_prompt, Sequence) and not isinstance(revision_prompt, (str, bytes))
                    and all(isinstance(t, int) and not isinstance(t, bool) for t in revision_prompt))):
            raise ValueError(f"Invalid revision_prompt: {revision_prompt!r} (accepted: None, a separator token id, a "
                             "list of token ids, or a function (prompt, draft) -> token ids)")
        sep = revision_prompt

        def fn(prompt, draft):
            return build_revision_prompt(prompt, draft, separator=sep)

    def checked(prompt: list[int], draft: list[int]) -> list[int]:
        out = fn(list(prompt), list(draft))
        if torch.is_tensor(out):
            out = out.tolist()
        try:
            if isinstance(out, (str, bytes)) or any(isinstance(t, bool) for t in out):
                raise TypeError
            out = [operator.index(t) for t in out]  # ints (numpy's too); a float is refused, not truncated
        except TypeError:
            out = None
        if out is None or any(t < 0 for t in out):
            raise ValueError("Invalid revision_prompt: the function must return a list of token ids (ints >= 0)")
        if not out:
            raise ValueError("Invalid revision_prompt: the function returned no tokens")
        return out

    return checked


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
            if pairs is None or any(not (isinstance(a, str) and isinstance(b, str) and _NAME_RE.match(a))
                                    for a, b in pairs):
                raise ValueError(f"Invalid example_inputs: {example_inputs!r} (accepted: a list of example keys or a "
                                 "mapping {parameter name: example key})")
            for a, b in pairs:
                if _is_quantity(b) or _is_quantity(a):
                    raise ValueError(f"Invalid example_inputs: {a!r} -> {b!r} names a log-prob quantity; pass it "
                                     "through inputs= or keyword_inputs=")
            self.example_inputs = dict(pairs)
        self.keyword_inputs: tuple[str, ...] = ()
        if keyword_inputs is not None:
            keyword_inputs = tuple(keyword_inputs)
            bad = [n for n in keyword_inputs if not _is_quantity(n)]
            if bad:
                raise ValueError(f"Invalid keyword_inputs: unknown quantity {bad[0]!r} (accepted: {_ACCEPTED})")
        if inputs is not None:
            inputs = tuple(inputs)
            bad = [n for n in inputs if not _is_quantity(n)]
            if bad:
                raise ValueError(f"Invalid inputs: unknown quantity {bad[0]!r} (accepted: {_ACCEPTED})")
            self.inputs = inputs
        else:
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = [p for p in positional if p.default is p.empty]
            named = [p.name for p in required if _is_quantity(p.name)]
            if len(named) == len(required) and required:
                self.inputs = tuple(named)
            elif len(required) == 4:
                self.inputs = _DPO_ORDER
            elif len(required) == 2:
                self.inputs = _DPO_ORDER[:2]
            else:
                raise ValueError(f"Invalid fn: cannot tell which log-probs {getattr(fn, '__name__', fn)!r} takes "
                                 f"from its signature; pass inputs=(names from {_ACCEPTED})")
        if keyword_inputs is not None:
            self.keyword_inputs = keyword_inputs
        else:  # required keyword-only quantities; optional ones change an objective's form, so opt in
            self.keyword_inputs = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty
                                        and _is_quantity(p.name) and p.name not in hyperparameters
                                        and p.name not in self.example_inputs)
        used = self.inputs + self.keyword_inputs
        self.needs_reference = any(n.startswith("ref_") and _extra_model_of(n) is None for n in used)
        #: extra frozen models whose log-probs the objective takes (trainer's ``extra_models`` keys)
        self.extra_models: tuple[str, ...] = tuple(dict.fromkeys(m for m in map(_extra_model_of, used) if m))
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


#: what ``save_checkpoint`` writes: ``{"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, ...}``
CHECKPOINT_FORMAT = "gradwise.PreferenceTrainer"
#: 2: reference caches keyed by content only (1: untagged, caches keyed by example id where one was given)
CHECKPOINT_VERSION = 2
_LEGACY_KEYS = ("model", "optimizer", "step", "rng")
_EXPECTED_CHECKPOINT = (f"a {CHECKPOINT_FORMAT} checkpoint (format version <= {CHECKPOINT_VERSION}) written by "
                        "PreferenceTrainer.save_checkpoint, with keys 'model', 'optimizer', 'scheduler', 'step', "
                        "'rng', 'ref_cache', ...")


def _check_module_state(sd, module: nn.Module, what: str, bad: Callable[[str], ValueError]) -> None:
    """Raise ``bad(...)`` unless ``sd`` has exactly ``module``'s state_dict names, each with its shape."""
    if not isinstance(sd, Mapping) or not all(torch.is_tensor(v) for v in sd.values()):
        raise bad(f"its {what!r} is not a state_dict of tensors")
    mine = module.state_dict()
    missing = [k for k in mine if k not in sd]
    extra = [k for k in sd if k not in mine]
    if missing or extra:
        raise bad(f"its {what!r} does not match this trainer's {what}: missing {missing[:5]}, unexpected "
                  f"{extra[:5]}")
    for k, v in mine.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise bad(f"its {what!r} has {k!r} of shape {tuple(sd[k].shape)}, this trainer's {what} "
                      f"{tuple(v.shape)}")


def _check_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"Invalid {name}: {v!r} (accepted: an int >= {lo})")
    return v


def _infer_vocab_size(model: nn.Module) -> int | None:
    """The number of token ids ``model`` embeds, where it says so: a Hugging Face model's input
    embeddings (or ``config.vocab_size``), else its only ``nn.Embedding``; None when it cannot tell
    (several embeddings, e.g. token and position, or none)."""
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    v = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return v
    embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return embs[0].num_embeddings if len(embs) == 1 else None


def _default_forward(model: nn.Module) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs_ok = any(p.kind is p.VAR_KEYWORD for p in params.values())
    pass_mask = "attention_mask" in params or kwargs_ok
    no_cache = "use_cache" in params

    def forward(m: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        kw = {}
        if pass_mask:
            kw["attention_mask"] = attention_mask
        if no_cache:
            kw["use_cache"] = False
        out = m(input_ids, **kw)
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out

    return forward


class PreferenceTrainer:
    """Train ``model`` on preference data with a pairwise ``objective``.

    Args:
        model: any ``nn.Module`` mapping token ids [N, T] to logits [N, T, V]
            (a tensor, an object with ``.logits`` such as a Hugging Face
            ``AutoModelForCausalLM`` output, or a tuple whose first item is the
            logits). ``attention_mask`` is passed when its ``forward`` accepts
            it (``forward=`` overrides the call).
        objective: a function of per-pair log-probs or a
            :class:`PreferenceObjective` (plain functions are wrapped; see there
            for how inputs are matched and rewards defined).
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters
            (gradwise's or torch's).
        ref_model: frozen reference (put in eval mode, ``requires_grad`` off);
            default: a deep copy of ``model`` taken now, made only when the
            objective needs reference log-probs (its weights then go into
            checkpoints).
        extra_models: further frozen models whose log-probs the objective
            takes, by name: ``{"prev": pi_t}`` gives ``prev_chosen_logps``,
            ``prev_rejected_logps``, ``prev_chosen_avg_logps``,
            ``prev_rejected_avg_logps`` (INPO, DNO, ...). Each is put in eval
            mode with ``requires_grad`` off, run without gradient only on
            cache misses, and cached per sequence like the reference
            (``extra_cache[name]``). Models the objective does not take are
            ignored with a warning; a name it takes but is not given is a
            ``ValueError``. They are not saved in checkpoints (their caches
            are): pass the same models when resuming.
        revision_prompt: how revision prompts are built when the objective
            takes :data:`REVISION_QUANTITIES` (SRPO): a separator token id or a
            list of ids (``prompt + draft + separator``, see
            :func:`build_revision_prompt`), or a function ``(prompt, draft) ->
            ids``. The revision rows (``y_a`` after ``revision_prompt(x,
            y_b)``) go through the policy in the same forward pass as the pair;
            the reference's are cached by content. Truncation applies to them
            as to the pairs (the revision prompt keeps its last
            ``max_prompt_length`` tokens). Required by such objectives, ignored
            (with a warning) by the others.
        reference_free: use 0 for every reference log-prob (TRL's
            ``reference_free``): no reference model, no reference forward.
            Objectives that take no reference quantity never use one anyway.
        beta: reward scale for the metrics; also passed to the objective when
            it takes a ``beta`` that is not set yet. Default: the objective's.
        batch_size: examples per micro-batch (one forward pass); an optimizer
            step sees ``batch_size * grad_accum_steps`` examples (the Hugging
            Face convention).
        grad_accum_steps: micro-batches per optimizer step.
        pad_token_id: padding id (masked out, so any valid id works).
        max_length, max_prompt_length: truncation, see
            :func:`~gradwise.preference.logprobs.collate_preferences`.
        ranked_strategy: pairs formed from ranked lists: ``"all"``,
            ``"adjacent"`` or ``"best_vs_rest"``.
        scheduler: optional LR scheduler, stepped after each optimizer step.
        max_grad_norm: optional gradient clipping (total 2-norm).
        shuffle, seed: the data order of epoch ``e`` is a permutation drawn
            from ``(seed, e)`` alone.
        disable_dropout: set ``p = 0`` on every ``nn.Dropout`` of the model
            (in place) and the reference, as the DPO authors' code and TRL do
            by default; ``False`` keeps dropout in the policy's training steps
            (the torch RNG state is checkpointed, so resumes stay exact).
        progress: show a progress bar (rich) during ``train``.
        device: where batches (and the models) go.
        forward: ``(model, input_ids, attention_mask) -> logits`` override.
        callback: called with each step's metrics dict.
        vocab_size: token ids must be below it (a ``ValueError`` naming the
            example and field otherwise, not an ``IndexError`` from inside the
            embedding). Default: read from the model (a Hugging Face model's
            input embeddings or ``config.vocab_size``, else its only
            ``nn.Embedding``); when it cannot be read, ids are checked against
            the logits' last dimension after the forward pass.

    Token ids must be integers ``>= 0``: floats (even ``3.0``) are refused
    rather than truncated, and so is ``-100`` (a label mask value, not a
    token).

    Metrics per optimizer step (``train`` returns them; ``history`` keeps
    all): ``loss`` (mean per-pair loss), ``reward_accuracy`` (mean of
    ``chosen_reward > rejected_reward``), ``reward_margin`` (mean of
    ``chosen_reward - rejected_reward``), ``chosen_reward``,
    ``rejected_reward``, ``chosen_logps``, ``rejected_logps`` (means of summed
    policy log-probs), ``pairs``, ``step``, ``epoch``, ``lr``. They are read
    back from the device once per step; micro-batches with sequences not yet
    in a frozen model's cache add one read each (:meth:`precompute_reference`
    avoids them).

    Example:
        >>> trainer = PreferenceTrainer(model, dpo_loss, torch.optim.AdamW(model.parameters(), 1e-4),
        ...                             beta=0.1, batch_size=8, pad_token_id=0)   # doctest: +SKIP
        >>> trainer.train(dataset, epochs=1); trainer.evaluate(eval_dataset)     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, *,
                 ref_model: nn.Module | None = None, extra_models: Mapping[str, nn.Module] | None = None,
                 revision_prompt: Callable | Sequence[int] | int | None = None,
                 reference_free: bool = False, beta: float | None = None,
                 batch_size: int = 8, grad_accum_steps: int = 1, pad_token_id: int = 0,
                 max_length: int | None = None, max_prompt_length: int | None = None,
                 ranked_strategy: str = "all", scheduler=None, max_grad_norm: float | None = None,
                 shuffle: bool = True, seed: int = 0, disable_dropout: bool = True, progress: bool = True,
                 device: str | torch.device = "cpu",
                 forward: Callable | None = None, callback: Callable[[dict], None] | None = None,
                 vocab_size: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Invalid optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if vocab_size is not None:
            _check_int("vocab_size", vocab_size)
        #: token ids must be below this (None: checked against the logits after each forward)
        self.vocab_size = vocab_size if vocab_size is not None else _infer_vocab_size(model)
        if isinstance(objective, PreferenceObjective):  # a copy: the trainer may set its beta
            objective = copy.copy(objective)
            objective.hyperparameters = dict(objective.hyperparameters)
        else:
            objective = PreferenceObjective(objective)
        self.objective = objective
        if beta is not None:
            if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
                raise ValueError(f"Invalid beta: {beta!r} (accepted: a finite number > 0)")
            set_b = self.objective.hyperparameters.get("beta")
            if set_b is not None and float(set_b) != float(beta):
                raise ValueError(f"Invalid beta: {beta!r} differs from the objective's beta={set_b!r}")
            if set_b is None and "beta" in self.objective._param_names:
                self.objective.hyperparameters["beta"] = beta
        self.beta = float(beta) if beta is not None else (self.objective.default_beta() or 1.0)
        if not isinstance(reference_free, bool):
            raise ValueError(f"Invalid reference_free: {reference_free!r} (accepted: True or False)")
        self.batch_size = _check_int("batch_size", batch_size)
        self.grad_accum_steps = _check_int("grad_accum_steps", grad_accum_steps)
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"Invalid pad_token_id: {pad_token_id!r} (accepted: an int >= 0)")
        for name, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
            if v is not None:
                _check_int(name, v)
        if ranked_strategy not in ("all", "adjacent", "best_vs_rest"):
            raise ValueError(f"Invalid ranked_strategy: {ranked_strategy!r} "
                             "(accepted: 'all', 'adjacent', 'best_vs_rest')")
        if max_grad_norm is not None and (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
                                          or not max_grad_norm > 0):
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (accepted: None or a number > 0)")
        _check_int("seed", seed, lo=0)
        if not isinstance(disable_dropout, bool):
            raise ValueError(f"Invalid disable_dropout: {disable_dropout!r} (accepted: True or False)")
        if disable_dropout:
            for mod in model.modules():
                if isinstance(mod, nn.modules.dropout._DropoutNd):
                    mod.p = 0.0
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.reference_free = reference_free
        self.uses_reference = self.objective.needs_reference and not reference_free
        self._owns_ref = False
        if ref_model is not None and ref_model is model:
            raise ValueError("Invalid ref_model: the policy itself (leave ref_model=None for a frozen copy)")
        if self.uses_reference:
            if ref_model is None:
                ref_model = copy.deepcopy(model)
                self._owns_ref = True
            ref_model = ref_model.to(self.device).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        elif ref_model is not None:
            warnings.warn("ref_model is ignored: the objective takes no reference log-probs"
                          + (" (reference_free=True)" if reference_free else ""), stacklevel=2)
            ref_model = None
        self.ref_model = ref_model
        if extra_models is None:
            extra_models = {}
        if not isinstance(extra_models, Mapping):
            raise ValueError(f"Invalid extra_models: expected a mapping {{name: model}}, got {type(extra_models).__name__}")
        for name, m in extra_models.items():
            if not isinstance(name, str) or not _NAME_RE.match(name) or name in _RESERVED:
                raise ValueError(f"Invalid extra_models: name {name!r} (accepted: an identifier other than "
                                 f"{', '.join(map(repr, _RESERVED))})")
            if not isinstance(m, nn.Module):
                raise ValueError(f"Invalid extra_models[{name!r}]: expected an nn.Module, got {type(m).__name__}")
            if m is model:
                raise ValueError(f"Invalid extra_models[{name!r}]: the policy itself (pass a frozen copy)")
            policy_ids = {id(p) for p in model.parameters()}
            if any(id(p) in policy_ids for p in m.parameters()):
                # it would be frozen below, and the policy's own parameters with it
                raise ValueError(f"Invalid extra_models[{name!r}]: shares parameters with the policy (pass a "
                                 "frozen copy, e.g. gradwise.preference.frozen_copy(model))")
        missing = [n for n in self.objective.extra_models if n not in extra_models]
        if missing:
            raise ValueError(f"Invalid extra_models: objective {self.objective.name} takes log-probs of "
                             f"{missing[0]!r} ({missing[0]}_chosen_logps, ...); pass extra_models="
                             f"{{{missing[0]!r}: model}}")
        unused = [n for n in extra_models if n not in self.objective.extra_models]
        if unused:
            warnings.warn(f"extra_models {unused} ignored: objective {self.objective.name} takes no log-probs of "
                          "them", stacklevel=2)
        self.extra_models: dict[str, nn.Module] = {}
        for name in self.objective.extra_models:
            m = extra_models[name].to(self.device).eval()
            for prm in m.parameters():
                prm.requires_grad_(False)
            self.extra_models[name] = m
        self._revision = _revision_fn(revision_prompt)
        if self.objective.revision_inputs and self._revision is None:
            raise ValueError(f"Invalid revision_prompt: None, but objective {self.objective.name} takes revision "
                             f"log-probs ({self.objective.revision_inputs[0]}, ...); pass a separator token id or a "
                             "function (prompt, draft) -> token ids")
        if revision_prompt is not None and not self.objective.revision_inputs:
            warnings.warn(f"revision_prompt ignored: objective {self.objective.name} takes no revision log-probs",
                          stacklevel=2)
            self._revision = None
        # (a, b) of log pi(y_a | revision_prompt(x, y_b)), a, b in "wl", in a fixed order
        self._revision_combos = tuple(dict.fromkeys(
            (n.split("_")[1], n.split("_")[3]) for n in self.objective.revision_inputs))
        self.pad_token_id = pad_token_id
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.ranked_strategy = ranked_strategy
        self.max_grad_norm = max_grad_norm
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.progress = bool(progress)
        self.forward = forward or _default_forward(model)
        self._ref_forward = forward or (_default_forward(ref_model) if ref_model is not None else None)
        self._extra_forward = {n: forward or _default_forward(m) for n, m in self.extra_models.items()}
        self._needs_keys = self.uses_reference or bool(self.extra_models)
        self.callback = callback
        self._token_level = any(n in _TOKEN_LEVEL for n in self.objective.inputs + self.objective.keyword_inputs)
        self.step = 0
        self.history: list[dict] = []
        #: reference cache: key -> (summed log-prob, averaged log-prob) of one sequence
        self.ref_cache: dict = {}
        self.ref_forward_rows = 0  # sequences the reference model has scored (cache misses)
        #: per extra model: key -> (summed, averaged) log-prob, and sequences scored
        self.extra_cache: dict[str, dict] = {n: {} for n in self.extra_models}
        self.extra_forward_rows: dict[str, int] = {n: 0 for n in self.extra_models}

    # ------------------------------------------------------------------ log-probs

    def _collate(self, examples: Sequence[Mapping], names: Sequence[str] | None = None) -> dict:
        """One micro-batch; ``names`` say where each example comes from (``dataset[17]``) in error messages."""
        batch = collate_preferences(examples, pad_token_id=self.pad_token_id, max_length=self.max_length,
                                    max_prompt_length=self.max_prompt_length, ranked_strategy=self.ranked_strategy,
                                    with_keys=self._needs_keys, vocab_size=self.vocab_size, names=names)
        if names is not None:
            batch["names"] = [example_name(ex, n) for ex, n in zip(examples, names)]
        if self.objective.example_inputs:
            pe = batch["pair_example"]
            fields = {}
            for key in dict.fromkeys(self.objective.example_inputs.values()):
                vals = []
                for e, ex in enumerate(examples):
                    if key not in ex:
                        raise ValueError(f"Invalid example {e}: objective {self.objective.name} reads {key!r} from "
                                         f"every example (example_inputs), but it has keys {sorted(map(str, ex))}")
                    try:
                        vals.append(float(ex[key]))
                    except (TypeError, ValueError):
                        raise ValueError(f"Invalid example {e}: {key!r} must be a number, got "
                                         f"{type(ex[key]).__name__}") from None
                fields[key] = torch.tensor(vals, dtype=torch.float64)[pe]
            batch["fields"] = fields
        if self._revision is not None:
            batch["revision"] = self._revision_batch(examples)
        return batch

    def _revision_batch(self, examples: Sequence[Mapping]) -> dict:
        """Rows ``revision_prompt(x, y_b) + y_a`` for every pair and every (a, b) the objective takes: pair p,
        combination c is row ``p * len(combos) + c``."""
        rows = []
        for ex in examples:
            prompt, comps, pairs = _example_parts(ex, self.ranked_strategy)
            for i, j in pairs:
                y = {"w": comps[i], "l": comps[j]}
                for a, b in self._revision_combos:
                    p, c = _truncate(self._revision(prompt, y[b]), y[a], self.max_length, self.max_prompt_length)
                    if not c:
                        raise ValueError(f"Invalid max_length: {self.max_length} leaves a revised response no tokens "
                                         f"after its revision prompt of {len(p)} tokens (set max_prompt_length)")
                    if self.vocab_size is not None and max(p) >= self.vocab_size:
                        raise ValueError(f"Invalid revision_prompt: it built a prompt with token id {max(p)}; "
                                         f"accepted: 0 <= id < {self.vocab_size} (the model's vocabulary)")
                    rows.append((p, c))
        ids, am, lm = _pad_rows([p + c for p, c in rows], [len(p) for p, _ in rows], self.pad_token_id)
        keys = [sequence_key(p + c, len(p)) for p, c in rows] if self.uses_reference else None
        return {"input_ids": ids, "attention_mask": am, "loss_mask": lm, "keys": keys}

    def _sequence_logps(self, model: nn.Module, fwd: Callable, input_ids: Tensor, attention_mask: Tensor,
                        loss_mask: Tensor, check: tuple | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(summed, averaged, counted tokens, per-token [N, T]) log-probs of each row, from one forward pass.
        ``check = (batch, host input_ids, host attention_mask)``: ids are checked against the logits'
        vocabulary, naming the example of the first bad row."""
        logits = fwd(model, input_ids, attention_mask)
        if not torch.is_tensor(logits) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
            raise ValueError(f"model output: expected logits of shape [{input_ids.shape[0]}, {input_ids.shape[1]}, V], "
                             f"got {tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
        if check is not None:
            batch, host_ids, host_am = check
            V = logits.shape[-1]
            real = host_ids.masked_fill(host_am == 0, 0)  # padding may use any id
            if int(real.max()) >= V:  # host tensor: no device sync
                r = int((real >= V).any(-1).int().argmax())
                if r < len(batch["row_example"]):
                    e = int(batch["row_example"][r])
                    where = batch["names"][e] if "names" in batch else f"examples[{e}]"
                else:
                    where = "a revision prompt (built by revision_prompt)"
                raise ValueError(f"Invalid token ids in {where}: id {int(real[r].max())} is outside the model's "
                                 f"vocabulary (accepted: 0 <= id < {V}, the logits' last dimension)")
        lp = token_logps(logits, input_ids, loss_mask)
        count = loss_mask[:, 1:].sum(-1)
        total = lp.sum(-1)
        return total, total / count.clamp_min(1).to(total.dtype), count, lp

    def _frozen(self, model: nn.Module, fwd: Callable, cache: dict, rows: dict, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, int]:
        """(summed, averaged) log-probs of every row of ``rows`` under a frozen model, and the number of
        sequences it scored: only cache misses are run (one forward), the rest come from ``cache``."""
        keys = rows["keys"]
        missing = [i for i, k in enumerate(keys) if k not in cache]
        if missing:
            idx = torch.tensor(missing, dtype=torch.long)
            am = rows["attention_mask"][idx]
            T = int(am.sum(-1).max())
            ids, am, lm = (rows["input_ids"][idx, :T].to(self.device), am[:, :T].to(self.device),
                           rows["loss_mask"][idx, :T].to(self.device))
            with torch.no_grad():
                s, a, _, _ = self._sequence_logps(model, fwd, ids, am, lm)
            for i, (sv, av) in zip(missing, torch.stack([s, a], 1).tolist()):  # one read back
                cache[keys[i]] = (sv, av)
        vals = torch.tensor([cache[k] for k in keys], dtype=dtype, device=self.device)
        return vals[:, 0], vals[:, 1], len(missing)

    def _reference(self, batch: dict, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Reference (summed, averaged) log-probs of every row; only cache misses are run."""
        s, a, n = self._frozen(self.ref_model, self._ref_forward, self.ref_cache, batch, dtype)
        self.ref_forward_rows += n
        return s, a

    def _extra(self, name: str, batch: dict, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        s, a, n = self._frozen(self.extra_models[name], self._extra_forward[name], self.extra_cache[name], batch,
                               dtype)
        self.extra_forward_rows[name] += n
        return s, a

    def _frozen_quantities(self, batch: dict, dtype: torch.dtype, ci: Tensor | None = None,
                           ri: Tensor | None = None) -> dict:
        """Reference, extra-model and reference-revision quantities of a collated batch."""
        q = {}
        if ci is None:
            ci, ri = batch["chosen_index"].to(self.device), batch["rejected_index"].to(self.device)
        if self.uses_reference:
            rs, ra = self._reference(batch, dtype)
            q.update(ref_chosen_logps=rs[ci], ref_rejected_logps=rs[ri],
                     ref_chosen_avg_logps=ra[ci], ref_rejected_avg_logps=ra[ri])
        for name in self.extra_models:
            es, ea = self._extra(name, batch, dtype)
            q.update({f"{name}_chosen_logps": es[ci], f"{name}_rejected_logps": es[ri],
                      f"{name}_chosen_avg_logps": ea[ci], f"{name}_rejected_avg_logps": ea[ri]})
        rev = batch.get("revision")
        if rev is not None and self.uses_reference:
            rs, _ = self._reference(rev, dtype)
            k = len(self._revision_combos)
            for c, (a, b) in enumerate(self._revision_combos):
                q[f"ref_{a}_given_{b}_logps"] = rs[c::k]
        return q

    def _quantities(self, batch: dict, grad: bool, tokens: bool | None = None) -> dict:
        ids = batch["input_ids"]
        am = batch["attention_mask"]
        lm = batch["loss_mask"]
        rev = batch.get("revision")
        N = ids.shape[0]
        if rev is not None:  # the revision rows join the pair's forward pass
            T = max(ids.shape[1], rev["input_ids"].shape[1])

            def pad(x, r, v):
                out = torch.full((x.shape[0] + r.shape[0], T), v, dtype=x.dtype)
                out[:x.shape[0], :x.shape[1]] = x
                out[x.shape[0]:, :r.shape[1]] = r
                return out
            ids = pad(ids, rev["input_ids"], self.pad_token_id)
            am = pad(am, rev["attention_mask"], 0)
            lm = pad(lm, rev["loss_mask"], False)
        token_level = self._token_level if tokens is None else tokens
        # the longest completion, read from the host copy of the mask (no device sync)
        width = int(lm[:N, 1:].sum(-1).max()) if token_level else 0
        host_ids, host_am = ids, am
        ids, am, lm = ids.to(self.device), am.to(self.device), lm.to(self.device)
        try:
            with torch.set_grad_enabled(grad):
                check = None if self.vocab_size is not None else (batch, host_ids, host_am)
                s, a, n, lp = self._sequence_logps(self.model, self.forward, ids, am, lm, check=check)
        except IndexError as err:  # an embedding lookup past its table (vocabulary unknown to the trainer)
            raise ValueError(f"Invalid token ids: the model failed on ids up to {int(host_ids.max())} ({err}); pass "
                             "the trainer's vocab_size= to have each example's ids checked") from err
        if rev is not None:
            rev_s = s[N:]
            s, a, n, lp, lm = s[:N], a[:N], n[:N], lp[:N], lm[:N]
        ci = batch["chosen_index"].to(self.device)
        ri = batch["rejected_index"].to(self.device)
        q = {"policy_chosen_logps": s[ci], "policy_rejected_logps": s[ri],
             "policy_chosen_avg_logps": a[ci], "policy_rejected_avg_logps": a[ri],
             "chosen_lengths": n[ci].to(s.dtype), "rejected_lengths": n[ri].to(s.dtype)}
        if token_level:  # position 0 is never scored (nothing predicts it)
            packed, pm = _left_pack(lp[:, 1:], lm[:, 1:], width)
            q.update(policy_chosen_token_logps=packed[ci], policy_rejected_token_logps=packed[ri],
                     chosen_mask=pm[ci], rejected_mask=pm[ri])
        if rev is not None:
            k = len(self._revision_combos)
            for c, (x, y) in enumerate(self._revision_combos):
                q[f"improve_{x}_given_{y}_logps"] = rev_s[c::k]
        q.update(self._frozen_quantities(batch, s.dtype, ci, ri))
        if self.objective.needs_reference and not self.uses_reference:  # reference_free=True
            z = torch.zeros_like(q["policy_chosen_logps"]).detach()
            q.update(ref_chosen_logps=z, ref_rejected_logps=z, ref_chosen_avg_logps=z, ref_rejected_avg_logps=z)
            for x, y in self._revision_combos:
                q[f"ref_{x}_given_{y}_logps"] = z
        for key, v in batch.get("fields", {}).items():
            q[key] = v.to(device=self.device, dtype=s.dtype)
        return q

    def compute_logps(self, examples: Sequence[Mapping], *, grad: bool = False) -> dict:
        """Per-pair quantities (see :data:`QUANTITIES`) of a list of examples, from
        one policy forward pass (and cached reference log-probs), token-level ones included,
        plus the extra-model, revision and example quantities the objective takes."""
        return self._quantities(self._collate(examples), grad, tokens=True)

    # ------------------------------------------------------------------ steps

    def _loss_terms(self, q: dict) -> tuple[Tensor, Tensor, Tensor]:
        losses, cr, rr = self.objective(q, beta=self.beta)
        P = q["policy_chosen_logps"].shape[0]
        if not torch.is_tensor(losses) or losses.shape not in ((P,), ()):
            raise ValueError(f"objective {self.objective.name} returned "
                             f"{tuple(losses.shape) if torch.is_tensor(losses) else type(losses).__name__}; "
                             f"expected per-pair losses of shape [{P}]")
        if losses.dim() == 0:  # a mean over the pairs
            losses = losses.expand(P)
        return losses, cr, rr

    @staticmethod
    def _summarize(parts: list[tuple[Tensor, ...]], lr: float | Tensor | None = None) -> dict:
        """The step's metrics, read back from the device in one transfer (the step's one host sync)."""
        losses, cr, rr, cl, rl = (torch.cat([p[i].detach().reshape(-1) for p in parts]) for i in range(5))
        stats = [losses.mean(), (cr > rr).to(cr.dtype).mean(), (cr - rr).mean(), cr.mean(), rr.mean(),
                 cl.mean(), rl.mean()]
        dtype = torch.float32
        for x in (losses, cr, cl):
            dtype = torch.promote_types(dtype, x.dtype)
        if torch.is_tensor(lr):
            stats.append(lr.reshape(()).to(device=losses.device))
        stats = torch.stack([x.to(dtype) for x in stats]).tolist()
        names = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                 "chosen_logps", "rejected_logps")
        out = dict(zip(names, stats))
        out["pairs"] = int(losses.numel())
        if lr is not None:
            out["lr"] = stats[-1] if torch.is_tensor(lr) else lr
        return out

    def _steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / (self.batch_size * self.grad_accum_steps))

    def _order(self, n: int, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def _train_step(self, examples: list, names: list[str] | None = None) -> dict:
        if names is None:
            names = [f"examples[{i}]" for i in range(len(examples))]
        bs = self.batch_size
        # every micro-batch is collated (and its ids checked) before the first forward
        batches = [self._collate(examples[i:i + bs], names[i:i + bs]) for i in range(0, len(examples), bs)]
        total_pairs = sum(int(b["chosen_index"].numel()) for b in batches)
        if total_pairs == 0:
            raise ValueError("a training step has no preference pairs (ranked lists with tied scores only?)")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        parts = []
        for b in batches:
            q = self._quantities(b, grad=True)
            losses, cr, rr = self._loss_terms(q)
            (losses.sum() / total_pairs).backward()
            parts.append((losses, cr, rr, q["policy_chosen_logps"], q["policy_rejected_logps"]))
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (a tensor lr is read with the metrics)
        lr = lr.detach().clone() if torch.is_tensor(lr) else float(lr)
        if self.max_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return self._summarize(parts, lr)

    def train_step(self, examples: Sequence[Mapping]) -> dict:
        """One optimizer step on exactly ``examples`` (split into micro-batches of
        ``batch_size``), for callers that choose the data themselves (the online
        loop). Counts as a step (``step``, ``history``, ``callback``) like those of
        :meth:`train`; its metrics have no ``epoch``."""
        examples = list(examples)
        if not examples:
            raise ValueError("Invalid examples: empty")
        m = self._train_step(examples)
        m["step"] = self.step
        self.history.append(m)
        if self.callback is not None:
            self.callback(m)
        return m

    def train(self, dataset: Sequence[Mapping], *, epochs: int | None = None, steps: int | None = None) -> list[dict]:
        """Train until ``steps`` optimizer steps or ``epochs`` epochs have been
        done **in total** (counted from the start, across resumes; default one
        epoch). Returns the metrics of the steps run by this call.

        ``dataset`` is any sequence (``len`` and indexing) of examples, each a
        pair ``{"prompt", "chosen", "rejected"}`` or a ranked list
        ``{"prompt", "completions", ["scores"]}`` of token-id lists, with an
        optional ``"id"``. Each epoch visits every example once in an order
        drawn from ``(seed, epoch)``; its last step may be smaller.
        """
        n = len(dataset)
        if n == 0:
            raise ValueError("Invalid dataset: empty")
        if epochs is not None and steps is not None:
            raise ValueError("Invalid epochs/steps: give one of them, not both")
        per_epoch = self._steps_per_epoch(n)
        if steps is not None:
            target = _check_int("steps", steps, lo=0)
        else:
            target = _check_int("epochs", 1 if epochs is None else epochs, lo=0) * per_epoch
        per_step = self.batch_size * self.grad_accum_steps
        out: list[dict] = []
        bar = task = None
        if self.progress and target > self.step:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            bar = Progress(TextColumn("[bold]preference[/]"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("{task.description}"), TimeElapsedColumn(), transient=True)
            bar.start()
            task = bar.add_task("", total=target, completed=self.step)
        try:
            order, order_epoch = None, -1
            while self.step < target:
                epoch, k = divmod(self.step, per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = self._order(n, epoch), epoch
                idx = order[k * per_step:(k + 1) * per_step]
                m = self._train_step([dataset[i] for i in idx], [f"dataset[{i}]" for i in idx])
                m.update(step=self.step, epoch=epoch)
                self.history.append(m)
                out.append(m)
                if self.callback is not None:
                    self.callback(m)
                if bar is not None:
                    bar.update(task, completed=self.step,
                               description=f"loss {m['loss']:.4f}  acc {m['reward_accuracy']:.2f}  "
                                           f"margin {m['reward_margin']:.3f}")
        finally:
            if bar is not None:
                bar.stop()
        return out

    def evaluate(self, dataset: Sequence[Mapping], *, batch_size: int | None = None) -> dict:
        """Metrics over ``dataset`` (eval mode, no gradient), averaged over pairs.
        Reference log-probs of evaluation examples are cached too."""
        bs = self.batch_size if batch_size is None else _check_int("batch_size", batch_size)
        if len(dataset) == 0:
            raise ValueError("Invalid dataset: empty")
        was_training = self.model.training
        self.model.eval()
        parts = []
        try:
            with torch.no_grad():
                for i in range(0, len(dataset), bs):
                    js = range(i, min(i + bs, len(dataset)))
                    q = self._quantities(self._collate([dataset[j] for j in js], [f"dataset[{j}]" for j in js]),
                                         grad=False)
                    losses, cr, rr = self._loss_terms(q)
                    parts.append((losses, cr, rr, q["policy_chosen_logps"], q["policy_rejected_logps"]))
        finally:
            self.model.train(was_training)
        return self._summarize(parts)

    def precompute_reference(self, dataset: Sequence[Mapping], *, batch_size: int | None = None) -> int:
        """Fill the reference cache (and the extra models' caches, and the
        reference's revision log-probs) for ``dataset`` now; returns the number of
        sequences the frozen models scored. After this, they are only needed
        for examples not seen here."""
        if not self._needs_keys:
            return 0
        bs = self.batch_size if batch_size is None else _check_int("batch_size", batch_size)
        before = self.ref_forward_rows + sum(self.extra_forward_rows.values())
        for i in range(0, len(dataset), bs):
            js = range(i, min(i + bs, len(dataset)))
            self._frozen_quantities(self._collate([dataset[j] for j in js], [f"dataset[{j}]" for j in js]),
                                    torch.float32)
        return self.ref_forward_rows + sum(self.extra_forward_rows.values()) - before

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything a resume needs (see :meth:`save_checkpoint`), tagged with the checkpoint format and version."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "ref_model": self.ref_model.state_dict() if self._owns_ref else None,
            "step": self.step,
            "rng": rng,
            "ref_cache": dict(self.ref_cache),
            "extra_cache": {n: dict(c) for n, c in self.extra_cache.items()},
            "history": list(self.history),
            "data": {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                     "shuffle": self.shuffle},
        }

    def _check_state(self, state, source: str) -> int:
        """Validate a whole checkpoint before anything is changed; returns its format version.
        Raises ValueError saying what ``state`` is and what was expected."""
        def bad(problem: str) -> ValueError:
            return ValueError(f"Invalid checkpoint {source}: {problem}; expected {_EXPECTED_CHECKPOINT}")

        if not isinstance(state, Mapping):
            raise bad(f"it holds a {type(state).__name__}, not a checkpoint dict")
        fmt = state.get("format")
        if fmt is None:
            if state and all(torch.is_tensor(v) for v in state.values()):
                raise bad(f"it is a bare state_dict of {len(state)} tensors (e.g. {next(iter(state))!r}), such as "
                          "model.state_dict() writes, not a trainer checkpoint")
            if "state" in state and "param_groups" in state:
                raise bad("it is an optimizer state_dict, not a trainer checkpoint")
            if not all(k in state for k in _LEGACY_KEYS):  # checkpoints of version 1 carried no format tag
                raise bad(f"it is a dict with keys {sorted(map(str, state))[:12]}")
            version = 1
        elif fmt != CHECKPOINT_FORMAT:
            raise bad(f"it is a {fmt!r} file")
        else:
            version = state.get("version")
            if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
                raise bad(f"its format version is {version!r}; this gradwise reads versions 1 to "
                          f"{CHECKPOINT_VERSION} (written by a newer gradwise?)")
        missing = [k for k in _LEGACY_KEYS if k not in state]
        if missing:
            raise bad(f"it lacks {', '.join(map(repr, missing))}")
        _check_module_state(state["model"], self.model, "model", bad)
        if state.get("ref_model") is not None and self.ref_model is not None:
            _check_module_state(state["ref_model"], self.ref_model, "ref_model", bad)
        opt = state["optimizer"]
        if not isinstance(opt, Mapping) or not isinstance(opt.get("param_groups"), Sequence) \
                or not isinstance(opt.get("state"), Mapping):
            raise bad("its 'optimizer' is not an optimizer state_dict (keys 'state', 'param_groups')")
        mine = [len(g["params"]) for g in self.optimizer.param_groups]
        theirs = [len(g.get("params", ())) if isinstance(g, Mapping) else -1 for g in opt["param_groups"]]
        if mine != theirs:
            raise bad(f"its optimizer has parameter groups of {theirs} parameters, this trainer's optimizer "
                      f"{mine}")
        sched = state.get("scheduler")
        if sched is not None and not isinstance(sched, Mapping):
            raise bad(f"its 'scheduler' is a {type(sched).__name__}, not a scheduler state_dict")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise bad(f"its 'step' is {step!r}, not an int >= 0")
        rng = state["rng"]
        if not isinstance(rng, Mapping) or not torch.is_tensor(rng.get("cpu")) or rng["cpu"].dtype != torch.uint8:
            raise bad("its 'rng' has no CPU generator state (a uint8 tensor under 'cpu')")
        for key, kind in (("ref_cache", Mapping), ("extra_cache", Mapping), ("history", Sequence), ("data", Mapping)):
            if key in state and not isinstance(state[key], kind):
                raise bad(f"its {key!r} is a {type(state[key]).__name__}")
        if any(not isinstance(c, Mapping) for c in state.get("extra_cache", {}).values()):
            raise bad("its 'extra_cache' holds something other than one cache dict per model")
        return version

    def load_state_dict(self, state: Mapping, *, source: str = "state") -> None:
        """Restore :meth:`state_dict`'s output, all or nothing.

        The whole ``state`` is validated first (format and version, the
        model's and reference's parameter names and shapes, the optimizer's
        parameter groups, step, RNG state, caches); then the optimizer and
        scheduler load, and, should one of them still refuse its state, both
        are put back as they were before the error is raised. Only then do the
        model, reference and trainer state change. So a failing load leaves
        the trainer exactly as it was. ``source`` names the state in errors.
        """
        version = self._check_state(state, source)
        old_opt = self.optimizer.state_dict()  # load_state_dict replaces the state, so these stay intact
        old_sched = None if self.scheduler is None else copy.deepcopy(self.scheduler.state_dict())
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except Exception as err:
            self.optimizer.load_state_dict(old_opt)
            if old_sched is not None:
                self.scheduler.load_state_dict(old_sched)
            raise ValueError(f"Invalid checkpoint {source}: this trainer's {type(self.optimizer).__name__} (or "
                             f"scheduler) refused the saved state ({type(err).__name__}: {err}); nothing was "
                             "loaded") from err
        self.model.load_state_dict(state["model"])  # names and shapes checked above
        if state.get("ref_model") is not None and self.ref_model is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

        def cache(c: Mapping) -> dict:
            # version 1 keyed examples with an "id" by (id, completion index), which repeated ids made
            # wrong; only its content keys (strings) are kept
            return dict(c) if version >= 2 else {k: v for k, v in c.items() if isinstance(k, str)}
        self.ref_cache = cache(state.get("ref_cache", {}))
        saved = state.get("extra_cache", {})
        self.extra_cache = {n: cache(saved.get(n, {})) for n in self.extra_models}
        self.history = list(state.get("history", []))
        mine = {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                "shuffle": self.shuffle}
        if state.get("data", mine) != mine:
            warnings.warn(f"checkpoint data settings {state['data']} differ from this trainer's {mine}: "
                          "the data order will not continue the saved run", stacklevel=2)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write model, optimizer, scheduler, step, RNG state and reference (and extra-model) caches to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (into a trainer built the same way).

        All or nothing (see :meth:`load_state_dict`): a file that cannot be
        read (truncated, not a torch file), that is something else (a bare
        model ``state_dict``, another format or a newer format version) or
        that does not fit this trainer raises one ``ValueError`` saying what
        the file is and what was expected, and leaves model, optimizer and
        trainer as they were.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Invalid checkpoint {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a damaged or foreign file
            raise ValueError(f"Invalid checkpoint {path}: it cannot be read as a torch file, so it is truncated, "
                             f"corrupt or of another format ({type(err).__name__}: {str(err).splitlines()[0][:200]}"
                             f"); expected {_EXPECTED_CHECKPOINT}") from None
        self.load_state_dict(state, source=str(path))
