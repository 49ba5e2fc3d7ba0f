"""MESA (Du et al., NeurIPS 2022): SAF's trajectory loss with the logits of an exponential moving average of the
model instead of a per-sample memory (memory-efficient SAF)."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_real
from gradwise.losses._common import NAN_FOR_INF_STUDENT_LOGPROB, check_reduction, reduce_loss
from gradwise.losses._distill import check_logits_2d, check_pair
from gradwise.losses.saf import ARXIV, CODE, PAPER, is_active, trajectory_kl
from gradwise.registry import register

__all__ = ["mesa_loss", "MESALoss"]


def mesa_loss(logits: Tensor, ema_logits: Tensor, *, coef: float = 0.8, temperature: float = 5.0,
              reduction: str = "mean") -> Tensor:
    r"""MESA's trajectory loss (Du et al. 2022, arXiv 2205.14083) on given EMA-teacher logits.

    .. math:: L = \lambda\,\tau^2\,\mathrm{KL}\big(\mathrm{softmax}(z^{EMA}/\tau)\,\big\|\,\mathrm{softmax}(z/\tau)\big)

    per sample, batch mean for ``reduction="mean"``; ``ema_logits`` gets no gradient. The same divergence as
    :func:`gradwise.losses.saf_loss`, with MESA's default ``coef=0.8`` (λ, the authors' README and ImageNet command
    for ``MESA_train.py``) and ``temperature=5``. :class:`MESALoss` keeps the EMA model and computes its logits.
    """
    temperature = check_positive("temperature", temperature)
    coef = check_nonneg("coef", coef)
    check_reduction(reduction)
    check_pair(logits, ema_logits, "logits", "ema_logits")
    return reduce_loss(coef * trajectory_kl(logits, ema_logits, temperature), reduction).to(logits.dtype)


@register(kind="loss", paper=PAPER, year=2022, arxiv=ARXIV, code=CODE,
          summary="MESA: SAF's trajectory KL to an EMA teacher's logits (no per-sample memory); update() after "
                  "each step",
          info={"reliability": {"inputs": ("x", "other"), "labels": "none",
                                 "init": {"model": nn.Identity(), "start_epoch": 0}, "kwargs": {"epoch": 1},
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_STUDENT_LOGPROB)}}})
class MESALoss(nn.Module):
    r"""Memory-Efficient Sharpness-Aware training (MESA; Du, Zhou, Feng, Tan, Zhou, NeurIPS 2022, arXiv 2205.14083).

    Paper: "Sharpness-Aware Training for Free" (MESA is its memory-efficient variant of SAF). Authors' code:
    https://github.com/AngusDujw/SAF (``MESA_train.py``, ``train_one_epoch``, with timm's ``ModelEmaV2``). Only the
    paper's abstract and introduction could be read here, so this follows the authors' code.

    SAF (:class:`gradwise.losses.SAFLoss`) compares the current logits with each sample's logits of ``Ẽ``
    epochs ago, kept in an ``N x (Ẽ+1) x C`` memory: too large for big datasets. MESA takes the reference
    logits from an exponential moving average (EMA) of the weights instead, at the cost of one extra forward
    pass (no backward) of the EMA model per step:

    * the teacher starts as a copy of the model (at construction) and stays in eval mode;
    * per step, ``loss = task_loss + mesa(logits, inputs, epoch)``: if ``start_epoch < epoch < end_epoch``,
      the teacher's logits on ``inputs`` (under ``no_grad``) give
      :func:`mesa_loss` ``= λ τ² KL(softmax(z_EMA/τ) || softmax(z/τ))``, batch mean; else 0 (the teacher is not
      run);
    * after the optimizer step, ``mesa.update(model)``: every floating-point entry of the state dict (weights
      and buffers such as BatchNorm's running statistics) ``e <- decay * e + (1 - decay) * m``, as timm's
      ``ModelEmaV2.update``.

    Works with any optimizer. Defaults: the authors' README and ImageNet command (``run.sh``): ``coef=0.8``
    (``--reinforce``; their argparse default is 0.3), ``temperature=5``, ``start_epoch=5`` (on from epoch 6,
    counting from 0), ``decay=0.9998`` (timm's ``--model-ema-decay`` default, which their command keeps; it
    is per step, so scale it with the number of steps per epoch), ``end_epoch=None`` (no end; their
    ``--kl_end_epoch`` of 360 is past their epoch count).

    Checked against: golden data from the authors' ``train_one_epoch`` and ``ModelEmaV2`` run unchanged in
    float64 (tests/data/saf_golden.pt): per-sample KL terms, losses, gradients, weights after every step and
    the EMA model after every epoch agree to ~1e-12. Departures: integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied from the model, not averaged and truncated as timm does (an eval-mode
    teacher never reads them); the teacher is not run while the loss is off (the authors run it every step and
    discard the output); ``log_softmax`` instead of ``softmax(x).log()``.

    Args:
        model: the network being trained (the teacher is a deep copy; build the loss before wrapping the
            model in DDP or ``torch.compile``, and pass the same unwrapped model to :meth:`update`).
        decay: the EMA decay per update, in ``[0, 1]``.
        start_epoch, end_epoch: the loss is on for ``start_epoch < epoch < end_epoch`` (``end_epoch=None``: no end).
        ``coef=0.8``: λ. ``temperature=5.0``: τ. ``reduction="mean"``: ``"mean"``, ``"sum"`` or ``"none"``.

    Forward: ``mesa(logits [B, C], inputs (the batch the model saw: a tensor, or a tuple of the model's
    positional arguments), epoch (int, from 0))``.

    Example::

        >>> mesa = MESALoss(model, decay=0.999)
        >>> for epoch in range(epochs):
        ...     for x, y in loader:
        ...         logits = model(x)
        ...         loss = F.cross_entropy(logits, y) + mesa(logits, x, epoch)
        ...         opt.zero_grad(); loss.backward(); opt.step()
        ...         mesa.update(model)
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9998, start_epoch: int = 5, end_epoch: int | None = None,
                 coef: float = 0.8, temperature: float = 5.0, reduction: str = "mean") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        self.decay = check_real("decay", decay, 0.0, 1.0)
        self.start_epoch = check_int("start_epoch", start_epoch, lo=-1)
        if end_epoch is not None:
            check_int("end_epoch", end_epoch, lo=start_epoch + 2)
        self.end_epoch = end_epoch
        self.coef = check_nonneg("coef", coef)
        self.temperature = check_positive("temperature", temperature)
        check_reduction(reduction)
        self.reduction = reduction
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def extra_repr(self) -> str:
        return (f"decay={self.decay}, start_epoch={self.start_epoch}, end_epoch={self.end_epoch}, coef={self.coef}, "
                f"temperature={self.temperature}")

    def train(self, mode: bool = True) -> MESALoss:
        super().train(mode)
        self.teacher.eval()  # the EMA teacher always predicts in eval mode (running statistics, no dropout)
        return self

    def active(self, epoch: int) -> bool:
        """Whether the loss is on at ``epoch`` (``start_epoch < epoch < end_epoch``)."""
        return is_active(epoch, self.start_epoch, self.end_epoch)

    @torch.no_grad()
    def teacher_logits(self, inputs: Any) -> Tensor:
        """The EMA teacher's output on ``inputs`` (a tensor, or a tuple/list of positional arguments)."""
        return self.teacher(*inputs) if isinstance(inputs, (tuple, list)) else self.teacher(inputs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current state: ``e <- decay * e + (1 - decay) * m``."""
        ema, cur = self.teacher.state_dict(), model.state_dict()
        if list(ema) != list(cur):
            raise ValueError("Invalid model: its state dict does not have the teacher's entries (accepted: the "
                             "model the loss was built from, unwrapped)")
        floats: list[Tensor] = []
        news: list[Tensor] = []
        for key, e in ema.items():
            m = cur[key].detach()
            if e.is_floating_point():
                floats.append(e)
                news.append(m.to(device=e.device, dtype=e.dtype))
            else:
                e.copy_(m)
        if floats:
            torch._foreach_mul_(floats, self.decay)
            scaled = torch._foreach_mul(news, 1.0 - self.decay)
            torch._foreach_add_(floats, scaled)

    def forward(self, logits: Tensor, inputs: Tensor | Sequence[Tensor], epoch: int) -> Tensor:
        check_int("epoch", epoch, lo=0)
        if not self.active(epoch):
            check_logits_2d(logits, "logits")
            shape = logits.shape[:1] if self.reduction == "none" else ()
            return torch.zeros(shape, dtype=logits.dtype, device=logits.device)
        ema_logits = self.teacher_logits(inputs)
        if not torch.is_tensor(ema_logits) or ema_logits.shape != getattr(logits, "shape", None):
            got = tuple(ema_logits.shape) if torch.is_tensor(ema_logits) else type(ema_logits).__name__
            raise ValueError(f"Invalid inputs: the teacher's output {got} does not have the shape of logits "
                             f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
        return mesa_loss(logits, ema_logits, coef=self.coef, temperature=self.temperature, reduction=self.reduction)
