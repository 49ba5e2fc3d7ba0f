"""SAF (Du et al., NeurIPS 2022): the trajectory loss, a KL divergence to each sample's own logits of a few epochs
ago, kept in a per-sample memory. MESA, its memory-free variant with an EMA teacher, is in :mod:`.mesa`."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg, check_positive
from gradwise.losses._common import INT_DTYPES, NAN_FOR_INF_STUDENT_LOGPROB, check_reduction, reduce_loss
from gradwise.losses._distill import check_pair, kl_rows, log_softmax_t
from gradwise.registry import register

__all__ = ["saf_loss", "SAFLoss"]

PAPER = "Sharpness-Aware Training for Free"
ARXIV = "2205.14083"
CODE = "https://github.com/AngusDujw/SAF"


def trajectory_kl(logits: Tensor, reference_logits: Tensor, temperature: float) -> Tensor:
    """Per sample ``T^2 KL(softmax(reference / T) || softmax(logits / T))``; no gradient into ``reference_logits``
    (float32 at least; the caller casts back)."""
    dtype = torch.promote_types(torch.promote_types(logits.dtype, reference_logits.dtype), torch.float32)
    log_q = log_softmax_t(logits.to(dtype), temperature)
    log_p = log_softmax_t(reference_logits.detach().to(dtype), temperature)
    return temperature ** 2 * kl_rows(log_p, log_q)


def saf_loss(logits: Tensor, past_logits: Tensor, *, coef: float = 0.3, temperature: float = 5.0,
             reduction: str = "mean") -> Tensor:
    r"""SAF's trajectory loss (Du et al. 2022, arXiv 2205.14083) on given past logits: ``coef * T^2 * KL``.

    .. math:: L_{tra} = \lambda\,\tau^2\,\mathrm{KL}\big(\mathrm{softmax}(z^{(e-\tilde E)}/\tau)\,\big\|\,
              \mathrm{softmax}(z/\tau)\big)

    per sample (sum over classes), ``z`` the current logits and ``z^{(e-Ẽ)}`` the same sample's logits recorded
    ``Ẽ`` epochs ago; ``reduction="mean"`` is the batch mean, as the authors' ``.sum(-1).mean()``. ``past_logits``
    gets no gradient. This is the stateless core; :class:`SAFLoss` keeps the memory and picks the past logits.
    Defaults: ``coef=0.3`` (λ, the authors' ``--reinforce`` of their README and ImageNet command), ``temperature=5``.
    Computed with ``log_softmax`` in float32 at least (the authors take ``softmax(x).log()``, which is ``-inf``
    where the softmax underflows); the result has the dtype of ``logits``.
    """
    temperature = check_positive("temperature", temperature)
    coef = check_nonneg("coef", coef)
    check_reduction(reduction)
    check_pair(logits, past_logits, "logits", "past_logits")
    return reduce_loss(coef * trajectory_kl(logits, past_logits, temperature), reduction).to(logits.dtype)


def check_index(index: Tensor, n: int, num_samples: int, validate: bool) -> None:
    if not torch.is_tensor(index) or index.dtype not in INT_DTYPES:
        raise ValueError("Invalid index: expected an integer tensor of dataset indices of shape [B], got "
                         f"{type(index).__name__ if not torch.is_tensor(index) else index.dtype}")
    if index.shape != (n,):
        raise ValueError(f"Invalid index: expected shape [{n}] (one per row of logits), got {tuple(index.shape)}")
    if validate and index.numel():
        lo, hi = torch.stack([index.min(), index.max()]).tolist()
        if lo < 0 or hi >= num_samples:
            raise ValueError(f"Invalid index: {lo if lo < 0 else hi} out of range (accepted: 0 <= index < "
                             f"num_samples={num_samples})")


def is_active(epoch: int, start_epoch: int, end_epoch: int | None) -> bool:
    """The authors' window: ``start_epoch < epoch < end_epoch`` (strict on both sides)."""
    return epoch > start_epoch and (end_epoch is None or epoch < end_epoch)


@register(kind="loss", paper=PAPER, year=2022, arxiv=ARXIV, code=CODE,
          summary="SAF trajectory loss: KL to each sample's own logits of lag epochs ago (per-sample memory), "
                  "flat minima at SGD's cost",
          info={"reliability": {"labels": "index", "init": {"num_samples": "N", "num_classes": 4, "start_epoch": 0},
                                 "kwargs": {"epoch": 1},
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_STUDENT_LOGPROB)}}})
class SAFLoss(nn.Module):
    r"""Sharpness-Aware Training for Free (SAF; Du, Zhou, Feng, Tan, Zhou, NeurIPS 2022, arXiv 2205.14083).

    Paper: "Sharpness-Aware Training for Free". Authors' code: https://github.com/AngusDujw/SAF
    (``SAF_train.py``, ``train_one_epoch``: a modified timm training script). Only the paper's abstract and
    introduction could be read here (the stored pages end there), so this follows the authors' code, and every
    detail below is theirs unless marked as a departure.

    SAF replaces SAM's sharpness term (and its second forward-backward pass) by a *trajectory loss*: the KL
    divergence between the network's current outputs and its outputs on the same sample ``Ẽ`` epochs earlier,
    which penalizes sudden drops of the loss along the weight trajectory (the signature of a sharp minimum).
    The past outputs come from a memory of every training sample's logits, so the cost per step is a memory
    read and write: no extra forward or backward pass.

    Per call (epoch ``e``, the batch's dataset indices ``i``, current logits ``z``):

    * write: ``memory[i, e mod (Ẽ+1)] = z.detach()`` (every epoch, also before the loss starts);
    * if ``start_epoch < e < end_epoch`` (the authors' strict window): read ``z_past = memory[i, (e-Ẽ) mod (Ẽ+1)]``
      and return :func:`saf_loss` ``= λ τ² KL(softmax(z_past/τ) || softmax(z/τ))``, batch mean; else return 0.

    The total loss is the task loss plus this, with any optimizer: ``loss = ce + saf(logits, index, epoch)``.

    Defaults: the README's and the ImageNet/ResNet-50 command (``run.sh``) of the authors: ``lag=2``
    (``--minus_epoch``), ``start_epoch=5`` (``--kl_start_epoch``: the loss is on from epoch 6, counting from 0),
    ``coef=0.3`` (λ, ``--reinforce``), ``temperature=5``. Their argparse defaults differ (``--reinforce 0.16``,
    ``--minus_epoch 3``); their README calls λ and Ẽ the values to tune. ``end_epoch=None`` is no end (their
    ``--kl_end_epoch`` defaults to 300, their default epoch count, so it never binds).

    Memory: ``num_samples x (lag + 1) x num_classes`` floats in ``dtype`` (default float32, as theirs), e.g. 12 GB
    for ImageNet-1k with ``lag=2``; a buffer, so it moves with ``.to()`` and is saved in ``state_dict`` (a
    checkpoint resumes exactly). ``lag + 1`` slots, as the authors', so that a sample missing from an epoch
    (a ``drop_last`` loader) reads what their code reads: the last logits written to that slot (zeros if none).

    Checked against: golden data from the authors' ``train_one_epoch`` run unchanged in float64
    (tests/data/saf_golden.pt): per-sample KL terms, losses, gradients, weights after every step and the final
    memory agree to ~1e-12. Departures: ``log_softmax`` instead of ``softmax(x).log()`` (finite where theirs
    underflows to ``-inf``); the memory is indexed on the logits' device (theirs is a host numpy array copied each
    step); indices repeated within one batch keep one of their rows (as in theirs, last write wins on CPU).

    Args:
        num_samples: size of the training set (indices are ``0 <= index < num_samples``).
        num_classes: width of the logits.
        lag: ``Ẽ``, how many epochs back the reference logits are (``>= 1``).
        start_epoch, end_epoch: the loss is on for ``start_epoch < epoch < end_epoch`` (``end_epoch=None``: no end).
        ``coef=0.3``: λ. ``temperature=5.0``: τ. ``reduction="mean"``: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the index range (one host sync per call).
        dtype: dtype of the memory (default: torch's default dtype).

    Forward: ``saf(logits [B, C], index [B] (dataset indices, e.g. from
    :class:`gradwise.data_weighting.IndexedDataset`), epoch (int, from 0))``.

    Example::

        >>> loader = DataLoader(IndexedDataset(train_set), batch_size=128, shuffle=True)
        >>> saf = SAFLoss(num_samples=len(train_set), num_classes=10)
        >>> for epoch in range(epochs):
        ...     for index, x, y in loader:
        ...         logits = model(x)
        ...         loss = F.cross_entropy(logits, y) + saf(logits, index, epoch)
        ...         opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, num_samples: int, num_classes: int, *, lag: int = 2, start_epoch: int = 5,
                 end_epoch: int | None = None, coef: float = 0.3, temperature: float = 5.0, reduction: str = "mean",
                 validate: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.num_samples = check_int("num_samples", num_samples, lo=1)
        self.num_classes = check_int("num_classes", num_classes, lo=1)
        self.lag = check_int("lag", lag, lo=1)
        self.start_epoch = check_int("start_epoch", start_epoch, lo=-1)
        if end_epoch is not None:
            check_int("end_epoch", end_epoch, lo=start_epoch + 2)
        self.end_epoch = end_epoch
        self.coef = check_nonneg("coef", coef)
        self.temperature = check_positive("temperature", temperature)
        check_reduction(reduction)
        self.reduction = reduction
        self.validate = validate
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Invalid dtype: {dtype} (accepted: a floating-point torch.dtype)")
        self.register_buffer("memory", torch.zeros(num_samples, lag + 1, num_classes, dtype=dtype))

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, num_classes={self.num_classes}, lag={self.lag}, "
                f"start_epoch={self.start_epoch}, end_epoch={self.end_epoch}, coef={self.coef}, "
                f"temperature={self.temperature}")

    def active(self, epoch: int) -> bool:
        """Whether the loss is on at ``epoch`` (``start_epoch < epoch < end_epoch``)."""
        return is_active(epoch, self.start_epoch, self.end_epoch)

    def past_logits(self, index: Tensor, epoch: int) -> Tensor:
        """The stored logits the loss compares with at ``epoch``: those written at epoch ``epoch - lag``."""
        return self.memory[index.to(self.memory.device).long(), (epoch - self.lag) % (self.lag + 1)]

    def forward(self, logits: Tensor, index: Tensor, epoch: int) -> Tensor:
        if not torch.is_tensor(logits) or not logits.is_floating_point() or logits.dim() != 2 \
                or logits.shape[1] != self.num_classes:
            got = (f"{logits.dtype} {tuple(logits.shape)}" if torch.is_tensor(logits) else type(logits).__name__)
            raise ValueError(f"Invalid logits: expected a floating-point tensor of shape [B, {self.num_classes}], "
                             f"got {got}")
        check_index(index, logits.shape[0], self.num_samples, self.validate)
        check_int("epoch", epoch, lo=0)
        idx = index.to(self.memory.device).long()
        with torch.no_grad():
            self.memory[idx, epoch % (self.lag + 1)] = logits.detach().to(self.memory)
        if not self.active(epoch):
            shape = logits.shape[:1] if self.reduction == "none" else ()
            return torch.zeros(shape, dtype=logits.dtype, device=logits.device)
        past = self.memory[idx, (epoch - self.lag) % (self.lag + 1)].to(logits.device)
        per = self.coef * trajectory_kl(logits, past, self.temperature)
        return reduce_loss(per, self.reduction).to(logits.dtype)
