r"""Transductive few-shot inference by Laplacian-regularized K-means on the support and query features together.

Paper: Ziko, Boudiaf, Dolz, Granger, Ben Ayed, "Transductive Few-Shot Learning: Clustering is All You Need?",
arXiv:2106.09516 (2021). Authors' code: github.com/imtiazziko/SLK-few-shot at commit c2071eb (its README names
this paper): ``src/SLK.py`` (``SLK``), ``src/bound_update.py`` (``bound_update``, ``entropy_energy``) and
``create_affinity`` / ``metric_class_type`` in ``src/train_SLK.py``. Only the paper's abstract was readable in the
stored text (its method section was not), so the procedure below is the code's, mode ``kmeans`` with the Laplacian
bound on (the README's "SLK-Means"; ``lam=0`` is their plain "K-means" row).

All points :math:`x_p` (support first, then query, ``N`` in all) are clustered into the ``K`` support classes.
With hard assignments :math:`l_p`, soft ones :math:`Z \in \Delta_K^N` and a k-nearest-neighbour affinity
:math:`W` (``w_pq = 1`` when ``q`` is one of the ``knn - 1`` nearest other points of ``p``; not symmetrized) the
energy is the Laplacian K-means objective

.. math:: E(Z, C) = \sum_p \sum_k z_{pk} \lVert x_p - c_k\rVert^2 - \lambda \sum_k z_k^\top W z_k.   \quad (1)

Initialization: :math:`c_k` the mean of class ``k``'s support features, :math:`l_p = \arg\min_k \lVert x_p -
c_k\rVert` for the query points and the true label for the support points. Then, for at most ``iters`` outer
iterations:

1. :math:`c_k = \text{mean}\{x_p : l_p = k\}` and :math:`a_{pk} = \lVert x_p - c_k\rVert^2`;
2. with :math:`\lambda > 0`, the bound update (their ``bound_update``, at most ``bound_iters`` steps): start
   from :math:`Z = \text{softmax}(-a)` with the support rows set to their one-hot labels, then repeat

   .. math:: Z \leftarrow \text{softmax}\big(-a + \lambda\, W Z\big)   \quad (2)

   until the bound's energy :math:`\sum_{pk} z_{pk}\log z_{pk} + a_{pk} z_{pk} - \lambda z_{pk}(WZ)_{pk}`
   changes by at most 1e-7 of its size (tested from the third step on), and :math:`l_p = \arg\max_k z_{pk}`;
   with :math:`\lambda = 0`, :math:`l_p = \arg\min_k \lVert x_p - c_k\rVert` and :math:`Z` its one-hot;
3. if a cluster is left empty, the previous labels are kept and the loop stops; otherwise the energy (1)
   (with the step-1 centres) is computed and the loop stops when it changes by at most 1e-4 of its size
   (tested from the third outer iteration on).

As in their code, only the first assignment clamps the support points to their labels: later updates may move a
support point to another cluster. The query's labels are the cluster indices, i.e. the support classes.

Defaults are the code's command-line defaults (``configuration_SLK.py``): ``lam=0.5`` (their ``--lmd``; the
run script tunes it on validation episodes over 0.05-1.0), ``knn=3`` (``--knn``). Their loop limits are 100
outer and 600 bound iterations.

Departures from their code: (a) the features are used as given: their evaluation first centres them on the mean
feature of the base-class training set and L2-normalizes them (``CL2N``) and adds to every query feature the
difference between the support and query means (``eta``); :func:`transductive_clustering` does the last step
when ``shift_query=True`` (the default, as theirs) and leaves the normalization to the caller, who knows the
base-class mean. (b) The affinity excludes each point itself explicitly where theirs drops the first neighbour
that scikit-learn returns (the same unless points are duplicated). (c) torch throughout, in the input's dtype
(theirs numpy float64 with multiprocessing for the centre updates).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_bool, check_int, check_nonneg
from gradwise.registry import register

__all__ = ["transductive_clustering", "knn_affinity", "laplacian_kmeans_energy"]

PAPER = "Transductive Few-Shot Learning: Clustering is All You Need?"
CODE = "https://github.com/imtiazziko/SLK-few-shot/tree/c2071eb98c860417c55abb60e49e01732be95cec"


def knn_affinity(x: Tensor, knn: int = 3) -> Tensor:
    """The authors' ``create_affinity``: ``W[p, q] = 1`` when ``q`` is one of the ``knn - 1`` nearest points
    to ``p`` other than ``p`` (Euclidean); dense [N, N], not symmetrized."""
    n = x.shape[0]
    knn = check_int("knn", knn, 2)
    if knn > n:
        raise ValueError(f"Invalid knn: {knn} (accepted: 2 <= knn <= the number of points, {n})")
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    idx = d.topk(knn - 1, dim=1, largest=False).indices
    w = torch.zeros(n, n, dtype=x.dtype, device=x.device)
    return w.scatter_(1, idx, 1.0)


def laplacian_kmeans_energy(x: Tensor, centres: Tensor, z: Tensor, w: Tensor, lam: float) -> Tensor:
    r"""Energy (1): :math:`\sum_{pk} z_{pk}\lVert x_p - c_k\rVert^2 - \lambda \sum_k z_k^\top W z_k`."""
    return (z * torch.cdist(x, centres).square()).sum() - lam * (z * (w @ z)).sum()


def _bound_energy(z: Tensor, unary: Tensor, wz: Tensor, lam: float) -> Tensor:
    return (z * torch.log(z.clamp_min(1e-20)) + unary * z - lam * wz * z).sum()


def _bound_update(unary: Tensor, z: Tensor, w: Tensor, lam: float, iters: int) -> Tensor:
    """Eq. (2) until the bound's energy settles (their ``bound_update``)."""
    old = None
    for i in range(iters):
        z = torch.softmax(-unary + lam * (w @ z), dim=1)
        e = float(_bound_energy(z, unary, w @ z, lam))
        if i > 1 and abs(e - old) <= 1e-7 * abs(old):
            break
        old = e
    return z


def _check(support, support_labels, query) -> tuple[Tensor, Tensor, Tensor, int]:
    for name, t in (("support", support), ("query", query)):
        if not torch.is_tensor(t) or t.dim() != 2 or not t.is_floating_point() or t.shape[0] == 0:
            raise ValueError(f"Invalid {name}: {type(t).__name__}{tuple(t.shape) if torch.is_tensor(t) else ''} "
                             "(accepted: a floating tensor [n, d] of features, n >= 1)")
    if query.shape[1] != support.shape[1] or query.dtype != support.dtype:
        raise ValueError(f"Invalid query: {query.dtype} {tuple(query.shape)} (accepted: the dtype and feature "
                         f"size of support, {support.dtype} [m, {support.shape[1]}])")
    if not torch.is_tensor(support_labels) or support_labels.shape != (support.shape[0],) \
            or support_labels.is_floating_point() or support_labels.dtype == torch.bool:
        raise ValueError(f"Invalid support_labels: {support_labels!r} (accepted: integer labels "
                         f"[{support.shape[0]}], one per support row)")
    labels = support_labels.to(support.device).long()
    k = int(labels.max()) + 1 if labels.numel() else 0
    if bool((labels < 0).any()) or torch.bincount(labels, minlength=k).min() == 0:
        raise ValueError(f"Invalid support_labels: {sorted(set(labels.tolist()))} (accepted: the classes "
                         "0..K-1, each with at least one support sample)")
    return support, labels, query.to(support.device), k


@register(kind="test-time-adaptation", paper=PAPER, year=2021, arxiv="2106.09516", code=CODE,
          summary="transductive few-shot inference: Laplacian-regularized K-means of support and query "
                  "features, initialized at the class means, support labels clamping the first assignment")
def transductive_clustering(support: Tensor, support_labels: Tensor, query: Tensor, *, lam: float = 0.5,
                            iters: int = 100, knn: int = 3, bound_iters: int = 600,
                            shift_query: bool = True) -> Tensor:
    r"""Labels of ``query`` [Q, d] by Laplacian K-means over ``support`` [S, d] and ``query`` together
    (arXiv:2106.09516, the authors' ``SLK`` with ``method="kmeans"``; see the module docstring for Eqs. (1)-(2)).

    ``support_labels`` [S]: the classes 0..K-1, each present. ``lam``: the Laplacian weight :math:`\lambda`
    (0: plain K-means, their "K-means" row; default 0.5, their ``--lmd``). ``iters``: outer iterations
    (theirs 100); ``bound_iters``: steps of the bound update (theirs 600); ``knn``: the affinity's neighbours
    plus one, as their ``--knn`` (default 3: two neighbours). ``shift_query``: add the support mean minus the
    query mean to every query feature first (their ``eta``). Returns the query's class indices [Q] (int64).
    """
    support, labels, query, k = _check(support, support_labels, query)
    lam = check_nonneg("lam", lam)
    iters = check_int("iters", iters, 1)
    bound_iters = check_int("bound_iters", bound_iters, 1)
    if check_bool("shift_query", shift_query):
        query = query + (support.mean(0) - query.mean(0))
    x = torch.cat([support, query])
    n_s = support.shape[0]
    w = knn_affinity(x, knn) if lam > 0 else None
    centres = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, support)
    centres = centres / torch.bincount(labels, minlength=k)[:, None].to(x.dtype)
    onehot_support = torch.nn.functional.one_hot(labels, k).to(x.dtype)
    l = torch.cdist(x, centres).argmin(1)
    l[:n_s] = labels
    old_energy = None
    for i in range(iters):
        old_l, old_c = l, centres
        counts = torch.bincount(l, minlength=k)
        centres = torch.zeros_like(centres).index_add_(0, l, x) / counts[:, None].to(x.dtype)
        unary = torch.cdist(x, centres).square()
        if w is not None:
            z = torch.softmax(-unary, dim=1)
            z[:n_s] = onehot_support
            z = _bound_update(unary, z, w, lam, bound_iters)
            l = z.argmax(1)
        else:
            l = torch.cdist(x, centres).argmin(1)
            z = torch.nn.functional.one_hot(l, k).to(x.dtype)
        if torch.unique(l).numel() != k:  # a cluster emptied: keep the previous labels and stop, as theirs
            l, centres = old_l, old_c
            break
        energy = float((z * unary).sum() - (lam * (z * (w @ z)).sum() if w is not None else 0.0))  # Eq. (1)
        if i > 1 and abs(energy - old_energy) <= 1e-4 * abs(old_energy):
            break
        old_energy = energy
    return l[n_s:]
