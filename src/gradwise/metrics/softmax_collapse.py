"""Softmax-collapse diagnostics of "Grokking at the Edge of Numerical Stability" (Prieto et al., 2025):
how many samples the float Softmax has collapsed on, and how far the gradient points along the naive
loss-minimization (NLM) direction that leads there.

Use them as a callback on any loop: the collapse fractions take the model's outputs (and labels) of a
batch, :func:`nlm_alignment` takes the parameters after ``loss.backward()`` (or gradients you pass), and
:func:`nlm_alignment_on_batch` takes the model and a batch and leaves ``.grad`` untouched::

    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    if step % 50 == 0:
        log(sc=softmax_collapse_fraction(out), zero=zero_loss_fraction(out, y),
            nlm=nlm_alignment(model.parameters()))
    opt.step()
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool
from gradwise.losses._common import check_logits_target
from gradwise.losses.stablemax import CODE, PAPER
from gradwise.registry import register

__all__ = ["softmax_collapse_fraction", "zero_loss_fraction", "nlm_alignment", "nlm_alignment_on_batch"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_dtype(dtype) -> None:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"Invalid dtype: {dtype!r} (accepted: torch.float16, torch.bfloat16, torch.float32 or "
                         "torch.float64)")


def _check_logits(logits) -> None:
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: expected a floating-point tensor of shape [N, C], got "
                         f"{type(logits).__name__ if not torch.is_tensor(logits) else logits.dtype}")
    if logits.dim() != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"Invalid logits: expected shape [N, C] with N, C >= 1, got {tuple(logits.shape)}")


@register(kind="metric", paper=PAPER, year=2025, arxiv="2501.04697", code=CODE,
          summary="Softmax Collapse (SC): fraction of samples whose shifted exp-sum rounds to exactly 1 in a "
                  "float dtype, so the Softmax is one-hot and the gradient vanishes")
def softmax_collapse_fraction(logits: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Fraction of samples in Softmax Collapse (SC), as Prieto et al. (2025) measure it.

    Paper: "Grokking at the Edge of Numerical Stability", Prieto, Barsbey,
    Mediano, Birdal, 2025, arXiv:2501.04697. Authors' code:
    https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
    (``logger.py``, ``MetricsLogger.compute_softmax_collapse``, the series
    the paper's figures mark as "50% zero terms in the loss").

    Math: with the logits cast to ``dtype`` (float32 by default, their
    ``--softmax_precision``) and ``m_i = max_k z_ik``, sample ``i`` has
    collapsed when the computed

    .. math:: S_i = \sum_k \exp(z_{ik} - m_i) = 1

    exactly, i.e. every other class's term was absorbed by the ``exp(0) = 1``
    of the largest logit. Then the float Softmax is one-hot, the cross
    entropy of a correctly classified sample is exactly 0 and its gradient
    is exactly 0: learning on that sample stops. Returns the fraction of
    rows with ``S_i == 1`` (a 0-dim float32 tensor, no gradient). A row with
    a NaN never counts.

    As the authors' code: no labels are needed (a misclassified sample can
    be collapsed too: its loss is then the margin, not 0); see
    :func:`zero_loss_fraction` for the fraction of samples whose loss is
    exactly 0 (their ``zero_terms``).

    Example::

        >>> softmax_collapse_fraction(torch.tensor([[0.0, -120.0], [0.0, -1.0]]))
        tensor(0.5000)
    """
    _check_logits(logits)
    _check_dtype(dtype)
    with torch.no_grad():
        z = logits.detach().to(dtype)
        total = torch.exp(z - z.amax(dim=1, keepdim=True)).sum(dim=1)
        return (total == 1).float().mean()


@register(kind="metric", paper=PAPER, year=2025, arxiv="2501.04697", code=CODE,
          summary="fraction of samples whose cross-entropy loss is exactly 0 in float32 (a collapsed Softmax: "
                  "zero loss and zero gradient)")
def zero_loss_fraction(logits: Tensor, target: Tensor, *, dtype: torch.dtype = torch.float32,
                       ignore_index: int = -100) -> Tensor:
    r"""Fraction of samples whose cross-entropy loss is exactly 0 in ``dtype`` (Prieto et al., 2025).

    Paper: "Grokking at the Edge of Numerical Stability", 2025,
    arXiv:2501.04697. Authors' code:
    https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
    (``logger.py``, ``MetricsLogger.compute_zero_terms``, with their
    ``cross_entropy_float32`` of ``utils.py`` as the loss).

    Math: with ``z`` the logits cast to ``dtype`` (float32 by default),
    ``l_i = -log_softmax(z_i)_{y_i}`` as torch computes it; returns
    ``#{i : l_i == 0} / #{i kept}`` (a 0-dim float32 tensor, no gradient),
    the samples labelled ``ignore_index`` left out of both counts (the
    authors have none: theirs divides by ``N``). ``l_i == 0`` means the
    target is the largest logit and the Softmax has collapsed on the sample
    (see :func:`softmax_collapse_fraction`): those samples give exactly zero
    gradient. With a loss that cannot collapse (StableMax cross-entropy) the
    fraction stays 0 where this one climbs to 1.

    Example::

        >>> zero_loss_fraction(torch.tensor([[120.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 0]))
        tensor(0.5000)
    """
    _check_logits(logits)
    _check_dtype(dtype)
    check_logits_target(logits, target, ignore_index)
    with torch.no_grad():
        z = logits.detach().to(dtype)
        tgt = target.long()
        keep = tgt != ignore_index
        if not bool(keep.any()):
            raise ValueError(f"Invalid target: every label is ignore_index={ignore_index} (accepted: at least one "
                             "other label)")
        logp = F.log_softmax(z, dim=1).gather(1, torch.where(keep, tgt, 0)[:, None]).squeeze(1)
        zero = (logp == 0) & keep
        return zero.sum().float() / keep.sum().float()


def _params_and_grads(parameters, grads) -> tuple[list[Tensor], list[Tensor]]:
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    if torch.is_tensor(parameters):
        parameters = [parameters]
    params = list(parameters)
    if not params or not all(torch.is_tensor(p) for p in params):
        raise ValueError("Invalid parameters: expected an nn.Module, a tensor or an iterable of tensors, got "
                         f"{'nothing' if not params else 'non-tensors'}")
    if grads is None:
        pairs = [(p, p.grad) for p in params if p.grad is not None]
        if not pairs:
            raise ValueError("Invalid parameters: no parameter has a gradient (accepted: parameters after "
                             "loss.backward(), or pass grads)")
    else:
        grads = [grads] if torch.is_tensor(grads) else list(grads)
        if len(grads) != len(params):
            raise ValueError(f"Invalid grads: expected one per parameter ({len(params)}), got {len(grads)}")
        pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
        if not pairs:
            raise ValueError("Invalid grads: every gradient is None (accepted: at least one tensor)")
        for p, g in pairs:
            if not torch.is_tensor(g) or g.shape != p.shape:
                raise ValueError(f"Invalid grads: expected tensors of the parameters' shapes, got "
                                 f"{tuple(g.shape) if torch.is_tensor(g) else type(g).__name__} for a parameter "
                                 f"of shape {tuple(p.shape)}")
    return [p for p, _ in pairs], [g for _, g in pairs]


@register(kind="metric", paper=PAPER, year=2025, arxiv="2501.04697", code=CODE,
          summary="cosine between the negative gradient and the naive-loss-minimization direction (the weights "
                  "of a homogeneous model): near 1 when training only scales the logits")
def nlm_alignment(parameters: Iterable[Tensor] | nn.Module | Tensor, grads: Iterable[Tensor | None] | None = None,
                  *, per_tensor: bool = False, eps: float = 1e-30) -> Tensor:
    r"""Alignment of the update with naive loss minimization (NLM), Prieto et al. (2025).

    Paper: "Grokking at the Edge of Numerical Stability", 2025,
    arXiv:2501.04697 (Section 4, naive loss minimization). Authors' code:
    https://github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-stability
    (no function of it computes this number; their ⊥Grad, ``orthograd.py``,
    removes the same component: :class:`gradwise.optim.OrthoGrad`).

    NLM is the part of the gradient that lowers the cross entropy only by
    scaling the logits, leaving the predictions unchanged. For a positively
    homogeneous model (a ReLU MLP without biases, as the paper's), ``f(c
    theta) = c^L f(theta)``, so moving along ``theta`` itself scales the
    logits: the NLM direction is the weights. This returns

    .. math:: \cos(-g, \theta) = \frac{-\langle g, \theta \rangle}{\|g\|\,\|\theta\|}

    over all parameters concatenated (``g`` the loss's gradient; float64
    accumulation; a 0-dim float64 tensor), or, with ``per_tensor=True``, one
    cosine per parameter tensor (a 1-D tensor in the order given, the
    projection ⊥Grad applies per tensor). Near 1: the step mostly inflates
    the weights (and logits), the regime that leads to Softmax Collapse;
    near 0: the gradient is orthogonal to the weights (what ⊥Grad enforces).
    For a model that is not homogeneous (biases, normalization layers) the
    weights are only an approximation of the NLM direction, as the paper
    says of its transformer.

    ``grads`` default to each parameter's ``.grad`` (parameters without one
    are skipped, as ⊥Grad skips them); a zero gradient or zero weights give
    0 (the denominator is at least ``eps``).

    Example::

        >>> loss.backward()
        >>> nlm_alignment(model)            # after overfitting, without weight decay: close to 1
    """
    check_bool("per_tensor", per_tensor)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"Invalid eps: {eps!r} (accepted: a positive number)")
    params, gs = _params_and_grads(parameters, grads)
    with torch.no_grad():
        w = [p.detach().reshape(-1).double() for p in params]
        g = [x.detach().reshape(-1).double().to(p.device) for x, p in zip(gs, params)]
        dots = torch.stack([-(a * b).sum() for a, b in zip(g, w)])
        gn = torch.stack([(a * a).sum() for a in g])
        wn = torch.stack([(b * b).sum() for b in w])
        if per_tensor:
            return dots / (gn * wn).sqrt().clamp(min=eps)
        return dots.sum() / (gn.sum() * wn.sum()).sqrt().clamp(min=eps)


def nlm_alignment_on_batch(model: nn.Module, inputs, target: Tensor, *,
                           loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                           per_tensor: bool = False) -> Tensor:
    r""":func:`nlm_alignment` of ``loss_fn(model(inputs), target)``'s gradient (arXiv 2501.04697), computed
    with ``torch.autograd.grad`` so the parameters' ``.grad`` are left as they were: a callback for a loop
    that has already stepped. Only parameters with ``requires_grad`` count; the model's mode (train/eval) is
    left as it is."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"Invalid loss_fn: expected a callable (outputs, target) -> loss, got {loss_fn!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Invalid model: no parameter requires a gradient")
    with torch.enable_grad():
        loss = loss_fn(model(inputs), target)
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise ValueError("Invalid loss_fn: expected a scalar loss")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return nlm_alignment(params, list(grads), per_tensor=per_tensor)
