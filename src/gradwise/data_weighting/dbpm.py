"""DBPM: down-weighting bad positive pairs found from each pair's loss history."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg
from gradwise.losses._common import INT_DTYPES, check_reduction, reduce_loss
from gradwise.registry import register

__all__ = ["dbpm_weights", "DBPM"]

_PAPER = "Towards Enhancing Time Series Contrastive Learning: A Dynamic Bad Pair Mining Approach"
_CODE = "https://github.com/lanxiang1017/DynamicBadPairMining_ICLR24"


def _bad_pair_weights(loss: Tensor, sample_mean: Tensor, mu: Tensor, sd: Tensor, cut_np: float,
                      cut_fp: float) -> Tensor:
    noisy = sample_mean <= mu - cut_np * sd
    faulty = sample_mean >= mu + cut_fp * sd
    l = loss.detach()
    safe_sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    pdf = torch.exp(-0.5 * ((l - mu) / safe_sd) ** 2) / (safe_sd * math.sqrt(2.0 * math.pi))
    bad = (noisy | faulty) & (sd > 0) & torch.isfinite(sample_mean)
    return torch.where(bad, pdf, torch.ones_like(pdf))


@register(kind="sample-weighting", paper=_PAPER, year=2024, arxiv="2302.03357", code=_CODE,
          summary="DBPM: weights of noisy/faulty positive pairs from their historical loss (mean -/+ k std)")
def dbpm_weights(loss: Tensor, sample_mean: Tensor, all_means: Tensor, *, cut_np: float = 2.0,
                 cut_fp: float = 3.0) -> Tensor:
    r"""Weights of Dynamic Bad Pair Mining (Lan et al., ICLR 2024, arXiv 2302.03357) for a batch of positive pairs.

    Paper: "Towards Enhancing Time Series Contrastive Learning: A Dynamic Bad
    Pair Mining Approach". Authors' code:
    https://github.com/lanxiang1017/DynamicBadPairMining_ICLR24
    (``models/dbpm_model.py``); rules and defaults (``cut_np = 2``,
    ``cut_fp = 3``) follow it.

    Each training pair ``i`` has a historical mean loss ``m_i`` (see
    :class:`DBPM` for the memory). With ``mu`` and ``sd`` the mean and the
    population standard deviation of ``m`` over the whole training set:

    * noisy positive pair (views share little but noise, too easy):
      ``m_i <= mu - cut_np * sd``;
    * faulty positive pair (augmentation broke the semantics, too hard):
      ``m_i >= mu + cut_fp * sd``;

    a bad pair's current loss ``l_i`` is multiplied by the Gaussian density
    ``w_i = N(l_i; mu, sd^2)`` (a constant: no gradient flows through it);
    other pairs keep weight 1. When ``sd == 0`` nothing can be an outlier and
    all weights are 1 (the authors' code would divide by zero).

    Args:
        loss: ``[B]`` current per-pair losses. sample_mean: ``[B]`` historical
            means of these pairs (NaN: no history yet, weight 1).
        all_means: ``[M]`` historical means of all pairs (for ``mu``, ``sd``).

    Example::

        >>> w = dbpm_weights(pair_loss, hist_mean[index], hist_mean)
        >>> loss = (w * pair_loss).mean()
    """
    for name, t in (("loss", loss), ("sample_mean", sample_mean), ("all_means", all_means)):
        if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() != 1:
            raise ValueError(f"Invalid {name}: expected a 1-D floating-point tensor")
    if sample_mean.shape != loss.shape:
        raise ValueError(f"Invalid sample_mean: expected the shape of loss {tuple(loss.shape)}, got "
                         f"{tuple(sample_mean.shape)}")
    check_nonneg("cut_np", cut_np)
    check_nonneg("cut_fp", cut_fp)
    m = all_means[torch.isfinite(all_means)].to(torch.promote_types(loss.dtype, torch.float32))
    mu = m.mean()
    sd = m.std(correction=0)
    return _bad_pair_weights(loss.to(mu.dtype), sample_mean.to(mu.dtype), mu, sd, cut_np, cut_fp).to(loss.dtype)


class DBPM(nn.Module):
    r"""Stateful DBPM: a memory of every pair's loss per epoch and the re-weighted loss (see :func:`dbpm_weights`).

    Memory (arXiv 2302.03357, authors' ``memory_module``): ``memory[k, e]`` is
    pair ``k``'s loss in epoch ``e``. At the first call of an epoch
    ``t >= warm_epochs`` the statistics are computed from epochs ``0..t-1``
    with the authors' epoch weighting, which trusts later epochs more:

    .. math::

        m_k = \frac{1}{t}\sum_{e=0}^{t-1} \ell_{k,e}\,\frac{e+1}{E_{max}},
        \qquad \mu = \operatorname{mean}_k m_k,\quad \sigma = \operatorname{std}_k m_k ,

    and they stay fixed for the epoch. Each call records the batch's
    (unweighted, detached) losses in ``memory[index, epoch]`` and returns the
    reduced loss with bad pairs down-weighted; before ``warm_epochs`` the
    weights are 1. Defaults from the authors' configuration: 50 warm-up
    epochs of 80, ``cut_np = 2``, ``cut_fp = 3``.

    Choices: the memory is a dense ``[num_samples, max_epochs]`` tensor
    (NaN = not visited); a pair visited twice in an epoch keeps its last
    loss (the authors' list would shift); a pair with missing epochs is
    averaged over the epochs it has (``sum / t`` over present entries uses
    the same weights); pairs never seen are left out of ``mu``, ``sd``.
    ``validate=False`` skips the check of the index range (one host sync per
    call); no other step reads device values on the host.

    Example::

        >>> dbpm = DBPM(num_samples=len(train_set), max_epochs=80, warm_epochs=50)
        >>> pair_loss = info_nce_per_pair(z1, z2)           # [B], one loss per positive pair
        >>> loss = dbpm(pair_loss, index, epoch)            # weighted mean
    """

    def __init__(self, num_samples: int, max_epochs: int, *, warm_epochs: int = 50, cut_np: float = 2.0,
                 cut_fp: float = 3.0, reduction: str = "mean", validate: bool = True) -> None:
        super().__init__()
        check_int("num_samples", num_samples, lo=1)
        check_int("max_epochs", max_epochs, lo=1)
        check_int("warm_epochs", warm_epochs, 1, max_epochs)
        check_nonneg("cut_np", cut_np)
        check_nonneg("cut_fp", cut_fp)
        check_reduction(reduction)
        self.num_samples, self.max_epochs, self.warm_epochs = num_samples, max_epochs, warm_epochs
        self.cut_np, self.cut_fp, self.reduction = float(cut_np), float(cut_fp), reduction
        self.validate = validate
        self._stats_for: int | None = None  # the epoch of the held statistics, read without a host sync
        self.register_buffer("memory", torch.full((num_samples, max_epochs), math.nan, dtype=torch.float64))
        self.register_buffer("sample_mean", torch.full((num_samples,), math.nan, dtype=torch.float64))
        self.register_buffer("mu", torch.tensor(math.nan, dtype=torch.float64))
        self.register_buffer("sd", torch.tensor(math.nan, dtype=torch.float64))
        self.register_buffer("stats_epoch", torch.tensor(-1))

    def update_statistics(self, epoch: int) -> None:
        """Historical means and ``mu``, ``sd`` from epochs ``< epoch`` (called automatically)."""
        hist = self.memory[:, :epoch]
        w = torch.arange(1, epoch + 1, dtype=hist.dtype, device=hist.device) / self.max_epochs
        present = torch.isfinite(hist)
        count = present.sum(1)
        total = torch.where(present, hist * w, torch.zeros_like(hist)).sum(1)
        self.sample_mean.copy_(torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan)))
        # mean and population std over the pairs seen (NaN when none), masked rather than indexed: no host sync
        seen = torch.isfinite(self.sample_mean)
        n = seen.sum()
        zero = torch.zeros((), dtype=hist.dtype, device=hist.device)
        mu = torch.where(seen, self.sample_mean, zero).sum() / n
        self.mu.copy_(mu)
        self.sd.copy_((torch.where(seen, self.sample_mean - mu, zero).square().sum() / n).sqrt())
        self.stats_epoch.fill_(epoch)
        self._stats_for = epoch

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._stats_for = None  # recomputed at the next call (from the loaded memory: the same values)

    def weights(self, pair_loss: Tensor, index: Tensor) -> Tensor:
        """Current weights of the batch (1 before the statistics exist: ``sd`` NaN marks no pair bad)."""
        return _bad_pair_weights(pair_loss.detach().to(torch.float64), self.sample_mean[index], self.mu, self.sd,
                                 self.cut_np, self.cut_fp).to(pair_loss.dtype)

    def forward(self, pair_loss: Tensor, index: Tensor, epoch: int) -> Tensor:
        if not torch.is_tensor(pair_loss) or not pair_loss.is_floating_point() or pair_loss.dim() != 1:
            raise ValueError("Invalid pair_loss: expected a 1-D floating-point tensor of per-pair losses")
        if not torch.is_tensor(index) or index.dtype not in INT_DTYPES or index.shape != pair_loss.shape:
            raise ValueError(f"Invalid index: expected an integer tensor of shape {tuple(pair_loss.shape)}")
        check_int("epoch", epoch, 0, self.max_epochs - 1)  # an epoch of the memory
        if self.validate and index.numel():
            lo, hi = torch.stack([index.min(), index.max()]).tolist()
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(f"Invalid index: out of range (accepted: 0 <= index < {self.num_samples})")
        index = index.long()
        if epoch >= self.warm_epochs:
            if self._stats_for != epoch:
                self.update_statistics(epoch)
            w = self.weights(pair_loss, index)
        else:
            w = torch.ones_like(pair_loss)
        self.memory[index, epoch] = pair_loss.detach().to(self.memory.dtype)
        return reduce_loss(w * pair_loss, self.reduction)
