r"""iCT: the tensor pieces of improved consistency training (Song & Dhariwal).

Paper: "Improved Techniques for Training Consistency Models", Yang Song and Prafulla Dhariwal, ICLR
2024, arXiv 2310.14189. No official code was released; the formulas are checked (float64, rel 1e-10,
``tests/diffusion/test_ict.py`` on ``tests/data/ict_golden.pt``) against three public
implementations, run at these commits:

* diffusers ``examples/research_projects/consistency_training/train_cm_ct_unconditional.py`` @ 58eb52c
  (``get_karras_sigmas``, ``get_discretization_steps``, ``get_discretized_lognormal_weights``,
  ``get_loss_weighting_schedule`` and the Pseudo-Huber line of the training loop);
* locuslab/ect @ 4311059 ``training/loss.py`` (``ECMLoss``: the Pseudo-Huber metric on the whole
  sample, ``distance="sum"``);
* Kinyugo/consistency_models @ 2e6618d (``improved_timesteps_schedule``, ``karras_schedule``,
  ``lognormal_timestep_distribution``, ``improved_loss_weighting``, ``pseudo_huber_loss``).

Only the opening of the paper could be read in the stored text (abstract and introduction); the
formulas below are those of the three implementations, which agree with each other, and of the
project's issue 18. With :math:`\sigma_1 < \dots < \sigma_N` the Karras discretization
(``karras_sigmas``, ascending as in the paper's Section 2):

* curriculum: :math:`N(k) = \min(s_0 2^{\lfloor k/K' \rfloor}, s_1) + 1` with
  :math:`K' = \lfloor K / (\log_2\lfloor s_1/s_0\rfloor + 1)\rfloor` (``ict_discretization_steps``);
* noise-level distribution (the paper's Eq. 10, discretized lognormal), normalised:
  :math:`p(\sigma_i) \propto \mathrm{erf}\bigl(\frac{\log\sigma_{i+1}-P_{mean}}{\sqrt2 P_{std}}\bigr)
  - \mathrm{erf}\bigl(\frac{\log\sigma_i-P_{mean}}{\sqrt2 P_{std}}\bigr)` (``lognormal_sigma_probs``);
* loss weighting :math:`\lambda(\sigma_i) = 1/(\sigma_{i+1}-\sigma_i)` (``ict_loss_weights``);
* Pseudo-Huber metric :math:`d(x, y) = \sqrt{\lVert x-y\rVert_2^2 + c^2} - c`, c = 0.00054 sqrt(d)
  (``pseudo_huber_loss``).

Departures: ``distance="sum"`` (the paper's metric on the whole sample, as ECT) is the default; the
diffusers and Kinyugo ports apply the metric per element (``distance="elementwise"``, then average),
LCT to the per-sample mean (``"mean"``). ``lognormal_sigma_probs`` is normalised (diffusers leaves it
unnormalised for ``torch.multinomial``; Kinyugo normalises). The curriculum returns an ``int`` (Kinyugo's
returns a float).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_int, check_positive, check_real
from gradwise.registry import register

from ._common import check_sigmas, squared_distance

__all__ = ["karras_sigmas", "ict_discretization_steps", "lognormal_sigma_probs", "ict_loss_weights",
           "pseudo_huber_loss"]

PAPER = "Improved Techniques for Training Consistency Models"
_ARXIV = "2310.14189"
_KW = dict(kind="diffusion-objective", paper=PAPER, year=2023, arxiv=_ARXIV, code=None)


def karras_sigmas(n: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The ``n`` Karras noise levels of [sigma_min, sigma_max], ascending (a helper, not a method).

    :math:`\sigma_i = (\sigma_{min}^{1/\rho} + \tfrac{i}{n-1}(\sigma_{max}^{1/\rho} - \sigma_{min}^{1/\rho}))^\rho`,
    i = 0..n-1, computed in float64 and cast to ``dtype``.

    Example::

        >>> karras_sigmas(3, sigma_min=1.0, sigma_max=4.0, rho=1.0)
        tensor([1.0000, 2.5000, 4.0000], dtype=torch.float64)
    """
    n = check_int("n", n, lo=2)
    sigma_min = check_positive("sigma_min", sigma_min)
    sigma_max = check_positive("sigma_max", sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"Invalid sigma_max: {sigma_max!r} (accepted: sigma_max > sigma_min = {sigma_min!r})")
    rho = check_positive("rho", rho)
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return ((lo + ramp * (hi - lo)) ** rho).to(dtype)


@register(**_KW, summary="iCT curriculum: N(k) = min(s0 * 2^floor(k/K'), s1) + 1 discretization steps")
def ict_discretization_steps(step: int, total_steps: int, *, s0: int = 10, s1: int = 1280) -> int:
    r"""Number of discretization steps N at training step ``step`` of ``total_steps`` (iCT's doubling
    curriculum): :math:`N(k) = \min(s_0 2^{\lfloor k/K' \rfloor}, s_1) + 1`,
    :math:`K' = \lfloor K / (\log_2\lfloor s_1/s_0\rfloor + 1)\rfloor`. Paper: iCT, arXiv 2310.14189
    (Song & Dhariwal, ICLR 2024); references and departures in the module docstring.

    ``total_steps`` too small for one stage (K' = 0, where the reference implementations divide by
    zero) is a ValueError naming it.

    Example::

        >>> [ict_discretization_steps(k, 800) for k in (0, 99, 100, 799)]
        [11, 11, 21, 1281]
    """
    step = check_int("step", step, lo=0)
    total_steps = check_int("total_steps", total_steps, lo=1)
    s0 = check_int("s0", s0, lo=1)
    s1 = check_int("s1", s1, lo=1)
    if s1 < s0:
        raise ValueError(f"Invalid s1: {s1!r} (accepted: an integer >= s0 = {s0})")
    k_prime = math.floor(total_steps / (math.log2(s1 // s0) + 1))
    if k_prime == 0:
        raise ValueError(f"Invalid total_steps: {total_steps!r} (accepted: total_steps >= log2(s1 // s0) + 1 = "
                         f"{math.log2(s1 // s0) + 1:g}, so that each curriculum stage has a step)")
    doublings = step // k_prime
    n = s1 if doublings.bit_length() > 16 or (s0 << doublings) > s1 else s0 << doublings
    return n + 1


@register(**_KW, summary="iCT noise-level probabilities: the lognormal(P_mean, P_std) mass of each "
                         "[sigma_i, sigma_i+1), normalised (Eq. 10)")
def lognormal_sigma_probs(sigmas: Tensor, *, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    r"""Probability of training at each of the first n-1 levels (iCT Eq. 10), normalised to sum 1.

    :math:`p_i \propto \mathrm{erf}\bigl(\frac{\log\sigma_{i+1}-P_{mean}}{\sqrt2 P_{std}}\bigr)
    - \mathrm{erf}\bigl(\frac{\log\sigma_i-P_{mean}}{\sqrt2 P_{std}}\bigr)`, i.e. the mass the lognormal
    puts on :math:`[\sigma_i, \sigma_{i+1})`. ``sigmas`` ascending, > 0 (ValueError otherwise).
    Paper: iCT, arXiv 2310.14189; P_mean = -1.1, P_std = 2.0 are its defaults.
    Sample indices with ``torch.multinomial(p, B, replacement=True)``.
    """
    check_sigmas(sigmas)
    p_mean = check_real("p_mean", p_mean)
    p_std = check_positive("p_std", p_std)
    e = torch.special.erf((torch.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    w = e[1:] - e[:-1]
    return w / w.sum()


@register(**_KW, summary="iCT loss weighting lambda(sigma_i) = 1 / (sigma_i+1 - sigma_i)")
def ict_loss_weights(sigmas: Tensor) -> Tensor:
    r"""iCT's weighting :math:`\lambda(\sigma_i) = 1/(\sigma_{i+1}-\sigma_i)`, i = 1..n-1 ([n-1]):
    smaller noise levels get larger weights. ``sigmas`` ascending, > 0 (ValueError otherwise).
    Paper: iCT, arXiv 2310.14189."""
    check_sigmas(sigmas)
    return 1.0 / (sigmas[1:] - sigmas[:-1])


@register(**_KW, summary="Pseudo-Huber metric sqrt(||x - y||^2 + c^2) - c, c = 0.00054 sqrt(d); per sample, "
                         "on the mean, or per element")
def pseudo_huber_loss(input: Tensor, target: Tensor, *, c: float | None = None, distance: str = "sum") -> Tensor:
    r"""iCT's Pseudo-Huber metric, per sample ``[B]`` (or per element with ``distance="elementwise"``).

    :math:`d(x, y) = \sqrt{s + c^2} - c` with ``s`` the squared difference summed over the non-batch
    dims (``"sum"``, the paper's :math:`\lVert x-y\rVert_2^2`, as ECT), averaged (``"mean"``, LCT's
    ``"huber"``), or taken per element (``"elementwise"``, as the diffusers and Kinyugo ports, which then
    average). ``c=None`` is iCT's :math:`0.00054\sqrt{d}`, d the number of entries of one sample. It
    behaves like squared l2 for :math:`\lVert x-y\rVert \ll c` and like l2 beyond. Paper: iCT, arXiv
    2310.14189.

    The consistency target is usually computed without gradient; ``target`` is used as given.
    Dtype in = out; no host sync; NaN and inf propagate.

    Example::

        >>> pseudo_huber_loss(torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2), c=1.0)
        tensor([4.0990])
    """
    s, cc = squared_distance(input, target, c, distance)
    return (s + cc * cc).sqrt() - cc
