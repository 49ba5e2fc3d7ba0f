"""The preference trainer: construction, the log-probs of a step, ``train_step``/``train``/``evaluate``.

Its pieces live beside it: objective binding (:mod:`.binding`), input validation and collation
(:mod:`.inputs`), frozen-model caches (:mod:`.frozen`) and checkpoints (:mod:`.checkpoint`); see
:mod:`gradwise.preference.trainer` for the overview and docs/preference_trainer.md for a walk-through.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_bool, check_choice, check_int, check_positive, check_real
from gradwise.preference.logprobs import left_pack
from gradwise.preference.trainer.binding import TOKEN_LEVEL_QUANTITIES, PreferenceObjective
from gradwise.preference.trainer.checkpoint import CheckpointMixin
from gradwise.preference.trainer.frozen import FrozenModelsMixin, score_rows
from gradwise.preference.trainer.inputs import InputsMixin, default_forward, infer_vocab_size, revision_settings

__all__ = ["PreferenceTrainer"]


class PreferenceTrainer(InputsMixin, FrozenModelsMixin, CheckpointMixin):
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
            check_int("vocab_size", vocab_size, lo=1)
        #: token ids must be below this (None: checked against the logits after each forward)
        self.vocab_size = vocab_size if vocab_size is not None else infer_vocab_size(model)
        if isinstance(objective, PreferenceObjective):  # a copy: the trainer may set its beta
            objective = copy.copy(objective)
            objective.hyperparameters = dict(objective.hyperparameters)
        else:
            objective = PreferenceObjective(objective)
        self.objective = objective
        if beta is not None:
            check_positive("beta", beta)
            set_b = self.objective.hyperparameters.get("beta")
            if set_b is not None and float(set_b) != float(beta):
                raise ValueError(f"Invalid beta: {beta!r} differs from the objective's beta={set_b!r}")
            if set_b is None and "beta" in self.objective.parameters:
                self.objective.hyperparameters["beta"] = beta
        self.beta = float(beta) if beta is not None else (self.objective.default_beta() or 1.0)
        check_bool("reference_free", reference_free)
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        self.grad_accum_steps = check_int("grad_accum_steps", grad_accum_steps, lo=1)
        check_int("pad_token_id", pad_token_id, lo=0)
        for name, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
            if v is not None:
                check_int(name, v, lo=1)
        check_choice("ranked_strategy", ranked_strategy, ("all", "adjacent", "best_vs_rest"))
        if max_grad_norm is not None:
            check_real("max_grad_norm", max_grad_norm, 0.0, lo_open=True, finite=False)
        check_int("seed", seed, lo=0)
        check_bool("disable_dropout", disable_dropout)
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
        self._init_frozen_models(model, ref_model, extra_models, forward)
        # the revision prompt builder (None unless the objective takes revision log-probs) and the (a, b) of
        # log pi(y_a | revision_prompt(x, y_b)) it takes, a, b in "wl", in a fixed order
        self._revision, self._revision_combos = revision_settings(revision_prompt, self.objective)
        self.pad_token_id = pad_token_id
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.ranked_strategy = ranked_strategy
        self.max_grad_norm = max_grad_norm
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.progress = bool(progress)
        self.forward = forward or default_forward(model)
        self.callback = callback
        self._token_level = any(n in TOKEN_LEVEL_QUANTITIES
                                for n in self.objective.inputs + self.objective.keyword_inputs)
        self.step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ log-probs

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
                s, a, n, lp = score_rows(self.model, self.forward, ids, am, lm, check=check)
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
            packed, pm = left_pack(lp[:, 1:], lm[:, 1:], width)
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
            target = check_int("steps", steps, lo=0)
        else:
            target = check_int("epochs", 1 if epochs is None else epochs, lo=0) * per_epoch
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
        bs = self.batch_size if batch_size is None else check_int("batch_size", batch_size, lo=1)
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
