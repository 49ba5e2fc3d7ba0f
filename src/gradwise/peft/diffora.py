"""DiffoRA: LoRA on every candidate module behind a learned gate (the DAM), relaxed, then discretised.

Paper: "DiffoRA: Enabling Parameter-Efficient LLM Fine-Tuning via Differential Low-Rank Matrix Adaptation", Jiang,
Wang, Yuan, 2025, arXiv 2502.08905 (v2 retitled "... via Differential Module Selection"). No code released.

**What the paper's text gave us.** Only the abstract and the first lines of the introduction were readable in the
stored text (arXiv HTML v2 and abstract pages, searched 2026-12-08; docs/coverage_notes.md). They say: not every
module needs LoRA; a Differential Adaptation Matrix (DAM) decides which modules are fine-tuned; the DAM is built
"via continuous relaxation and discretization with weight-sharing optimizations". The method section (the exact
relaxation, the optimisation schedule of the DAM, any regulariser, the selection rule) was not readable, so the
choices below are ours, each the plainest reading of those words, and are marked as such.

**What this module implements.** Every targeted ``nn.Linear`` carries a rank-``r`` LoRA adapter and one DAM entry
``γ`` (a scalar logit, ``lora_gate``)::

    relaxed:     y = W x + σ(γ) · (α/r) · B A x        (our choice: a sigmoid per module, i.e. DARTS' two-way
                                                     softmax over {LoRA, no LoRA}; γ starts at ``gate_init``)
    discretised: y = W x + (α/r) · B A x   if the module is kept,   y = W x   if it is dropped

:func:`diffora_discretize` keeps the ``select_ratio`` fraction of modules with the largest ``σ(γ)`` (ties: module
order; at least one) and freezes the DAM. "Weight sharing" is read as: the kept modules go on with the LoRA
weights trained during the relaxed phase (no re-initialisation), so the search and the fine-tuning share them.
The DAM and the LoRA weights can be trained together (one optimiser, as in first-order DARTS) or alternately on
two data splits (:func:`diffora_parameter_groups` gives the two groups); the paper's schedule is unknown to us.

As a PEFT layer: a subclass of PEFT's LoRA ``Linear`` registered through ``LoraConfig._register_custom_module``
(as DynMoLE), with the gate in ``lora_gate`` (trained and saved by PEFT) and the DAM state (−1 relaxed, 0
dropped, 1 kept) in the persistent buffer ``lora_gate_state`` (saved, never trained). Reload a saved adapter with
:func:`gradwise.peft.load_adapter`. Merging writes ``σ(γ) · ΔW`` (relaxed) or ``state · ΔW`` (discretised) into
the base weight; PEFT's mixed-adapter batches (``adapter_names=``) are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradwise._validate import check_int, check_positive, check_real
from gradwise.peft._common import lora_config_for, register_custom_adapter
from gradwise.registry import register

__all__ = ["DiffoRAConfig", "get_diffora_model", "diffora_gates", "diffora_discretize", "diffora_parameter_groups"]

_PAPER = "DiffoRA: Enabling Parameter-Efficient LLM Fine-Tuning via Differential Low-Rank Matrix Adaptation"
RELAXED, DROPPED, KEPT = -1.0, 0.0, 1.0


@dataclass
class DiffoRAConfig:
    """DiffoRA settings: rank-``r`` LoRA (scaling ``lora_alpha / r``) on each of ``target_modules`` (PEFT's
    matching), the DAM logit of every module starting at ``gate_init`` (σ = 0.5 at 0), and ``select_ratio``, the
    fraction of modules :func:`diffora_discretize` keeps."""

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: Any = None
    select_ratio: float = 0.5
    gate_init: float = 0.0
    lora_dropout: float = 0.0
    modules_to_save: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        check_int("r", self.r, 1)
        check_positive("lora_alpha", self.lora_alpha)
        check_real("select_ratio", self.select_ratio, 0.0, 1.0, lo_open=True)
        check_real("gate_init", self.gate_init)
        check_real("lora_dropout", self.lora_dropout, 0.0, 1.0, hi_open=True)


def _layer_class(cfg: DiffoRAConfig) -> type:
    """A subclass of PEFT's LoRA ``Linear`` with a DAM gate (built on first use: peft is optional)."""
    from peft.tuners._buffer_dict import BufferDict
    from peft.tuners.lora.layer import Linear

    class DiffoRALinear(Linear):
        adapter_layer_names = Linear.adapter_layer_names + ("lora_gate",)
        other_param_names = Linear.other_param_names + ("lora_gate_state",)
        diffora_config = cfg

        def update_layer(self, adapter_name, r, lora_alpha, config, **kwargs):
            if not hasattr(self, "lora_gate"):
                self.lora_gate = nn.ParameterDict()
                self.lora_gate_state = BufferDict(persistent=True)
                # a host copy of the states, so forward never reads a device tensor to branch on it;
                # refreshed when a state_dict is loaded and by diffora_discretize
                self._diffora_modes: dict[str, float] = {}
                self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_diffora_modes())
            w = self.get_base_layer().weight
            self.lora_gate[adapter_name] = nn.Parameter(torch.full((), float(cfg.gate_init), dtype=w.dtype,
                                                                   device=w.device))
            self.lora_gate_state[adapter_name] = torch.tensor(RELAXED, dtype=w.dtype, device=w.device)
            self._diffora_modes[adapter_name] = RELAXED
            super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

        def _sync_diffora_modes(self) -> None:
            self._diffora_modes = {name: float(state) for name, state in self.lora_gate_state.items()}

        def diffora_state(self, name: str) -> float:
            return self._diffora_modes[name]

        def diffora_gate(self, name: str) -> torch.Tensor:
            """This module's DAM entry: σ(γ) while relaxed, the 0/1 decision once discretised."""
            if self.diffora_state(name) == RELAXED:
                return torch.sigmoid(self.lora_gate[name])
            return self.lora_gate_state[name]

        def get_delta_weight(self, adapter):
            delta = super().get_delta_weight(adapter)
            return delta * self.diffora_gate(adapter).detach().to(delta.dtype)

        def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if kwargs.get("adapter_names") is not None:
                raise ValueError("Invalid adapter_names: DiffoRA layers do not run PEFT's mixed-adapter batches "
                                 "(accepted: None)")
            if self.disable_adapters or self.merged:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x, *args, **kwargs)
            out_dtype = result.dtype
            for name in self.active_adapters:
                if name not in self.lora_gate or self.diffora_state(name) == DROPPED:
                    continue
                a, b = self.lora_A[name], self.lora_B[name]
                xa = self._cast_input_dtype(x, a.weight.dtype)
                h = a(self.lora_dropout[name](xa))
                s = self.scaling[name]
                # the gate scales the rank-r activations (cheaper than the output), equal up to rounding
                h = h * (torch.sigmoid(self.lora_gate[name]) * s) if self.diffora_state(name) == RELAXED else h * s
                result = result + b(h)
            return result.to(out_dtype)

        def __repr__(self) -> str:
            return "diffora." + super().__repr__()

    return DiffoRALinear


def _lora_config(config: DiffoRAConfig):
    """The PEFT ``LoraConfig`` of ``config``: the DiffoRA layer registered, ``config`` recorded for
    :func:`gradwise.peft.loading.load_adapter`."""
    return lora_config_for("diffora", config, _layer_class(config), r=config.r, lora_alpha=config.lora_alpha,
                           target_modules=config.target_modules, lora_dropout=config.lora_dropout,
                           modules_to_save=config.modules_to_save)


register_custom_adapter("diffora", DiffoRAConfig, _lora_config)


@register(kind="adapter", paper=_PAPER, year=2025, arxiv="2502.08905", code=None,
          summary="LoRA on every module behind a learned DAM gate (sigmoid relaxation), then the top modules kept "
                  "with their shared LoRA weights",
          aliases=("diffora",))
def get_diffora_model(model: nn.Module, config: DiffoRAConfig, adapter_name: str = "default"):
    """DiffoRA (arXiv 2502.08905): wraps ``model`` with PEFT (``get_peft_model``) so that every ``nn.Linear``
    matched by ``config.target_modules`` carries a rank-``r`` LoRA adapter gated by its DAM entry σ(γ)."""
    if not isinstance(config, DiffoRAConfig):
        raise ValueError(f"Invalid config: {type(config).__name__} (accepted: DiffoRAConfig)")
    from peft import get_peft_model

    return get_peft_model(model, _lora_config(config), adapter_name=adapter_name)


def _layers(model: nn.Module, adapter_name: str) -> list[tuple[str, nn.Module]]:
    layers = [(n, m) for n, m in model.named_modules()
              if hasattr(m, "diffora_config") and adapter_name in getattr(m, "lora_gate", {})]
    if not layers:
        raise ValueError(f"Invalid model: no DiffoRA layer carries adapter {adapter_name!r} (accepted: a model from "
                         "get_diffora_model or load_adapter)")
    return layers


def diffora_gates(model: nn.Module, adapter_name: str = "default") -> dict[str, float]:
    """The DAM: each DiffoRA module's name and its entry, σ(γ) while relaxed, 0 or 1 once discretised."""
    return {n: float(m.diffora_gate(adapter_name).detach()) for n, m in _layers(model, adapter_name)}


def diffora_parameter_groups(model: nn.Module, adapter_name: str = "default") -> tuple[list, list]:
    """``(lora, gates)``: the trainable LoRA weights (and any other trainable parameter) and the DAM logits, for
    training them with separate optimisers, learning rates or data splits."""
    gates = [m.lora_gate[adapter_name] for _, m in _layers(model, adapter_name)]
    ids = {id(g) for g in gates}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in ids], gates


def diffora_discretize(model: nn.Module, select_ratio: float | None = None,
                       adapter_name: str = "default") -> list[str]:
    """Discretises the DAM: keeps the ``select_ratio`` fraction (default the config's) of DiffoRA modules with
    the largest σ(γ), ``max(1, round(ratio · n))`` of them, ties broken by module order; the kept modules go on
    as plain LoRA with the weights trained so far, the others are switched off; every DAM logit and the dropped
    modules' LoRA weights stop requiring gradients. Returns the kept modules' names. Refused once discretised."""
    layers = _layers(model, adapter_name)
    ratio = layers[0][1].diffora_config.select_ratio if select_ratio is None else \
        check_real("select_ratio", select_ratio, 0.0, 1.0, lo_open=True)
    if any(m.diffora_state(adapter_name) != RELAXED for _, m in layers):
        raise ValueError("Invalid model: its DAM is already discretised (accepted: a relaxed DiffoRA model)")
    gates = torch.stack([torch.sigmoid(m.lora_gate[adapter_name].detach().float()) for _, m in layers])
    k = max(1, math.floor(ratio * len(layers) + 0.5))
    keep = set(torch.argsort(-gates, stable=True)[:k].tolist())
    for i, (_, m) in enumerate(layers):
        m.lora_gate_state[adapter_name].fill_(KEPT if i in keep else DROPPED)
        m._diffora_modes[adapter_name] = KEPT if i in keep else DROPPED
        m.lora_gate[adapter_name].requires_grad_(False)
        if i not in keep:
            for p in (*m.lora_A[adapter_name].parameters(), *m.lora_B[adapter_name].parameters()):
                p.requires_grad_(False)
    return [n for i, (n, _) in enumerate(layers) if i in keep]
