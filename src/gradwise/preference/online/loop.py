"""Online and iterative preference optimization: sample responses from the
current policy, label them with a preference oracle, build pairs, update, and
keep the previous iterates each method needs.

Pieces (each usable alone):

* :func:`generate` -- batched sampling from any causal LM that maps token ids
  ``[N, T]`` to logits ``[N, T, V]`` (temperature, top-k, ``max_new_tokens``,
  EOS; no KV cache, each new token re-runs the whole prefix, which is what a
  tiny model wants);
* :func:`response_logps` / :func:`sampled_kl` -- sequence log-probs of
  responses and the sequence KL between two models estimated on samples;
* :class:`PreferenceOracle` -- a pairwise preference function
  ``P(a > b | prompt)`` or a reward function ``r(prompt, response)``;
* :func:`build_pairs` -- pairs from K samples per prompt (best vs worst, or
  random pairs labelled by the oracle), with each response's win rate against
  the other samples (DNO's ``r_t``);
* :class:`OnlinePreferenceLoop` -- the iteration manager for
  :func:`online_method` specs: iterative DPO, INPO, DNO, APO, EGPO and HyPO's
  online KL term.

Which iterates are kept (see docs/preference_iterative.md):

=========  ==============================================================
method     kept by the loop
=========  ==============================================================
``dpo``    ``pi_ref``; samples from ``pi_t`` (iterative/online DPO)
``inpo``   ``pi_ref`` and a frozen ``pi_t`` (start of the iteration; it also
           samples the pairs), replaced by the new policy after the iteration
``dno``    frozen ``pi_t`` (sampler and reference); win rates ``r_t`` among
           the K samples for Algorithm 1 (``soft=True``), hard labels
           (DNO-Prct) otherwise
``apo``    ``extrapolate="parameters"`` (default, the paper's experiments):
           the trained weights of the last two iterations; at the start
           of an iteration the policy jumps to ``theta + alpha (theta -
           theta_prev)``, which is frozen as ``pi_t`` (sampler and DPO
           reference; ``pi_ref`` at t = 0). ``extrapolate="logprobs"``:
           frozen ``pi_t`` and ``pi_{t-1}``; reference ``(1+alpha) log pi_t
           - alpha log pi_{t-1}``, samples from ``pi_t``
``egpo``   ``pi_ref``; at every step a copy of ``theta_t`` and the optimizer
           state while the half step is taken, then restored
``hypo``   ``pi_ref``; offline pairs plus ``samples`` (default 1) fresh samples
           per prompt from the *current* policy at every step
=========  ==============================================================

The iterative methods (DPO, INPO, DNO, APO and custom :class:`OnlineMethod`
specs) update through :meth:`PreferenceTrainer.train_step
<gradwise.preference.trainer.PreferenceTrainer.train_step>`: the kept
iterates are the trainer's ``ref_model`` and ``extra_models={"prev": pi_t,
"prev2": pi_{t-1}}``, whose log-probs it computes once per sequence without
gradient and caches (the reference's cache is kept across iterations, the
iterates' for one iteration); the oracle's numbers on each pair (``pref``,
``chosen_win_rate``, ``rejected_win_rate``) reach the objective through
``example_inputs``. EGPO and HyPO need fresh samples at every step and keep
their own steps.

SRPO is offline: train it with :class:`PreferenceTrainer` and
``srpo_loss`` (``revision_prompt=`` builds the revision prompts ``x + y +
separator``), and revise at inference time with :func:`generate_revisions`
(draft ``y_0 ~ pi(.|x)``, then ``y_{k+1} ~ pi(.|revision_prompt(x, y_k))``).
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradwise.preference.accel_apo import apo_dpo_loss, apo_extrapolated_logps, apo_extrapolated_parameters
from gradwise.preference.dpo import dpo_loss
from gradwise.preference.hybrid_hypo import hypo_loss
from gradwise.preference.logprobs import token_logps
from gradwise.preference.nash_dno import dno_loss
from gradwise.preference.nash_egpo import egpo_full_step_loss, egpo_half_step_loss
from gradwise.preference.nash_inpo import inpo_loss
from gradwise.preference.selfplay_spo import spo_win_rate_reward
from gradwise.preference.trainer.training import PreferenceObjective, PreferenceTrainer, _revision_fn

__all__ = ["generate", "generate_revisions", "frozen_copy", "response_logps", "sampled_kl", "PreferenceOracle",
           "build_pairs", "OnlineMethod", "online_method", "OnlinePreferenceLoop", "ONLINE_METHODS"]

ONLINE_METHODS = ("dpo", "inpo", "dno", "apo", "egpo", "hypo")


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    out = model(ids)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"Invalid {name}: {v!r} (accepted: an int >= {lo})")
    return v


def _ids(seq, name: str) -> list[int]:
    if torch.is_tensor(seq):
        seq = seq.tolist()
    try:
        return [int(t) for t in seq]
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: expected a sequence of token ids") from None


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with ``requires_grad`` off (a kept iterate)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def generate(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, eos_token_id: int | None = None,
             pad_token_id: int = 0, generator: torch.Generator | None = None,
             batch_size: int | None = None) -> list[list[int]]:
    """Sample one response per prompt from a causal LM.

    ``model`` maps ids ``[N, T]`` to logits ``[N, T, V]`` (or an object with
    ``.logits`` / a tuple whose first item is the logits). Prompts of equal
    length are batched together (no padding, so no attention mask is needed);
    each new token re-runs the whole prefix (no KV cache). ``temperature=0``
    is greedy; ``top_k`` keeps the k most likely tokens. A response ends after
    ``eos_token_id`` (which it includes) or after ``max_new_tokens`` tokens.
    Sampling draws from ``generator`` (on the model's device), so a seeded
    generator gives the same responses for the same prompts in the same order.
    The model is put in eval mode for the call and restored after.

    Returns a list of responses (token-id lists), one per prompt, in order.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> generate(lm, [[1, 5, 6, 2]], max_new_tokens=4, eos_token_id=3, generator=g)  # doctest: +SKIP
        [[6, 5, 3]]
    """
    _int("max_new_tokens", max_new_tokens, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"Invalid temperature: {temperature!r} (accepted: a finite number >= 0; 0 = greedy)")
    if top_k is not None:
        _int("top_k", top_k, 1)
    if batch_size is not None:
        _int("batch_size", batch_size, 1)
    prompts = [_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Invalid prompts: every prompt needs at least one token")
    device = next(iter(model.parameters()), torch.empty(0)).device
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for _, idx in sorted(groups.items()):
            step = batch_size or len(idx)
            for s in range(0, len(idx), step):
                chunk = idx[s:s + step]
                x = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
                done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
                new = []
                for _ in range(max_new_tokens):
                    logits = _logits(model, x)[:, -1].float()
                    if temperature == 0:
                        nxt = logits.argmax(-1)
                    else:
                        logits = logits / temperature
                        if top_k is not None and top_k < logits.shape[-1]:
                            kth = logits.topk(top_k, dim=-1).values[:, -1:]
                            logits = logits.masked_fill(logits < kth, -math.inf)
                        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
                    nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
                    new.append(nxt)
                    x = torch.cat([x, nxt[:, None]], dim=1)
                    if eos_token_id is not None:
                        done |= nxt == eos_token_id
                        if bool(done.all()):
                            break
                rows = torch.stack(new, dim=1).tolist()
                for i, row in zip(chunk, rows):
                    if eos_token_id is not None and eos_token_id in row:
                        row = row[:row.index(eos_token_id) + 1]
                    out[i] = row
    finally:
        model.train(was_training)
    return out


def generate_revisions(model: nn.Module, prompts: Sequence[Sequence[int]], *, revision_prompt,
                       revisions: int = 1, drafts: Sequence[Sequence[int]] | None = None, max_new_tokens: int,
                       **generate_kwargs) -> list[list[list[int]]]:
    """Inference-time self-improvement (SRPO's revisions): a draft, then revisions of it.

    SRPO (Choi et al., "Self-Improving Robust Preference Optimization", 2024, arXiv 2406.01660; no
    authors' code) evaluates a policy after N self-revisions: the same model, prompted with the prompt and
    its previous answer, writes the next answer.

    For each prompt ``x``: ``y_0 ~ model(.|x)`` (or ``drafts[i]`` when given),
    then ``y_{k+1} ~ model(.|revision_prompt(x, y_k))`` for ``k < revisions``,
    where ``revision_prompt`` is a separator token id / list of ids
    (``x + y_k + separator``, :func:`~gradwise.preference.trainer.build_revision_prompt`)
    or a function ``(prompt, draft) -> ids``, the same one the model was trained
    with (``PreferenceTrainer(..., revision_prompt=...)``). Every revision round
    is one batched :func:`generate` call with the remaining keyword arguments
    (``temperature``, ``top_k``, ``eos_token_id``, ``pad_token_id``,
    ``generator``, ``batch_size``); a seeded ``generator`` makes the result
    reproducible. Returns ``[len(prompts)][revisions + 1]`` responses: the
    draft first, the last revision last.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> chains = generate_revisions(lm, [[1, 5, 6, 2]], revision_prompt=9, revisions=2,
        ...                             max_new_tokens=6, eos_token_id=3, generator=g)   # doctest: +SKIP
        >>> final = [c[-1] for c in chains]                                              # doctest: +SKIP
    """
    fn = _revision_fn(revision_prompt)
    if fn is None:
        raise ValueError("Invalid revision_prompt: None (accepted: a separator token id, a list of token ids, or a "
                         "function (prompt, draft) -> token ids)")
    _int("revisions", revisions, 0)
    prompts = [_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if drafts is None:
        current = generate(model, prompts, max_new_tokens=max_new_tokens, **generate_kwargs)
    else:
        if len(drafts) != len(prompts):
            raise ValueError(f"Invalid drafts: {len(drafts)} drafts for {len(prompts)} prompts")
        current = [_ids(d, f"drafts[{i}]") for i, d in enumerate(drafts)]
    chains = [[list(y)] for y in current]
    for _ in range(revisions):
        current = generate(model, [fn(x, y) for x, y in zip(prompts, current)], max_new_tokens=max_new_tokens,
                           **generate_kwargs)
        for chain, y in zip(chains, current):
            chain.append(list(y))
    return chains


def _batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_token_id: int,
           device) -> tuple[Tensor, Tensor]:
    if len(prompts) != len(responses):
        raise ValueError(f"Invalid responses: {len(responses)} responses for {len(prompts)} prompts")
    if len(prompts) == 0:
        raise ValueError("Invalid prompts: empty")
    rows = [(list(p), list(r)) for p, r in zip(prompts, responses)]
    if any(len(r) == 0 for _, r in rows):
        raise ValueError("Invalid responses: a response has no tokens")
    T = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), T), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        mask[i, len(p):len(p) + len(r)] = True
    return ids.to(device), mask.to(device)


def response_logps(model: nn.Module, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                   pad_token_id: int = 0, average: bool = False) -> Tensor:
    """Log-probability ``[N]`` of each response given its prompt (summed over
    response tokens, or averaged with ``average=True``), from one forward pass
    over right-padded ``prompt + response`` rows. Gradient flows when enabled
    (wrap in ``torch.no_grad()`` for frozen models)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    ids, mask = _batch(prompts, responses, pad_token_id, device)
    lp = token_logps(_logits(model, ids), ids, mask).sum(-1)
    return lp / mask.sum(-1).to(lp.dtype) if average else lp


@torch.no_grad()
def sampled_kl(policy: nn.Module, ref: nn.Module, prompts: Sequence[Sequence[int]],
               responses: Sequence[Sequence[int]], *, pad_token_id: int = 0) -> Tensor:
    """Sequence ``KL(policy ‖ ref)`` estimated on responses sampled from ``policy``: per response ``[N]``,
    the sum over its tokens of the full next-token KL ``sum_v pi(v|s) (log pi(v|s) - log ref(v|s))`` at
    each prefix ``s``. Its mean over policy samples is an unbiased, non-negative, lower-variance estimate
    of the sequence-level KL than the log-ratio of the sampled tokens."""
    device = next(iter(policy.parameters()), torch.empty(0)).device
    ids, mask = _batch(prompts, responses, pad_token_id, device)
    lp = torch.log_softmax(_logits(policy, ids).float(), -1)[:, :-1]
    lq = torch.log_softmax(_logits(ref, ids).float(), -1)[:, :-1]
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return (kl * mask[:, 1:]).sum(-1)


class PreferenceOracle:
    """A judge: a pairwise preference function or a reward function.

    Args:
        preference: ``fn(prompt, a, b) -> P(a > b | prompt)`` in [0, 1] (token-id lists in).
        reward: ``fn(prompt, response) -> float``; then ``P(a > b)`` is ``1``/``0.5``/``0`` by comparing
            rewards (``temperature=0``, the default) or Bradley-Terry ``sigmoid((r_a - r_b) / temperature)``.

    Give exactly one of them.

    Example:
        >>> judge = PreferenceOracle(reward=lambda p, r: -len(r))
        >>> judge.prob([1], [5], [5, 6])
        1.0
    """

    def __init__(self, preference: Callable | None = None, *, reward: Callable | None = None,
                 temperature: float = 0.0) -> None:
        if (preference is None) == (reward is None):
            raise ValueError("Invalid oracle: give exactly one of preference= and reward=")
        for name, fn in (("preference", preference), ("reward", reward)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Invalid {name}: expected a callable, got {type(fn).__name__}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
                or not math.isfinite(temperature):
            raise ValueError(f"Invalid temperature: {temperature!r} (accepted: a finite number >= 0)")
        self.preference_fn = preference
        self.reward_fn = reward
        self.temperature = float(temperature)

    @property
    def has_reward(self) -> bool:
        return self.reward_fn is not None

    def reward(self, prompt: Sequence[int], response: Sequence[int]) -> float:
        if self.reward_fn is None:
            raise ValueError("this oracle has no reward function (it was built from a preference function)")
        return float(self.reward_fn(prompt, response))

    def _p_from_rewards(self, ra: float, rb: float) -> float:
        if self.temperature == 0:
            return 1.0 if ra > rb else (0.0 if ra < rb else 0.5)
        return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, (ra - rb) / self.temperature))))

    def prob(self, prompt: Sequence[int], a: Sequence[int], b: Sequence[int]) -> float:
        """``P(a > b | prompt)``."""
        if self.preference_fn is not None:
            p = float(self.preference_fn(prompt, a, b))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"preference function returned {p!r}; expected a probability in [0, 1]")
            return p
        return self._p_from_rewards(self.reward(prompt, a), self.reward(prompt, b))

    def win_matrix(self, prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> Tensor:
        """``[K, K]`` float64 matrix of ``P(responses[i] > responses[j])`` (diagonal 0.5); a reward
        oracle scores each response once."""
        k = len(responses)
        m = torch.full((k, k), 0.5, dtype=torch.float64)
        if self.reward_fn is not None:
            r = [self.reward(prompt, y) for y in responses]
            for i in range(k):
                for j in range(k):
                    if i != j:
                        m[i, j] = self._p_from_rewards(r[i], r[j])
            return m
        for i in range(k):
            for j in range(i + 1, k):
                p = self.prob(prompt, responses[i], responses[j])
                m[i, j], m[j, i] = p, 1.0 - p
        return m

    def win_rate(self, prompts: Sequence[Sequence[int]], a: Sequence[Sequence[int]],
                 b: Sequence[Sequence[int]]) -> float:
        """Mean ``P(a_i > b_i | prompt_i)`` (ties count one half with a reward oracle)."""
        if not (len(prompts) == len(a) == len(b)) or len(prompts) == 0:
            raise ValueError("Invalid prompts/a/b: need equal, non-zero lengths")
        return sum(self.prob(p, x, y) for p, x, y in zip(prompts, a, b)) / len(prompts)


def build_pairs(prompts: Sequence[Sequence[int]], samples: Sequence[Sequence[Sequence[int]]],
                oracle: PreferenceOracle, *, strategy: str = "best_vs_worst", label: str = "argmax",
                generator: torch.Generator | None = None) -> list[dict]:
    """Preference pairs from ``samples[i]`` (K >= 2 responses of ``prompts[i]``).

    ``strategy``:

    * ``"best_vs_worst"``: one pair per prompt, the highest against the lowest scored sample
      (score: the oracle's reward, else the win rate against the other K-1 samples); prompts whose
      samples all tie give no pair;
    * ``"random"``: samples ``(0, 1), (2, 3), ...`` (draw them at random, so consecutive samples are a
      random pair) labelled by the oracle: ``label="argmax"`` makes the more likely winner the chosen one
      (exact ties dropped), ``label="sample"`` draws the winner with probability ``P(a > b)`` from
      ``generator``.

    Each pair is ``{"prompt", "chosen", "rejected", "pref", "chosen_win_rate", "rejected_win_rate"}``:
    ``pref`` is ``P(chosen > rejected)``, the win rates are each response's mean preference over the other
    samples of its prompt (DNO's ``r_t(y) = E_{y'~pi_t} P(y > y')``, estimated as in SPO).
    """
    if strategy not in ("best_vs_worst", "random"):
        raise ValueError(f"Invalid strategy: {strategy!r} (accepted: 'best_vs_worst', 'random')")
    if label not in ("argmax", "sample"):
        raise ValueError(f"Invalid label: {label!r} (accepted: 'argmax', 'sample')")
    if len(prompts) != len(samples):
        raise ValueError(f"Invalid samples: {len(samples)} sample lists for {len(prompts)} prompts")
    pairs = []
    for prompt, ys in zip(prompts, samples):
        if len(ys) < 2:
            raise ValueError("Invalid samples: need K >= 2 responses per prompt")
        m = oracle.win_matrix(prompt, ys)
        wr = spo_win_rate_reward(m)
        if strategy == "best_vs_worst":
            score = torch.tensor([oracle.reward(prompt, y) for y in ys]) if oracle.has_reward else wr
            i, j = int(score.argmax()), int(score.argmin())
            if score[i] == score[j]:
                continue
            cand = [(i, j, float(m[i, j]))]
        else:
            cand = []
            for a in range(0, len(ys) - 1, 2):
                p = float(m[a, a + 1])
                if label == "sample":
                    win = bool(torch.rand((), generator=generator, dtype=torch.float64) < p)
                elif p == 0.5:
                    continue
                else:
                    win = p > 0.5
                cand.append((a, a + 1, p) if win else (a + 1, a, 1.0 - p))
        for i, j, p in cand:
            pairs.append({"prompt": list(prompt), "chosen": list(ys[i]), "rejected": list(ys[j]), "pref": p,
                          "chosen_win_rate": float(wr[i]), "rejected_win_rate": float(wr[j])})
    return pairs


@dataclass
class OnlineMethod:
    """What an online method needs from the loop and how its loss is computed.

    ``keeps``: frozen models whose log-probs of each pair the loss takes: ``"ref"`` (``pi_ref``),
    ``"prev"`` (``pi_t``, frozen at the start of the iteration), ``"prev2"`` (``pi_{t-1}``).
    ``begin(loop)``: optional, called at the start of every iteration before ``pi_t`` is frozen (APO's
    parameter extrapolation); ``loop.method_state`` is a dict it may keep things in.
    ``kind``: ``"iterative"`` (sample once per iteration from ``pi_t``, then train on those pairs),
    ``"egpo"`` (extragradient steps, fresh samples every step), ``"hypo"`` (offline pairs plus a fresh
    on-policy sample per prompt every step).

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


_PAIR_FIELDS = ("pref", "chosen_win_rate", "rejected_win_rate")


def _apo_extrapolated_dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, prev_chosen_logps: Tensor,
                          prev_rejected_logps: Tensor, prev2_chosen_logps: Tensor, prev2_rejected_logps: Tensor,
                          *, alpha: float, beta: float) -> Tensor:
    """APO's loss from its second iteration on: DPO against ``hat pi_t`` extrapolated from ``pi_t``, ``pi_{t-1}``."""
    rc = apo_extrapolated_logps(prev_chosen_logps, prev2_chosen_logps, alpha=alpha)
    rr = apo_extrapolated_logps(prev_rejected_logps, prev2_rejected_logps, alpha=alpha)
    return apo_dpo_loss(policy_chosen_logps, policy_rejected_logps, rc, rr, beta=beta)


def _loss_objective(method: OnlineMethod, iteration: int, kept: Sequence[str]) -> PreferenceObjective:
    """A custom ``loss(q, iteration)`` as a trainer objective over the kept models' log-probs."""
    names = ["policy_chosen", "policy_rejected"] + [f"{k}_{side}" for k in kept for side in ("chosen", "rejected")]

    def objective(*logps, pref, chosen_win_rate, rejected_win_rate):
        q = dict(zip(names, logps))
        q.update(pref=pref, chosen_win_rate=chosen_win_rate, rejected_win_rate=rejected_win_rate)
        return method.loss(q, iteration)

    objective.__name__ = f"{method.name}_loss"
    return PreferenceObjective(objective, inputs=tuple(f"{n}_logps" for n in names), example_inputs=_PAIR_FIELDS)


def _apo_extrapolate_weights(loop: "OnlinePreferenceLoop", *, alpha: float) -> None:
    """APO's step (3.6) in parameter space (arXiv 2410.06293, Sec. 5.2): from the second iteration on, move the
    policy from its trained weights ``theta_t`` to ``theta_t + alpha (theta_t - theta_{t-1})``, the extrapolated
    policy that samples the next pairs and is their DPO reference; training continues from there. The trained
    weights are remembered for the next extrapolation (``theta_0`` = the weights before the first iteration).
    Only parameters move: buffers (e.g. BatchNorm's running statistics, which extrapolation could make
    negative) stay as trained, and the optimizer keeps its state across the jump (the paper does not say)."""
    params = dict(loop.policy.named_parameters())
    trained = {k: v.detach().clone() for k, v in params.items()}
    before = loop.method_state.get("apo_trained")
    if before is not None:
        with torch.no_grad():
            for k, v in apo_extrapolated_parameters(trained, before, alpha=alpha).items():
                params[k].copy_(v)
    loop.method_state["apo_trained"] = trained


def online_method(name: str, **hp) -> OnlineMethod:
    """A built-in :class:`OnlineMethod` by name (see :data:`ONLINE_METHODS`).

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
    if name == "dpo":
        beta = hp.pop("beta", 0.1)
        obj = PreferenceObjective(dpo_loss, beta=beta)
        spec = OnlineMethod("dpo", ("ref",), objective=lambda t: obj, hyperparameters={"beta": beta})
    elif name == "inpo":
        eta, tau = _req(hp, "inpo", "eta"), _req(hp, "inpo", "tau")
        inpo_loss(*(torch.zeros(1),) * 6, eta=eta, tau=tau)  # validate now
        obj = PreferenceObjective(inpo_loss, eta=eta, tau=tau)  # inputs by name: policy_*, prev_*, ref_*
        spec = OnlineMethod("inpo", ("ref", "prev"), objective=lambda t: obj, hyperparameters={"eta": eta, "tau": tau})
    elif name == "dno":
        eta, soft = _req(hp, "dno", "eta"), bool(hp.pop("soft", False))
        dno_loss(*(torch.zeros(1),) * 4, eta=eta)
        obj = PreferenceObjective(dno_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                    "prev_chosen_logps", "prev_rejected_logps"), eta=eta,
                                  example_inputs={"reward_1": "chosen_win_rate", "reward_2": "rejected_win_rate"}
                                  if soft else None)
        spec = OnlineMethod("dno", ("prev",), objective=lambda t: obj, hyperparameters={"eta": eta, "soft": soft})
    elif name == "apo":
        alpha, beta = _req(hp, "apo", "alpha"), hp.pop("beta", 0.1)
        mode = hp.pop("extrapolate", "parameters")
        if mode not in ("parameters", "logprobs"):
            raise ValueError(f"Invalid extrapolate: {mode!r} (accepted: 'parameters', 'logprobs')")
        apo_extrapolated_logps(torch.zeros(1), torch.zeros(1), alpha=alpha)
        first = PreferenceObjective(apo_dpo_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                          "ref_chosen_logps", "ref_rejected_logps"), beta=beta)
        hyper = {"alpha": alpha, "beta": beta, "extrapolate": mode}
        if mode == "logprobs":
            later = PreferenceObjective(_apo_extrapolated_dpo, alpha=alpha, beta=beta)
            spec = OnlineMethod("apo", ("ref", "prev", "prev2"), objective=lambda t: first if t == 0 else later,
                                hyperparameters=hyper)
        else:
            later = PreferenceObjective(apo_dpo_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                              "prev_chosen_logps", "prev_rejected_logps"), beta=beta)
            spec = OnlineMethod("apo", ("ref", "prev"), objective=lambda t: first if t == 0 else later,
                                hyperparameters=hyper, begin=functools.partial(_apo_extrapolate_weights, alpha=alpha))
    elif name == "egpo":
        beta = _req(hp, "egpo", "beta")
        spec = OnlineMethod("egpo", ("ref",), None, kind="egpo", hyperparameters={"beta": beta})
    elif name == "hypo":
        lam, beta = _req(hp, "hypo", "lam"), hp.pop("beta", 0.1)
        k = _int("samples", hp.pop("samples", 1), 1)
        spec = OnlineMethod("hypo", ("ref",), None, kind="hypo", hyperparameters={"lam": lam, "beta": beta,
                                                                                     "samples": k})
    else:
        raise ValueError(f"Invalid name: {name!r} (accepted: {', '.join(ONLINE_METHODS)})")
    if hp:
        raise ValueError(f"Invalid hyperparameter for {name}: {sorted(hp)[0]!r}")
    return spec


def _req(hp: dict, name: str, key: str):
    if key not in hp:
        raise ValueError(f"Invalid {name}: {key}= is required")
    return hp.pop(key)


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
        self.prompts = [_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not self.prompts:
            raise ValueError("Invalid prompts: empty")
        self.samples_per_prompt = _int("samples_per_prompt", samples_per_prompt, 2)
        self.steps_per_iteration = _int("steps_per_iteration", steps_per_iteration, 1)
        self.batch_size = _int("batch_size", batch_size, 1)
        self.prompts_per_iteration = (len(self.prompts) if prompts_per_iteration is None
                                      else min(_int("prompts_per_iteration", prompts_per_iteration, 1),
                                               len(self.prompts)))
        if pair_strategy not in ("best_vs_worst", "random") or label not in ("argmax", "sample"):
            build_pairs([], [], oracle, strategy=pair_strategy, label=label)  # raises the ValueError
        if method.kind == "iterative" and method.objective is None and method.loss is None:
            raise ValueError(f"Invalid method: iterative method {method.name!r} has neither objective nor loss")
        if method.kind == "hypo" and not offline_pairs:
            raise ValueError("Invalid offline_pairs: HyPO needs offline preference pairs")
        self.policy, self.method, self.optimizer, self.oracle = policy, method, optimizer, oracle
        self.pair_strategy, self.label = pair_strategy, label
        self.gen_kwargs = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        _int("max_new_tokens", max_new_tokens, 1)
        self.pad_token_id = pad_token_id
        self.offline_pairs = list(offline_pairs or [])
        self.max_grad_norm = max_grad_norm
        self.callback = callback
        self.generator = torch.Generator().manual_seed(seed)
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
        """Run the method's ``begin`` hook, then freeze ``pi_t`` (the policy now); the previous ``pi_t`` becomes
        ``pi_{t-1}`` when kept."""
        if self.method.begin is not None:
            self.method.begin(self)
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

    @torch.no_grad()
    def _frozen_logps(self, pairs: Sequence[Mapping]) -> dict[str, Tensor]:
        prompts = [p["prompt"] for p in pairs]
        out = {}
        models = {"ref": self.ref_model, "prev": self.prev, "prev2": self.prev2}
        for key in self.method.keeps:
            m = models[key]
            if m is None:  # pi_{t-1} before the second iteration: the loss does not read it
                continue
            for side in ("chosen", "rejected"):
                out[f"{key}_{side}"] = response_logps(m, prompts, [p[side] for p in pairs],
                                                      pad_token_id=self.pad_token_id)
        for key in ("pref", "chosen_win_rate", "rejected_win_rate"):
            out[key] = torch.tensor([float(p.get(key, 0.5)) for p in pairs])
        return out

    def _apply(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.step += 1

    # -------------------------------------------------------------- iterations

    def run_iteration(self) -> dict:
        """One iteration; returns ``{"iteration", "pairs", "loss_first", "loss_last", "steps"}``."""
        self.policy.train()
        kind = self.method.kind
        if kind == "iterative":
            losses, n_pairs = self._iterative()
        elif kind == "egpo":
            losses, n_pairs = self._egpo()
        elif kind == "hypo":
            losses, n_pairs = self._hypo()
        else:
            raise ValueError(f"Invalid method.kind: {kind!r} (accepted: 'iterative', 'egpo', 'hypo')")
        m = {"iteration": self.iteration, "pairs": n_pairs, "steps": len(losses),
             "loss_first": losses[0] if losses else math.nan, "loss_last": losses[-1] if losses else math.nan}
        self.iteration += 1
        self.history.append(m)
        if self.callback is not None:
            self.callback(m)
        return m

    def run(self, iterations: int) -> list[dict]:
        return [self.run_iteration() for _ in range(_int("iterations", iterations, 0))]

    def iteration_trainer(self) -> PreferenceTrainer:
        """The :class:`PreferenceTrainer` that takes this iteration's steps of an iterative method: the
        method's objective for ``self.iteration``, ``pi_ref`` as ``ref_model``, the kept iterates as
        ``extra_models`` (``"prev"``, ``"prev2"``; only those the objective takes), one micro-batch of
        ``batch_size`` pairs per step, dropout left as it is."""
        t = self.iteration
        kept = {"ref": self.ref_model, "prev": self.prev, "prev2": self.prev2}
        if self.method.objective is not None:
            obj = self.method.objective(t)
            obj = obj if isinstance(obj, PreferenceObjective) else PreferenceObjective(obj)
        else:
            obj = _loss_objective(self.method, t, [k for k in self.method.keeps if kept.get(k) is not None])
        if obj.needs_reference and self.ref_model is None:
            raise ValueError(f"Invalid method: {self.method.name!r} takes reference log-probs but does not keep "
                             "'ref'")
        missing = [k for k in obj.extra_models if kept.get(k) is None]
        if missing:
            raise ValueError(f"Invalid method: {self.method.name!r} at iteration {t} takes log-probs of "
                             f"{missing[0]!r}, which the loop does not keep at that point (keeps: "
                             f"{', '.join(self.method.keeps)}; 'prev2' exists from iteration 1 on)")
        device = next(iter(self.policy.parameters()), torch.empty(0)).device
        trainer = PreferenceTrainer(self.policy, obj, self.optimizer,
                                    ref_model=self.ref_model if obj.needs_reference else None,
                                    extra_models={k: kept[k] for k in obj.extra_models},
                                    batch_size=self.batch_size, pad_token_id=self.pad_token_id,
                                    max_grad_norm=self.max_grad_norm, shuffle=False, disable_dropout=False,
                                    progress=False, device=device)
        trainer.ref_cache = self.ref_cache  # pi_ref does not move: its cache outlives the iteration
        return trainer

    def _iterative(self) -> tuple[list[float], int]:
        self.begin_iteration()
        pairs = self.collect_pairs()
        if not pairs:
            return [], 0
        self.trainer = trainer = self.iteration_trainer()
        order: list[int] = []
        losses = []
        for _ in range(self.steps_per_iteration):
            if len(order) < min(self.batch_size, len(pairs)):
                order += torch.randperm(len(pairs), generator=self.generator).tolist()
            idx, order = order[:self.batch_size], order[self.batch_size:]
            m = trainer.train_step([pairs[i] for i in idx])
            self.step += 1
            losses.append(m["loss"])
        return losses, len(pairs)

    def _egpo_batch(self, prompts, ys, opponents) -> dict:
        p1 = [self.oracle.prob(x, y[0], o[0]) for x, y, o in zip(prompts, ys, opponents)]
        p2 = [self.oracle.prob(x, y[1], o[0]) for x, y, o in zip(prompts, ys, opponents)]
        return {"pref": torch.tensor(p1), "pref_prime": torch.tensor(p2)}

    def _egpo(self) -> tuple[list[float], int]:
        beta = self.method.hyperparameters["beta"]
        losses, n = [], 0
        for _ in range(self.steps_per_iteration):
            idx = torch.randperm(len(self.prompts), generator=self.generator)[:self.batch_size].tolist()
            prompts = [self.prompts[i] for i in idx]
            ys = self.sample(self.policy, prompts, 2)          # y, y' ~ pi_t
            opp = self.sample(self.policy, prompts, 1)         # y'' ~ pi_t
            a, b = [y[0] for y in ys], [y[1] for y in ys]
            with torch.no_grad():
                ra = response_logps(self.ref_model, prompts, a, pad_token_id=self.pad_token_id)
                rb = response_logps(self.ref_model, prompts, b, pad_token_id=self.pad_token_id)
            pr = self._egpo_batch(prompts, ys, opp)
            theta = [p.detach().clone() for p in self.policy.parameters()]
            opt_state = copy.deepcopy(self.optimizer.state_dict())
            lp = response_logps(self.policy, prompts * 2, a + b, pad_token_id=self.pad_token_id)
            half = egpo_half_step_loss(lp[:len(a)], lp[len(a):], ra, rb, pr["pref"], pr["pref_prime"],
                                       beta=beta).mean()
            self._apply(half)                                   # theta_{t+1/2}
            opp = self.sample(self.policy, prompts, 1)         # y'' ~ pi_{t+1/2}
            pr = self._egpo_batch(prompts, ys, opp)
            with torch.no_grad():                               # back to theta_t and its optimizer state
                for p, t in zip(self.policy.parameters(), theta):
                    p.copy_(t)
            self.optimizer.load_state_dict(opt_state)
            self.step -= 1
            lp = response_logps(self.policy, prompts * 2, a + b, pad_token_id=self.pad_token_id)
            full = egpo_full_step_loss(lp[:len(a)], lp[len(a):], ra, rb, pr["pref"], pr["pref_prime"],
                                       beta=beta).mean()
            self._apply(full)                                   # theta_{t+1}
            losses.append(float(full.detach()))
            n += len(prompts)
        return losses, n

    def _hypo(self) -> tuple[list[float], int]:
        hp = self.method.hyperparameters
        pairs = self.offline_pairs
        frozen = self._frozen_logps(pairs) if not hasattr(self, "_hypo_cache") else self._hypo_cache
        self._hypo_cache = frozen
        losses = []
        order: list[int] = []
        for _ in range(self.steps_per_iteration):
            if len(order) < min(self.batch_size, len(pairs)):
                order += torch.randperm(len(pairs), generator=self.generator).tolist()
            idx, order = order[:self.batch_size], order[self.batch_size:]
            batch = [pairs[i] for i in idx]
            prompts = [p["prompt"] for p in batch]
            k = hp.get("samples", 1)
            online = [y for ys in self.sample(self.policy, prompts, k) for y in ys]  # y ~ current policy, k per prompt
            on_prompts = [p for p in prompts for _ in range(k)]
            with torch.no_grad():
                ref_on = response_logps(self.ref_model, on_prompts, online, pad_token_id=self.pad_token_id)
            lp = response_logps(self.policy, prompts * 2 + on_prompts,
                                [p["chosen"] for p in batch] + [p["rejected"] for p in batch] + online,
                                pad_token_id=self.pad_token_id)
            b = len(batch)
            it = torch.tensor(idx)
            pol_on, ref_on = (lp[2 * b:], ref_on) if k == 1 else (lp[2 * b:].view(b, k), ref_on.view(b, k))
            loss = hypo_loss(lp[:b], lp[b:2 * b], frozen["ref_chosen"][it], frozen["ref_rejected"][it],
                             pol_on, ref_on, beta=hp["beta"], lam=hp["lam"]).mean()
            self._apply(loss)
            losses.append(float(loss.detach()))
        return losses, len(pairs)
