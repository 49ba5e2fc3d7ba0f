"""The online loop: iterations of sample -> judge -> pair -> update for an online method, keeping the
iterates the method needs (``pi_ref``, ``pi_t``, ``pi_{t-1}``).

The loop owns the data order, the kept iterates, the step counter and the metrics; what an iteration
does is the method's (its hooks, see :mod:`gradwise.preference.online.methods`), so a new method needs
no change here.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int
from gradwise.preference.online.methods import OnlineMethod, online_method
from gradwise.preference.online.oracle import PreferenceOracle, build_pairs
from gradwise.preference.online.sampling import frozen_copy, generate, token_ids
from gradwise.preference.trainer import PreferenceTrainer

__all__ = ["OnlinePreferenceLoop"]


class OnlinePreferenceLoop:
    """Iterations of sample → label → pair → update for an :class:`OnlineMethod`.

    Args:
        policy: causal LM (ids ``[N, T]`` → logits ``[N, T, V]``) being trained.
        method: an :class:`OnlineMethod` or a name of :data:`ONLINE_METHODS` (then pass its
            hyperparameters in ``method_kwargs``).
        optimizer: over the policy's parameters.
        oracle: :class:`PreferenceOracle`.
        prompts: the prompt pool (token-id lists).
        ref_model: ``pi_ref`` (default: a frozen copy of ``policy`` taken now, when the method keeps it).
        prompts_per_iteration: prompts drawn (without replacement, from the loop's generator) per
            iteration; default all.
        samples_per_prompt: K responses per prompt from ``pi_t``.
        pair_strategy, label: see :func:`build_pairs`.
        steps_per_iteration: optimizer steps per iteration; batch_size: pairs per step (``"iterative"``
            methods shuffle the iteration's pairs, epoch after epoch).
        max_new_tokens, temperature, top_k, eos_token_id, pad_token_id: sampling (:func:`generate`).
        offline_pairs: HyPO's offline preference pairs ``{"prompt", "chosen", "rejected"}``.
        max_grad_norm: optional clipping. seed: the loop's generator (prompts, sampling, order).

    ``run_iteration()`` returns the iteration's metrics; ``history`` keeps them. After an iteration the
    frozen ``pi_t`` is replaced by a copy of the updated policy (and the old one becomes ``pi_{t-1}``
    for APO) at the start of the next one.

    Example:
        >>> loop = OnlinePreferenceLoop(lm, "inpo", torch.optim.Adam(lm.parameters(), 1e-3), judge, prompts,
        ...                             method_kwargs={"eta": 0.1, "tau": 0.05}, max_new_tokens=8,
        ...                             eos_token_id=3)                     # doctest: +SKIP
        >>> loop.run(3)                                                      # doctest: +SKIP
    """

    def __init__(self, policy: nn.Module, method: OnlineMethod | str, optimizer: torch.optim.Optimizer,
                 oracle: PreferenceOracle, prompts: Sequence[Sequence[int]], *,
                 method_kwargs: Mapping | None = None, ref_model: nn.Module | None = None,
                 prompts_per_iteration: int | None = None, samples_per_prompt: int = 4,
                 pair_strategy: str = "best_vs_worst", label: str = "argmax", steps_per_iteration: int = 50,
                 batch_size: int = 32, max_new_tokens: int = 16, temperature: float = 1.0,
                 top_k: int | None = None, eos_token_id: int | None = None, pad_token_id: int = 0,
                 offline_pairs: Sequence[Mapping] | None = None, max_grad_norm: float | None = None,
                 seed: int = 0, callback: Callable[[dict], None] | None = None) -> None:
        if not isinstance(policy, nn.Module):
            raise ValueError(f"Invalid policy: expected an nn.Module, got {type(policy).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"Invalid optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(oracle, PreferenceOracle):
            raise ValueError(f"Invalid oracle: expected a PreferenceOracle, got {type(oracle).__name__}")
        if isinstance(method, str):
            method = online_method(method, **dict(method_kwargs or {}))
        elif not isinstance(method, OnlineMethod):
            raise ValueError(f"Invalid method: expected an OnlineMethod or a name, got {type(method).__name__}")
        elif method_kwargs:
            raise ValueError("Invalid method_kwargs: only with a method name")
        self.prompts = [token_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not self.prompts:
            raise ValueError("Invalid prompts: empty")
        self.samples_per_prompt = check_int("samples_per_prompt", samples_per_prompt, lo=2)
        self.steps_per_iteration = check_int("steps_per_iteration", steps_per_iteration, lo=1)
        self.batch_size = check_int("batch_size", batch_size, lo=1)
        self.prompts_per_iteration = (len(self.prompts) if prompts_per_iteration is None
                                      else min(check_int("prompts_per_iteration", prompts_per_iteration, lo=1),
                                               len(self.prompts)))
        if pair_strategy not in ("best_vs_worst", "random") or label not in ("argmax", "sample"):
            build_pairs([], [], oracle, strategy=pair_strategy, label=label)  # raises the ValueError
        self.policy, self.method, self.optimizer, self.oracle = policy, method, optimizer, oracle
        self.pair_strategy, self.label = pair_strategy, label
        self.gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        check_int("max_new_tokens", max_new_tokens, lo=1)
        self.pad_token_id = pad_token_id
        self.offline_pairs = list(offline_pairs or [])
        self.max_grad_norm = max_grad_norm
        self.callback = callback
        self.generator = torch.Generator().manual_seed(seed)
        method.check(self)
        self.ref_model = None
        if "ref" in method.keeps:
            self.ref_model = frozen_copy(policy) if ref_model is None else ref_model.eval()
        self.prev: nn.Module | None = None   # pi_t, frozen at the start of the current iteration
        self.prev2: nn.Module | None = None  # pi_{t-1}
        self.method_state: dict = {}  # what an OnlineMethod's begin hook keeps between iterations
        self.iteration = 0
        self.step = 0
        self.history: list[dict] = []
        self.ref_cache: dict = {}  # pi_ref's log-probs by sequence, shared by the iterations' trainers
        self.trainer: PreferenceTrainer | None = None  # the current iteration's

    # -------------------------------------------------------------- pieces

    def sample(self, model: nn.Module, prompts: Sequence[Sequence[int]], k: int = 1) -> list[list[list[int]]]:
        """``k`` responses per prompt from ``model`` (the loop's generator): ``[len(prompts)][k]``."""
        flat = generate(model, [p for p in prompts for _ in range(k)], generator=self.generator, **self.gen_kwargs)
        return [flat[i * k:(i + 1) * k] for i in range(len(prompts))]

    def begin_iteration(self) -> None:
        """Run the method's ``begin_iteration`` hook, then freeze ``pi_t`` (the policy now); the previous
        ``pi_t`` becomes ``pi_{t-1}`` when kept."""
        self.method.begin_iteration(self)
        keeps = self.method.keeps
        if "prev2" in keeps:
            self.prev2 = self.prev
        if "prev" in keeps or "prev2" in keeps:
            self.prev = frozen_copy(self.policy)

    def _draw_prompts(self) -> list[list[int]]:
        if self.prompts_per_iteration == len(self.prompts):
            return self.prompts
        idx = torch.randperm(len(self.prompts), generator=self.generator)[:self.prompts_per_iteration]
        return [self.prompts[i] for i in idx.tolist()]

    def collect_pairs(self) -> list[dict]:
        """Sample K responses per drawn prompt from ``pi_t`` and build labelled pairs."""
        prompts = self._draw_prompts()
        sampler = self.prev if self.prev is not None else self.policy
        samples = self.sample(sampler, prompts, self.samples_per_prompt)
        return build_pairs(prompts, samples, self.oracle, strategy=self.pair_strategy, label=self.label,
                           generator=self.generator)

    def apply_loss(self, loss: Tensor) -> None:
        """One optimizer update of the policy on ``loss`` (zero grad, backward, optional clipping, step); the
        loop counts steps itself, once per method step (EGPO's half step is not one)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.optimizer.step()

    @property
    def device(self) -> torch.device:
        """Where the policy's parameters are."""
        return next(iter(self.policy.parameters()), torch.empty(0)).device

    # -------------------------------------------------------------- iterations

    def run_iteration(self) -> dict:
        """One iteration; returns ``{"iteration", "pairs", "loss_first", "loss_last", "steps"}``.

        The method's hooks do the work (see :mod:`gradwise.preference.online.methods`); the loop keeps the
        iterates, shuffles the iteration's pairs epoch after epoch from its generator, counts steps and
        records the metrics. ``pairs`` counts the pairs the iteration trained on (for a method that draws its
        data every step, the pairs it drew)."""
        self.policy.train()
        self.begin_iteration()
        pairs = self.method.make_pairs(self)
        losses: list[float] = []
        drawn = 0
        if pairs is None or pairs:
            self.method.prepare(self, pairs)
            order: list[int] = []
            for _ in range(self.steps_per_iteration):
                idx = None
                if pairs is not None:
                    if len(order) < min(self.batch_size, len(pairs)):
                        order += torch.randperm(len(pairs), generator=self.generator).tolist()
                    idx, order = order[:self.batch_size], order[self.batch_size:]
                loss, n = self.method.step(self, pairs, idx)
                self.step += 1
                losses.append(loss)
                drawn += n
        m = {"iteration": self.iteration, "pairs": drawn if pairs is None else len(pairs), "steps": len(losses),
             "loss_first": losses[0] if losses else math.nan, "loss_last": losses[-1] if losses else math.nan}
        self.iteration += 1
        self.history.append(m)
        if self.callback is not None:
            self.callback(m)
        return m

    def run(self, iterations: int) -> list[dict]:
        """``iterations`` iterations; their metrics."""
        return [self.run_iteration() for _ in range(check_int("iterations", iterations, lo=0))]

    def iteration_trainer(self) -> PreferenceTrainer:
        """The :class:`PreferenceTrainer` that takes this iteration's steps of an iterative method (see
        :meth:`OnlineMethod.make_trainer <gradwise.preference.online.methods.OnlineMethod.make_trainer>`)."""
        return self.method.make_trainer(self)
