"""DMM (datamodel matching): predict, with a linear datamodel, what the model would output had it been
retrained without the forget set, then fine-tune the model to output that.

Paper: "Attribute-to-Delete: Machine Unlearning via Datamodel Matching", Georgiev, Rinberg, Park, Garg,
Ilyas, Mądry, Neel, ICLR 2025, arXiv 2410.23232. Only the abstract was readable in the stored text (see
docs/coverage_notes.md): "(a) use data attribution to *predict* the output of the model if it were
re-trained on all but the forget set points; then (b) *fine-tune* the pre-trained model to match these
predicted outputs". The steps and defaults below follow the authors' DMM code as found in the code index
(package ``unlearning.unlearning_algos``: ``dm_direct.py``'s ``DatamodelWrappedModel`` and
``oracle_matching.py``'s ``dm_matching`` and ``finetune``); its repository and commit could not be
identified, so no golden data was made from it and the tests check the behaviour below instead.

**Datamodels** (:func:`subset_masks`, :func:`fit_datamodels`). ``N`` models are trained on random subsets
``S_m`` (a fraction ``alpha`` of the ``n`` training points); a linear datamodel predicts each output
``o`` (a logit of a point, per class, as the authors' datamodel matrix ``[train, points, classes]``) from
the subset's indicator ``1_S``::

    o_m ≈ b + Σ_j w_j 1[j ∈ S_m]        (w_j: the effect of training on point j)

fitted here either by ridge regression on the centred indicators (``estimator="ridge"``,
``W = M_cᵀ (M_c M_cᵀ + λ I)⁻¹ O_c``, the dual form: ``N`` is far below ``n``) or, per point separately, by
the difference of means (``estimator="difference"``: ``w_j = mean(o | j ∈ S) − mean(o | j ∉ S)``, the
least-squares slope of ``o`` on the one indicator ``1[j ∈ S]``). The authors estimate theirs with
regression on far more models (datamodels) or TRAK; these two plain estimators are the departure that
lets a few dozen tiny retrains serve. With ``N ≪ n`` the ridge weights are shrunk towards 0 and the
difference weights are unbiased but noisy; summed over a forget set the noise of the off-diagonal
weights dominates, which is why the authors' ``diagonal_only`` option (below) matters here.

**Prediction** (:func:`predict_retrain_outputs`, the authors' ``DatamodelWrappedModel``)::

    ô_i = o_i(θ_full) − multiplier · Σ_{j ∈ F} w_{j,i}

with ``diagonal_only=True`` (the authors' ``dm_direct`` option) only the point's own weight is kept:
``ô_i = o_i − multiplier · w_{i,i}`` for ``i ∈ F``, and the other points' outputs are left as they are.

**Matching** (:func:`datamodel_matching`, the authors' ``dm_matching`` + ``finetune``): the fine-tuning
set is the forget set repeated ``forget_multiplier`` times (the fraction part: its first points) followed
by ``int(retain_multiplier · |F|)`` retain points drawn without replacement; ``epochs`` passes of
minibatches (in that order unless ``shuffle``) minimizing ::

    mean_{batch, classes} (f_θ(x_i) − ô_i)² + wd_lambda · Σ ||θ − θ0||²

(``loss="ce"``: cross-entropy against ``softmax(ô)`` instead) with Adam (``optimizer``), the learning rate
times 0.95 after every epoch. Defaults are theirs: Adam, lr 5e-4, 5 epochs, batch 512, retain_multiplier 3,
forget_multiplier 1, no shuffling, wd_lambda 0, multiplier 1. Departures: the model is changed in place
(theirs returns a changed copy, as every method of ``gradwise.unlearning`` works in place); the retain
points are drawn with ``torch.randperm`` on ``generator`` (theirs: numpy ``default_rng(42).choice``); no
mixed precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_positive, check_range, check_real
from gradwise.registry import register
from gradwise.unlearning._common import describe

__all__ = ["subset_masks", "fit_datamodels", "predict_retrain_outputs", "datamodel_matching"]

PAPER = "Attribute-to-Delete: Machine Unlearning via Datamodel Matching"
CODE = "https://github.com/RoyRin/data-unlearning-bench"
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def subset_masks(n_train: int, num_models: int, *, alpha: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(num_models, n_train)`` bool: each row a uniformly random subset of ``round(alpha · n_train)``
    training points (at least 1), drawn on ``generator``."""
    check_int("n_train", n_train, 1)
    check_int("num_models", num_models, 1)
    check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    k = min(max(1, round(alpha * n_train)), n_train)
    masks = torch.zeros(num_models, n_train, dtype=torch.bool)
    for m in range(num_models):
        masks[m, torch.randperm(n_train, generator=generator)[:k]] = True
    return masks


def fit_datamodels(masks: torch.Tensor, outputs: torch.Tensor, *, estimator: str = "ridge",
                   ridge: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear datamodels ``o ≈ b + 1_Sᵀ W`` (float64), by ridge regression (``estimator="ridge"``, penalty
    ``ridge``) or per-point difference of means (``"difference"``; a point that is in every subset or in none
    gets weight 0): ``masks`` ``(N, n)`` (bool or 0/1:
    which training points each of ``N`` models saw), ``outputs`` ``(N, *shape)`` (what each model output,
    e.g. logits ``(N, points, classes)``). Returns ``(weights (n, *shape), bias (*shape))``; ``weights[j]``
    is the predicted effect on every output of training on point ``j``."""
    if not isinstance(masks, torch.Tensor) or masks.dim() != 2 or masks.shape[0] < 2:
        raise ValueError(f"Invalid masks: {describe(masks)} (accepted: a (models, train points) tensor of 0/1 "
                         "with at least 2 models)")
    if masks.dtype != torch.bool and (masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all())):
        raise ValueError("Invalid masks: values other than 0 and 1 (accepted: bool or 0/1 subset indicators)")
    if (not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point() or outputs.dim() < 1
            or outputs.shape[0] != masks.shape[0]):
        raise ValueError(f"Invalid outputs: {describe(outputs)} (accepted: a floating-point tensor whose first "
                         f"dimension is the {masks.shape[0]} models of masks)")
    if not bool(torch.isfinite(outputs).all()):
        raise ValueError("Invalid outputs: non-finite values (accepted: finite model outputs)")
    check_choice("estimator", estimator, ("ridge", "difference"))
    lam = check_nonneg("ridge", ridge)
    m = masks.to(torch.float64)
    y = outputs.detach().to(torch.float64).reshape(len(m), -1)
    if estimator == "ridge":
        mc, yc = m - m.mean(0), y - y.mean(0)
        gram = mc @ mc.T + lam * torch.eye(len(m), dtype=torch.float64)
        weights = mc.T @ torch.linalg.lstsq(gram, yc).solution  # lstsq: the min-norm answer when lam = 0
    else:
        inside = m.sum(0)[:, None]
        weights = (m.T @ y) / inside.clamp_min(1) - ((1 - m).T @ y) / (len(m) - inside).clamp_min(1)
        weights[((inside == 0) | (inside == len(m))).flatten()] = 0.0  # never or always in: no evidence, no effect
    bias = y.mean(0) - m.mean(0) @ weights
    return weights.reshape(m.shape[1], *outputs.shape[1:]), bias.reshape(outputs.shape[1:])


def predict_retrain_outputs(original_outputs: torch.Tensor, weights: torch.Tensor, forget_idx: torch.Tensor, *,
                            multiplier: float = 1.0, diagonal_only: bool = False) -> torch.Tensor:
    """The datamodels' prediction of the outputs after retraining without ``forget_idx``:
    ``original_outputs − multiplier · weights[forget_idx].sum(0)`` (the authors' ``DatamodelWrappedModel``),
    in the dtype of ``original_outputs``. ``diagonal_only``: only each forget point's own weight
    ``weights[i, i]`` (the outputs must then be indexed by the training points, as ``weights[:, :n]``)."""
    if not isinstance(original_outputs, torch.Tensor) or not original_outputs.is_floating_point():
        raise ValueError(f"Invalid original_outputs: {describe(original_outputs)} (accepted: a floating-point tensor)")
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape[1:]) != tuple(original_outputs.shape):
        raise ValueError(f"Invalid weights: {describe(weights)} (accepted: (train points, "
                         f"*{tuple(original_outputs.shape)}) as fit_datamodels returns)")
    idx = _check_index("forget_idx", forget_idx, weights.shape[0])
    check_real("multiplier", multiplier)
    check_bool("diagonal_only", diagonal_only)
    if diagonal_only:
        if int(idx.max()) >= original_outputs.shape[0]:
            raise ValueError(f"Invalid forget_idx: indices past the {original_outputs.shape[0]} outputs (accepted, "
                             "with diagonal_only: outputs indexed by the training points)")
        shift = torch.zeros(original_outputs.shape, dtype=torch.float64)
        shift[idx] = weights[idx, idx].to(torch.float64)
    else:
        shift = weights[idx].to(torch.float64).sum(0)
    return (original_outputs.detach().to(torch.float64) - multiplier * shift.to(original_outputs.device)).to(
        original_outputs.dtype)


@register(kind="unlearning", paper=PAPER, year=2025, arxiv="2410.23232", code=CODE, aliases=("DMM",),
          summary="Datamodel matching: fine-tune the model on the forget set and some retain points to output "
                  "what a datamodel predicts the model retrained without the forget set would output")
def datamodel_matching(model: nn.Module, forget_idx: torch.Tensor, predicted_outputs: torch.Tensor,
                       inputs: torch.Tensor, *, retain_idx: torch.Tensor | None = None, epochs: int = 5,
                       lr: float = 5e-4, batch_size: int = 512, optimizer: str = "adam", loss: str = "mse",
                       retain_multiplier: float = 3.0, forget_multiplier: float = 1.0, shuffle: bool = False,
                       wd_lambda: float = 0.0, generator: torch.Generator | None = None) -> nn.Module:
    """DMM's matching step (arXiv 2410.23232; the authors' ``dm_matching``): fine-tune ``model`` in place so
    that its outputs on the forget set and on ``int(retain_multiplier·|F|)`` random retain points match
    ``predicted_outputs`` (``(n, C)``, one row per training point, e.g. from
    :func:`predict_retrain_outputs`). ``inputs`` ``(n, ...)``: the training inputs; ``retain_idx``: the
    points the retain sample is drawn from (default: every point not in ``forget_idx``). Loss, schedule
    and defaults are in the module docstring. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("Invalid model: no parameter requires grad (accepted: a model with trainable parameters)")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 1 or len(inputs) < 2:
        raise ValueError(f"Invalid inputs: {describe(inputs)} (accepted: a tensor of at least 2 training inputs)")
    n = len(inputs)
    if (not isinstance(predicted_outputs, torch.Tensor) or not predicted_outputs.is_floating_point()
            or predicted_outputs.dim() != 2 or len(predicted_outputs) != n):
        raise ValueError(f"Invalid predicted_outputs: {describe(predicted_outputs)} (accepted: a floating-point "
                         f"(n, C) tensor, one row per training input, n = {n})")
    if not bool(torch.isfinite(predicted_outputs).all()):
        raise ValueError("Invalid predicted_outputs: non-finite values (accepted: finite outputs)")
    forget = _check_index("forget_idx", forget_idx, n)
    if retain_idx is None:
        keep = torch.ones(n, dtype=torch.bool)
        keep[forget] = False
        retain = keep.nonzero().flatten()
    else:
        retain = _check_index("retain_idx", retain_idx, n)
        if bool(torch.isin(retain, forget).any()):
            raise ValueError("Invalid retain_idx: it shares points with forget_idx (accepted: disjoint indices)")
    check_int("epochs", epochs, 1)
    check_positive("lr", lr)
    check_int("batch_size", batch_size, 1)
    opt_cls = _OPTIMIZERS[check_choice("optimizer", optimizer, tuple(_OPTIMIZERS))]
    check_choice("loss", loss, ("mse", "ce"))
    check_nonneg("retain_multiplier", retain_multiplier)
    check_nonneg("forget_multiplier", forget_multiplier)
    check_bool("shuffle", shuffle)
    check_nonneg("wd_lambda", wd_lambda)
    n_retain = int(retain_multiplier * len(forget))
    if n_retain > len(retain):
        raise ValueError(f"Invalid retain_multiplier: {retain_multiplier} asks for {n_retain} retain points of "
                         f"{len(retain)} (accepted: at most {len(retain) / len(forget):g})")
    whole = int(forget_multiplier)
    repeated = [forget] * whole + [forget[:int(len(forget) * (forget_multiplier - whole))]]
    chosen = retain[torch.randperm(len(retain), generator=generator)[:n_retain]]
    idx = torch.cat([*repeated, chosen])
    if len(idx) == 0:
        raise ValueError("Invalid forget_multiplier: no point to fine-tune on (accepted: a forget_multiplier or "
                         "retain_multiplier that selects at least one point)")
    targets = predicted_outputs.detach()
    if loss == "ce":
        targets = targets.softmax(-1)
    start = [p.detach().clone() for p in params] if wd_lambda else None
    opt = opt_cls(params, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
    model.train()
    for _ in range(epochs):
        order = idx[torch.randperm(len(idx), generator=generator)] if shuffle else idx
        for part in order.split(batch_size):
            out = model(inputs[part])
            tgt = targets[part].to(out.device, out.dtype)
            value = F.mse_loss(out, tgt) if loss == "mse" else F.cross_entropy(out, tgt)
            if start is not None:
                value = value + wd_lambda * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        sched.step()
    return model



def _check_index(name: str, value, n: int) -> torch.Tensor:
    if (not isinstance(value, torch.Tensor) or value.dim() != 1 or value.is_floating_point()
            or value.dtype == torch.bool or len(value) == 0):
        raise ValueError(f"Invalid {name}: {describe(value)} (accepted: a non-empty 1-d integer tensor of indices)")
    value = value.cpu()
    if int(value.min()) < 0 or int(value.max()) >= n:
        raise ValueError(f"Invalid {name}: indices outside [0, {n - 1}] (accepted: indices of the {n} training points)")
    if len(torch.unique(value)) != len(value):
        raise ValueError(f"Invalid {name}: repeated indices (accepted: distinct indices)")
    return value.long()
