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

As a PEFT layer (``DynMoLEConfig``, ``get_dynmole_model``, ``dynmole_model_router_loss``; peft imported
lazily): the experts of one adapted ``nn.Linear`` are stored as one rank-``E·r`` PEFT LoRA adapter (``lora_A``
[E·r, in] holds the experts' A stacked, ``lora_B`` [out, E·r] their B side by side), plus a router weight [E, in] in
``lora_router`` (the ``lora_`` prefix makes PEFT train and save it). Each forward adds
:func:`gradwise.peft.dynmole.dynmole_delta`'s update with scaling ``lora_alpha / r`` (per expert, as the
authors' experts are LoRA adapters of rank r), and keeps the router logits for :func:`dynmole_model_router_loss`.
The router is initialised as the authors' (``kaiming_uniform_(a=sqrt(router_init_range))``, 5.0); A and B as
PEFT's LoRA (A Kaiming-uniform, B zero, so the model starts unchanged).

Registered through PEFT's experimental ``LoraConfig._register_custom_module({nn.Linear: layer})`` (peft 0.21.2
has no out-of-tree tuner type). That mapping is not serialised by ``save_pretrained``; the config records
``gradwise_adapter = {"method": "dynmole", "config": ...}`` in ``adapter_config.json`` and
:func:`gradwise.peft.load_adapter` rebuilds the layers from it (``PeftModel.from_pretrained`` alone would not). Departures from the authors' ``DynMoleSparseMoe``: one
dropout on the LoRA input shared by the experts (theirs draws one per expert; the default 0 makes them equal);
merging into the base weight is refused (the update depends on the input through the router).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_real
from gradwise.peft._common import lora_config_for, register_custom_adapter
from gradwise.registry import register

__all__ = ["tsallis_entropy", "dynmole_route", "dynmole_router_loss", "dynmole_delta", "DynMoLEConfig",
           "get_dynmole_model", "dynmole_model_router_loss"]

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


def _delta(x: torch.Tensor, router_weight: torch.Tensor, a_flat: torch.Tensor, b_flat: torch.Tensor,
           scaling: float, route: dict, lora_x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mixture's update and the router logits (unchecked). ``a_flat`` [E·r, in] stacks the experts' A,
    ``b_flat`` [out, E·r] their B (PEFT's rank-E·r LoRA layout); ``lora_x`` is the LoRA path's input (x after
    dropout) when it differs from the router's."""
    e = router_weight.shape[0]
    logits = x @ router_weight.T
    weights, _ = dynmole_route(F.softmax(logits, dim=-1), **route)
    h = ((x if lora_x is None else lora_x) @ a_flat.T) * weights.repeat_interleave(a_flat.shape[0] // e, dim=-1)
    return (h @ b_flat.T) * scaling, logits


@register(kind="adapter", paper=_PAPER, year=2025, arxiv="2504.00661", code=_CODE,
          summary="mixture of LoRA experts routed top-p/top-k or to all experts by Tsallis entropy; "
                  "entropy plus load-balance router loss",
          aliases=("dynmole",))
def dynmole_delta(x: torch.Tensor, router_weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, *,
                  scaling: float, **route: Any) -> torch.Tensor:
    """DynMoLE (arXiv 2504.00661) update ``Σ_e w_e(x) · B_e A_e x · scaling`` of inputs ``x`` [..., in] with
    router weight [E, in], ``lora_A`` [E, r, in], ``lora_B`` [E, out, r]; ``w`` from :func:`dynmole_route` on
    ``softmax(x W_rᵀ)`` (``route`` are its keywords). Returns [..., out]."""
    check_real("scaling", scaling)
    _check_experts(x, router_weight, lora_A, lora_B)
    _check_route(**{**_ROUTE_DEFAULTS, **route})
    e, r, din = lora_A.shape
    b_flat = lora_B.permute(1, 0, 2).reshape(lora_B.shape[1], e * r)
    return _delta(x, router_weight, lora_A.reshape(e * r, din), b_flat, scaling, route)[0]


_ROUTE_DEFAULTS = dict(top_p=0.75, keep_top_k=2, entropy_threshold=0.9, entropy_index=1.1, entropy_eps=1e-5)


@dataclass
class DynMoLEConfig:
    """DynMoLE adapter settings (defaults are the authors'): ``num_experts`` LoRA experts of rank ``r`` on each
    of ``target_modules`` (PEFT's matching), scaling ``lora_alpha / r``, routing keywords of
    :func:`gradwise.peft.dynmole.dynmole_route`, and the router-loss coefficients."""

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: Any = None
    num_experts: int = 6
    lora_dropout: float = 0.0
    top_p: float = 0.75
    keep_top_k: int = 2
    entropy_threshold: float = 0.9
    entropy_index: float = 1.1
    entropy_eps: float = 1e-5
    router_init_range: float = 5.0
    entropy_coef: float = 0.01
    balance_coef: float = 0.001
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        check_int("r", self.r, 1)
        check_int("num_experts", self.num_experts, 1)
        check_positive("lora_alpha", self.lora_alpha)
        check_real("lora_dropout", self.lora_dropout, 0.0, 1.0, hi_open=True)
        check_nonneg("router_init_range", self.router_init_range)
        check_nonneg("entropy_coef", self.entropy_coef)
        check_nonneg("balance_coef", self.balance_coef)
        _check_route(self.top_p, self.keep_top_k, self.entropy_threshold, self.entropy_index, self.entropy_eps)

    @property
    def route(self) -> dict:
        return dict(top_p=self.top_p, keep_top_k=self.keep_top_k, entropy_threshold=self.entropy_threshold,
                    entropy_index=self.entropy_index, entropy_eps=self.entropy_eps)



def _layer_class(cfg: DynMoLEConfig) -> type:
    """A subclass of PEFT's LoRA ``Linear`` carrying ``cfg`` (built on first use: peft is optional)."""
    from peft.tuners.lora.layer import Linear

    class DynMoLELinear(Linear):
        adapter_layer_names = Linear.adapter_layer_names + ("lora_router",)
        dynmole_config = cfg

        def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
            if not hasattr(self, "lora_router"):
                self.lora_router = nn.ParameterDict()
                self.dynmole_logits: dict[str, torch.Tensor] = {}
            base = self.get_base_layer()
            w = torch.empty(cfg.num_experts, base.in_features, dtype=base.weight.dtype, device=base.weight.device)
            nn.init.kaiming_uniform_(w, a=math.sqrt(cfg.router_init_range))
            self.lora_router[adapter_name] = nn.Parameter(w)
            super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

        def merge(self, *args, **kwargs):
            raise ValueError("DynMoLE adapters cannot be merged: the update depends on the input via the router")

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self.disable_adapters or self.merged or kwargs.get("adapter_names") is not None:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            out_dtype = result.dtype
            for name in self.active_adapters:
                if name not in self.lora_router:
                    continue
                a, b = self.lora_A[name].weight, self.lora_B[name].weight
                xa = self._cast_input_dtype(x, a.dtype)
                delta, logits = _delta(xa, self.lora_router[name], a, b, cfg.lora_alpha / cfg.r, cfg.route,
                                       lora_x=self.lora_dropout[name](xa))
                self.dynmole_logits[name] = logits.reshape(-1, cfg.num_experts)
                result = result + delta
            return result.to(out_dtype)

        def __repr__(self) -> str:
            return "dynmole." + super().__repr__()

    return DynMoLELinear


def get_dynmole_model(model: nn.Module, config: DynMoLEConfig, adapter_name: str = "default"):
    """Wraps ``model`` with PEFT (``get_peft_model``) so that every ``nn.Linear`` matched by
    ``config.target_modules`` carries a DynMoLE mixture of ``config.num_experts`` LoRA experts."""
    if not isinstance(config, DynMoLEConfig):
        raise ValueError(f"Invalid config: {type(config).__name__} (accepted: DynMoLEConfig)")
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(config), adapter_name=adapter_name)


def _lora_config(config: DynMoLEConfig):
    """The PEFT ``LoraConfig`` of ``config``: rank E·r, the DynMoLE layer registered, ``config`` recorded for
    :func:`gradwise.peft.loading.load_adapter`."""
    return lora_config_for("dynmole", config, _layer_class(config), r=config.r * config.num_experts,
                           lora_alpha=config.lora_alpha, target_modules=config.target_modules,
                           lora_dropout=config.lora_dropout, modules_to_save=config.modules_to_save)


register_custom_adapter("dynmole", DynMoLEConfig, _lora_config)


def dynmole_model_router_loss(model: nn.Module, attention_mask: torch.Tensor | None = None,
                              adapter_name: str = "default") -> torch.Tensor:
    """The DynMoLE router loss of the last forward of ``model`` (from :func:`get_dynmole_model`): the router
    logits of every DynMoLE layer, in module order, stacked as rows [layer, batch, seq]."""
    layers = [m for m in model.modules() if hasattr(m, "dynmole_config") and adapter_name in m.dynmole_logits]
    if not layers:
        raise ValueError("Invalid model: no DynMoLE layer has run a forward for adapter "
                         f"{adapter_name!r} (accepted: a model from get_dynmole_model after a forward)")
    cfg = layers[0].dynmole_config
    logits = torch.cat([m.dynmole_logits[adapter_name] for m in layers], dim=0)
    return dynmole_router_loss(logits, attention_mask, entropy_coef=cfg.entropy_coef,
                               balance_coef=cfg.balance_coef, **cfg.route)
