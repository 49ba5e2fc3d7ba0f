"""Sampling from a causal LM and scoring its samples: :func:`generate` (batched, temperature, top-k,
EOS, no KV cache), :func:`generate_revisions` (SRPO's inference-time revisions),
:func:`response_logps`, :func:`sampled_kl` and :func:`frozen_copy` (a kept iterate).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int
from gradwise.preference.logprobs import token_logps
from gradwise.preference.trainer.inputs import revision_fn

__all__ = ["generate", "generate_revisions", "frozen_copy", "response_logps", "sampled_kl"]


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    """The logits of ``model(ids)``: a tensor, an object with ``.logits`` or a tuple led by them."""
    out = model(ids)
    if hasattr(out, "logits"):
        out = out.logits
    elif isinstance(out, (tuple, list)):
        out = out[0]
    return out



def token_ids(seq, name: str) -> list[int]:
    """``seq`` (a list or tensor of token ids) as a list of ints; ``ValueError`` naming ``name`` otherwise."""
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
             batch_size: int | None = None,
             forced_prefixes: Sequence[Sequence[int] | None] | None = None) -> list[list[int]]:
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

    ``forced_prefixes`` (DR-PO's dataset reset, :func:`~gradwise.preference.dataset_reset_mask`): one
    token-id list (or None / empty) per prompt; response ``i`` starts with ``forced_prefixes[i]`` (teacher
    forcing, as the authors' ``RollinProcessor`` in Cornell-RL/tril: the sampler still draws at forced
    positions, so a seeded generator is consumed the same way) and continues from there by sampling. A
    forced prefix may not be longer than ``max_new_tokens``; an EOS inside it ends the response.

    Returns a list of responses (token-id lists), one per prompt, in order.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> generate(lm, [[1, 5, 6, 2]], max_new_tokens=4, eos_token_id=3, generator=g)  # doctest: +SKIP
        [[6, 5, 3]]
    """
    check_int("max_new_tokens", max_new_tokens, lo=1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"Invalid temperature: {temperature!r} (accepted: a finite number >= 0; 0 = greedy)")
    if top_k is not None:
        check_int("top_k", top_k, lo=1)
    if batch_size is not None:
        check_int("batch_size", batch_size, lo=1)
    prompts = [token_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("Invalid prompts: every prompt needs at least one token")
    forced = _forced(forced_prefixes, len(prompts), max_new_tokens)
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
                force = None
                if forced is not None:
                    force = torch.full((len(chunk), max_new_tokens), -1, dtype=torch.long)
                    for r, i in enumerate(chunk):
                        force[r, :len(forced[i])] = torch.tensor(forced[i], dtype=torch.long)
                    force = force.to(device)
                new = []
                for t in range(max_new_tokens):
                    logits = _logits(model, x)[:, -1].float()
                    if temperature == 0:
                        nxt = logits.argmax(-1)
                    else:
                        logits = logits / temperature
                        if top_k is not None and top_k < logits.shape[-1]:
                            kth = logits.topk(top_k, dim=-1).values[:, -1:]
                            logits = logits.masked_fill(logits < kth, -math.inf)
                        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
                    if force is not None:
                        nxt = torch.where(force[:, t] >= 0, force[:, t], nxt)
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


def _forced(forced_prefixes, n: int, max_new_tokens: int) -> list[list[int]] | None:
    """``forced_prefixes`` checked: None, or ``n`` token-id lists of at most ``max_new_tokens`` each."""
    if forced_prefixes is None:
        return None
    if isinstance(forced_prefixes, (str, bytes)) or not isinstance(forced_prefixes, Sequence) \
            or len(forced_prefixes) != n:
        got = len(forced_prefixes) if isinstance(forced_prefixes, Sequence) else type(forced_prefixes).__name__
        raise ValueError(f"Invalid forced_prefixes: expected one token-id list (or None) per prompt ({n}), got {got}")
    out = []
    for i, f in enumerate(forced_prefixes):
        ids = [] if f is None else token_ids(f, f"forced_prefixes[{i}]")
        if len(ids) > max_new_tokens:
            raise ValueError(f"Invalid forced_prefixes[{i}]: {len(ids)} tokens > max_new_tokens = {max_new_tokens}")
        if any(t < 0 for t in ids):
            raise ValueError(f"Invalid forced_prefixes[{i}]: token ids must be >= 0")
        out.append(ids)
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
    fn = revision_fn(revision_prompt)
    if fn is None:
        raise ValueError("Invalid revision_prompt: None (accepted: a separator token id, a list of token ids, or a "
                         "function (prompt, draft) -> token ids)")
    check_int("revisions", revisions, lo=0)
    prompts = [token_ids(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if drafts is None:
        current = generate(model, prompts, max_new_tokens=max_new_tokens, **generate_kwargs)
    else:
        if len(drafts) != len(prompts):
            raise ValueError(f"Invalid drafts: {len(drafts)} drafts for {len(prompts)} prompts")
        current = [token_ids(d, f"drafts[{i}]") for i, d in enumerate(drafts)]
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
