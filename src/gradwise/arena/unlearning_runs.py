"""What the unlearning study needs many models for: KLoM's ensembles and DMM's datamodels.

Many MLPs of the study's recipe (:func:`gradwise.arena.unlearning_study.train_model`: the same
architecture, ``cfg.epochs`` epochs of shuffled minibatches, SGD with momentum and weight decay and a
cosine learning rate) are trained at once: their parameters are stacked along a leading model axis and
every step is one batched matrix product per layer (``torch.baddbmm``), each model with its own
training subset, initialization (``mlp`` after ``torch.manual_seed``) and batch order. SGD acts on each
entry separately, so the stacked optimizer is ``K`` independent optimizers.

* :func:`ensemble` -- ``K`` models trained on one index set (the originals on the whole training set,
  the retrains on the retain set), returned as ordinary ``nn.Sequential`` MLPs;
* :func:`datamodel` -- DMM's datamodels: ``K`` models on random halves of the training set, their
  logits on every training point, and :func:`gradwise.unlearning.fit_datamodels` on the subset masks;
* :func:`klom_scores` -- KLoM of a method's unlearned ensemble against the retrain ensemble, averaged
  over the forget points and over the test points.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["train_stacked", "ensemble", "stacked_logits", "datamodel", "klom_scores"]


def _layers(params: list[Any]) -> list[tuple[Any, Any]]:
    return [(params[i], params[i + 1]) for i in range(0, len(params), 2)]


def stacked_logits(params: list[Any], x: Any) -> Any:
    """Logits ``(K, B, C)`` of the stacked MLPs on inputs ``x`` ``(K, B, d)`` (or ``(B, d)``, shared)."""
    import torch
    import torch.nn.functional as F

    h = x if x.dim() == 3 else x.expand(params[0].shape[0], *x.shape)
    layers = _layers(params)
    for i, (w, b) in enumerate(layers):
        h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
        if i < len(layers) - 1:
            h = F.gelu(h)
    return h


def train_stacked(x: Any, y: Any, subsets: Any, num_classes: int, cfg: Any, seeds: list[int]) -> list[Any]:
    """Train ``K = len(seeds)`` MLPs at once, model ``k`` on the training points ``subsets[k]`` (``(K, m)``
    long, equal sizes) from the initialization ``mlp`` draws after ``torch.manual_seed(seeds[k])``; returns
    the stacked parameters (``[W1, b1, W2, b2, ...]``, each ``(K, ...)``, detached)."""
    import torch
    import torch.nn.functional as F

    from gradwise.arena.tasks import mlp

    inits = []
    for s in seeds:
        torch.manual_seed(s)
        inits.append([p.detach() for p in mlp(x.shape[1], num_classes, cfg.hidden).parameters()])
    params = [torch.stack(ps).requires_grad_() for ps in zip(*inits)]
    k, m = subsets.shape
    gen = torch.Generator().manual_seed(int(seeds[0]) + 7_919)
    steps = cfg.epochs * math.ceil(m / cfg.batch_size)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(cfg.epochs):
        order = torch.gather(subsets, 1, torch.rand(k, m, generator=gen).argsort(1))
        for part in order.split(cfg.batch_size, dim=1):
            out = stacked_logits(params, x[part])
            # the sum over models of each model's mean loss: every model gets its own mean-loss gradient
            loss = F.cross_entropy(out.reshape(-1, num_classes), y[part].reshape(-1), reduction="none")
            opt.zero_grad(set_to_none=True)
            loss.view(k, -1).mean(1).sum().backward()
            opt.step()
            sched.step()
    return [p.detach() for p in params]


def ensemble(x: Any, y: Any, idx: Any, num_classes: int, cfg: Any, seeds: list[int]) -> list[Any]:
    """``len(seeds)`` MLPs trained on ``idx`` as ordinary modules (``mlp`` with the trained weights)."""
    import torch

    from gradwise.arena.tasks import mlp

    params = train_stacked(x, y, idx.expand(len(seeds), -1).contiguous(), num_classes, cfg, seeds)
    models = []
    for k in range(len(seeds)):
        model = mlp(x.shape[1], num_classes, cfg.hidden)
        with torch.no_grad():
            for p, stacked in zip(model.parameters(), params):
                p.copy_(stacked[k])
        models.append(model)
    return models


def datamodel(x: Any, y: Any, num_classes: int, cfg: Any, seed: int) -> Any:
    """DMM's datamodel weights ``(n, n, C)``: ``cfg.dm_models`` MLPs on random halves of the training set
    (seeded by ``seed``), their logits on every training point against the subset masks by
    :func:`gradwise.unlearning.fit_datamodels` (difference of means: with a few dozen models the ridge weights
    are shrunk to nothing, see the study's docstring)."""
    import torch

    from gradwise.unlearning import fit_datamodels, subset_masks

    n = len(y)
    masks = subset_masks(n, cfg.dm_models, alpha=0.5, generator=torch.Generator().manual_seed(50_000 + seed))
    subsets = torch.stack([m.nonzero().flatten() for m in masks])
    seeds = [60_000 + 1_000 * seed + k for k in range(cfg.dm_models)]
    params = train_stacked(x, y, subsets, num_classes, cfg, seeds)
    with torch.no_grad():
        logits = stacked_logits(params, x)  # (K, n, C)
    return fit_datamodels(masks, logits, estimator="difference")[0]


def klom_scores(unlearned: list[Any], retrained: list[Any], x_forget: Any, y_forget: Any, x_test: Any,
                y_test: Any) -> dict[str, float]:
    """Mean KLoM over the forget points and over the test points of the ``unlearned`` models against the
    ``retrained`` ones (:func:`gradwise.unlearning.klom`, the authors' defaults)."""
    import torch

    from gradwise.unlearning import klom

    def logits(models: list[Any], xs: Any) -> Any:
        with torch.no_grad():
            return torch.stack([m.eval()(xs) for m in models])

    return {"klom_forget": float(klom(logits(unlearned, x_forget), logits(retrained, x_forget), y_forget).mean()),
            "klom_test": float(klom(logits(unlearned, x_test), logits(retrained, x_test), y_test).mean())}
