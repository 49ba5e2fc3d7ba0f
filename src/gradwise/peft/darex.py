"""DAREx: delta-parameter pruning with a tuned rescaling 1/q (DAREx-q) and AdamR's delta regularization.

Paper: "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models", Deng, Zhao, Vakilian, Chen,
Li, Thrampoulidis, ICLR 2025, arXiv 2410.09344. Authors' code: https://github.com/vengdeng/DAREx at commit 0873fc2
(``utils/deltaprune.py``, ``utils/analyticalq.py``, ``AdamR.py``). Only the abstract, the introduction's start and
figure captions of the paper came back from the stored text (searched 2026-12-08, docs/coverage_notes.md), so the
formulas below are the authors' code's; ``tests/peft_tests/test_darex.py`` checks them against golden data made
by running it (``tools/golden/make_darex_golden.py``).

DARE itself (drop with rate ``p``, rescale by ``1/(1 − p)``) stays HF PEFT's (``add_weighted_adapter(...,
combination_type="dare_linear" | "dare_ties")``, ``peft.utils.merge_utils.prune``); :func:`darex_prune` with
``q = 1 − p`` equals it under the same mask (tested). DAREx changes the rescaling of the kept deltas::

    m ~ Bernoulli(p) elementwise (1 = dropped);      Δ' = Δ ⊙ (1 − m) / q

with ``q > 1 − p`` chosen either by search on a validation score (:func:`darex_search_q`) or analytically per
output row (:func:`darex_analytical_q`). For a linear layer with delta ``ΔW`` and mean input ``x̄`` let
``c = ΔW ⊙ x̄`` (one row per output unit, with ``Δb`` appended as a last column when the layer has a bias).
Per row, with ``φ(p) = (1 − 2p) / ln((1 − p)/p)``, ``S₁ = Σⱼ cⱼ``, ``S₂ = Σⱼ cⱼ²``::

    f(q) = | η (1 − (1 − p)/q) S₁ + η² φ(p) S₂ / (4 q²) + ln(2 / (1 − γ)) |

is scanned over the grid ``q = k/1000``, ``k = ⌊1000 (1 − p)⌋, …, 998``; a row takes ``q`` whenever
``f(q) ≤`` its best so far, and is marked "passed" the first time ``f(q) ≥`` its best; the scan stops once a
fraction ``stop_frac`` of the rows is marked (the authors' guard against outlier features). The layer's q is the
mean over rows (their ``q_dict_e``). Defaults ``η = 0.45``, ``γ = 0.95``, ``stop_frac = 0.8`` are theirs.

AdamR (DAREx-L2 / L1) is Adam with a "stable" decay of the delta towards the pretrained weights ``W₀``, applied
before the Adam step::

    v̂ᵢ = vᵢ / (1 − β₂ᵗ);   s = sqrt(Σ over all params and entries v̂ / number of entries)   (1 if s = 0)
    W ← W − λ η / s · (W − W₀)          (L1: sign(W − W₀))
    W ← W − η / (1 − β₁ᵗ) · m / (√v̂ + ε)

Departures from the authors' code, each with its reason:

* Precision of the analytical q. Their ``analytical_resolve_new`` keeps the best-so-far ``f`` in float16
  whatever c's dtype, and their ``optimal_q_calculation`` casts c to float16 too. Near ``f ≈ ln 40 ≈ 3.7`` float16
  resolves steps of about 0.002, so on fine-tuning-scale deltas neighbouring grid points tie, a tie marks the row
  "passed", the early stop fires early and the rows' q change (issue 20 measured a layer q of 0.10 instead of
  0.48 at p = 0.9). Here the whole scan runs in c's dtype by default; ``dtype=torch.float16`` reproduces their
  float16 path exactly (checked against their unmodified function). The float64 golden cases were made with
  their buffer's dtype line changed to c's dtype, nothing else.
* The returned q has dtype ``promote(c.dtype, float32)`` and holds the grid value ``k · 0.001``; theirs is always
  float32.
* ``φ(0.5)`` is 0/0 in their code (NaN), so no row is ever updated and every q stays ``1 − p``; here
  ``φ(0.5) = 1/2`` (its limit) and the scan runs. Likewise ``φ(0) = 0`` (their numpy gives 0 with a warning).
* A row of c holding NaN gets q = NaN (theirs leaves it at ``1 − p``), so bad statistics are not hidden.
* The grid's start keeps their float truncation: ``⌊1000 (1 − p)⌋`` is 99 for p = 0.9, so q = 0.099 < 1 − p is
  on the grid (recorded as a contract case).
* AdamR takes ``ref_params`` aligned with the parameters over all groups (kept in the optimizer state). Theirs
  stores one ``pre_model`` list in the defaults and zips it with each group's parameters, so a second group is
  paired with the first group's references; no ``amsgrad`` (unused by their scripts), no per-step ``print``.
  With no gradient at all the step does nothing (theirs divides by zero).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from gradwise._validate import check_betas, check_bool, check_range, check_real
from gradwise.registry import register

__all__ = ["darex_prune", "darex_analytical_q", "darex_search_q", "AdamR"]

_PAPER = "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models"
_CODE = "https://github.com/vengdeng/DAREx@0873fc2"


def _check_p(p: Any) -> float:
    return check_real("p", p, 0.0, 1.0, hi_open=True)


def _check_q(q: Any) -> Any:
    if isinstance(q, torch.Tensor):
        if bool((q <= 0).any()):
            raise ValueError("Invalid q: a tensor with entries <= 0 (accepted: q > 0, a number or a tensor "
                             "broadcasting against delta)")
        return q
    return check_real("q", q, 0.0, lo_open=True)


@register(kind="pruning", name="DAREx", paper=_PAPER, year=2025, arxiv="2410.09344", code=_CODE,
          summary="Drop delta parameters with rate p and rescale the rest by 1/q (DAREx-q; q = 1-p is DARE)",
          aliases=("darex", "darex-q"))
def darex_prune(delta: torch.Tensor, p: float, *, q: float | torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Drops each entry of ``delta`` with probability ``p`` and divides the kept ones by ``q`` (arXiv 2410.09344).

    The drop mask is ``torch.bernoulli(torch.full_like(delta, p), generator=generator)`` (1 = dropped), as the
    authors' ``drop``; the result is ``delta · (1 − mask) / q``. ``q=None`` is DARE's ``1 − p``; ``q`` may be a
    tensor broadcasting against ``delta`` (per-row q of :func:`darex_analytical_q`). Raises ``ValueError`` for
    ``p`` outside [0, 1) or ``q <= 0``. NaN entries of ``delta`` stay NaN where kept.
    """
    p = _check_p(p)
    q = 1.0 - p if q is None else _check_q(q)
    mask = torch.bernoulli(torch.full_like(delta, p), generator=generator)
    return delta * (1 - mask) / q


def _phi(p: float) -> float:
    if p == 0.5:
        return 0.5
    if p == 0.0:
        return 0.0
    return (1 - 2 * p) / math.log((1 - p) / p)


def darex_analytical_q(c: torch.Tensor, p: float, *, eta: float = 0.45, prob: float = 0.95,
                       stop_frac: float = 0.8, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-row rescaling q (shape ``[rows, 1]``) minimising the authors' bound on the output change.

    ``c`` is ``ΔW ⊙ x̄`` (rows = output units; append ``Δb`` as a last column), ``p`` the drop rate in [0, 1).
    The scan, its early stop and the defaults are the authors' (module docstring); take ``.mean()`` for their
    per-layer q. ``stop_frac`` > 0 (above 1 the scan never stops early). ``dtype`` is the dtype the scan runs in (default c's); ``torch.float16`` reproduces the authors'
    float16 computation, ties included.
    """
    p = _check_p(p)
    eta = check_real("eta", eta, 0.0, lo_open=True)
    prob = check_real("prob", prob, 0.0, 1.0, lo_open=True, hi_open=True)
    stop_frac = check_real("stop_frac", stop_frac, 0.0, lo_open=True, finite=False)
    if not isinstance(c, torch.Tensor) or c.dim() != 2 or not c.is_floating_point():
        raise ValueError(f"Invalid c: {getattr(c, 'shape', type(c))} (accepted: a 2-D floating tensor, rows = "
                         f"output units)")
    work = c.to(dtype) if dtype is not None else c
    out_dtype = torch.promote_types(c.dtype, torch.float32)
    rows = c.shape[0]
    q_o = torch.full((rows, 1), 1.0 - p, dtype=out_dtype, device=c.device)
    stop = torch.zeros(rows, 1, dtype=torch.float32, device=c.device)
    best = torch.full((rows, 1), 10000.0, dtype=work.dtype, device=c.device)
    s1 = torch.sum(work, dim=1, keepdim=True)
    s2 = torch.sum(work ** 2, dim=1, keepdim=True)
    coef = eta ** 2 * _phi(p)
    log_term = math.log(2 / (1 - prob))
    for k in range(int((1 - p) * 1000), 999):
        q = k * 0.001
        res = (eta * ((1 - (1 - p) / q) * s1) + (coef * s2 / (4 * q ** 2) + log_term)).abs()
        better = res <= best
        passed = res >= best
        best = torch.where(better, res, best)
        q_o.masked_fill_(better, q)
        stop.masked_fill_(passed, 1.0)
        if stop.mean() >= stop_frac:
            break
    nan_rows = torch.isnan(c).any(dim=1, keepdim=True)
    return q_o.masked_fill_(nan_rows, math.nan)


def darex_search_q(eval_fn: Callable[[float], float], p: float, qs: Iterable[float]) -> tuple[float, dict]:
    """Grid search of q on a validation score (DAREx-q with a labelled or proxy score; higher is better).

    ``eval_fn(q)`` prunes at rate ``p`` with rescaling ``1/q`` and returns a score. DARE's ``q = 1 − p`` is
    evaluated first as the baseline, then each of ``qs``; ties go to the later q, as the authors' ``score >=
    best_score``. Returns ``(best_q, scores)`` with ``scores`` mapping each q tried to its score.
    """
    p = _check_p(p)
    grid = [1.0 - p] + [_check_q(float(q)) for q in qs]
    if len(grid) == 1:
        raise ValueError("Invalid qs: empty (accepted: at least one q > 0)")
    scores: dict[float, float] = {}
    best_q, best_score = grid[0], -math.inf
    for q in grid:
        score = float(eval_fn(q))
        scores[q] = score
        if score >= best_score:
            best_q, best_score = q, score
    return best_q, scores


class AdamR(torch.optim.Optimizer):
    """Adam with the authors' stable decay of the delta ``W − W₀`` (AdamR, DAREx-L2 / -L1; arXiv 2410.09344).

    Args:
        params: parameters or parameter groups.
        ref_params: the pretrained values ``W₀``, one tensor per parameter in ``param_groups`` order (copied).
        lr, betas, eps: Adam's.
        weight_decay: λ ≥ 0 of the delta decay (0 is plain Adam).
        l1: decay by ``sign(W − W₀)`` (DAREx-L1) instead of ``W − W₀``.

    The update is in the module docstring: the decay is scaled by ``1/s``, ``s`` the root mean of the
    bias-corrected second moments over every parameter with a gradient, and applied before the Adam step.
    """

    def __init__(self, params: Iterable[Any], ref_params: Sequence[torch.Tensor], lr: float = 1e-3, *,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-4,
                 l1: bool = False):
        check_range("lr", lr, 0.0)
        check_betas(betas)
        check_range("eps", eps, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_bool("l1", l1)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, l1=l1))
        flat = [p for g in self.param_groups for p in g["params"]]
        refs = list(ref_params)
        if len(refs) != len(flat):
            raise ValueError(f"Invalid ref_params: {len(refs)} tensors for {len(flat)} parameters (accepted: one "
                             f"per parameter, in param_groups order)")
        for i, (p, r) in enumerate(zip(flat, refs)):
            if not isinstance(r, torch.Tensor) or r.shape != p.shape:
                raise ValueError(f"Invalid ref_params: entry {i} has shape {getattr(r, 'shape', None)}, its "
                                 f"parameter {tuple(p.shape)} (accepted: the same shape)")
        for p, r in zip(flat, refs):
            self.state[p]["ref"] = r.detach().to(device=p.device, dtype=p.dtype).clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        groups = [(g, ps) for g, ps in groups if ps]
        if any(p.grad.is_sparse for _, ps in groups for p in ps):  # before any state is written
            raise RuntimeError("AdamR does not support sparse gradients")
        if not groups:
            return loss
        # Adam moments per group with foreach ops; the L2/L1 pull to the reference weights is scaled by the
        # root-mean of every bias-corrected second moment, a 0-dim tensor (no host sync)
        work, sums, size = [], [], 0
        for group, params in groups:
            beta1, beta2 = group["betas"]
            states = [self.state[p] for p in params]
            for p, st in zip(params, states):
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
            grads = [p.grad for p in params]
            m, v = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
            torch._foreach_mul_(m, beta1)
            torch._foreach_add_(m, grads, alpha=1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            v_hat = torch._foreach_div(v, [1 - beta2 ** st["step"] for st in states])
            sums += [t.sum() for t in v_hat]
            size += sum(p.numel() for p in params)
            work.append((group, params, states, m, v_hat))
        mean_sqrt = (torch.stack(sums).sum() / size).sqrt()
        mean_sqrt = torch.where(mean_sqrt == 0, torch.ones_like(mean_sqrt), mean_sqrt)
        for group, params, states, m, v_hat in work:
            beta1 = group["betas"][0]
            lr, wd = group["lr"], group["weight_decay"]
            if wd != 0:
                diff = torch._foreach_sub(params, [st["ref"] for st in states])
                if group["l1"]:
                    torch._foreach_sign_(diff)
                torch._foreach_mul_(diff, -wd * lr / mean_sqrt)
                torch._foreach_add_(params, diff)
            denom = torch._foreach_sqrt(v_hat)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, m, denom, [-lr / (1 - beta1 ** st["step"]) for st in states])
        return loss
