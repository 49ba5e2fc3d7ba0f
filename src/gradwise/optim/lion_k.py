"""Lion-K: Lion with the sign replaced by the gradient of a convex function K."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradwise._validate import check_range
from gradwise.optim._base import GradwiseOptimizer
from gradwise.optim.lion import Lion
from gradwise.registry import register

__all__ = ["LionK"]


def _where_positive(norms: list[Tensor], fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Per tensor ``fn(norm)`` where the norm is positive, else 0 (one op over the bucket's norms)."""
    n = torch.stack(norms)
    return list(torch.where(n > 0, fn(n), torch.zeros_like(n)).unbind())


def _grad_sign(x: list[Tensor], group: dict) -> list[Tensor]:
    torch._foreach_sign_(x)
    return x


def _grad_lp(x: list[Tensor], group: dict) -> list[Tensor]:
    # d/dx ||x||_p = sign(x) |x|^(p-1) / ||x||_p^(p-1), and 0 at x = 0
    p = group["p"]
    norms = torch._foreach_norm(x, p)
    out = torch._foreach_abs(x)
    torch._foreach_pow_(out, p - 1.0)
    torch._foreach_mul_(out, torch._foreach_sign(x))
    torch._foreach_mul_(out, _where_positive(norms, lambda n: n.pow(1.0 - p)))
    return out


def _grad_l2(x: list[Tensor], group: dict) -> list[Tensor]:
    torch._foreach_mul_(x, _where_positive(torch._foreach_norm(x), torch.reciprocal))
    return x


def _grad_quadratic(x: list[Tensor], group: dict) -> list[Tensor]:
    return x


def _grad_huber(x: list[Tensor], group: dict) -> list[Tensor]:
    d = group["delta"]
    torch._foreach_clamp_min_(x, -d)
    torch._foreach_clamp_max_(x, d)
    return x


def _grad_relativistic(x: list[Tensor], group: dict) -> list[Tensor]:
    c = group["c"]
    n = torch.stack(torch._foreach_norm(x))
    torch._foreach_mul_(x, list((n * n + c * c).rsqrt().unbind()))
    return x


def _grad_dead_zone(x: list[Tensor], group: dict) -> list[Tensor]:
    # sign(x) where |x| > e, else 0, is the sign of what clamping x to [-e, e] removes (exact)
    e = group["dead_zone"]
    inside = torch._foreach_clamp_min(x, -e)
    torch._foreach_clamp_max_(inside, e)
    torch._foreach_sub_(x, inside)
    torch._foreach_sign_(x)
    return x


# name -> (gradient of K, K itself for documentation/tests, extra hyperparameters)
KS: dict[str, tuple[Callable, Callable[[Tensor, dict], Tensor], tuple[str, ...]]] = {
    "l1": (_grad_sign, lambda x, g: x.abs().sum(), ()),
    "lp": (_grad_lp, lambda x, g: x.norm(p=g["p"]), ("p",)),
    "l2": (_grad_l2, lambda x, g: x.norm(), ()),
    "quadratic": (_grad_quadratic, lambda x, g: 0.5 * (x * x).sum(), ()),
    "huber": (_grad_huber, lambda x, g: torch.where(x.abs() <= g["delta"], 0.5 * x * x,
                                                     g["delta"] * (x.abs() - 0.5 * g["delta"])).sum(), ("delta",)),
    "relativistic": (_grad_relativistic, lambda x, g: ((x * x).sum() + g["c"] ** 2).sqrt(), ("c",)),
    "dead_zone": (_grad_dead_zone, lambda x, g: (x.abs() - g["dead_zone"]).clamp_min(0).sum(), ("dead_zone",)),
}


@register(kind="optimizer", paper="Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts",
          year=2023, arxiv="2310.05898", code=None,
          summary="Lion with sign replaced by the gradient of a convex K (l1 = Lion, lp, l2, huber, ...)",
          info={
              # k="lp" has no fused kernel: LionK(k="lp", fused=True) is a ValueError, so the suites
              # run this case's fused=True configurations with the default (the _foreach_ path).
              "test_cases": {"LionK": {"kwargs": dict(lr=1e-3, k="lp", p=1.5, weight_decay=0.1),
                                       "fused_kernel": False}},
              "bench": {"kwargs": {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.01},
                        "peer": "Lion", "peer_kwargs": {"weight_decouple": True},
                        "note": "peer is pytorch_optimizer's Lion (no Lion-K there)"}})
class LionK(Lion):
    r"""Lion-K (Chen, Liu, Liang, Liu, ICLR 2024, arXiv 2310.05898).

    Math (the paper's eq. 2, written with positive momentum ``m``)::

        p <- p - lr * (grad_K(b1 m + (1 - b1) g) + wd * p)
        m <- b2 m + (1 - b2) g

    With ``wd > 0`` the iterates solve ``min f(x)`` subject to
    ``K*(wd x) < inf``: for ``K = ||.||_1`` (Lion) the box
    ``||x||_inf <= 1/wd``, for ``K = ||.||_2`` the ball ``||x||_2 <= 1/wd``.

    ``k`` chooses K; non-separable Ks are taken per tensor (flattened), the
    usual practical choice (the paper treats x as one vector):

    ==============  ===================================  =========================
    k               K(x)                                 grad K(x)
    ==============  ===================================  =========================
    ``"l1"``        ``||x||_1``                          ``sign(x)`` (Lion)
    ``"lp"``        ``||x||_p``, ``p`` in [1, 2]         ``sign(x)|x|^(p-1)/||x||_p^(p-1)``
    ``"l2"``        ``||x||_2``                          ``x / ||x||_2``
    ``"quadratic"`` ``||x||^2 / 2``                      ``x`` (momentum SGD + decay)
    ``"huber"``     Huber with ``delta``                 ``clip(x, -delta, delta)``
    ``"relativistic"`` ``sqrt(||x||^2 + c^2)``           ``x / sqrt(||x||^2 + c^2)``
    ``"dead_zone"`` ``sum max(|x_i| - e, 0)``            ``sign(x) 1[|x| > e]``
    ==============  ===================================  =========================

    The authors released no code; ``k="l1"`` is checked against Lion's
    reference (lion-pytorch) and every grad K against autograd of K. Only
    ``l1`` and ``lp`` are confirmed from the paper's text here; the others
    are standard convex Ks in the same framework.

    Args: lr (1e-4), betas ((0.9, 0.99)), weight_decay (0), k ("l1"),
    p (1.5, for "lp"), delta (1.0, "huber"), c (1.0, "relativistic"),
    dead_zone (1e-3, "dead_zone"), grad_transforms, skip_nonfinite.
    ``fused=True`` needs ``k="l1"`` (the fused kernel is Lion's); with another
    ``k`` it is a ValueError, and ``fused=None`` runs the ``_foreach_`` path.

    Complex parameters are stepped as their ``view_as_real`` views, so a
    non-separable K (``lp``, ``l2``, ``relativistic``) is taken over the real
    and imaginary parts together (for ``l2``: ``||x||_2`` = the complex norm).

    Example::

        opt = LionK(model.parameters(), lr=1e-4, k="lp", p=1.5)
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, k: str = "l1", p: float = 1.5, delta: float = 1.0,
                 c: float = 1.0, dead_zone: float = 1e-3, **kwargs) -> None:
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, k=k, p=p, delta=delta, c=c,
                        dead_zone=dead_zone)
        GradwiseOptimizer.__init__(self, params, defaults, **kwargs)

    def _validate_group(self, g):
        super()._validate_group(g)
        if not isinstance(g["k"], str) or g["k"] not in KS:  # (a list is unhashable: no `in` on it)
            raise ValueError(f"Invalid k: {g['k']!r} (accepted: {', '.join(repr(n) for n in KS)})")
        check_range("p", g["p"], 1.0, 2.0)
        check_range("delta", g["delta"], 0.0, lo_open=True)
        check_range("c", g["c"], 0.0, lo_open=True)
        check_range("dead_zone", g["dead_zone"], 0.0)

    def _fusable(self, group):
        # the fused kernel is Lion's sign update; other Ks run on the _foreach_ path
        return group.get("k", "l1") == "l1"

    def _fusable_note(self):
        return "the fused kernel is Lion's, k='l1' only"

    def _direction(self, group, x):
        return KS[group["k"]][0](x, group)
