"""Trace of the loss Hessian, the flatness measure of Liu et al. (2023), by Hutchinson's estimator; and its top
eigenvalue by power iteration, the sharpness measure of SAF (Du et al. 2022) and SAM's literature."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg
from gradwise.metrics.callback import TrainingCallback
from gradwise.registry import register

__all__ = ["HessianTraceCallback", "hessian_trace", "hessian_top_eigenvalue"]

_CHUNK = 64  # probes per batched backward: bounds the memory of the vmapped Hessian-vector products


def _rademacher(p: Tensor, generator: torch.Generator | None) -> Tensor:
    # drawn on the generator's device (CPU by default), so a seeded generator gives the same probes anywhere
    dev = generator.device if generator is not None else p.device
    v = torch.randint(0, 2, p.shape, generator=generator, device=dev, dtype=torch.int8)
    return (v.to(p.dtype) * 2 - 1).to(p.device)


def _loss_and_graph_grads(model: nn.Module, loss_fn: Callable, batch, generator: torch.Generator | None,
                          params: Sequence[Tensor] | None) -> tuple[list[Tensor], Tensor, tuple]:
    """Check the arguments the Hessian measures share; return ``(params, loss, grads with a graph)``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
    if not callable(loss_fn):
        raise ValueError(f"Invalid loss_fn: {loss_fn!r} (accepted: a callable (model, batch) -> scalar loss)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Invalid generator: {generator!r} (accepted: None or a torch.Generator)")
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not params or not all(torch.is_tensor(p) and p.requires_grad for p in params):
        raise ValueError("Invalid params: (accepted: a non-empty sequence of tensors that require grad)")
    loss = loss_fn(model, batch)
    if not torch.is_tensor(loss) or loss.numel() != 1 or not loss.requires_grad:
        raise ValueError(f"Invalid loss_fn: it returned {type(loss).__name__} "
                         f"{tuple(loss.shape) if torch.is_tensor(loss) else ''} (accepted: a scalar tensor that "
                         "depends on params)")
    return params, loss, torch.autograd.grad(loss.reshape(()), params, create_graph=True, allow_unused=True)


@register(kind="metric", paper="Same Pre-training Loss, Better Downstream: Implicit Bias Matters for Language Models",
          year=2023, arxiv="2210.14199", code=None,
          summary="Hutchinson estimate of the loss Hessian's trace (flatness) with Rademacher probes and "
                  "Hessian-vector products")
def hessian_trace(model: nn.Module, loss_fn: Callable, batch, n_samples: int = 100,
                  generator: torch.Generator | None = None, params: Sequence[Tensor] | None = None,
                  return_samples: bool = False) -> Tensor:
    r"""Hutchinson's estimate of :math:`\operatorname{tr} \nabla^2_\theta L(\theta)`, the flatness measure.

    Paper: Liu, Xie, Li, Ma, "Same Pre-training Loss, Better Downstream: Implicit Bias Matters for Language
    Models", ICML 2023, arXiv:2210.14199: among models with the same (optimal) pre-training loss, a smaller
    trace of the pre-training loss's Hessian (flatter) goes with better downstream accuracy, and mini-batch
    SGD implicitly lowers it. No code was released.

    .. math:: \operatorname{tr} H = \mathbb{E}_{v}\,[v^\top H v] \approx \frac1m \sum_{i=1}^m v_i^\top H v_i,
              \qquad v_i \in \{-1, +1\}^d \text{ i.i.d. Rademacher},

    unbiased because :math:`\mathbb{E}[v v^\top] = I`; each :math:`H v` is a Hessian-vector product by
    double backward (one graph with ``create_graph=True``, then ``autograd.grad`` batched over up to 64
    probes), never the Hessian itself. ``loss_fn(model, batch)`` returns the scalar loss whose Hessian is meant (for the
    paper: the mean pre-training loss on held-out data, the model in eval mode); the trace is over
    ``params`` (default: the parameters of ``model`` that require grad), of the loss as given, not
    normalized by the parameter count. Returns a 0-dim tensor (``[n_samples]`` per-probe values with
    ``return_samples``); gradients are not accumulated into ``.grad``.

    Not read: the part of the paper that says how many probes and which data they used (we could read only
    its abstract and figure captions), so ``n_samples=100`` is gradwise's default, not theirs.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    params, loss, grads = _loss_and_graph_grads(model, loss_fn, batch, generator, params)
    # a gradient without a graph does not depend on the parameters: its Hessian blocks are 0
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
    if not pairs:
        samples = torch.zeros(n_samples, dtype=loss.dtype, device=loss.device)
        return samples if return_samples else samples.mean()
    values = []
    for start in range(0, n_samples, _CHUNK):
        m = min(_CHUNK, n_samples - start)
        vs = [torch.stack([_rademacher(p, generator) for _ in range(m)]) for p, _ in pairs]
        # m Hessian-vector products in one batched backward (vmap over the probes)
        hvs = torch.autograd.grad([g for _, g in pairs], [p for p, _ in pairs], grad_outputs=vs,
                                  retain_graph=True, allow_unused=True, is_grads_batched=True)
        values.append(sum(((v * hv).flatten(1).sum(1) for v, hv in zip(vs, hvs) if hv is not None),
                          torch.zeros(m, dtype=loss.dtype, device=loss.device)))
    samples = torch.cat(values).detach()
    return samples if return_samples else samples.mean()


def hessian_top_eigenvalue(model: nn.Module, loss_fn: Callable, batch, *, iters: int = 100, tol: float = 1e-4,
                           generator: torch.Generator | None = None, params: Sequence[Tensor] | None = None,
                           return_vector: bool = False):
    r"""The eigenvalue of largest magnitude of the loss Hessian :math:`\nabla^2_\theta L`, by power iteration.

    The usual sharpness measure: SAF (Du et al. 2022, arXiv 2205.14083, introduction) characterizes the
    sharpness of a minimum by the largest eigenvalue of the Hessian, after Keskar et al. (2017); it is what
    SAM-like methods are meant to lower. Power iteration on Hessian-vector products (double backward through
    one graph built with ``create_graph=True``, never the Hessian itself)::

        v_0 ~ N(0, I) (from ``generator``), normalized;   w = H v_k,  lambda_k = v_k . w,  v_{k+1} = w / |w|

    until ``|lambda_k - lambda_{k-1}| <= tol * |lambda_k|`` or ``iters`` products. It converges to the eigenvalue
    of largest *magnitude* (its sign kept; at a minimum, the top eigenvalue), at the rate of the ratio of the
    two largest magnitudes. ``loss_fn(model, batch)`` returns the scalar loss whose Hessian is meant (e.g. the
    mean training loss on a fixed subset, model in eval mode); ``params`` default to the parameters of ``model``
    that require grad. Returns a 0-dim tensor, and with ``return_vector`` also the unit eigenvector as a list
    shaped like ``params``; gradients are not accumulated into ``.grad``. One host sync per iteration (the
    stopping test); ``tol=0`` runs all ``iters``.
    """
    iters = check_int("iters", iters, 1)
    tol = check_nonneg("tol", tol)
    params, loss, grads = _loss_and_graph_grads(model, loss_fn, batch, generator, params)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    dev = generator.device if generator is not None else params[0].device
    v = [torch.randn(p.shape, generator=generator, device=dev, dtype=p.dtype).to(p.device) for p in params]
    norm = torch.sqrt(sum((x * x).sum() for x in v))
    v = [x / norm for x in v]
    eig = torch.zeros((), dtype=loss.dtype, device=loss.device)
    if live:
        prev = None
        for _ in range(iters):
            hv_live = torch.autograd.grad([grads[i] for i in live], [params[i] for i in live],
                                          grad_outputs=[v[i] for i in live], retain_graph=True, allow_unused=True)
            hv = [torch.zeros_like(p) for p in params]
            for i, h in zip(live, hv_live):
                if h is not None:
                    hv[i] = h.detach()
            eig = sum((a * b).sum() for a, b in zip(v, hv))
            norm = torch.sqrt(sum((h * h).sum() for h in hv))
            if float(norm) == 0.0:  # v is in the null space: H v = 0
                break
            v = [h / norm for h in hv]
            if prev is not None and abs(float(eig) - prev) <= tol * abs(float(eig)):
                break
            prev = float(eig)
    eig = eig.detach()
    return (eig, [x.detach() for x in v]) if return_vector else eig


class HessianTraceCallback(TrainingCallback):
    """Record :func:`hessian_trace` of ``loss_fn(model, batch)`` on a fixed ``batch`` every ``every`` steps.

    ``on_step(step, model=model)`` measures when ``step % every == 0``; each probe draw uses a generator
    seeded with ``seed`` (the same probes every time, so changes come from the model); ``history`` holds
    ``(step, trace)`` floats.
    """

    def __init__(self, loss_fn: Callable, batch, *, every: int = 1, n_samples: int = 100, seed: int = 0) -> None:
        super().__init__(every)
        if not callable(loss_fn):
            raise ValueError(f"Invalid loss_fn: {loss_fn!r} (accepted: a callable (model, batch) -> scalar loss)")
        self.loss_fn, self.batch = loss_fn, batch
        self.n_samples = check_int("n_samples", n_samples, 1)
        self.seed = check_int("seed", seed)

    def on_step(self, step: int, *, model=None, loss=None, **ctx) -> None:
        if self.due(step):
            gen = torch.Generator().manual_seed(self.seed)
            self.record(step, float(hessian_trace(model, self.loss_fn, self.batch, self.n_samples, gen)))
