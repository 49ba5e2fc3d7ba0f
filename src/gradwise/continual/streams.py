"""Streams for continual learning and test-time adaptation, built from one labelled set (torch only).

* :func:`split_stream`: class-incremental tasks (Split-MNIST style): the classes, in ``class_order`` or
  an order drawn with ``seed`` (as Avalanche's ``nc_benchmark`` does when no fixed order is given), are cut
  into ``n_tasks`` groups of equal size; task ``k`` holds every sample of its classes, in their order in
  ``x``, with their original labels.
* :func:`corruption_stream`: a domain-shift stream: every sample under each corruption of ``kinds``
  (:func:`gradwise.continual.corrupt`), in one of three orders: ``"iid"`` (all domains mixed and
  shuffled), ``"continual"`` (one domain after another, each shuffled) or ``"label-shift"`` (one domain
  after another, each ordered by label: sorted, or a Dirichlet temporal mix of the classes).

Everything is drawn from a CPU ``torch.Generator`` seeded with ``seed``: the same call gives the same
stream on any machine.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_positive
from gradwise.continual.corruptions import CORRUPTIONS, check_images, corrupt

__all__ = ["corruption_stream", "split_stream"]

ORDERS = ("iid", "continual", "label-shift")


def _check_xy(x, y) -> tuple[Tensor, Tensor]:
    if not torch.is_tensor(x) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"Invalid x: {type(x).__name__}{tuple(x.shape) if torch.is_tensor(x) else ''} "
                         "(accepted: a tensor with one row per sample, at least one)")
    if not torch.is_tensor(y) or y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool \
            or y.shape[0] != x.shape[0]:
        raise ValueError(f"Invalid y: {type(y).__name__}{tuple(y.shape) if torch.is_tensor(y) else ''} "
                         f"(accepted: integer labels [N], N = {x.shape[0]} rows of x)")
    return x, y


def _generator(seed) -> torch.Generator:
    return torch.Generator().manual_seed(check_int("seed", seed, 0))


def split_stream(x: Tensor, y: Tensor, n_tasks: int, *, class_order: Sequence[int] | None = None,
                 seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Class-incremental split: a list of ``n_tasks`` pairs ``(x_k, y_k)``.

    The classes are those present in ``y``; ``class_order`` (a permutation of them) fixes their order,
    otherwise it is drawn with ``seed`` (pass ``sorted`` classes for the usual 0-1, 2-3, ... split). Their
    number must be a multiple of ``n_tasks``. Labels are not remapped (class-incremental, one head)."""
    x, y = _check_xy(x, y)
    classes = torch.unique(y).tolist()
    n_tasks = check_int("n_tasks", n_tasks, 1, len(classes))
    if len(classes) % n_tasks:
        raise ValueError(f"Invalid n_tasks: {n_tasks} (accepted: a divisor of the number of classes in y, "
                         f"{len(classes)}, so that every task has as many classes)")
    gen = _generator(seed)
    if class_order is None:
        order = [classes[i] for i in torch.randperm(len(classes), generator=gen).tolist()]
    else:
        if isinstance(class_order, (str, bytes)) or not isinstance(class_order, Sequence) \
                or any(isinstance(c, bool) or not isinstance(c, int) for c in class_order) \
                or sorted(class_order) != classes:
            raise ValueError(f"Invalid class_order: {class_order!r} (accepted: None or a permutation of the "
                             f"classes present in y, {classes})")
        order = list(class_order)
    per = len(classes) // n_tasks
    out = []
    for k in range(n_tasks):
        keep = torch.isin(y, torch.tensor(order[k * per:(k + 1) * per], dtype=y.dtype, device=y.device))
        idx = torch.nonzero(keep).flatten()
        out.append((x[idx], y[idx]))
    return out


def _dirichlet_order(y: Tensor, alpha: float, gen: torch.Generator) -> Tensor:
    """Indices of ``y`` in a label-shifted order: time is cut into as many slots as classes; each class
    spreads its (shuffled) samples over the slots with proportions drawn from Dirichlet(alpha); each slot is
    shuffled. Small ``alpha``: each class in few slots (close to sorted); large: close to i.i.d."""
    classes = torch.unique(y)
    n_slots = classes.numel()
    conc = torch.full((n_slots,), float(alpha), dtype=torch.float64)
    slots: list[list[Tensor]] = [[] for _ in range(n_slots)]
    for c in classes.tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        # Dirichlet via normalized Gamma draws, so that the torch generator decides it
        g = torch._standard_gamma(conc, generator=gen)
        p = g / g.sum()
        cuts = torch.round(torch.cumsum(p, 0) * idx.numel()).long().tolist()
        start = 0
        for s, end in enumerate(cuts):
            slots[s].append(idx[start:end])
            start = end
    parts = []
    for s in range(n_slots):
        chunk = torch.cat(slots[s])
        parts.append(chunk[torch.randperm(chunk.numel(), generator=gen)])
    return torch.cat(parts)


def corruption_stream(x: Tensor, y: Tensor, kinds: str | Sequence[str], severity: int, order: str = "iid", *,
                      alpha: float | None = None, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """A stream of every sample of ``x`` under each corruption of ``kinds`` at ``severity`` (1-3): returns
    ``(x_stream, y_stream, domain)``, ``domain[i]`` the index in ``kinds`` of sample ``i``'s corruption.

    ``order``: ``"iid"`` shuffles all ``len(kinds) * N`` samples together; ``"continual"`` gives the
    domains one after another (each shuffled); ``"label-shift"`` gives the domains one after another, each
    sorted by label (``alpha=None``; ties in a random order) or, with ``alpha > 0``, in a Dirichlet
    label-shifted order (each class spread over time slots by Dirichlet(alpha) proportions). Batching is
    left to the caller (``x_stream.split(batch_size)``)."""
    x = check_images(x)
    x, y = _check_xy(x, y)
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, Sequence) or not kinds:
        raise ValueError(f"Invalid kinds: {kinds!r} (accepted: one or a non-empty sequence of {CORRUPTIONS})")
    for k in kinds:
        check_choice("kinds", k, CORRUPTIONS)
    severity = check_int("severity", severity, 1, 3)
    check_choice("order", order, ORDERS)
    if alpha is not None:
        alpha = check_positive("alpha", alpha)
        if order != "label-shift":
            raise ValueError(f"Invalid alpha: {alpha!r} with order={order!r} (accepted: None unless order is "
                             "'label-shift')")
    gen = _generator(seed)
    value_range = (float(x.amin()), float(x.amax()))
    xs, ys, doms = [], [], []
    for d, kind in enumerate(kinds):
        xc = corrupt(x, kind, severity, generator=gen, value_range=value_range)
        if order == "label-shift":
            if alpha is None:
                shuffled = torch.randperm(y.numel(), generator=gen)
                idx = shuffled[torch.argsort(y.cpu()[shuffled], stable=True)]
            else:
                idx = _dirichlet_order(y.cpu(), alpha, gen)
        else:
            idx = torch.randperm(y.numel(), generator=gen)
        idx = idx.to(x.device)
        xs.append(xc[idx])
        ys.append(y[idx])
        doms.append(torch.full((y.numel(),), d, dtype=torch.long, device=y.device))
    xs, ys, doms = torch.cat(xs), torch.cat(ys), torch.cat(doms)
    if order == "iid":
        perm = torch.randperm(ys.numel(), generator=gen).to(x.device)
        xs, ys, doms = xs[perm], ys[perm], doms[perm]
    return xs, ys, doms
