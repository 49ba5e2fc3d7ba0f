"""PV-Tuning on scalar (1- and 2-bit) codebooks: Adam on the continuous parameters (P step), the linearized
V step on the discrete codes.

Paper: "PV-Tuning: Beyond Straight-Through Estimation for Extreme LLM Compression", Malinovskii, Mazur, Ilin,
Kuznedelev, Burlachenko, Yi, Alistarh, Richtarik, NeurIPS 2024, arXiv 2405.14852. Authors' code:
https://github.com/Vahe1994/AQLM at commit e79a896 (``src/pv_optimizer.py`` ``StraightThroughAdamW`` in its PV
mode ``delta_decay = 1``, ``src/beam_search_l2.py``, ``src/configurable_adam.py``, ``src/aq.py``). Only the
abstract and summaries of the paper were readable in the stored text (docs/coverage_notes.md): the P step
(continuous parameters with the codes fixed), the linearized V step (codes chosen for a gradient step of the
weight) and the subspace restriction (only a small set of codes may change per step) are described there, and
their exact form below is the authors' code, which ``tests/compression_tests/test_pv_tuning.py`` checks
against a run of it (tests/data/pv_tuning_golden.pt, float64: codes exactly, the rest within 1e-10).

Representation (:class:`ScalarCodebookWeight`, AQLM with ``in_group_size = out_group_size = num_codebooks =
1``): ``W[i, j] = s[i] * c[codes[i, j]]``, one codebook ``c`` of ``2^bits`` scalars for the matrix and one
scale per output row. One :func:`pv_tuning_step` with ``g = dL/dW`` at the current ``W``:

* **P step**: ``c`` and ``s`` take an Adam step (the authors' ``ConfigurableAdamW``, below) on their
  gradients ``dL/dc``, ``dL/ds`` through ``W(c, s)`` with the codes fixed, learning rate ``lr``.
* **V step**: the weight itself takes an Adam step as if continuous, ``W' = W - code_lr * Adam(g)`` (its own
  state, ``code_betas``); the codes of the ``ceil(max_code_change * numel)`` entries where ``W'`` is farthest
  from ``s[i] c[codes]`` (new ``c``, ``s``) are set to the nearest codebook value of ``W' / s[i]``; with
  ``trust_ratio`` only the first ``k`` of those changes (largest first) are kept, ``k`` the smallest count
  whose cumulative change norm reaches ``trust_ratio * ||W_prev||`` (plus one, so at least one code moves).
  Then ``W`` is the new dequantization (nothing carries over between steps but the Adam moments).

Their Adam: ``m <- lerp(m, g, 1 - b1)``, ``v <- lerp(v, g^2, 1 - b2)``,
``p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` (eps outside the bias correction, unlike
``torch.optim.Adam``; ``b1 = 0`` uses ``g``), decoupled weight decay ``p <- p (1 - lr wd)`` first.

Defaults are the authors' ``finetune.py`` ones: ``lr = 1e-5``, ``betas = (0.9, 0.95)``, ``code_lr = 1e-2``,
``code_betas = (0, 0.95)``, ``max_code_change = 0.01``, no trust ratio, ``eps = 1e-6`` (``ConfigurableAdamW``;
their finetune default ``delta_decay = 0`` is the straight-through mode, not PV).

Departures from the authors' code, each with its reason:

* Scalar codebooks only (their groups of 1 x 1 and one codebook): beam search of width 1 is then the nearest
  codebook value (their ``_greedy_find_best_codes``, same ``argmin`` of ``c^2 - 2 r c``). Their vector groups,
  several codebooks, beam width > 1, stochastic rounding, sampled code selection (temperature > 0) and
  sharding (FSDP) are not here.
* Their k-means initialization is replaced by :meth:`ScalarCodebookWeight.from_weight` (the same scale, the
  row norm, and Lloyd's 1-D k-means from quantile centres); the golden runs start from their initialization.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gradwise._validate import check_betas, check_int, check_nonneg, check_real
from gradwise.registry import register

__all__ = ["ScalarCodebookWeight", "pv_tuning_step"]

_PAPER = "PV-Tuning: Beyond Straight-Through Estimation for Extreme LLM Compression"
_CODE = "https://github.com/Vahe1994/AQLM@e79a896"
_BITS = (1, 2)
_EPS = 1e-9  # AQLM's QuantizedWeight.EPS added to the row norms


def _nearest(reference: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook value for each entry of 1-D ``reference`` (AQLM's argmin of c^2 - 2 r c)."""
    scores = torch.addmm(codebook.square()[None], reference[:, None], codebook[None], alpha=-2)
    return scores.argmin(-1)


class ScalarCodebookWeight(nn.Module):
    """``W = scales * codebook[codes]``: ``codes`` long ``[out, in]`` (a buffer), ``codebook`` a parameter of
    ``2^bits`` scalars (bits 1 or 2), ``scales`` a parameter ``[out, 1]``. PV-Tuning's representation
    restricted to scalar codebooks (arXiv 2405.14852; AQLM with 1 x 1 groups)."""

    def __init__(self, codes: torch.Tensor, codebook: torch.Tensor, scales: torch.Tensor) -> None:
        super().__init__()
        if codes.dim() != 2 or codes.is_floating_point():
            raise ValueError(f"Invalid codes: shape {tuple(codes.shape)}, dtype {codes.dtype} "
                             "(accepted: a 2-D integer tensor [out, in])")
        k = codebook.numel()
        if codebook.dim() != 1 or k not in (2 ** b for b in _BITS):
            raise ValueError(f"Invalid codebook: shape {tuple(codebook.shape)} (accepted: 1-D with 2 or 4 values, "
                             f"i.e. bits in {_BITS})")
        if scales.shape != (codes.shape[0], 1):
            raise ValueError(f"Invalid scales: shape {tuple(scales.shape)} (accepted: [{codes.shape[0]}, 1])")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"Invalid codes: values outside [0, {k}) (accepted: indices into the codebook)")
        self.register_buffer("codes", codes.long().clone())
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.scales = nn.Parameter(scales.detach().clone())

    @property
    def bits(self) -> int:
        return int(math.log2(self.codebook.numel()))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, *, iters: int = 25) -> "ScalarCodebookWeight":
        """Scales = row norms (+1e-9, as AQLM), codebook = 1-D k-means of ``weight / scales`` (Lloyd, from the
        quantiles (i + 1/2)/2^bits), codes = nearest value."""
        if bits not in _BITS:
            raise ValueError(f"Invalid bits: {bits!r} (accepted: one of {_BITS})")
        iters = check_int("iters", iters, 0)
        w = weight.detach()
        scales = w.norm(dim=1, keepdim=True) + _EPS
        x = (w / scales).reshape(-1)
        k = 2 ** bits
        codebook = torch.quantile(x, (torch.arange(k, dtype=x.dtype) + 0.5) / k)
        for _ in range(iters):
            codes = _nearest(x, codebook)
            sums = torch.zeros_like(codebook).index_add_(0, codes, x)
            counts = torch.bincount(codes, minlength=k).to(x.dtype)
            codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook)
        return cls(_nearest(x, codebook).view_as(w), codebook, scales)

    def forward(self) -> torch.Tensor:
        return self.scales * self.codebook[self.codes]

    def extra_repr(self) -> str:
        return f"shape={tuple(self.codes.shape)}, bits={self.bits}"


def _adam_(p: torch.Tensor, grad: torch.Tensor, state: dict, lr: float, betas, eps: float, wd: float) -> None:
    """The authors' ConfigurableAdamW update of ``p`` in place (module docstring)."""
    b1, b2 = betas
    state["step"] = state.get("step", 0) + 1
    if wd != 0:
        p.mul_(1 - lr * wd)
    if b1 != 0:
        m = state.setdefault("exp_avg", torch.zeros_like(p)).lerp_(grad, 1 - b1)
        update = m.clone()
    else:
        update = grad.clone()
    if b2 != 1:
        if b2 == 0:
            v = grad.square()
        else:
            v = state.setdefault("exp_avg_sq", torch.zeros_like(p)).lerp_(grad.square(), 1 - b2)
        update /= v.sqrt().add(eps)
    mt = 1.0 / (1 - b1 ** state["step"]) if b1 != 0 else 1
    vt = 1.0 / math.sqrt(1 - b2 ** state["step"]) if b2 != 0 else 1
    p.add_(update, alpha=-lr * (mt / vt))


@register(kind="quantizer", paper=_PAPER, year=2024, arxiv="2405.14852", code=_CODE,
          summary="PV-Tuning on 1-2-bit scalar codebooks: Adam on codebook and scales (P), linearized V step "
                  "moving the codes of the entries farthest from a continuous Adam step (subspace, trust ratio)")
@torch.no_grad()
def pv_tuning_step(qweight: ScalarCodebookWeight, grad: torch.Tensor, state: dict, *, lr: float = 1e-5,
                   code_lr: float = 1e-2, betas=(0.9, 0.95), code_betas=(0.0, 0.95), eps: float = 1e-6,
                   weight_decay: float = 0.0, max_code_change: float = 0.01,
                   trust_ratio: float | None = None) -> int:
    """One PV-Tuning step of ``qweight`` given ``grad = dL/dW`` at ``W = qweight()`` (arXiv 2405.14852; module
    docstring). ``state`` is a dict this function keeps the Adam moments in (start with ``{}``). Updates
    ``qweight.codebook``, ``qweight.scales`` and ``qweight.codes`` in place; returns how many codes changed."""
    if not isinstance(qweight, ScalarCodebookWeight):
        raise ValueError(f"Invalid qweight: {type(qweight).__name__} (accepted: a ScalarCodebookWeight)")
    if grad.shape != qweight.codes.shape:
        raise ValueError(f"Invalid grad: shape {tuple(grad.shape)} (accepted: {tuple(qweight.codes.shape)})")
    if not isinstance(state, dict):
        raise ValueError(f"Invalid state: {type(state).__name__} (accepted: a dict, empty at the first step)")
    lr, code_lr = check_nonneg("lr", lr), check_nonneg("code_lr", code_lr)
    check_betas(betas)
    check_betas(code_betas, name="code_betas")
    eps, weight_decay = check_nonneg("eps", eps), check_nonneg("weight_decay", weight_decay)
    frac = check_real("max_code_change", max_code_change, 0.0, 1.0, lo_open=True)
    if trust_ratio is not None:
        trust_ratio = check_real("trust_ratio", trust_ratio, 0.0, lo_open=True)
    grad = grad.detach().to(qweight.codebook.dtype)

    w_prev = qweight().detach()
    # P step: gradients of codebook and scales through W(c, s), codes fixed; Adam on each
    with torch.enable_grad():
        cb, sc = torch.autograd.grad(qweight(), (qweight.codebook, qweight.scales), grad)
    _adam_(qweight.scales.data, sc, state.setdefault("scales", {}), lr, betas, eps, weight_decay)
    _adam_(qweight.codebook.data, cb, state.setdefault("codebook", {}), lr, betas, eps, weight_decay)
    # V step: a continuous Adam step of W, then the codes that best follow it, within the subspace
    target = w_prev.clone()
    _adam_(target, grad, state.setdefault("weight", {}), code_lr, code_betas, eps, weight_decay)
    codebook, scales = qweight.codebook.detach(), qweight.scales.detach()
    old = qweight.codes.reshape(-1)
    prev = (scales * codebook[qweight.codes]).reshape(-1)
    reference = (target / scales).reshape(-1)
    idx = None
    if frac < 1 or trust_ratio is not None:
        count = int(math.ceil(frac * qweight.codes.shape[0] * qweight.codes.shape[1]))
        idx = torch.topk((target.reshape(-1) - prev).square(), k=count, largest=True, sorted=True).indices
    if frac == 1:
        new = _nearest(reference, codebook)
    else:
        new = old.index_put((idx,), _nearest(reference[idx], codebook))
    if trust_ratio is not None:
        change = (scales * codebook[new.view_as(qweight.codes)]).reshape(-1) - prev
        cumulative = change.square()[idx].cumsum(0).sqrt()
        keep = idx[:1 + int(torch.searchsorted(cumulative, trust_ratio * prev.norm(), side="left"))]
        new = old.index_put((keep,), new[keep])
    changed = int((new != old).sum())
    qweight.codes.copy_(new.view_as(qweight.codes))
    return changed
