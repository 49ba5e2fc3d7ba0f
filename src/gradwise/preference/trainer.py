"""A small, explicit trainer for offline preference objectives (DPO family,
SimPO, ...) on any model that maps token ids to logits.

The objective is a pure function of sequence log-probabilities (see
``gradwise.preference``); the trainer only produces those log-probabilities:

* every prompt+completion of a micro-batch goes through the policy in **one**
  forward pass (:func:`~gradwise.preference.logprobs.collate_preferences`:
  rows ``[chosen_1..B, rejected_1..B]`` for pairs; ranked lists add rows and
  pairs);
* reference log-probabilities are computed **once per sequence** (frozen
  reference model, eval mode, ``no_grad``) and cached, keyed by
  ``(example["id"], completion index)`` or, without an ``"id"``, by a digest
  of the sequence's tokens; objectives that take no reference quantity never
  trigger a reference forward, and no reference model is built for them;
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
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from gradwise.preference.logprobs import collate_preferences, token_logps

__all__ = ["PreferenceTrainer", "PreferenceObjective", "QUANTITIES"]

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

    ``hyperparameters`` are passed as keywords on every call
    (``functools.partial`` works too).

    ``fn`` returns per-pair losses [P] (a scalar is read as their mean), or a
    tuple ``(losses, chosen_rewards, rejected_rewards)``. Otherwise the
    rewards reported in the metrics follow ``reward``:

    * ``"ratio"``: ``beta * (policy_logps - ref_logps)`` (DPO's implicit reward),
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
                 keyword_inputs: Sequence[str] | None = None, reward: str | Callable = "auto",
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
        self.keyword_inputs: tuple[str, ...] = ()
        if keyword_inputs is not None:
            keyword_inputs = tuple(keyword_inputs)
            bad = [n for n in keyword_inputs if n not in QUANTITIES]
            if bad:
                raise ValueError(f"Invalid keyword_inputs: unknown quantity {bad[0]!r} "
                                 f"(accepted: {', '.join(QUANTITIES)})")
        if inputs is not None:
            inputs = tuple(inputs)
            bad = [n for n in inputs if n not in QUANTITIES]
            if bad:
                raise ValueError(f"Invalid inputs: unknown quantity {bad[0]!r} (accepted: {', '.join(QUANTITIES)})")
            self.inputs = inputs
        else:
            positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = [p for p in positional if p.default is p.empty]
            named = [p.name for p in required if p.name in QUANTITIES]
            if len(named) == len(required) and required:
                self.inputs = tuple(named)
            elif len(required) == 4:
                self.inputs = _DPO_ORDER
            elif len(required) == 2:
                self.inputs = _DPO_ORDER[:2]
            else:
                raise ValueError(f"Invalid fn: cannot tell which log-probs {getattr(fn, '__name__', fn)!r} takes "
                                 f"from its signature; pass inputs=(names from {', '.join(QUANTITIES)})")
        if keyword_inputs is not None:
            self.keyword_inputs = keyword_inputs
        else:  # required keyword-only quantities; optional ones change an objective's form, so opt in
            self.keyword_inputs = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty
                                        and p.name in QUANTITIES and p.name not in hyperparameters)
        used = self.inputs + self.keyword_inputs
        self.needs_reference = any(n.startswith("ref_") for n in used)
        if reward == "auto":
            if any(n in ("ref_chosen_logps", "ref_rejected_logps") for n in used):
                reward = "ratio"
            elif self.needs_reference:
                reward = "avg_ratio"
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
                rewards = (q["policy_chosen_logps"] - q["ref_chosen_logps"],
                           q["policy_rejected_logps"] - q["ref_rejected_logps"])
            elif r == "avg_ratio":
                rewards = (q["policy_chosen_avg_logps"] - q["ref_chosen_avg_logps"],
                           q["policy_rejected_avg_logps"] - q["ref_rejected_avg_logps"])
            elif r == "avg_logps":
                rewards = (q["policy_chosen_avg_logps"], q["policy_rejected_avg_logps"])
            else:
                rewards = (q["policy_chosen_logps"], q["policy_rejected_logps"])
            rewards = tuple(beta * x.detach() for x in rewards)
        return out, rewards[0].detach(), rewards[1].detach()


def _check_int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"Invalid {name}: {v!r} (accepted: an int >= {lo})")
    return v


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

    Metrics per optimizer step (``train`` returns them; ``history`` keeps
    all): ``loss`` (mean per-pair loss), ``reward_accuracy`` (mean of
    ``chosen_reward > rejected_reward``), ``reward_margin`` (mean of
    ``chosen_reward - rejected_reward``), ``chosen_reward``,
    ``rejected_reward``, ``chosen_logps``, ``rejected_logps`` (means of summed
    policy log-probs), ``pairs``, ``step``, ``epoch``, ``lr``.

    Example:
        >>> trainer = PreferenceTrainer(model, dpo_loss, torch.optim.AdamW(model.parameters(), 1e-4),
        ...                             beta=0.1, batch_size=8, pad_token_id=0)   # doctest: +SKIP
        >>> trainer.train(dataset, epochs=1); trainer.evaluate(eval_dataset)     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, objective, optimizer: torch.optim.Optimizer, *,
                 ref_model: nn.Module | None = None, reference_free: bool = False, beta: float | None = None,
                 batch_size: int = 8, grad_accum_steps: int = 1, pad_token_id: int = 0,
                 max_length: int | None = None, max_prompt_length: int | None = None,
                 ranked_strategy: str = "all", scheduler=None, max_grad_norm: float | None = None,
                 shuffle: bool = True, seed: int = 0, disable_dropout: bool = True, progress: bool = True,
                 device: str | torch.device = "cpu",
                 forward: Callable | None = None, callback: Callable[[dict], None] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Invalid optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
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
        self.callback = callback
        self._token_level = any(n in _TOKEN_LEVEL for n in self.objective.inputs + self.objective.keyword_inputs)
        self.step = 0
        self.history: list[dict] = []
        #: reference cache: key -> (summed log-prob, averaged log-prob) of one sequence
        self.ref_cache: dict = {}
        self.ref_forward_rows = 0  # sequences the reference model has scored (cache misses)

    # ------------------------------------------------------------------ log-probs

    def _collate(self, examples: Sequence[Mapping]) -> dict:
        return collate_preferences(examples, pad_token_id=self.pad_token_id, max_length=self.max_length,
                                   max_prompt_length=self.max_prompt_length, ranked_strategy=self.ranked_strategy,
                                   with_keys=self.uses_reference)

    def _sequence_logps(self, model: nn.Module, fwd: Callable, input_ids: Tensor, attention_mask: Tensor,
                        loss_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(summed, averaged, counted tokens, per-token [N, T]) log-probs of each row, from one forward pass."""
        logits = fwd(model, input_ids, attention_mask)
        if not torch.is_tensor(logits) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
            raise ValueError(f"model output: expected logits of shape [{input_ids.shape[0]}, {input_ids.shape[1]}, V], "
                             f"got {tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
        lp = token_logps(logits, input_ids, loss_mask)
        count = loss_mask[:, 1:].sum(-1)
        total = lp.sum(-1)
        return total, total / count.clamp_min(1).to(total.dtype), count, lp

    @staticmethod
    def _packed(lp: Tensor, loss_mask: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
        """Completion token log-probs moved to the left: [N, Tc] and its mask."""
        m = loss_mask.clone()
        m[:, 0] = False  # nothing predicts the first token
        start = torch.where(m.any(-1), m.int().argmax(-1), torch.zeros_like(count))
        tc = max(1, int(count.max())) if count.numel() else 1
        steps = torch.arange(tc, device=lp.device)
        idx = (start[:, None] + steps[None]).clamp(max=lp.shape[1] - 1)
        mask = steps[None] < count[:, None]
        return torch.where(mask, lp.gather(1, idx), torch.zeros((), dtype=lp.dtype, device=lp.device)), mask

    def _reference(self, batch: dict, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Reference (summed, averaged) log-probs of every row; only cache misses are run."""
        keys = batch["keys"]
        missing = [i for i, k in enumerate(keys) if k not in self.ref_cache]
        if missing:
            idx = torch.tensor(missing, dtype=torch.long)
            am = batch["attention_mask"][idx]
            T = int(am.sum(-1).max())
            ids, am, lm = (batch["input_ids"][idx, :T].to(self.device), am[:, :T].to(self.device),
                           batch["loss_mask"][idx, :T].to(self.device))
            with torch.no_grad():
                s, a, _, _ = self._sequence_logps(self.ref_model, self._ref_forward, ids, am, lm)
            for i, sv, av in zip(missing, s.tolist(), a.tolist()):
                self.ref_cache[keys[i]] = (sv, av)
            self.ref_forward_rows += len(missing)
        vals = torch.tensor([self.ref_cache[k] for k in keys], dtype=dtype, device=self.device)
        return vals[:, 0], vals[:, 1]

    def _quantities(self, batch: dict, grad: bool, tokens: bool | None = None) -> dict:
        ids = batch["input_ids"].to(self.device)
        am = batch["attention_mask"].to(self.device)
        lm = batch["loss_mask"].to(self.device)
        with torch.set_grad_enabled(grad):
            s, a, n, lp = self._sequence_logps(self.model, self.forward, ids, am, lm)
        ci = batch["chosen_index"].to(self.device)
        ri = batch["rejected_index"].to(self.device)
        q = {"policy_chosen_logps": s[ci], "policy_rejected_logps": s[ri],
             "policy_chosen_avg_logps": a[ci], "policy_rejected_avg_logps": a[ri],
             "chosen_lengths": n[ci].to(s.dtype), "rejected_lengths": n[ri].to(s.dtype)}
        if self._token_level if tokens is None else tokens:
            packed, pm = self._packed(lp, lm, n)
            q.update(policy_chosen_token_logps=packed[ci], policy_rejected_token_logps=packed[ri],
                     chosen_mask=pm[ci], rejected_mask=pm[ri])
        if self.uses_reference:
            rs, ra = self._reference(batch, s.dtype)
            q.update(ref_chosen_logps=rs[ci], ref_rejected_logps=rs[ri],
                     ref_chosen_avg_logps=ra[ci], ref_rejected_avg_logps=ra[ri])
        elif self.objective.needs_reference:  # reference_free=True
            z = torch.zeros_like(q["policy_chosen_logps"]).detach()
            q.update(ref_chosen_logps=z, ref_rejected_logps=z, ref_chosen_avg_logps=z, ref_rejected_avg_logps=z)
        return q

    def compute_logps(self, examples: Sequence[Mapping], *, grad: bool = False) -> dict:
        """Per-pair quantities (see :data:`QUANTITIES`) of a list of examples, from
        one policy forward pass (and cached reference log-probs), token-level ones included."""
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
    def _summarize(parts: list[tuple[Tensor, ...]]) -> dict:
        losses, cr, rr, cl, rl = (torch.cat([p[i].detach().reshape(-1) for p in parts]) for i in range(5))
        stats = torch.stack([losses.mean(), (cr > rr).to(cr.dtype).mean(), (cr - rr).mean(), cr.mean(), rr.mean(),
                             cl.mean(), rl.mean()]).tolist()
        names = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
                 "chosen_logps", "rejected_logps")
        out = dict(zip(names, stats))
        out["pairs"] = int(losses.numel())
        return out

    def _steps_per_epoch(self, n: int) -> int:
        return math.ceil(n / (self.batch_size * self.grad_accum_steps))

    def _order(self, n: int, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def _train_step(self, examples: list) -> dict:
        micro = [examples[i:i + self.batch_size] for i in range(0, len(examples), self.batch_size)]
        batches = [self._collate(m) for m in micro]
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
        lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses
        if self.max_grad_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        out = self._summarize(parts)
        out["lr"] = lr
        return out

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
                examples = [dataset[i] for i in order[k * per_step:(k + 1) * per_step]]
                m = self._train_step(examples)
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
                    q = self._quantities(self._collate([dataset[j] for j in range(i, min(i + bs, len(dataset)))]),
                                         grad=False)
                    losses, cr, rr = self._loss_terms(q)
                    parts.append((losses, cr, rr, q["policy_chosen_logps"], q["policy_rejected_logps"]))
        finally:
            self.model.train(was_training)
        return self._summarize(parts)

    def precompute_reference(self, dataset: Sequence[Mapping], *, batch_size: int | None = None) -> int:
        """Fill the reference cache for ``dataset`` now; returns the number of
        sequences the reference model scored. After this, the reference model
        is only needed for examples not seen here."""
        if not self.uses_reference:
            return 0
        bs = self.batch_size if batch_size is None else _check_int("batch_size", batch_size)
        before = self.ref_forward_rows
        for i in range(0, len(dataset), bs):
            b = self._collate([dataset[j] for j in range(i, min(i + bs, len(dataset)))])
            self._reference(b, torch.float32)
        return self.ref_forward_rows - before

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "ref_model": self.ref_model.state_dict() if self._owns_ref else None,
            "step": self.step,
            "rng": rng,
            "ref_cache": dict(self.ref_cache),
            "history": list(self.history),
            "data": {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                     "shuffle": self.shuffle},
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("ref_model") is not None and self.ref_model is not None:
            self.ref_model.load_state_dict(state["ref_model"])
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.ref_cache = dict(state.get("ref_cache", {}))
        self.history = list(state.get("history", []))
        mine = {"seed": self.seed, "batch_size": self.batch_size, "grad_accum_steps": self.grad_accum_steps,
                "shuffle": self.shuffle}
        if state.get("data", mine) != mine:
            warnings.warn(f"checkpoint data settings {state['data']} differ from this trainer's {mine}: "
                          "the data order will not continue the saved run", stacklevel=2)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write model, optimizer, scheduler, step, RNG state and reference cache to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` (into a trainer built the same way)."""
        self.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
