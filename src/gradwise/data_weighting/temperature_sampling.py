"""Temperature sampling of groups and the upweighting (scalarization) baseline; the Cooldown schedule of the
temperature is :func:`gradwise.schedules.cooldown_temperature`.

Paper: Tianjian Li, Haoran Xu, Weiting Tan, Kenton Murray, Daniel Khashabi,
"Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets",
NAACL 2025, arXiv 2410.04579.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from gradwise._validate import check_int
from gradwise.registry import register
from gradwise.schedules.cooldown import PAPER, check_temperature

__all__ = ["temperature_probabilities", "class_weights", "TemperatureSampler"]


def _counts(counts) -> Tensor:
    c = torch.as_tensor(counts, dtype=torch.float64)
    if c.dim() != 1 or c.numel() == 0 or bool((c <= 0).any()):
        raise ValueError("Invalid counts: expected a non-empty 1-D sequence of positive numbers")
    return c


def temperature_probabilities(counts, temperature: float) -> Tensor:
    r"""Group sampling probabilities :math:`p_i = n_i^{1/T} / \sum_j n_j^{1/T}` (float64).

    :math:`T = 1`: proportional to the counts (natural sampling);
    :math:`T \to \infty`: uniform over groups. Computed in log space.
    """
    c = _counts(counts)
    check_temperature("temperature", temperature)
    return torch.softmax(c.log() / temperature, dim=0)


def class_weights(counts, temperature: float) -> Tensor:
    r"""Upweighting (scalarization) baseline: per-group loss weights matching temperature sampling.

    Under natural sampling (:math:`q_i = n_i/N`) weighting group :math:`i`'s
    loss by :math:`w_i = p_i(T) / q_i` gives the same expected gradient as
    sampling with :math:`p(T)` (the paper's Theorem 1, equivalence under
    full-batch gradient descent: ``w_i = p(i; T) / p(i; 1)``, checked against
    the paper's text, see :func:`~gradwise.schedules.cooldown_temperature`). Normalised so the mean weight over
    samples is 1 (:math:`\sum_i q_i w_i = 1`). :math:`T=1`: all ones; :math:`T\to\infty`:
    :math:`w_i \propto 1/n_i` (class-balanced loss).
    """
    c = _counts(counts)
    q = c / c.sum()
    return temperature_probabilities(c, temperature) / q


@register(kind="sample-weighting", paper=PAPER, year=2025, arxiv="2410.04579", code=None,
          summary="temperature sampling of groups (p ∝ n^(1/T)) with a Cooldown schedule lowering T during training")
class TemperatureSampler(Sampler[int]):
    r"""Draws sample indices so that group :math:`i` is picked with probability :math:`p_i \propto n_i^{1/T}`.

    Paper: Li, Xu, Tan, Murray, Khashabi, "Upsample or Upweight? Balanced
    Training on Heavily Imbalanced Datasets", NAACL 2025, arXiv 2410.04579.

    ``groups``: [N] integer group (class, domain, language) of each sample.
    A sample of group :math:`g` has probability :math:`p_g / n_g`; indices are
    drawn with replacement from ``generator``. Set :attr:`temperature` between
    epochs (e.g. from :func:`~gradwise.schedules.cooldown_temperature`) for the Cooldown strategy;
    ``T=1`` is natural sampling, ``T=inf`` balanced upsampling.

    Example::

        >>> sampler = TemperatureSampler(y_train, temperature=5.0, generator=torch.Generator().manual_seed(0))
        >>> for step in range(steps):
        ...     sampler.temperature = cooldown_temperature(step, steps)
        ...     idx = sampler.draw(batch_size)
    """

    def __init__(self, groups: Tensor, *, temperature: float = 1.0, num_samples: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        groups = torch.as_tensor(groups)
        if groups.dim() != 1 or groups.numel() == 0 or groups.is_floating_point() or bool((groups < 0).any()):
            raise ValueError("Invalid groups: expected a non-empty 1-D tensor of non-negative integer group ids")
        self.groups = groups.long()
        self.counts = torch.bincount(self.groups).double()
        self.num_samples = len(groups) if num_samples is None else num_samples
        check_int("num_samples", self.num_samples, lo=1)
        self.generator = generator
        self.temperature = temperature

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        check_temperature("temperature", value)
        self._temperature = float(value)

    def group_probabilities(self) -> Tensor:
        """Probabilities of the groups present (absent group ids get 0)."""
        present = self.counts > 0
        p = torch.zeros_like(self.counts)
        p[present] = temperature_probabilities(self.counts[present], self._temperature)
        return p

    def sample_probabilities(self) -> Tensor:
        """Per-sample probabilities [N], summing to 1."""
        return (self.group_probabilities() / self.counts.clamp_min(1))[self.groups]

    def draw(self, n: int) -> Tensor:
        """``n`` indices drawn with replacement."""
        return torch.multinomial(self.sample_probabilities(), n, replacement=True, generator=self.generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw(self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples
