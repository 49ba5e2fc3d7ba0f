"""Robust Weight Signatures (RWS): robustness to a corruption as a weight delta added to a clean model.

Follows ``model_patching.py`` (``decompose``) and ``tools.py`` (``select_layers``, ``get_projection``) of
github.com/VITA-Group/Robust_Weight_Signatures at commit 57b695d. Unlike the other ``gradwise.tta``
modules this is not a wrapper adapting on test batches: the robustness is extracted once from trained
weights (:func:`weight_signature`) and added to a model's weights (:func:`patch`), with no test data.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gradwise._validate import check_int, is_real
from gradwise.registry import register

__all__ = ["weight_signature", "patch", "shallow_keys", "DEFAULT_NUM_LAYERS"]

PAPER = "Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights?"
CODE = "https://github.com/VITA-Group/Robust_Weight_Signatures"
# model_patching.py's --keep_num default: the shallowest 7 layers carry the signature
DEFAULT_NUM_LAYERS = 7
# BatchNorm statistics are not weights: the authors leave them out of the signature (commented out in
# select_layers) and re-estimate them instead
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

StateLike = nn.Module | Mapping[str, torch.Tensor]


def _state(name: str, obj: Any) -> Mapping[str, torch.Tensor]:
    """The tensors of a module (its ``state_dict``) or of a state dict, checked."""
    if isinstance(obj, nn.Module):
        return getattr(obj, "_orig_mod", obj).state_dict()  # a compiled model names its tensors as the plain one
    if isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    raise TypeError(f"Invalid {name}: {type(obj).__name__} (accepted: a torch.nn.Module or a state dict "
                    "mapping str names to tensors)")


def shallow_keys(model: StateLike, num_layers: int = DEFAULT_NUM_LAYERS) -> list[str]:
    """The names of the shallowest ``num_layers`` layers' tensors: where a signature lives.

    A *layer* is a module holding a floating ``weight`` of 2 or more dimensions (convolution, linear,
    embedding), counted in ``state_dict`` order. The keys kept are the floating tensors that come before
    the first tensor of layer ``num_layers + 1``: the layers' weights and biases and the affine weight and
    bias of any normalization between them, not BatchNorm running statistics. With fewer layers than
    ``num_layers`` every such tensor is kept. On a VGG (the authors' ``select_layers(..., 'vgg16')``) this
    is the first ``num_layers`` convolutions' weights and biases.
    """
    state = _state("model", model)
    num_layers = check_int("num_layers", num_layers, 1)
    keys, seen = [], set()
    for key, t in state.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "weight" and t.is_floating_point() and t.dim() >= 2 and prefix not in seen:
            if len(seen) == num_layers:
                break
            seen.add(prefix)
        if t.is_floating_point() and not key.endswith(_STAT_SUFFIXES):
            keys.append(key)
    return keys


def _check_keys(keys: Sequence[str], ref: Mapping[str, torch.Tensor], name: str,
                other: Mapping[str, torch.Tensor], other_name: str) -> None:
    missing = [k for k in keys if k not in other]
    if missing:
        raise ValueError(f"Invalid {other_name}: no tensor named {missing[:5]} (accepted: the same names as "
                         f"{name}; did the architectures differ?)")
    bad = [(k, tuple(other[k].shape), tuple(ref[k].shape)) for k in keys if other[k].shape != ref[k].shape]
    if bad:
        k, got, want = bad[0]
        raise ValueError(f"Invalid {other_name}: {k!r} has shape {got} (accepted: the shape {want} it has in "
                         f"{name}; {len(bad)} tensor(s) differ)")


@register(kind="test-time-adaptation", paper=PAPER, year=2023, arxiv="2302.12480", code=CODE, aliases=("RWS",),
          summary="extract a corruption's robust weight signature: the shallow layers' fine-tuning delta, "
                  "projected off the clean model's")
def weight_signature(clean: StateLike, robust: StateLike, *, pretrained: StateLike | None = None,
                     keys: Sequence[str] | None = None,
                     num_layers: int = DEFAULT_NUM_LAYERS) -> dict[str, torch.Tensor]:
    """The Robust Weight Signature of ``robust`` with respect to ``clean`` (RWS; Cai, Zhang, Wang; ICML 2023,
    arXiv 2302.12480).

    Paper: "Robust Weight Signatures: Gaining Robustness as Easy as Patching Weights?". Code:
    github.com/VITA-Group/Robust_Weight_Signatures, followed at commit 57b695d (``decompose`` in
    ``model_patching.py``, ``get_projection`` and ``select_layers`` in ``tools.py``). Only the abstract was
    readable in the stored text, so the math below is the authors' code.

    ``clean`` and ``robust`` are fine-tuned from the same ``pretrained`` weights θ₀, on clean and on
    corrupted data. For every selected tensor (each weight and each bias on its own, flattened)

        δ_r = θ_robust − θ₀,   δ_c = θ_clean − θ₀,   s = δ_r − (⟨δ_r, δ_c⟩ / ⟨δ_c, δ_c⟩) δ_c,

    the robust delta with its component along the clean delta removed: what the corruption taught beyond
    what plain fine-tuning did. Where ``δ_c = 0`` nothing is removed (``s = δ_r``); ``pretrained=None``
    means θ₀ = θ_clean, i.e. ``robust`` was fine-tuned from ``clean`` itself, and gives ``s = θ_robust −
    θ_clean``. The signature is kept for the shallow layers only, where the paper finds clean and robust
    weights differ: ``keys`` names the tensors, else :func:`shallow_keys` picks the first ``num_layers``
    layers (the authors' ``--keep_num``, default 7).

    Arguments may be modules or state dicts; every selected tensor must exist, floating, with the same
    shape in all of them, else ``ValueError``. Returns a new dict of detached tensors (name → s), in the
    tensors' own dtype and device. Use :func:`patch` to add it to a model.

    Departures from the authors' code: a zero clean delta removes nothing (theirs divides 0 by 0, NaN);
    the layer rule is one rule for any architecture (theirs is written for VGG-16 and ResNet-50 key names;
    on ResNet-50 they count a bottleneck block as one layer, pass ``keys`` to reproduce it); their ResNet-50
    path also overwrites every BatchNorm and downsample tensor with the robust models' average and
    re-estimates BatchNorm statistics on corrupted training data, which needs the robust models and data at
    patch time and is not done here; their optional quantization of the signature is not built.
    """
    c = _state("clean", clean)
    r = _state("robust", robust)
    p = c if pretrained is None else _state("pretrained", pretrained)
    if keys is None:
        keys = shallow_keys(c, num_layers)
    elif isinstance(keys, str) or not isinstance(keys, Sequence) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"Invalid keys: {keys!r} (accepted: a sequence of tensor names, or None for "
                         "shallow_keys(clean, num_layers))")
    keys = list(keys)
    if not keys:
        raise ValueError("Invalid keys: empty (accepted: at least one tensor name of clean)")
    unknown = [k for k in keys if k not in c]
    if unknown:
        raise ValueError(f"Invalid keys: {unknown[:5]} are not tensors of clean (accepted: names in "
                         "clean's state_dict)")
    ints = [k for k in keys if not c[k].is_floating_point()]
    if ints:
        raise ValueError(f"Invalid keys: {ints[:5]} are not floating tensors (accepted: weights, biases)")
    _check_keys(keys, c, "clean", r, "robust")
    if pretrained is not None:
        _check_keys(keys, c, "clean", p, "pretrained")
    out = {}
    with torch.no_grad():
        for k in keys:
            base = p[k].to(c[k])
            d_r = (r[k].to(c[k]) - base).reshape(-1)
            d_c = (c[k] - base).reshape(-1)
            cc = d_c.dot(d_c)
            # the projection coefficient, 0 where the clean delta is 0 (no host sync)
            coef = torch.where(cc > 0, d_r.dot(d_c) / torch.where(cc > 0, cc, torch.ones_like(cc)),
                               torch.zeros_like(cc))
            out[k] = (d_r - coef * d_c).reshape(c[k].shape).detach().clone()
    return out


def _coefficients(coeffs: Any, n: int) -> list[float]:
    if isinstance(coeffs, torch.Tensor):
        coeffs = coeffs.tolist()
    if is_real(coeffs):
        coeffs = [coeffs] * n
    if isinstance(coeffs, (str, bytes)) or not isinstance(coeffs, Sequence) or len(coeffs) != n \
            or not all(is_real(a) and math.isfinite(a) for a in coeffs):
        raise ValueError(f"Invalid coeffs: {coeffs!r} (accepted: a finite number, or a sequence of {n} finite "
                         "numbers, one per signature)")
    return [float(a) for a in coeffs]


@register(kind="test-time-adaptation", paper=PAPER, year=2023, arxiv="2302.12480", code=CODE, name="rws_patch",
          summary="patch robustness into a clean model by adding scaled robust weight signatures to its weights")
def patch(model: StateLike, signatures: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
          coeffs: float | Sequence[float]) -> StateLike:
    """Add Robust Weight Signatures to a model's weights (RWS, arXiv 2302.12480; code
    github.com/VITA-Group/Robust_Weight_Signatures at commit 57b695d, ``decompose``).

    For signatures s_1..s_n (from :func:`weight_signature`) and coefficients a_1..a_n, every tensor a
    signature names becomes

        θ ← θ + Σ_i a_i s_i

    and every other tensor is left alone. ``coeffs`` is one number for all signatures or one per
    signature: 1 adds a signature as extracted, a smaller value patches less robustness, several
    signatures compose, and ``patch(model, s, -a)`` takes a patch ``a`` off again (up to rounding).

    An ``nn.Module`` is changed **in place** (its parameters and buffers, without autograd) and returned;
    patch ``copy.deepcopy(model)`` to keep the clean one. A state dict is not changed: a new dict is
    returned. Each signature must be a dict of tensors whose names are tensors of the model, floating, of
    the same shape, else ``ValueError``; values are cast to the model's dtype and device.

    Departure from the authors' code: ``decompose`` multiplies each robust delta by its weight before the
    projection and again when summing, so it adds Σ_i w_i² s_i (the same with their default of one
    corruption and ``--alpha 1``); here each coefficient is applied once, the linear rescaling the paper
    describes. Their ``--alpha`` with n signatures corresponds to ``coeffs = (alpha/n)**2`` each.
    """
    if isinstance(signatures, Mapping):
        signatures = [signatures]
    if not isinstance(signatures, Sequence) or not signatures:
        raise ValueError(f"Invalid signatures: {type(signatures).__name__} (accepted: a signature dict or a "
                         "non-empty sequence of them, from weight_signature)")
    for i, s in enumerate(signatures):
        if not isinstance(s, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in s.items()):
            raise ValueError(f"Invalid signatures[{i}]: {type(s).__name__} (accepted: a dict of tensor name to "
                             "tensor, from weight_signature)")
    coeffs = _coefficients(coeffs, len(signatures))
    state = _state("model", model)
    for i, s in enumerate(signatures):
        _check_keys(list(s), s, f"signatures[{i}]", state, "model")
        ints = [k for k in s if not state[k].is_floating_point()]
        if ints:
            raise ValueError(f"Invalid signatures[{i}]: {ints[:5]} are not floating tensors of model "
                             "(accepted: weights and biases)")
    if isinstance(model, nn.Module):
        target = state  # state_dict() tensors share storage with the parameters and buffers
    else:
        target = {k: v.clone() if any(k in s for s in signatures) else v for k, v in state.items()}
    with torch.no_grad():
        for s, a in zip(signatures, coeffs):
            for k, v in s.items():
                target[k].add_(v.to(target[k]), alpha=a)
    return model if isinstance(model, nn.Module) else target
