"""Frozen models of the trainer: the reference and the extra models (``pi_t``, ...), run without
gradient, in eval mode, only on cache misses, their log-probs cached per sequence by a digest of its
tokens (content-keyed, never by example id).

:func:`score_rows` scores rows under any model (the policy's forward uses it too);
:class:`FrozenModelsMixin` holds the trainer's frozen models, their caches and counters.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int
from gradwise.preference.trainer.binding import MODEL_NAME_RE, RESERVED_MODEL_NAMES
from gradwise.preference.trainer.inputs import default_forward
from gradwise.preference.logprobs import token_logps

__all__: list[str] = []


def score_rows(model: nn.Module, fwd: Callable, input_ids: Tensor, attention_mask: Tensor,
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


def _freeze(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, in eval mode, ``requires_grad`` off (in place)."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenModelsMixin:
    """The trainer's reference and extra models, their caches (``ref_cache``, ``extra_cache``) and the
    number of sequences each scored (``ref_forward_rows``, ``extra_forward_rows``)."""

    def _init_frozen_models(self, model: nn.Module, ref_model: nn.Module | None,
                            extra_models: Mapping[str, nn.Module] | None, forward: Callable | None) -> None:
        """Check and freeze the reference and extra models the objective takes (warnings name the caller of
        the trainer's constructor), and start empty caches."""
        self._owns_ref = False
        if ref_model is not None and ref_model is model:
            raise ValueError("Invalid ref_model: the policy itself (leave ref_model=None for a frozen copy)")
        if self.uses_reference:
            if ref_model is None:
                ref_model = copy.deepcopy(model)
                self._owns_ref = True
            ref_model = _freeze(ref_model, self.device)
        elif ref_model is not None:
            warnings.warn("ref_model is ignored: the objective takes no reference log-probs"
                          + (" (reference_free=True)" if self.reference_free else ""), stacklevel=3)
            ref_model = None
        self.ref_model = ref_model
        if extra_models is None:
            extra_models = {}
        if not isinstance(extra_models, Mapping):
            raise ValueError(f"Invalid extra_models: expected a mapping {{name: model}}, got {type(extra_models).__name__}")
        for name, m in extra_models.items():
            if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or name in RESERVED_MODEL_NAMES:
                raise ValueError(f"Invalid extra_models: name {name!r} (accepted: an identifier other than "
                                 f"{', '.join(map(repr, RESERVED_MODEL_NAMES))})")
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
                          "them", stacklevel=3)
        self.extra_models: dict[str, nn.Module] = {n: _freeze(extra_models[n], self.device)
                                                    for n in self.objective.extra_models}
        self._ref_forward = forward or (default_forward(ref_model) if ref_model is not None else None)
        self._extra_forward = {n: forward or default_forward(m) for n, m in self.extra_models.items()}
        self._needs_keys = self.uses_reference or bool(self.extra_models)
        #: reference cache: key -> (summed log-prob, averaged log-prob) of one sequence
        self.ref_cache: dict = {}
        self.ref_forward_rows = 0  # sequences the reference model has scored (cache misses)
        #: per extra model: key -> (summed, averaged) log-prob, and sequences scored
        self.extra_cache: dict[str, dict] = {n: {} for n in self.extra_models}
        self.extra_forward_rows: dict[str, int] = {n: 0 for n in self.extra_models}

    # ------------------------------------------------------------------ log-probs

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
                s, a, _, _ = score_rows(model, fwd, ids, am, lm)
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
        """Extra model ``name``'s (summed, averaged) log-probs of every row; only cache misses are run."""
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

    def precompute_reference(self, dataset: Sequence[Mapping], *, batch_size: int | None = None) -> int:
        """Fill the reference cache (and the extra models' caches, and the
        reference's revision log-probs) for ``dataset`` now; returns the number of
        sequences the frozen models scored. After this, they are only needed
        for examples not seen here."""
        if not self._needs_keys:
            return 0
        bs = self.batch_size if batch_size is None else check_int("batch_size", batch_size, lo=1)
        before = self.ref_forward_rows + sum(self.extra_forward_rows.values())
        for i in range(0, len(dataset), bs):
            js = range(i, min(i + bs, len(dataset)))
            self._frozen_quantities(self._collate([dataset[j] for j in js], [f"dataset[{j}]" for j in js]),
                                    torch.float32)
        return self.ref_forward_rows + sum(self.extra_forward_rows.values()) - before
