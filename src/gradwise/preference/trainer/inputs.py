"""Input validation and batching of the trainer: revision prompts (SRPO), the vocabulary a model
embeds, how a model is called, and the collation of examples into micro-batches (token ids checked,
example fields read, revision rows built). The checks raise ``ValueError`` naming the argument or
the example.

:class:`InputsMixin` holds the trainer's collation; it reads the trainer's ``objective``,
``pad_token_id``, ``max_length``, ``max_prompt_length``, ``ranked_strategy``, ``vocab_size`` and
revision settings.
"""
from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gradwise.preference.logprobs import (collate_preferences, example_name, example_parts, pad_rows, sequence_key,
                                          truncate)

__all__ = ["build_revision_prompt"]


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


def revision_fn(revision_prompt) -> Callable[[list[int], list[int]], list[int]] | None:
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



def infer_vocab_size(model: nn.Module) -> int | None:
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


def default_forward(model: nn.Module) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
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


def revision_settings(revision_prompt, objective) -> tuple[Callable | None, tuple[tuple[str, str], ...]]:
    """The trainer's revision prompt builder and the ``(a, b)`` combinations of ``log pi(y_a |
    revision_prompt(x, y_b))`` its objective takes: ``(None, ())`` for objectives without revision
    log-probs (a ``revision_prompt`` given to them is ignored with a warning naming the trainer's caller)."""
    fn = revision_fn(revision_prompt)
    if objective.revision_inputs and fn is None:
        raise ValueError(f"Invalid revision_prompt: None, but objective {objective.name} takes revision "
                         f"log-probs ({objective.revision_inputs[0]}, ...); pass a separator token id or a "
                         "function (prompt, draft) -> token ids")
    if revision_prompt is not None and not objective.revision_inputs:
        warnings.warn(f"revision_prompt ignored: objective {objective.name} takes no revision log-probs",
                      stacklevel=3)
        fn = None
    combos = tuple(dict.fromkeys((n.split("_")[1], n.split("_")[3]) for n in objective.revision_inputs))
    return fn, combos


class InputsMixin:
    """The trainer's collation of examples into micro-batches."""

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
            prompt, comps, pairs = example_parts(ex, self.ranked_strategy)
            for i, j in pairs:
                y = {"w": comps[i], "l": comps[j]}
                for a, b in self._revision_combos:
                    p, c = truncate(self._revision(prompt, y[b]), y[a], self.max_length, self.max_prompt_length)
                    if not c:
                        raise ValueError(f"Invalid max_length: {self.max_length} leaves a revised response no tokens "
                                         f"after its revision prompt of {len(p)} tokens (set max_prompt_length)")
                    if self.vocab_size is not None and max(p) >= self.vocab_size:
                        raise ValueError(f"Invalid revision_prompt: it built a prompt with token id {max(p)}; "
                                         f"accepted: 0 <= id < {self.vocab_size} (the model's vocabulary)")
                    rows.append((p, c))
        ids, am, lm = pad_rows([p + c for p, c in rows], [len(p) for p, _ in rows], self.pad_token_id)
        keys = [sequence_key(p + c, len(p)) for p, c in rows] if self.uses_reference else None
        return {"input_ids": ids, "attention_mask": am, "loss_mask": lm, "keys": keys}
