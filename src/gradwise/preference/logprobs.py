"""Log-probabilities of label tokens under a language model, and the collate
helper that puts a preference pair (or a ranked list) into one batch.

Shift convention (Hugging Face / TRL causal LMs): the logits at position ``t``
score the token at position ``t + 1``. With the default ``shift=True`` the
helpers take ``logits``, ``labels`` and ``mask`` that are all aligned with the
*input* sequence (``labels`` is simply ``input_ids``) and do the shift
themselves; the returned per-token log-probabilities are aligned with
``labels``::

    out[b, t] = log softmax(logits[b, t - 1])[labels[b, t]]   for t >= 1
    out[b, 0] = 0                                              (nothing predicts the first token)

so a mask over completion tokens in input coordinates applies to ``out``
directly. Pass ``shift=False`` when ``logits[b, t]`` already scores
``labels[b, t]`` (labels shifted by the caller, encoder-decoder models).

Masked positions (``mask`` false, or ``labels == ignore_index`` when no mask
is given) are 0 in the output and get no gradient. ``token_logps`` never
materializes the full ``log_softmax``: it gathers the label logits and
subtracts a ``logsumexp`` computed over blocks of rows (upcast to float32
block by block for half-precision logits), so the extra memory is one block,
not another ``[B, T, V]`` tensor.
"""
from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["token_logps", "sequence_logps", "concat_pairs", "collate_preferences", "ranked_pairs"]

# elements of one logsumexp block (2**22 float32 = 16 MiB)
_BLOCK_ELEMS = 1 << 22


def _check_inputs(logits: Tensor, labels: Tensor, mask: Tensor | None) -> None:
    if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.dim() != 3:
        raise ValueError(f"Invalid logits: expected a floating-point tensor of shape [B, T, V], got "
                         f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
    if not torch.is_tensor(labels) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) \
            or labels.shape != logits.shape[:2]:
        raise ValueError(f"Invalid labels: expected an integer tensor of shape {tuple(logits.shape[:2])}, got "
                         f"{(labels.dtype, tuple(labels.shape)) if torch.is_tensor(labels) else type(labels).__name__}")
    if mask is not None and (not torch.is_tensor(mask) or mask.shape != labels.shape):
        raise ValueError(f"Invalid mask: expected a tensor of shape {tuple(labels.shape)}, got "
                         f"{tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__}")


def _blocked_logsumexp(x: Tensor, out_dtype: torch.dtype) -> Tensor:
    """logsumexp over the last dim of ``x`` [B, T, V], one block of rows at a time."""
    B, T, V = x.shape
    rows = max(1, _BLOCK_ELEMS // max(V, 1))
    if B * T <= rows:
        return torch.logsumexp(x.to(out_dtype), dim=-1)
    parts = []
    if T <= rows:  # whole sequences per block
        per = max(1, rows // max(T, 1))
        for b in range(0, B, per):
            parts.append(torch.logsumexp(x[b:b + per].to(out_dtype), dim=-1))
        return torch.cat(parts, dim=0)
    for b in range(B):  # long sequences: blocks along time
        parts.append(torch.cat([torch.logsumexp(x[b, t:t + rows].to(out_dtype), dim=-1)
                                for t in range(0, T, rows)], dim=0))
    return torch.stack(parts, dim=0)


def token_logps(logits: Tensor, labels: Tensor, mask: Tensor | None = None, *, ignore_index: int = -100,
                shift: bool = True) -> Tensor:
    """Per-token log-probabilities of ``labels`` under ``logits``, shape [B, T].

    Args:
        logits: [B, T, V] model outputs (any float dtype; half precision is
            upcast to float32 block by block).
        labels: [B, T] token ids, aligned with the input sequence when
            ``shift=True`` (so ``labels = input_ids`` for a causal LM).
        mask: [B, T] bool/0-1, true where a label token counts (e.g. the
            completion tokens). Default: ``labels != ignore_index``.
        ignore_index: label value that marks a position to skip when ``mask``
            is not given (labels at masked positions may hold any value).
        shift: ``True`` (default) for the Hugging Face causal-LM convention
            (logits at ``t`` predict the token at ``t + 1``; output position 0
            is 0); ``False`` when ``logits[:, t]`` already scores ``labels[:, t]``.

    Returns:
        [B, T] tensor in ``promote(logits.dtype, float32)``: the log-probability
        of each label token, 0 where masked, aligned with ``labels``.

    Example:
        >>> logits = torch.randn(2, 5, 11)
        >>> ids = torch.randint(0, 11, (2, 5))
        >>> completion = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
        >>> token_logps(logits, ids, completion).shape
        torch.Size([2, 5])
    """
    _check_inputs(logits, labels, mask)
    if mask is None:
        mask = labels != ignore_index
    mask = mask.bool()
    out_dtype = torch.promote_types(logits.dtype, torch.float32)
    if shift:
        logits, tgt, m = logits[:, :-1], labels[:, 1:], mask[:, 1:]
    else:
        tgt, m = labels, mask
    tgt = torch.where(m, tgt.long(), torch.zeros((), dtype=torch.long, device=tgt.device))
    picked = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).to(out_dtype)
    logp = picked - _blocked_logsumexp(logits, out_dtype)
    logp = torch.where(m, logp, torch.zeros((), dtype=out_dtype, device=logp.device))
    if shift:
        logp = torch.cat([logp.new_zeros(logp.shape[0], 1), logp], dim=1)
    return logp


def sequence_logps(logits: Tensor, labels: Tensor, mask: Tensor | None = None, *, average: bool = False,
                   ignore_index: int = -100, shift: bool = True) -> Tensor:
    """Sequence log-probability [B]: the sum (or, with ``average=True``, the
    mean) of :func:`token_logps` over the counted tokens.

    The mean divides by the number of counted tokens (at least 1, so a row
    with no counted token gives 0). Arguments as in :func:`token_logps`.

    Example:
        >>> logits, ids = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
        >>> m = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
        >>> torch.allclose(sequence_logps(logits, ids, m, average=True) * 3, sequence_logps(logits, ids, m))
        True
    """
    lp = token_logps(logits, labels, mask, ignore_index=ignore_index, shift=shift)
    total = lp.sum(-1)
    if not average:
        return total
    m = (labels != ignore_index) if mask is None else mask.bool()
    if shift:
        m = m[:, 1:]
    return total / m.sum(-1).clamp_min(1).to(total.dtype)


# --------------------------------------------------------------------------- collate

def _ids(x, name: str, vocab_size: int | None = None) -> list[int]:
    """Token ids of ``x`` (a list of ints or a 1-D integer tensor) as a list, checked.

    Floats are refused, not truncated (``int(2.7)`` would silently be token 2), and
    so are bools, negative ids (``-100`` is a label mask value copied from
    ``labels``, not a token) and, with ``vocab_size``, ids the model has no
    embedding for: each would otherwise score a different sequence than the
    one given, or fail deep inside the embedding with an IndexError.
    """
    if torch.is_tensor(x):
        if x.dim() != 1 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"Invalid {name}: expected a 1-D integer tensor or a list of token ids, got a "
                             f"{x.dtype} tensor of shape {tuple(x.shape)}")
        ids = x.tolist()
    elif isinstance(x, (str, bytes)) or not isinstance(x, Sequence):
        raise ValueError(f"Invalid {name}: expected a list of token ids, got {type(x).__name__} "
                         "(tokenize text before training)")
    else:
        ids = []
        for i, t in enumerate(x):
            try:
                if isinstance(t, bool):
                    raise TypeError
                ids.append(operator.index(t))  # ints, numpy and 0-d torch integers; never a float
            except TypeError:
                raise ValueError(f"Invalid {name}: position {i} holds {t!r} ({type(t).__name__}); token ids "
                                 "must be integers (floats are refused rather than truncated)") from None
    if ids:
        lo, hi = min(ids), max(ids)
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            bad = lo if lo < 0 else hi
            accepted = f"0 <= id < {vocab_size} (the model's vocabulary)" if vocab_size is not None else "ids >= 0"
            hint = " (-100 marks ignored label positions; it is not a token id)" if bad == -100 else ""
            raise ValueError(f"Invalid {name}: token id {bad} at position {ids.index(bad)}; accepted: "
                             f"{accepted}{hint}")
    return ids


def ranked_pairs(k: int, scores: Sequence[float] | None = None, *, strategy: str = "all") -> list[tuple[int, int]]:
    """Pairs (better, worse) of indices into ``k`` completions ranked best first.

    ``strategy``: ``"all"`` (every i < j, k(k-1)/2 pairs), ``"adjacent"``
    (i, i+1) or ``"best_vs_rest"`` (0, j). With ``scores`` (higher is better,
    in the same order as the completions, which need not be sorted) the
    ranking comes from the scores and tied completions form no pair.
    """
    if strategy not in ("all", "adjacent", "best_vs_rest"):
        raise ValueError(f"Invalid strategy: {strategy!r} (accepted: 'all', 'adjacent', 'best_vs_rest')")
    order = list(range(k))
    if scores is not None:
        if len(scores) != k:
            raise ValueError(f"Invalid scores: expected {k} scores, one per completion, got {len(scores)}")
        order.sort(key=lambda i: -float(scores[i]))
    if strategy == "all":
        cand = [(order[a], order[b]) for a in range(k) for b in range(a + 1, k)]
    elif strategy == "adjacent":
        cand = [(order[a], order[a + 1]) for a in range(k - 1)]
    else:
        cand = [(order[0], order[b]) for b in range(1, k)]
    if scores is not None:
        cand = [(i, j) for i, j in cand if float(scores[i]) > float(scores[j])]
    return cand


_EXPECTED_KEYS = ("expected 'prompt' with 'chosen' and 'rejected', or 'prompt' with 'completions' (ranked best "
                  "first, optional 'scores'), each a list of token ids, plus an optional 'id'")
# TRL's tokenized column names -> ours (what a TRL-preprocessed dataset row holds)
_TRL_KEYS = {"prompt_input_ids": "prompt", "chosen_input_ids": "chosen", "rejected_input_ids": "rejected"}


def _keys_error(ex: Mapping, problem: str) -> ValueError:
    """A ValueError naming the keys expected and the keys given, with the renames for TRL-style rows."""
    msg = f"Invalid example: {problem}; {_EXPECTED_KEYS}; got keys {sorted(map(str, ex))}"
    trl = [k for k in _TRL_KEYS if k in ex]
    if trl:
        renames = ", ".join(f"{k!r} -> {_TRL_KEYS[k]!r}" for k in trl)
        msg += (f". These are TRL's tokenized columns: rename {renames} (or train inside TRL with "
                "gradwise.preference.trl_dpo_trainer)")
    return ValueError(msg)


def _completion(x, name: str, vocab_size: int | None = None) -> list[int]:
    ids = _ids(x, name, vocab_size)
    if not ids:
        raise ValueError(f"Invalid {name}: empty; a completion needs at least one token (e.g. the EOS token)")
    return ids


def example_parts(ex: Mapping, strategy: str, vocab_size: int | None = None
                   ) -> tuple[list[int], list[list[int]], list[tuple[int, int]]]:
    """(prompt, completions, pairs) of one example, a pair or a ranked list (token ids checked by :func:`_ids`)."""
    if not isinstance(ex, Mapping):
        raise ValueError(f"Invalid example: expected a mapping with 'prompt' and 'chosen'/'rejected' or "
                         f"'completions', got {type(ex).__name__}")
    if "prompt" not in ex:
        raise _keys_error(ex, "no 'prompt'")
    if "completions" not in ex and ("chosen" not in ex or "rejected" not in ex):
        raise _keys_error(ex, "no 'chosen' and 'rejected' (or 'completions')")
    prompt = _ids(ex["prompt"], "prompt", vocab_size)
    if not prompt:
        raise ValueError("Invalid prompt: empty; nothing would predict the first completion token "
                         "(start the prompt with a BOS token)")
    if "completions" in ex:
        comps = [_completion(c, f"completions[{i}]", vocab_size) for i, c in enumerate(ex["completions"])]
        if len(comps) < 2:
            raise ValueError(f"Invalid completions: a ranked list needs at least 2 completions, got {len(comps)}")
        pairs = ranked_pairs(len(comps), ex.get("scores"), strategy=strategy)
        return prompt, comps, pairs
    return prompt, [_completion(ex["chosen"], "chosen", vocab_size),
                    _completion(ex["rejected"], "rejected", vocab_size)], [(0, 1)]


def example_name(ex, default: str) -> str:
    """How an error names one example: ``default`` (its place, e.g. ``examples[3]``) and its ``"id"`` if any."""
    if isinstance(ex, Mapping) and "id" in ex:
        return f"{default} (id {ex['id']!r})"
    return default


def _checked_parts(ex, strategy: str, vocab_size: int | None, name: str):
    """:func:`example_parts`, with a ValueError saying which example it is about."""
    try:
        return example_parts(ex, strategy, vocab_size)
    except ValueError as err:
        raise ValueError(f"{err} [in {name}]") from None


def truncate(prompt: list[int], comp: list[int], max_length: int | None,
              max_prompt_length: int | None) -> tuple[list[int], list[int]]:
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]  # keep the end of the prompt
    if max_length is not None and len(prompt) + len(comp) > max_length:
        comp = comp[:max(0, max_length - len(prompt))]  # keep the start of the completion
        prompt = prompt[len(prompt) - min(len(prompt), max_length):]
    return prompt, comp


def sequence_key(tokens: Sequence[int], n_prompt: int) -> str:
    """Content key of one prompt+completion sequence (used by the trainer's reference cache)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(n_prompt.to_bytes(8, "little"))
    h.update(torch.tensor(list(tokens), dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def pad_rows(seqs: Sequence[Sequence[int]], starts: Sequence[int], pad_token_id: int
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad token lists into ``input_ids`` [N, T], ``attention_mask`` (long) and ``loss_mask`` (bool,
    true from ``starts[r]`` to the end of row r), with one tensor copy for all rows."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    pos = torch.arange(int(lengths.max()))
    real = pos < lengths[:, None]
    input_ids = torch.full(real.shape, pad_token_id, dtype=torch.long)
    input_ids[real] = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)  # row-major
    loss_mask = real & (pos >= torch.tensor(list(starts), dtype=torch.long)[:, None])
    return input_ids, real.long(), loss_mask


def left_pack(values: Tensor, mask: Tensor, width: int | None = None) -> tuple[Tensor, Tensor]:
    """The masked positions of each row of ``values`` [N, T] (one contiguous run per row, e.g. the
    completion tokens) moved to the left: ([N, width] values, 0-padded; [N, width] mask). ``width``
    (default: the longest run, which reads it back from the device) must be at least the longest run."""
    mask = mask.bool()
    count = mask.sum(-1)
    start = torch.where(mask.any(-1), mask.int().argmax(-1), torch.zeros_like(count))
    if width is None:
        width = int(count.max()) if count.numel() else 0
    steps = torch.arange(max(1, width), device=values.device)
    idx = (start[:, None] + steps[None]).clamp(max=values.shape[1] - 1)
    out_mask = steps[None] < count[:, None]
    return torch.where(out_mask, values.gather(1, idx), torch.zeros((), dtype=values.dtype,
                                                                   device=values.device)), out_mask


def collate_preferences(examples: Sequence[Mapping], *, pad_token_id: int, max_length: int | None = None,
                        max_prompt_length: int | None = None, ranked_strategy: str = "all",
                        with_keys: bool = False, vocab_size: int | None = None,
                        names: Sequence[str] | None = None) -> dict:
    """Pad every prompt+completion of a batch of preference examples into one batch.

    Each example is a mapping of token-id lists (or 1-D tensors): either a
    pair ``{"prompt", "chosen", "rejected"}`` or a ranked list
    ``{"prompt", "completions": [best, ..., worst]}`` (optionally with
    ``"scores"``, higher is better; see :func:`ranked_pairs` for
    ``ranked_strategy``). An optional ``"id"`` names the example.

    Rows are grouped by completion position: first the first completion of
    every example (the chosen ones, for pairs), then every second completion,
    and so on, so a batch of B pairs is ``[chosen_1..B, rejected_1..B]``.
    Sequences are right-padded with ``pad_token_id``.

    Prompts must not be empty (start them with a BOS token): under the
    shift convention nothing scores a sequence's first token.

    Truncation: the prompt keeps its last ``max_prompt_length`` tokens; then
    prompt+completion keeps its first ``max_length`` tokens. An empty
    completion, or one that loses all its tokens to truncation, raises
    ``ValueError`` (saying which), and so does an example without the keys
    above (naming the keys it has; TRL's tokenized ``prompt_input_ids``,
    ``chosen_input_ids``, ``rejected_input_ids`` get the renames to make).

    Returns a dict with ``input_ids``, ``attention_mask``, ``loss_mask``
    (true on completion tokens, in input coordinates, for
    :func:`token_logps` with ``shift=True``), ``labels`` (``input_ids`` with
    -100 off the completion, for Hugging Face style losses), ``chosen_index``
    and ``rejected_index`` ([P] row indices of each pair's better and worse
    sequence), ``pair_example`` ([P] index of the example each pair comes
    from), ``row_example`` ([N] the same per row) and, with
    ``with_keys=True``, ``keys``: one reference-cache key per row, a digest of the row's tokens and prompt length (:func:`sequence_key`;
    never the example's ``"id"``, so two examples sharing an id cannot share
    cached log-probs).

    Token ids must be integers (lists of ints or 1-D integer tensors; floats
    are refused, not truncated), ``>= 0`` (``-100`` is a label mask value) and,
    with ``vocab_size``, below it; a bad id raises ``ValueError`` naming the
    field, the position and the example (``names[i]``, default
    ``examples[i]``, plus its ``"id"``).
    """
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int):
        raise ValueError(f"Invalid pad_token_id: {pad_token_id!r} (accepted: an int token id)")
    for name, v in (("max_length", max_length), ("max_prompt_length", max_prompt_length)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"Invalid {name}: {v!r} (accepted: None or an int >= 1)")
    if len(examples) == 0:
        raise ValueError("Invalid examples: empty batch")
    if vocab_size is not None and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1):
        raise ValueError(f"Invalid vocab_size: {vocab_size!r} (accepted: None or an int >= 1)")
    if names is None:
        names = [f"examples[{e}]" for e in range(len(examples))]
    parts = [_checked_parts(ex, ranked_strategy, vocab_size, example_name(ex, names[e]))
             for e, ex in enumerate(examples)]
    max_k = max(len(c) for _, c, _ in parts)
    rows: list[tuple[list[int], int, object]] = []  # (tokens, prompt length, key)
    where: dict[tuple[int, int], int] = {}
    row_example: list[int] = []
    for k in range(max_k):
        for e, (prompt, comps, _) in enumerate(parts):
            if k >= len(comps):
                continue
            p, c = truncate(prompt, comps[k], max_length, max_prompt_length)
            if len(c) == 0:
                raise ValueError(f"Invalid example {e}: completion {k} has no tokens left after truncation to "
                                 f"max_length={max_length} (prompt has {len(p)} tokens; set max_prompt_length)")
            # by content, never by "id": ids repeat across datasets (and by mistake within one)
            key = sequence_key(p + c, len(p)) if with_keys else None
            where[(e, k)] = len(rows)
            rows.append((p + c, len(p), key))
            row_example.append(e)
    input_ids, attention_mask, loss_mask = pad_rows([t for t, _, _ in rows], [n for _, n, _ in rows],
                                                     pad_token_id)
    chosen, rejected, pair_example = [], [], []
    for e, (_, _, pairs) in enumerate(parts):
        for i, j in pairs:
            chosen.append(where[(e, i)])
            rejected.append(where[(e, j)])
            pair_example.append(e)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "labels": input_ids.masked_fill(~loss_mask, -100),
        "chosen_index": torch.tensor(chosen, dtype=torch.long),
        "rejected_index": torch.tensor(rejected, dtype=torch.long),
        "pair_example": torch.tensor(pair_example, dtype=torch.long),
        "row_example": torch.tensor(row_example, dtype=torch.long),
    }
    if with_keys:
        out["keys"] = [k for _, _, k in rows]
    return out


def concat_pairs(examples: Sequence[Mapping], *, pad_token_id: int, max_length: int | None = None,
                 max_prompt_length: int | None = None) -> dict:
    """Collate B ``{"prompt", "chosen", "rejected"}`` examples into one batch of
    2B rows ``[prompt+chosen_1..B, prompt+rejected_1..B]`` for one forward pass.

    Returns ``input_ids``, ``attention_mask`` and ``loss_mask`` (completion
    tokens only, input coordinates) of shape [2B, T], right-padded, plus
    ``labels`` and the pair indices; see :func:`collate_preferences`, which
    this calls after checking that every example is a pair.

    Example:
        >>> b = concat_pairs([{"prompt": [5, 6], "chosen": [7], "rejected": [8, 9]}], pad_token_id=0)
        >>> b["input_ids"].tolist(), b["loss_mask"].int().tolist()
        ([[5, 6, 7, 0], [5, 6, 8, 9]], [[0, 0, 1, 0], [0, 0, 1, 1]])
    """
    for i, ex in enumerate(examples):
        # missing keys get collate_preferences' message, which names the keys given
        if isinstance(ex, Mapping) and "completions" in ex:
            raise ValueError(f"Invalid examples[{i}]: a ranked list ('completions'); concat_pairs takes pairs "
                             "with keys 'prompt', 'chosen', 'rejected' (collate_preferences takes both)")
    return collate_preferences(examples, pad_token_id=pad_token_id, max_length=max_length,
                               max_prompt_length=max_prompt_length)
