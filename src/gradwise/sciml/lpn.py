r"""Learned proximal networks (LPN): networks that are exactly the proximal operator of a learned, possibly
nonconvex regulariser, the proximal matching loss that trains them, the regulariser itself, and PnP-ADMM.

Paper: Fang, Buchanan, Sulam, "What's in a Prior? Learned Proximal Networks for Inverse Problems",
arXiv:2310.14344 (ICLR 2024). Authors' code: github.com/ZhenghanFang/learned-proximal-networks @ cbc3cfa
(``exps/laplacian/network.py``: the fully connected LPN; ``lpn/networks/lpn_mnist.py``: the ``alpha`` term;
``lpn/utils/utils.py``: ``ExpDiracSrgt`` and ``get_loss_hparams_and_lr``; ``lpn/utils/prior.py`` and
``lpn/utils/invert_model/``: the regulariser; ``lpn/utils/admm.py`` with ``lpn/inverse_celeba.py``: PnP-ADMM).

**Math.** :math:`\psi_\theta: \mathbb{R}^n \to \mathbb{R}` is an input-convex network
(:meth:`LPN.scalar`): softplus layers :math:`z_{k+1} = \sigma(W_k z_k + H_k x + b_k)` with :math:`W_k \ge 0`
(kept so by :meth:`LPN.clip_weights_` after each optimiser step, their ``wclip``), output
:math:`w^\top z_K + h^\top x + b + \alpha\|x\|^2`. The LPN is its gradient, :math:`f_\theta = \nabla\psi_\theta`
(:meth:`LPN.forward`), and a gradient of a convex function is the proximal operator of
:math:`R_\theta(x) = \langle y, x\rangle - \tfrac12\|x\|^2 - \psi_\theta(y)` for :math:`x = f_\theta(y)`
(:func:`lpn_regularizer` finds :math:`y` by minimising the convex :math:`\psi_\theta(y) - \langle x, y\rangle`).

Proximal matching (:func:`proximal_matching_loss`) trains :math:`f_\theta(x + \sigma\epsilon) \approx x` with
:math:`\ell_\gamma(p, t) = 1 - \exp(-\|p - t\|^2/\gamma^2)` per sample, a smoothed 0-1 loss: as
:math:`\gamma \to 0` the minimiser is the MAP denoiser, i.e. the prox of :math:`-\log p_x`, so
:math:`R_\theta` approaches the log-prior (an :math:`\ell_2` loss gives the MMSE denoiser, an :math:`\ell_1`
loss the posterior median instead). Their schedule (:func:`proximal_matching_gamma`): :math:`\ell_1`
pretraining, then ``stages`` equal stages with :math:`\gamma = \gamma_{\min} 2^{\text{stages}-1-\text{stage}}`.

Departures from the authors' code, each deliberate:

* ``forward`` never touches its input: theirs sets ``x.requires_grad = True`` on the caller's tensor. Here an
  input that needs no gradient is detached into a new leaf; one that does (an inversion, a graph through the
  prox) is used as is, so gradients reach it. Under ``torch.no_grad()`` the output carries no graph (theirs
  always builds the double-backward graph); with grad enabled it is kept (``create_graph=True``), as theirs.
* ``alpha`` (strong convexity, :math:`\alpha\|x\|^2`) comes from their MNIST network; their 1-D network has
  none (``alpha=0`` is it exactly). Parameter names (``lin.*``, ``res.*``) are theirs: their state_dicts load.
* The proximal matching loss squares the norm instead of taking ``sqrt`` then squaring (their
  ``ExpDiracSrgt``): same value, but their gradient is NaN where prediction equals target (d sqrt at 0).
* :func:`lpn_regularizer` minimises :math:`\psi(y) - \langle x, y\rangle` with Adam (lr 1e-2, their
  ``invert_cvx_gd``) from :math:`y_0 = x` (their ``invert_cvx_cg`` start; their gd starts at 0 and runs 2000
  steps); the default 500 steps suffice from that start on the cases tested here, more for large or
  high-dimensional inputs. It is batched over samples (their CG inverts one sample at a time).
* :func:`pnp_admm` is their ADMM loop (scico's, order x-z-u, :math:`x_0 = A^\top y`, :math:`z_0 = x_0`,
  :math:`u_0 = 0`) with the quadratic x-update solved by conjugate gradients in torch (their scico CG,
  tolerance 1e-4 and 100 iterations by default, relative to the right-hand side).

Golden data: tests/data/lpn_golden.pt, their ``LPN`` modules and loss run as written in float64
(tools/golden/make_lpn_golden.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from gradwise._validate import check_choice, check_int, check_positive, check_real
from gradwise.registry import register

__all__ = ["LPN", "proximal_matching_loss", "proximal_matching_gamma", "lpn_regularizer", "pnp_admm",
           "PnPADMMResult"]

PAPER = "What's in a Prior? Learned Proximal Networks for Inverse Problems"
CODE = "https://github.com/ZhenghanFang/learned-proximal-networks/tree/cbc3cfa"
_REG = dict(kind="sciml-objective", paper=PAPER, year=2023, arxiv="2310.14344", code=CODE)


@register(**_REG, summary="Learned proximal network: f = grad psi of an input-convex psi (an exact prox).")
class LPN(nn.Module):
    """Learned proximal network (Fang, Buchanan, Sulam, arXiv:2310.14344), fully connected.

    ``in_dim`` inputs, ``layers`` hidden softplus layers of width ``hidden`` after the first (so
    ``layers + 1`` in all), softplus sharpness ``beta``, strong-convexity weight ``alpha`` >= 0.
    :meth:`scalar` is the convex potential psi [B, 1]; calling the module gives its gradient, the proximal
    operator [B, in_dim]. Call :meth:`clip_weights_` after every optimiser step (their ``wclip``) to keep psi
    convex, and :meth:`init_weights_` once at construction as their ``get_model`` does (``exp`` of normals:
    tiny positive weights). Parameter names match theirs (``lin.*``, ``res.*``)."""

    def __init__(self, in_dim: int, hidden: int, layers: int = 1, beta: float = 1.0, alpha: float = 0.0):
        super().__init__()
        in_dim = check_int("in_dim", in_dim, lo=1)
        hidden = check_int("hidden", hidden, lo=1)
        layers = check_int("layers", layers, lo=0)
        self.beta = check_positive("beta", beta)
        self.alpha = check_real("alpha", alpha, lo=0.0)
        self.in_dim, self.hidden, self.layers = in_dim, hidden, layers
        self.lin = nn.ModuleList([nn.Linear(in_dim, hidden, bias=False),
                                  *[nn.Linear(hidden, hidden, bias=False) for _ in range(layers)],
                                  nn.Linear(hidden, 1, bias=False)])
        self.res = nn.ModuleList([*[nn.Linear(in_dim, hidden) for _ in range(layers)], nn.Linear(in_dim, 1)])
        self.act = nn.Softplus(beta=self.beta)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 or x.shape[1] != self.in_dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Invalid x: {shape} (accepted: a floating-point tensor [B, {self.in_dim}])")

    def scalar(self, x: Tensor) -> Tensor:
        """The convex potential psi(x), [B, 1]."""
        self._check_input(x)
        z = self.act(self.lin[0](x))
        for core, res in zip(self.lin[1:-1], self.res[:-1]):
            z = self.act(core(z) + res(x))
        out = self.lin[-1](z) + self.res[-1](x)
        if self.alpha:
            out = out + self.alpha * x.pow(2).sum(1, keepdim=True)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """The proximal operator f(x) = grad psi(x), [B, in_dim]; ``x`` itself is left as it is."""
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            xin = x if x.requires_grad else x.detach().requires_grad_(True)
            psi = self.scalar(xin)
            (grad,) = torch.autograd.grad(psi.sum(), xin, create_graph=keep)
        return grad

    @torch.no_grad()
    def clip_weights_(self) -> "LPN":
        """Clamps the weights acting on hidden units at >= 0 in place (their ``wclip``): psi stays convex."""
        for core in self.lin[1:]:
            core.weight.clamp_(min=0)
        return self

    @torch.no_grad()
    def init_weights_(self, mean: float = -10.0, std: float = 0.1, *, generator: torch.Generator | None = None
                      ) -> "LPN":
        """Sets the hidden-unit weights to exp(N(mean, std^2)) in place (their ``init_weights(-10, 0.1)``)."""
        mean = check_real("mean", mean)
        std = check_real("std", std, lo=0.0)
        for core in self.lin[1:]:
            core.weight.normal_(mean, std, generator=generator).exp_()
        return self

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, layers={self.layers}, beta={self.beta}, " \
               f"alpha={self.alpha}"


@register(**_REG, summary="Proximal matching loss 1 - exp(-||pred - target||^2 / gamma^2) per sample.")
def proximal_matching_loss(pred: Tensor, target: Tensor, gamma: float, *, reduction: str = "mean") -> Tensor:
    """Proximal matching loss (Fang, Buchanan, Sulam, arXiv:2310.14344).

    ``1 - exp(-||pred_i - target_i||^2 / gamma^2)`` for each sample ``i`` (the norm over all dimensions but
    the first), reduced by ``reduction`` ("mean", their choice; "sum"; "none": [B]). ``gamma`` > 0; shrink it
    during training (:func:`proximal_matching_gamma`). Unlike their ``ExpDiracSrgt`` the gradient is finite
    (zero) where ``pred == target``."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor) or pred.shape != target.shape \
            or pred.dim() < 1:
        shapes = [tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__ for t in (pred, target)]
        raise ValueError(f"Invalid pred/target: shapes {shapes[0]} and {shapes[1]} (accepted: tensors of one "
                         f"shape [B, ...])")
    g = check_positive("gamma", gamma)
    reduction = check_choice("reduction", reduction, ("mean", "sum", "none"))
    d2 = (pred - target).pow(2).reshape(pred.shape[0], -1).sum(1)
    loss = -torch.expm1(-d2 / (g * g))
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


@register(**_REG, summary="The authors' gamma schedule: L1 pretraining, then gamma_min * 2^(stages-1-stage).")
def proximal_matching_gamma(step: int, *, total: int, pretrain: int, stages: int = 4, gamma_min: float
                            ) -> float | None:
    """Proximal matching gamma at ``step`` (0-based), their ``get_loss_hparams_and_lr`` (Fang, Buchanan, Sulam,
    arXiv:2310.14344).

    ``None`` during the first ``pretrain`` steps: train with an L1 loss then (their ``nn.L1Loss``, with
    their ``pretrain_lr``). After it, the remaining ``total - pretrain`` steps split into ``stages`` equal
    stages (integer division; steps past the last stage stay in it) with ``gamma_min * 2**(stages - 1 -
    stage)``: from ``gamma_min * 2**(stages-1)`` down to ``gamma_min``. Their default ``gamma_min`` is
    ``0.08 * sqrt(dim)`` for images in [0, 1]."""
    step = check_int("step", step, lo=0)
    total = check_int("total", total, lo=1)
    pretrain = check_int("pretrain", pretrain, lo=0)
    stages = check_int("stages", stages, lo=1)
    gmin = check_positive("gamma_min", gamma_min)
    if total - pretrain < stages:
        raise ValueError(f"Invalid total: {total} (accepted: total >= pretrain + stages = {pretrain + stages}, "
                         f"at least one step per stage)")
    if step < pretrain:
        return None
    stage = min((step - pretrain) // ((total - pretrain) // stages), stages - 1)
    return gmin * 2.0 ** (stages - 1 - stage)


def _check_model(model) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "scalar", None)):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an LPN, a module with .scalar(x) "
                         f"= psi and forward = grad psi)")


@register(**_REG, summary="The LPN's regulariser R(x) = <y,x> - |x|^2/2 - psi(y), y = f^{-1}(x) by convex descent.")
def lpn_regularizer(model: nn.Module, x: Tensor, *, steps: int = 500, lr: float = 1e-2) -> Tensor:
    """The regulariser an LPN is the prox of, at ``x`` (Fang, Buchanan, Sulam, arXiv:2310.14344).

    :math:`R(x) = \\langle y, x\\rangle - \\tfrac12\\|x\\|^2 - \\psi(y)` per sample [B], where :math:`y`
    minimises the convex :math:`\\psi(y) - \\langle x, y\\rangle` (so :math:`f(y) = x`), found by ``steps``
    Adam steps of rate ``lr`` from :math:`y = x` (their ``invert_cvx_gd`` objective and rate). Detached; the
    model's parameters and gradients are not touched. ``R`` is defined up to a constant: compare values
    (subtract the minimum over a grid, as their plots do)."""
    _check_model(model)
    steps = check_int("steps", steps, lo=0)
    lr = check_positive("lr", lr)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"Invalid x: {x!r:.60} (accepted: a floating-point tensor [B, ...] of the model's input)")
    x = x.detach()
    y = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            obj = model.scalar(y).sum() - (x * y).sum()
            (g,) = torch.autograd.grad(obj, y)
            y.grad = g
            opt.step()
    with torch.no_grad():
        b = x.shape[0]
        psi = model.scalar(y).reshape(b)
        return (y * x).reshape(b, -1).sum(1) - 0.5 * x.pow(2).reshape(b, -1).sum(1) - psi


class PnPADMMResult(NamedTuple):
    """``x``: the data-consistent iterate; ``z``: the prox iterate (the reconstruction their code returns is
    ``x``); ``residual``: [iters] the primal residual ||x_k - z_k|| (over the whole batch) per iteration."""

    x: Tensor
    z: Tensor
    residual: Tensor


def _cg(apply: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor, iters: int, tol: float) -> Tensor:
    # conjugate gradients on a symmetric positive definite operator (scico's cg: stop at ||r|| <= tol ||rhs||)
    x = x0.clone()
    r = rhs - apply(x)
    p = r.clone()
    rs = (r * r).sum()
    stop = tol * tol * (rhs * rhs).sum()
    for _ in range(iters):
        if rs <= stop:
            break
        ap = apply(p)
        a = rs / (p * ap).sum()
        x = x + a * p
        r = r - a * ap
        rs_new = (r * r).sum()
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


@register(**_REG, summary="PnP-ADMM with the LPN as the prox: x by CG on (A^T A + rho I), z = f(x + u), u += x - z.")
@torch.no_grad()
def pnp_admm(model: nn.Module, A: Callable[[Tensor], Tensor], At: Callable[[Tensor], Tensor], y: Tensor, *,
             rho: float, iters: int, x0: Tensor | None = None, cg_iters: int = 100, cg_tol: float = 1e-4
             ) -> PnPADMMResult:
    """Plug-and-play ADMM with a learned proximal network (Fang, Buchanan, Sulam, arXiv:2310.14344).

    Solves :math:`\\min_x \\tfrac12\\|y - Ax\\|^2 + \\rho R(x)` (their scico ADMM, ``f`` = SquaredL2Loss,
    ``g`` = the LPN's regulariser): per iteration
    :math:`x \\leftarrow (A^\\top A + \\rho I)^{-1}(A^\\top y + \\rho(z - u))` (conjugate gradients, warm start),
    :math:`z \\leftarrow f_\\theta(x + u)`, :math:`u \\leftarrow u + x - z`. ``A``/``At`` map tensors of the
    model's input shape to ``y``'s shape and back (``At`` the adjoint). ``x0`` defaults to ``At(y)`` (their
    "adjoint" start). Convergence is guaranteed for an LPN (an exact prox) with :math:`\\rho` large enough;
    watch ``residual``."""
    _check_model(model)
    rho = check_positive("rho", rho)
    iters = check_int("iters", iters, lo=1)
    cg_iters = check_int("cg_iters", cg_iters, lo=1)
    cg_tol = check_positive("cg_tol", cg_tol)
    aty = At(y)
    x = aty.clone() if x0 is None else x0.clone()
    if x.shape != aty.shape:
        raise ValueError(f"Invalid x0: shape {tuple(x.shape)} (accepted: the shape of At(y), {tuple(aty.shape)})")
    z, u = x.clone(), torch.zeros_like(x)
    res = []
    normal = lambda v: At(A(v)) + rho * v  # noqa: E731
    for _ in range(iters):
        x = _cg(normal, aty + rho * (z - u), x, cg_iters, cg_tol)
        z = model(x + u)
        u = u + x - z
        res.append(torch.linalg.vector_norm(x - z))
    return PnPADMMResult(x, z, torch.stack(res))
