r"""Prototype-sample relation distillation (PRD): replay-free continual learning with supervised contrastive
features, class prototypes and a distillation of how old prototypes relate to new samples.

Paper: Asadi, Davari, Mudur, Aljundi, Belilovsky, "Prototype-Sample Relation Distillation: Towards Replay-Free
Continual Learning", ICML 2023, arXiv:2303.14771. Authors' code: github.com/naderAsadi/Probing-Continual-Learning
(``methods/repe.py``, ``losses/supcon_loss.py``), commit 26a5ac1 (their first commit, the "pre-release" one).
The stored text of the paper gives only its abstract and introduction, so the losses below are the code's.

A training step on a batch of the current task (two augmented views per image, features ``z`` from the
encoder, ``h`` from its projection head) minimizes

.. math:: \mathcal{L} = \mathcal{L}_{\text{SupCon}}(h, y) + \lambda_p\,\mathcal{L}_p(\text{sg}(z), y, P_t)
          + \lambda_d\,\mathcal{L}_{\text{PRD}}(z, P_{<t}; z^{\text{old}}, P^{\text{old}}_{<t})

* :func:`supcon_loss`: the supervised contrastive loss (Khosla et al., 2020) as their ``SupConLoss``;
* :func:`prototype_loss`: :math:`\frac1B \sum_i 1 - \cos(z_i, p_{y_i})` over the current task's prototypes,
  on detached features (it trains the prototypes only), as their ``linear_loss``;
* :func:`prd_loss`: for each earlier task :math:`t'`, the scores of a sample against that task's prototypes,
  :math:`s_c(z) = \langle z, p_c\rangle / \lVert p_c\rVert` (features not normalized, as theirs), turned
  into a softmax at temperature :math:`\tau`; the old model's features on the same batch with the old
  prototypes give the target :math:`q`, the current ones the prediction:
  :math:`\sum_{t'} \frac1B \sum_i -\sum_c q_{ic} \log p_{ic}` (a cross-entropy: commit 26a5ac1; their later
  commit uses ``KLDivLoss(reduction="batchmean")``, the same gradient, lower by the entropy of q).

The authors' defaults (``utils/parser.py``): SupCon temperature 0.2 (base temperature 0.07), distillation
temperature 2, both coefficients 1, prototype learning rate 0.01 without momentum.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_positive
from gradwise.registry import register

__all__ = ["prd_loss", "prototype_loss", "supcon_loss"]

PRD_PAPER = "Prototype-Sample Relation Distillation: Towards Replay-Free Continual Learning"
PRD_CODE = "https://github.com/naderAsadi/Probing-Continual-Learning/tree/26a5ac1227aac84b0b63472424a4063e91efecc7"


def _check_feats(name: str, feats, dim: int | None = None) -> Tensor:
    if not torch.is_tensor(feats) or feats.dim() != 2 or not feats.is_floating_point() or feats.shape[0] == 0 \
            or (dim is not None and feats.shape[1] != dim):
        want = f"[B, {dim}]" if dim is not None else "[B, D]"
        shape = tuple(feats.shape) if torch.is_tensor(feats) else ""
        raise ValueError(f"Invalid {name}: {type(feats).__name__}{shape} (accepted: a floating tensor {want}, "
                         "B >= 1)")
    return feats


def _groups(name: str, protos, dim: int) -> list[Tensor]:
    groups = [protos] if torch.is_tensor(protos) else protos
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not all(
            torch.is_tensor(p) and p.dim() == 2 and p.is_floating_point() and p.shape[0] >= 1 and p.shape[1] == dim
            for p in groups):
        raise ValueError(f"Invalid {name}: {type(protos).__name__} (accepted: a floating tensor [C, {dim}] of "
                         "prototypes, or a sequence of them, one per earlier task)")
    return list(groups)


def _scores(feats: Tensor, protos: Tensor) -> Tensor:
    """``<z, p_c> / ||p_c||``: cosine with the prototype times the feature norm (theirs ``_get_scores``)."""
    return (feats @ protos.T) / torch.linalg.vector_norm(protos, dim=1)


@register(kind="continual-learning", paper=PRD_PAPER, year=2023, arxiv="2303.14771", code=PRD_CODE,
          summary="prototype-sample relation distillation: old prototypes' softmax relations to the current "
                  "batch (old model) distilled into the current model and prototypes, replay-free")
def prd_loss(feats: Tensor, prototypes: Tensor | Sequence[Tensor], old_prototypes: Tensor | Sequence[Tensor], *,
             old_feats: Tensor, temperature: float = 2.0) -> Tensor:
    r"""The PRD distillation loss (arXiv:2303.14771; the authors' ``RePE.relation_distillation_loss`` at commit
    26a5ac1): :math:`\sum_{t'} \frac1B \sum_i \text{CE}\big(\text{softmax}(s^{\text{old}}_{t'}(z^{\text{old}}_i)
    / \tau),\ \text{softmax}(s_{t'}(z_i) / \tau)\big)`, :math:`s_{t'}(z)_c = \langle z, p_c\rangle /
    \lVert p_c\rVert` over task :math:`t'`'s prototypes.

    ``feats`` [B, D]: the current model's features of the batch (both views); ``old_feats`` [B, D]: the
    previous model's features of the same inputs (treated as constants); ``prototypes`` /
    ``old_prototypes``: the current and the previous model's prototypes of the earlier tasks, one tensor
    [C, D] (one softmax) or a sequence, one tensor per earlier task (a softmax per task and the losses summed,
    as theirs); the two must have the same shapes. The target side is detached, as the authors compute it
    under ``torch.inference_mode``. ``old_feats`` is keyword-only and required: the issue's signature has no
    place for it, but the relation is measured with the old model's features, as in the code.
    """
    feats = _check_feats("feats", feats)
    old_feats = _check_feats("old_feats", old_feats, feats.shape[1])
    if old_feats.shape[0] != feats.shape[0]:
        raise ValueError(f"Invalid old_feats: {tuple(old_feats.shape)} (accepted: one row per row of feats, "
                         f"{feats.shape[0]})")
    temperature = check_positive("temperature", temperature)
    new = _groups("prototypes", prototypes, feats.shape[1])
    old = _groups("old_prototypes", old_prototypes, feats.shape[1])
    if len(new) != len(old) or any(a.shape != b.shape for a, b in zip(new, old)):
        raise ValueError(f"Invalid old_prototypes: shapes {[tuple(p.shape) for p in old]} (accepted: the shapes of "
                         f"prototypes, {[tuple(p.shape) for p in new]})")
    old_feats = old_feats.detach()
    loss = feats.new_zeros(())
    for p_new, p_old in zip(new, old):
        q = torch.softmax(_scores(old_feats, p_old.detach()) / temperature, dim=1)
        log_p = torch.log_softmax(_scores(feats, p_new) / temperature, dim=1)
        loss = loss + (-(q * log_p).sum(1)).mean()
    return loss


def prototype_loss(feats: Tensor, labels: Tensor, prototypes: Tensor) -> Tensor:
    r""":math:`\frac1B \sum_i 1 - \cos(z_i, p_{y_i})`: pulls each label's prototype towards its samples
    (PRD's prototype loss, the authors' ``linear_loss``). ``labels`` index the rows of ``prototypes``
    (the current task's classes, shifted to start at 0 as theirs do). ``feats`` are detached: this loss
    trains the prototypes, not the encoder (theirs passes ``features.detach()``)."""
    feats = _check_feats("feats", feats)
    protos = _groups("prototypes", prototypes, feats.shape[1])
    if len(protos) != 1:
        raise ValueError("Invalid prototypes: a sequence (accepted: one tensor [C, D], the current task's)")
    protos = protos[0]
    if not torch.is_tensor(labels) or labels.shape != (feats.shape[0],) or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        raise ValueError(f"Invalid labels: {labels!r} (accepted: integer labels [B], B = {feats.shape[0]})")
    labels = labels.to(feats.device).long()
    if bool(((labels < 0) | (labels >= protos.shape[0])).any()):
        raise ValueError(f"Invalid labels: values outside [0, {protos.shape[0]}) (accepted: row indices of "
                         "prototypes)")
    z = feats.detach()
    cos = _scores(z, protos).gather(1, labels[:, None])[:, 0] / torch.linalg.vector_norm(z, dim=1)
    return (1 - cos).mean()


def supcon_loss(features: Tensor, labels: Tensor | None = None, *, temperature: float = 0.2,
                base_temperature: float = 0.07, contrast_mode: str = "all") -> Tensor:
    r"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
    arXiv:2004.11362) as PRD's authors compute it (``losses/supcon_loss.py`` at 26a5ac1, from Khosla's
    SupContrast). ``features`` [B, V, D...]: V views per sample (normalized by the caller; trailing
    dimensions are flattened); ``labels`` [B] (None: each sample is its own class, SimCLR). For an anchor
    :math:`a` with positives :math:`P(a)` (same label, other than itself) among all :math:`BV` views,

    .. math:: \ell_a = -\frac{\tau}{\tau_b}\,\frac{1}{|P(a)|} \sum_{p \in P(a)}
              \log \frac{\exp(h_a \cdot h_p / \tau)}{\sum_{k \ne a} \exp(h_a \cdot h_k / \tau)}

    averaged over the anchors: every view (``contrast_mode="all"``) or the first view (``"one"``). Defaults:
    PRD's ``supcon_temperature`` 0.2 and the base temperature 0.07. An anchor without a positive gives NaN,
    as theirs (it cannot happen with two or more views)."""
    if not torch.is_tensor(features) or features.dim() < 3 or not features.is_floating_point() \
            or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"Invalid features: {type(features).__name__}"
                         f"{tuple(features.shape) if torch.is_tensor(features) else ''} (accepted: a floating "
                         "tensor [batch, views, dim...], at least 3 dimensions)")
    temperature = check_positive("temperature", temperature)
    base_temperature = check_positive("base_temperature", base_temperature)
    check_choice("contrast_mode", contrast_mode, ("all", "one"))
    b, v = features.shape[:2]
    features = features.reshape(b, v, -1)
    if labels is None:
        same = torch.eye(b, dtype=torch.bool, device=features.device)
    else:
        if not torch.is_tensor(labels) or labels.numel() != b or labels.is_floating_point():
            raise ValueError(f"Invalid labels: {labels!r} (accepted: None or {b} integer labels, one per sample)")
        labels = labels.reshape(-1, 1).to(features.device)
        same = labels == labels.T
    contrast = features.transpose(0, 1).reshape(v * b, -1)  # view-major, as torch.cat(torch.unbind(., 1))
    anchors, n_anchor_views = (contrast, v) if contrast_mode == "all" else (features[:, 0], 1)
    logits = anchors @ contrast.T / temperature
    logits = logits - logits.amax(1, keepdim=True).detach()  # for numerical stability, as theirs
    n = n_anchor_views * b
    not_self = torch.ones(n, v * b, dtype=torch.bool, device=features.device)
    not_self[torch.arange(n), torch.arange(n)] = False
    pos = same.repeat(n_anchor_views, v) & not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    mean_log_prob_pos = (log_prob * pos).sum(1) / pos.sum(1)
    return (-(temperature / base_temperature) * mean_log_prob_pos).mean()
