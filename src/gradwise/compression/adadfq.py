"""AdaDFQ: the generator's losses for data-free quantization with adaptive sample adaptability.

Paper: "Adaptive Data-Free Quantization", Qian, Wang, Hong, Wang, CVPR 2023, arXiv 2303.06869. Authors' code:
https://github.com/hfutqian/AdaDFQ at commit 84100f3 (``AdaDFQ/CIFAR/trainer.py``: ``compute_entropy``,
``marginal_loss``, ``Trainer.loss_fn_kd`` and the generator's loss in ``Trainer.train``; the ImageNet trainer has
the same functions). Of the paper only the abstract and introduction were readable in the stored text (searched
2026-12-08, see docs/coverage_notes.md), so the formulas below are those of the authors' code, which
``tests/compression_tests/test_adadfq.py`` checks against golden data made by running it
(``tools/golden/make_adadfq_golden.py``).

Setting: a full-precision network P (the teacher, logits ``t``), its quantized copy Q (the student, logits
``s``) and a generator G that makes the samples, with no real data. The sample's *adaptability* to Q is read off
the disagreement ``t − s``: its entropy ``H(softmax(t − s))`` is high when Q agrees with P up to a constant shift
and low when they disagree. The generator is trained so that, per sample, the min-normalised entropy
``H' = (H − min_batch H) / (log C − min_batch H)`` lies in a margin ``[λ_l, λ_u]``::

    L_margin = mean(max(λ_l − H', 0)) + mean(max(H' − λ_u, 0))

(neither too informative nor too easy for Q, the paper's "largest adaptability is not the best"), plus a
one-hot term on the generator's labels ``y`` that ties the sample to its class through both the disagreement
and the agreement of the two networks::

    L_ds = CE(t − s, y),   L_as = CE(t + s, y),   L_onehot = α_ds L_ds + α_as L_as

and the BatchNorm-statistics term of data-free generators (batch mean and variance of every BatchNorm input of P
against its running statistics, MSE each, averaged over layers)::

    L_G = L_margin + β L_onehot + γ L_BNS

Q is trained on the generated (detached) samples with :func:`adadfq_student_loss`, ``−T² mean H(softmax((t −
s)/T))`` (T = 20): maximising the entropy of the disagreement pulls Q's logits to P's up to a shift. Defaults are
the authors' CIFAR settings (``alpha_ds=0.2, alpha_as=0.1, lambda_lower=0.1, lambda_upper=0.8, beta=1,
gamma=1``, T = 20).

Departures from the authors' code, each with its reason:

* Any batch size: theirs compares against a hard-coded ``torch.zeros(16).cuda()`` ("batch size 16"), so other
  batch sizes fail to broadcast (or, at 1, silently broadcast to 16 entries with the same mean).
* The BNS term starts from a 0-dim zero in the statistics' dtype (theirs ``torch.zeros(1)`` in float32, which
  rounds float64 statistics to float32 and returns shape ``[1]``); with no statistics it is 0 (theirs divides
  by ``len([])`` and fails).
* Bad arguments raise ``ValueError``. As theirs, the batch minimum of ``H`` is differentiated through (a batch
  whose entropies all equal ``log C`` divides by about 0); NaN logits propagate to the losses.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_nonneg, check_positive, check_real
from gradwise.registry import register

__all__ = ["adadfq_entropy", "adadfq_margin_loss", "adadfq_bns_loss", "adadfq_losses", "adadfq_student_loss",
           "BNStatsRecorder"]

_PAPER = "Adaptive Data-Free Quantization"
_CODE = "https://github.com/hfutqian/AdaDFQ@84100f3"


def _check_logits(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> None:
    for name, t in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] < 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating [batch, classes] tensor with at least 2 classes, got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits and student_logits must have the same shape, got "
                         f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}")


def _check_margin(lambda_lower: float, lambda_upper: float) -> tuple[float, float]:
    lo = check_real("lambda_lower", lambda_lower, 0.0, 1.0)
    hi = check_real("lambda_upper", lambda_upper, 0.0, 1.0)
    if lo > hi:
        raise ValueError(f"lambda_lower must be <= lambda_upper, got {lo} and {hi}")
    return lo, hi


def adadfq_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-row entropy ``H(softmax(logits / T))`` (the authors' ``compute_entropy``), ``[batch]``."""
    temperature = check_positive("temperature", temperature)
    z = logits / temperature
    return -(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1)


def adadfq_margin_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *, lambda_lower: float = 0.1,
                       lambda_upper: float = 0.8) -> torch.Tensor:
    """AdaDFQ's margin loss ``mean(max(λ_l − H', 0)) + mean(max(H' − λ_u, 0))`` on the min-normalised entropy
    ``H'`` of ``softmax(teacher − student)`` (module docstring; the authors' ``marginal_loss``)."""
    _check_logits(teacher_logits, student_logits)
    lo, hi = _check_margin(lambda_lower, lambda_upper)
    h = adadfq_entropy(teacher_logits - student_logits)
    h_min = h.min()
    h_norm = (h - h_min) / (math.log(teacher_logits.shape[1]) - h_min)
    return (lo - h_norm).clamp_min(0).mean() + (h_norm - hi).clamp_min(0).mean()


def adadfq_bns_loss(stats: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over layers of ``mse(batch_mean, running_mean) + mse(batch_var, running_var)``; ``stats`` holds one
    ``(batch_mean, batch_var, running_mean, running_var)`` per BatchNorm layer of the full-precision network (the
    batch variance biased, as the authors' forward hook ``input.var([0, 2, 3], unbiased=False)``). Empty: 0."""
    stats = list(stats)
    for i, s in enumerate(stats):
        if len(s) != 4 or any(not isinstance(t, torch.Tensor) for t in s) or s[0].shape != s[2].shape \
                or s[1].shape != s[3].shape:
            raise ValueError(f"stats[{i}] must be (batch_mean, batch_var, running_mean, running_var) tensors with "
                             "matching shapes")
    if not stats:
        return torch.zeros(())
    total = torch.zeros((), dtype=stats[0][0].dtype, device=stats[0][0].device)
    for mean, var, run_mean, run_var in stats:
        total = total + F.mse_loss(mean, run_mean) + F.mse_loss(var, run_var)
    return total / len(stats)


@register(kind="quantizer", paper=_PAPER, year=2023, arxiv="2303.06869", code=_CODE,
          summary="data-free quantization generator loss: keep the normalised entropy of teacher-minus-student "
                  "logits inside a margin, plus disagreement/agreement one-hot and BN-statistics terms",
          aliases=("adadfq",))
def adadfq_losses(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, *,
                  alpha_ds: float = 0.2, alpha_as: float = 0.1, lambda_lower: float = 0.1,
                  lambda_upper: float = 0.8, beta: float = 1.0, gamma: float = 1.0,
                  bn_stats: Sequence | None = None) -> dict[str, torch.Tensor]:
    """The generator's AdaDFQ losses (arXiv 2303.06869) on a generated batch: returns a dict with ``"loss"``
    (``L_G = L_margin + β L_onehot + γ L_BNS``, to minimise over the generator) and its parts ``"margin"``,
    ``"disagreement"`` (``CE(t − s, y)``), ``"agreement"`` (``CE(t + s, y)``), ``"onehot"`` and ``"bns"``.

    ``teacher_logits`` / ``student_logits``: ``[batch, classes]`` from the full-precision and the quantized
    network on the generated samples (not detached: the generator's gradient flows through both); ``labels``:
    the classes the generator was asked for; ``bn_stats``: see :func:`adadfq_bns_loss` (None: no BNS term).
    """
    _check_logits(teacher_logits, student_logits)
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32) \
            or labels.shape != teacher_logits.shape[:1]:
        raise ValueError(f"labels must be an integer tensor of shape [{teacher_logits.shape[0]}], got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= teacher_logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {teacher_logits.shape[1]}), got {labels.min()}..{labels.max()}")
    alpha_ds, alpha_as = check_nonneg("alpha_ds", alpha_ds), check_nonneg("alpha_as", alpha_as)
    beta, gamma = check_nonneg("beta", beta), check_nonneg("gamma", gamma)
    margin = adadfq_margin_loss(teacher_logits, student_logits, lambda_lower=lambda_lower,
                                lambda_upper=lambda_upper)
    labels = labels.long()
    ds = F.cross_entropy(teacher_logits - student_logits, labels)
    as_ = F.cross_entropy(teacher_logits + student_logits, labels)
    onehot = alpha_ds * ds + alpha_as * as_
    bns = adadfq_bns_loss(bn_stats or []).to(margin)
    return {"loss": margin + beta * onehot + gamma * bns, "margin": margin, "disagreement": ds, "agreement": as_,
            "onehot": onehot, "bns": bns}


def adadfq_student_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, *,
                        temperature: float = 20.0) -> torch.Tensor:
    """The quantized network's loss in AdaDFQ (the authors' ``loss_fn_kd``): ``−T² · mean H(softmax((t − s)/T))``,
    minimised over the student on detached generated samples; it is lowest when ``s = t + c`` for a per-sample
    constant ``c``."""
    _check_logits(teacher_logits, student_logits)
    temperature = check_positive("temperature", temperature)
    return -(temperature ** 2) * adadfq_entropy(teacher_logits - student_logits, temperature).mean()


class BNStatsRecorder:
    """Collects :func:`adadfq_bns_loss`'s statistics from a network's BatchNorm layers, as the authors' forward
    hook on every ``nn.BatchNorm2d`` of the full-precision network: per layer and forward, the input's batch mean
    and biased variance over all but the channel dimension, with the layer's running mean and variance.

    ``with BNStatsRecorder(teacher) as rec: t = teacher(x)`` then ``adadfq_losses(..., bn_stats=rec.stats)``;
    the hooks are removed on exit, and :meth:`clear` empties ``stats`` between batches. BatchNorm1d/2d/3d with
    running statistics are hooked (theirs 2d only).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._handles: list = []

    def _hook(self, module: nn.modules.batchnorm._BatchNorm, inputs, output) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]
        self.stats.append((x.mean(dims), x.var(dims, unbiased=False), module.running_mean, module.running_var))

    def clear(self) -> None:
        self.stats.clear()

    def __enter__(self) -> "BNStatsRecorder":
        self._handles = [m.register_forward_hook(self._hook) for m in self.model.modules()
                         if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
