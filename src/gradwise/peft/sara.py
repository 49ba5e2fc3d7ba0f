"""SaRA: AdamW on the small-magnitude weights only, with progressive re-selection and a nuclear-norm term.

Paper: "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation", Hu, Zhang,
Yi, Huang, Wang, Ma, ICLR 2025, arXiv 2409.06633. Authors' code: https://github.com/sjtuplayer/SaRA at commit
ea21192 (``optim/adamw2.py``, the optimizer their README's one-line integration uses). Only the abstract,
introduction and summaries of the paper were readable in the stored text (searched 2026-12-08), so the update
below is that of the authors' code, which ``tests/peft/test_sara.py`` checks step by step against golden data
made by running it (``tools/golden/make_sara_golden.py``).

With threshold ``τ`` each parameter ``W`` gets a fixed selection ``M₀ = |W₀| < τ`` at construction (the
"temporarily ineffective" weights). Every step is AdamW restricted to the selected entries::

    m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
    W' = W (1 − η λ) − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    W ← M ⊙ W' + (1 − M) ⊙ W                  (unselected entries never move, not even by weight decay)

with ``η = 1e-3 · exp(−350 τ)`` when ``lr`` is None. Progressive adjustment: at step ``progressive_iter + 1``
(before its update) the selection becomes ``M = M₀ ∧ (|W| < τ)``, i.e. selected entries that grew past the
threshold are frozen from then on. Low-rank term: when ``lambda_rank > 0``, each step draws one parameter with
``random.choice`` among the 2-D parameters whose smaller side exceeds 64 and, if more than 100 of its entries
are selected, adds ``λ_rank ∇‖M ⊙ W‖_*  = λ_rank (U Vᵀ) ⊙ M`` (``M ⊙ W = U Σ Vᵀ``, the thin SVD) to its
gradient. Seeding Python's ``random`` before the run reproduces the authors' draws.

``sparse=True`` is the memory-saving path (the paper's "unstructural backpropagation" keeps only the selected
entries' state): Adam's moments and the update live on the selected entries only (an int64 index per entry,
gathered with ``index_select`` and written back with ``index_copy_``), and the dense masks are not kept. It
runs the same elementwise arithmetic as the dense path, so the trajectories agree with it. The dense path keeps
full-size moments and each mask as 0/1 in the parameter's dtype (1.5x torch AdamW's state, and a step about 1.3x
its time); the sparse path, with 10 % of the entries selected, 0.2x the state and a faster step than AdamW
(``benchmarks/sara_step.py``, docs/benchmarks.md).

Departures from the authors' code, each with its reason:

* ``progressive_iter=None`` (the default here) never re-selects. The authors' default ``progressive_iter=-1``
  leaves their current mask ``None`` from the first step, and both their optimizers then fail (``None[i]``);
  a negative value is refused here.
* Masks are kept per parameter, in ``param_groups`` order over all groups. The authors build them from group 0
  only and index them by position among the parameters *that have a gradient*, so a parameter without a
  gradient (or a second group) shifts every later mask onto the wrong tensor.
* With a closure, the closure runs first and the nuclear-norm gradient is added to the gradients it left; the
  authors add it before calling the closure, so a closure that zeroes gradients drops it. Without a closure
  (their usage) the two agree.
* When no parameter is eligible for the nuclear norm, ``random.choice`` is not called (theirs raises
  ``IndexError`` on the empty list).
* A NaN propagates as in the authors' code: the dense path selects with ``lerp(W, W', M)`` (exact for a 0/1
  ``M``), so, like their ``W'·M + W·(1 − M)``, a frozen entry whose (discarded) update is NaN or infinite becomes
  NaN; the sparse path never touches frozen entries, so they keep their values there.
* The authors' other optimizer, ``optim/adamw.py`` (the "unstructural backpropagation" version, trainable
  tensors of the selected entries spliced into the model), differs, as read at ea21192 (not run here): its
  nuclear-norm term is taken on the original, detached parameters, so its gradient never reaches the trained
  entries; it splices ``|W|`` (not ``W``) into the selected entries at construction, so they hold ``|W|`` until
  the first update; its re-selection step rebuilds the optimizer (Adam's state restarts) and returns without an
  update; it has no "more than 100 selected" check. The issue that planned this module reports that with the
  ``|W|`` line patched a plain run equals ``adamw2``. This module follows ``adamw2``.
* No ``amsgrad``, ``maximize``, ``capturable`` or complex parameters (unused by the authors' fine-tuning).
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import torch

from gradwise._validate import check_betas, check_bool, check_int, check_positive, check_range, check_real
from gradwise.registry import register

__all__ = ["SaRA"]

_PAPER = "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation"
_CODE = "https://github.com/sjtuplayer/SaRA@ea21192"


def default_lr(threshold: float) -> float:
    """The authors' learning rate for a threshold: ``1e-3 · exp(−350 τ)``."""
    return 1e-3 * math.exp(-350 * threshold)


@register(kind="adapter", paper=_PAPER, year=2025, arxiv="2409.06633", code=_CODE,
          summary="AdamW on the weights with |w| < threshold only; progressive re-selection; nuclear-norm term",
          aliases=("sara",))
class SaRA(torch.optim.Optimizer):
    """SaRA sparse fine-tuning (arXiv 2409.06633): AdamW restricted to the entries with ``|w| < threshold``.

    Args:
        params: parameters or parameter groups (groups may set ``lr``, ``betas``, ``eps``, ``weight_decay``).
        threshold: τ > 0; an entry is trained iff ``|w₀| < τ``.
        lr: learning rate; None gives the authors' ``1e-3 · exp(−350 τ)``.
        betas, eps, weight_decay: AdamW's (decoupled decay, applied to the trained entries only).
        progressive_iter: None (never) or an integer ≥ 0: at step ``progressive_iter + 1`` entries that grew to
            ``|w| ≥ τ`` are frozen.
        lambda_rank: ≥ 0, weight of the nuclear-norm term (one eligible matrix per step, ``random.choice``).
        sparse: keep the Adam state and the update on the selected entries only (memory-saving path).

    ``masks`` is the current selection (bool, one per parameter); ``initial_masks`` the selection made at
    construction, which ``save_params``/``load_params`` use.
    """

    def __init__(self, params: Iterable[Any], *, threshold: float, lr: float | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 progressive_iter: int | None = None, lambda_rank: float = 0.0, sparse: bool = False):
        threshold = check_positive("threshold", threshold)
        if lr is None:
            lr = default_lr(threshold)
        check_range("lr", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        if progressive_iter is not None:
            check_int("progressive_iter", progressive_iter, 0)
        lambda_rank = check_real("lambda_rank", lambda_rank, 0.0)
        check_bool("sparse", sparse)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        flat = self._flat()
        if sparse:
            for i, p in enumerate(flat):
                if not p.is_contiguous():
                    raise ValueError(f"Invalid params: parameter {i} is not contiguous (accepted: contiguous "
                                     f"tensors when sparse=True)")
        self.threshold = threshold
        self.progressive_iter = progressive_iter
        self.lambda_rank = lambda_rank
        self.sparse = sparse
        self.inner_iter = 0
        with torch.no_grad():
            masks = [p.detach().abs() < threshold for p in flat]
        self._counts = [int(m.sum()) for m in masks]   # one host read per parameter, here and at re-selection
        self._low_rank = [i for i, p in enumerate(flat) if p.dim() == 2 and min(p.shape) > 64]
        if sparse:
            self._index = [m.reshape(-1).nonzero().squeeze(1) for m in masks]
            self._initial_index = list(self._index)
            self._masks = self._initial_masks = None
        else:   # the dense path keeps each mask as 0/1 in the parameter's dtype: a lerp with it selects exactly
            self._masks = [m.to(p.dtype) for m, p in zip(masks, flat)]
            self._initial_masks = list(self._masks)

    # ----------------------------------------------------------------- selection
    def _flat(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _dense(self, i: int, index: list[torch.Tensor]) -> torch.Tensor:
        p = self._flat()[i]
        m = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
        m[index[i]] = True
        return m.view_as(p)

    @property
    def masks(self) -> list[torch.Tensor]:
        """The current selection, one bool tensor per parameter (built from the index on the sparse path)."""
        if self._masks is not None:
            return [m != 0 for m in self._masks]
        return [self._dense(i, self._index) for i in range(len(self._index))]

    @property
    def initial_masks(self) -> list[torch.Tensor]:
        """The selection made at construction (``|w₀| < threshold``)."""
        if self._initial_masks is not None:
            return [m != 0 for m in self._initial_masks]
        return [self._dense(i, self._initial_index) for i in range(len(self._initial_index))]

    @torch.no_grad()
    def _reselect(self) -> None:
        """Progressive adjustment: freeze the selected entries that grew to ``|w| >= threshold``."""
        flat = self._flat()
        if self._masks is not None:
            self._masks = [m * (p.abs() < self.threshold) for m, p in zip(self._masks, flat)]
            self._counts = [int((m != 0).sum()) for m in self._masks]
            return
        for i, p in enumerate(flat):
            keep = p.reshape(-1).index_select(0, self._index[i]).abs() < self.threshold
            self._index[i] = self._index[i][keep]
            st = self.state.get(p)
            if st:
                st["exp_avg"] = st["exp_avg"][keep]
                st["exp_avg_sq"] = st["exp_avg_sq"][keep]
            self._counts[i] = self._index[i].numel()

    @torch.no_grad()
    def _add_rank_grad(self, i: int) -> None:
        p = self._flat()[i]
        mask = self._masks[i] if self._masks is not None else self._dense(i, self._index)
        u, _, vh = torch.linalg.svd(p * mask, full_matrices=False)
        g = (u @ (self.lambda_rank * vh)) * mask
        if p.grad is None:
            p.grad = g.to(p.dtype)
        else:
            p.grad.add_(g)

    # ----------------------------------------------------------------- params
    @torch.no_grad()
    def save_params(self) -> dict:
        """``{"threshold": τ, i: w_i[initial mask]}``: the trained entries, as the authors save them."""
        out: dict = {"threshold": self.threshold}
        for i, p in enumerate(self._flat()):
            if self._initial_masks is not None:
                out[i] = p[self._initial_masks[i] != 0].clone()
            else:
                out[i] = p.reshape(-1).index_select(0, self._initial_index[i])
        return out

    @torch.no_grad()
    def load_params(self, saved: dict) -> None:
        """Writes values saved by :meth:`save_params` back into the selected entries (all checked first)."""
        flat = self._flat()
        for i, p in enumerate(flat):
            n = int((self._initial_masks[i] != 0).sum()) if self._initial_masks is not None \
                else self._initial_index[i].numel()
            v = saved.get(i) if isinstance(saved, dict) else None
            if not isinstance(v, torch.Tensor) or v.numel() != n:
                got = "none" if not isinstance(v, torch.Tensor) else v.numel()
                raise ValueError(f"Invalid saved params: parameter {i} needs {n} values, got {got} (accepted: "
                                 f"the dict save_params returned for the same model and threshold)")
        for i, p in enumerate(flat):
            v = saved[i].reshape(-1).to(device=p.device, dtype=p.dtype)
            if self._initial_masks is not None:
                p[self._initial_masks[i] != 0] = v
            else:
                p.view(-1).index_copy_(0, self._initial_index[i], v)

    # ----------------------------------------------------------------- state dict
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["sara"] = {"inner_iter": self.inner_iter, "counts": list(self._counts),
                      "masks": None if self._masks is None else [m.clone() for m in self._masks],
                      "initial_masks": None if self._initial_masks is None else list(self._initial_masks),
                      "index": None if self._masks is not None else [t.clone() for t in self._index],
                      "initial_index": None if self._masks is not None else list(self._initial_index)}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("sara", None)
        if extra is None or (extra["masks"] is None) != (self._masks is None):
            raise ValueError("Invalid state_dict: needs the 'sara' entry of a SaRA state_dict with the same "
                             "sparse setting (accepted: SaRA.state_dict() of this model)")
        super().load_state_dict(state_dict)
        self.inner_iter = int(extra["inner_iter"])
        self._counts = list(extra["counts"])
        if self._masks is not None:
            self._masks, self._initial_masks = list(extra["masks"]), list(extra["initial_masks"])
        else:
            self._index, self._initial_index = list(extra["index"]), list(extra["initial_index"])

    # ----------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SaRA step (see the module docstring); returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.inner_iter += 1
        if self.progressive_iter is not None and self.inner_iter == self.progressive_iter + 1:
            self._reselect()
        if self.lambda_rank != 0 and self._low_rank:
            i = random.choice(self._low_rank)
            if self._counts[i] > 100:
                self._add_rank_grad(i)
        k = 0
        for group in self.param_groups:
            idx = [k + j for j, p in enumerate(group["params"]) if p.grad is not None]
            k += len(group["params"])
            if idx:
                self._update_group(group, idx)
        return loss

    def _update_group(self, group: dict, idx: list[int]) -> None:
        flat = self._flat()
        ps = [flat[i] for i in idx]
        for i, p in zip(idx, ps):
            if p.grad.is_sparse:
                raise RuntimeError("SaRA does not support sparse gradients")
            st = self.state[p]
            if not st:
                n = p.numel() if self._masks is not None else self._index[i].numel()
                shape = p.shape if self._masks is not None else (n,)
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
                st["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in ps]
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1.0)
        ts = [s.item() for s in steps]   # CPU step counters, as torch.optim's: no device sync
        step_size = [-(lr / (1 - b1 ** t)) for t in ts]
        bc2_sqrt = [math.sqrt(1 - b2 ** t) for t in ts]
        ms = [st["exp_avg"] for st in states]
        vs = [st["exp_avg_sq"] for st in states]
        if self._masks is not None:
            gs = [p.grad for p in ps]
            new = torch._foreach_mul(ps, 1 - lr * wd)
        else:
            flat_idx = [self._index[i] for i in idx]
            gs = [p.grad.reshape(-1).index_select(0, j) for p, j in zip(ps, flat_idx)]
            new = [p.view(-1).index_select(0, j) for p, j in zip(ps, flat_idx)]
            torch._foreach_mul_(new, 1 - lr * wd)
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, gs, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, 1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(new, ms, denom, step_size)
        if self._masks is not None:
            # p + 0·(w − p) = p and w − (w − p)·0 = w: torch's lerp selects exactly (and ~3x faster than where)
            torch._foreach_lerp_(ps, new, [self._masks[i] for i in idx])
        else:
            for p, j, w in zip(ps, flat_idx, new):
                p.view(-1).index_copy_(0, j, w)
