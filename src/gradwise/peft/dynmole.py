"""DynMoLE: a mixture of LoRA experts whose router switches between top-p and all experts by Tsallis entropy.

Paper: "DynMoLE: Boosting Mixture of LoRA Experts Fine-Tuning with a Hybrid Routing Mechanism", Li, Wang, Zhang,
Yin, Duan, Xiao, Tang, 2025, arXiv 2504.00661. Authors' code: https://github.com/mikecovlee/DynMoLE at commit
2f428d38 (``moe_peft/adapters/dynmole/model.py``, ``moe_peft/common/moe_utils.py``; their HEAD 9354b27 does not
compile under ``torch.jit.script``). Only the abstract and introduction of the paper were readable in the stored
text (searched 2026-12-08), so the formulas below are those of the authors' code, which
``tests/peft_tests/test_dynmole.py`` checks against golden data made by running it
(``tools/golden/make_dynmole_golden.py``).

Router probabilities ``P = softmax(x W_rᵀ)`` over ``E`` experts. Normalised Tsallis entropy with index ``q``
(``eps`` added to every probability first, as the authors do)::

    S_q(P) = (1 − Σ_i (P_i + eps)^q) / (q − 1)          (q ≠ 1; q = 1: −Σ (P_i + eps) log(P_i + eps))
    S_q / S_q^max,   S_q^max = (1 − E^(1−q)) / (q − 1)   (q = 1: log E)

Hybrid routing per token: sort ``P`` descending, keep the experts whose cumulative probability is ≤ ``top_p``, and
always the first ``keep_top_k``; if the normalised entropy exceeds ``entropy_threshold`` (only checked when the
threshold is < 1) keep every expert. The routing weights are ``P ⊙ mask``, **not renormalised**. The layer's
update is ``Σ_e w_e · B_e A_e x · scaling``. The auxiliary loss over all routed tokens (rows ordered [layer,
batch, seq]) is ``entropy_coef · mean(S) + balance_coef · E Σ_e f_e P̄_e`` with ``f_e`` the mean routing weight
and ``P̄_e`` the mean probability of expert ``e`` (over the unpadded tokens when an attention mask is given; the
entropy mean is over all rows, padding included, as in the authors' code). Defaults are the authors'
(``top_p=0.75, keep_top_k=2, entropy_threshold=0.9, entropy_index=1.1, entropy_eps=1e-5``, coefficients 0.01 and
0.001).

Departures from the authors' code, each with its reason:

* The entropy normaliser ``S_q^max`` is computed in the input's dtype; theirs is a float32 tensor, which moves a
  float64 entropy by up to ~3e-8 (the golden data store both).
* The router and the softmax run in the input's dtype; their gate and softmax are float32 whatever the model's
  dtype (in float32 training the two agree).
* The experts' updates are summed as one rank-``E·r`` product (``x A_allᵀ`` scaled per expert, then ``B_all``)
  instead of a Python loop over experts; equal up to rounding.
* The balance term divides by the number of real tokens the way the authors' code does for an integer mask (the
  count plus 1e-8, in float32, i.e. the count itself), whatever the mask's dtype.
* Bad arguments raise ``ValueError`` (theirs ``assert`` in the config, or fail inside the computation).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from gradwise._validate import check_int, check_nonneg, check_positive, check_real
from gradwise.registry import register

__all__ = ["tsallis_entropy", "dynmole_route", "dynmole_router_loss", "dynmole_delta"]

_PAPER = "DynMoLE: Boosting Mixture of LoRA Experts Fine-Tuning with a Hybrid Routing Mechanism"
_CODE = "https://github.com/mikecovlee/DynMoLE@2f428d38"


def _check_route(top_p: float, keep_top_k: int, entropy_threshold: float, entropy_index: float,
                 entropy_eps: float) -> None:
    check_real("top_p", top_p, 0.0, 1.0, lo_open=True)
    check_int("keep_top_k", keep_top_k, 1)
    check_positive("entropy_threshold", entropy_threshold)
    check_positive("entropy_index", entropy_index)
    check_nonneg("entropy_eps", entropy_eps)


def tsallis_entropy(p: torch.Tensor, q: float, *, normalize: bool = True, eps: float = 1e-5) -> torch.Tensor:
    """Tsallis entropy of index ``q`` of the distributions along the last dimension of ``p`` (Shannon at q = 1),
    ``eps`` added to each probability; with ``normalize`` divided by its maximum for that many outcomes."""
    q = check_positive("q", q)
    eps = check_nonneg("eps", eps)
    n = p.shape[-1]
    if normalize and n < 2:
        raise ValueError(f"Invalid p: last dimension {n} (accepted: at least 2 outcomes when normalize=True)")
    p = p + eps
    if q == 1.0:
        entropy = -(p * torch.log(p)).sum(-1)
        max_entropy = math.log(n)
    else:
        entropy = (1 - (p ** q).sum(-1)) / (q - 1)
        max_entropy = (1 - n ** (1 - q)) / (q - 1)
    return entropy / torch.tensor(max_entropy, dtype=entropy.dtype) if normalize else entropy


def dynmole_route(probs: torch.Tensor, *, top_p: float = 0.75, keep_top_k: int = 2,
                  entropy_threshold: float = 0.9, entropy_index: float = 1.1,
                  entropy_eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """DynMoLE's hybrid routing of router probabilities ``probs`` [..., E].

    Returns ``(weights, entropy)``: ``weights = probs ⊙ mask`` (not renormalised), the mask keeping the top-p
    experts, at least ``keep_top_k`` of them, and every expert on rows whose normalised Tsallis entropy exceeds
    ``entropy_threshold`` (when it is < 1); ``entropy`` [...] is that entropy. Gradients flow through ``probs``
    (the mask is a constant)."""
    _check_route(top_p, keep_top_k, entropy_threshold, entropy_index, entropy_eps)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep = sorted_probs.detach().cumsum(-1) <= top_p
    keep[..., :keep_top_k] = True
    mask = torch.zeros_like(keep).scatter_(-1, order, keep)
    entropy = tsallis_entropy(probs, entropy_index, eps=entropy_eps)
    if entropy_threshold < 1.0:
        mask = mask | (entropy.detach() > entropy_threshold).unsqueeze(-1)
    return probs * mask, entropy


def dynmole_router_loss(router_logits: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                        entropy_coef: float = 0.01, balance_coef: float = 0.001, **route: Any) -> torch.Tensor:
    """DynMoLE's auxiliary router loss on the router logits of all routed tokens, ``[rows, E]`` with rows ordered
    [layer, batch, seq] (the layers' logits concatenated): ``entropy_coef · mean Tsallis entropy +
    balance_coef · E Σ_e f_e P̄_e``. ``attention_mask`` [batch, seq] (1 = token) restricts the balance term to
    real tokens; the rows must be a whole number of batch × seq blocks. ``route`` are :func:`dynmole_route`'s
    keywords."""
    check_nonneg("entropy_coef", entropy_coef)
    check_nonneg("balance_coef", balance_coef)
    if router_logits.dim() != 2:
        raise ValueError(f"Invalid router_logits: shape {tuple(router_logits.shape)} (accepted: [rows, experts])")
    rows, num_experts = router_logits.shape
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.numel() == 0 or rows % attention_mask.numel() != 0:
            raise ValueError(f"Invalid attention_mask: shape {tuple(attention_mask.shape)} does not tile the "
                             f"{rows} rows of router_logits (accepted: [batch, seq] with rows = layers·batch·seq)")
    probs = F.softmax(router_logits, dim=-1)
    weights, entropy = dynmole_route(probs, **route)
    if attention_mask is None:
        tokens_per_expert = weights.mean(0)
        prob_per_expert = probs.mean(0)
    else:
        m = attention_mask.to(device=probs.device, dtype=probs.dtype).reshape(1, -1)
        m = m.expand(rows // attention_mask.numel(), -1).reshape(-1, 1)
        # The authors' integer mask sums to an integer tensor, and "+ 1e-8" makes it float32: the count itself
        # for any count >= 1 (1e-8 only guards an all-padding batch).
        denom = (m.sum(0).to(torch.float32) + 1e-8).to(probs.dtype)
        tokens_per_expert = (weights * m).sum(0) / denom
        prob_per_expert = (probs * m).sum(0) / denom
    balance = num_experts * (tokens_per_expert * prob_per_expert).sum()
    return entropy_coef * entropy.mean() + balance_coef * balance


def _check_experts(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor,
                   lora_B: torch.Tensor) -> None:
    if lora_A.dim() != 3 or lora_B.dim() != 3:
        raise ValueError(f"Invalid lora_A/lora_B: shapes {tuple(lora_A.shape)}, {tuple(lora_B.shape)} "
                         "(accepted: lora_A [E, r, in], lora_B [E, out, r])")
    e, r, din = lora_A.shape
    if lora_B.shape[0] != e or lora_B.shape[2] != r:
        raise ValueError(f"Invalid lora_B: shape {tuple(lora_B.shape)} does not match lora_A {tuple(lora_A.shape)} "
                         f"(accepted: [{e}, out, {r}])")
    if tuple(router_weight.shape) != (e, din):
        raise ValueError(f"Invalid router_weight: shape {tuple(router_weight.shape)} (accepted: [{e}, {din}])")
    if x.shape[-1] != din:
        raise ValueError(f"Invalid x: last dimension {x.shape[-1]} (accepted: {din}, lora_A's input size)")


def _delta(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor,
           scaling: float, route: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's update and the router logits (unchecked)."""
    e, r, din = lora_A.shape
    logits = x @ router_weight.T
    weights, _ = dynmole_route(F.softmax(logits, dim=-1), **route)
    h = (x @ lora_A.reshape(e * r, din).T) * weights.repeat_interleave(r, dim=-1)
    return (h @ lora_B.permute(1, 0, 2).reshape(lora_B.shape[1], e * r).T) * scaling, logits


@register(kind="adapter", paper=_PAPER, year=2025, arxiv="2504.00661", code=_CODE,
          summary="mixture of LoRA experts routed top-p/top-k or to all experts by Tsallis entropy; "
                  "entropy plus load-balance router loss",
          aliases=("dynmole",))
def dynmole_delta(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, *,
                  scaling: float, **route: Any) -> torch.Tensor:
    """DynMoLE (arXiv 2504.00661) update ``Σ_e w_e(x) · B_e A_e x · scaling`` of inputs ``x`` [..., in] with router weight
    [E, in], ``lora_A`` [E, r, in], ``lora_B`` [E, out, r]; ``w`` from :func:`dynmole_route` on
    ``softmax(x W_rᵀ)`` (``route`` are its keywords). Returns [..., out]."""
    check_real("scaling", scaling)
    _check_experts(x, router_weight, lora_A, lora_B)
    _check_route(**{**_ROUTE_DEFAULTS, **route})
    return _delta(x, router_weight, lora_A, lora_B, scaling, route)[0]


_ROUTE_DEFAULTS = dict(top_p=0.75, keep_top_k=2, entropy_threshold=0.9, entropy_index=1.1, entropy_eps=1e-5)
