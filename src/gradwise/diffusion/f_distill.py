r"""f-distill: the density-ratio weight h(r) that turns DMD's reverse-KL update into an f-divergence one.

Paper: "One-step Diffusion Models with f-Divergence Distribution Matching", Yilun Xu, Weili Nie, Arash
Vahdat, 2025, arXiv 2502.15681. The gradient of :math:`D_f(p_t\Vert q_t)` is the teacher-student score
difference weighted by :math:`h(r)`, a function of the density ratio :math:`r = p_t/q_t` estimated by
a GAN discriminator on the noised generator samples (:math:`r = e^{\ell}`); reverse KL (DMD) is h = 1.
The generator loss is then :func:`~gradwise.diffusion.dmd_loss` with ``scale=h, eps=1e-6`` (FastGen's
``variational_score_distillation_loss``) plus the GAN term.

Checked against the authors' NVlabs/FastGen @ 34f30e8 (not on PyPI; PyPI's ``fastgen`` is unrelated):
``fastgen/methods/distribution_matching/f_distill.py`` (``all_f_div_weighting_function``,
``FdistillModel._get_f_div_weighting_h``) and ``fastgen/methods/common_loss.py``, run on seeded
tensors (float64, rel 1e-10, ``tests/diffusion/test_f_distill.py`` on ``tests/data/f_distill_golden.pt``,
made by ``tools/golden/make_f_distill_golden.py``). The steps:

1. :math:`r = \mathrm{clamp}(\exp(\mathrm{clamp}(\bar\ell, -10, 10)), r_{lo}, r_{hi})`, :math:`\bar\ell`
   the logits averaged over their non-batch dim; ``ratio_bounds`` = (0.1, 20) as FastGen's defaults;
2. with ``t`` (the noise times of the batch) and ``t_range`` = (t_min, t_max): the range is cut into
   ``num_bins`` equal bins and each r is divided by (its bin's mean r over the batch + 1e-6), so
   noise levels with large ratios do not dominate (the paper's first normalisation);
3. :math:`h = h(r)`, then :math:`h / (\mathrm{mean}(h) + 10^{-6})` over the batch (the second).

:math:`h(r)` per divergence, as FastGen's table (``divergence``): ``"rkl"`` reverse KL 1, ``"kl"``
forward KL r, ``"js"`` Jensen-Shannon :math:`1 - 1/(1+r)`, ``"sf"`` :math:`1/(1+r)`, ``"neyman"``
Neyman :math:`\chi^2` :math:`1/\max(r, 10^{-8})`, ``"sh"`` squared Hellinger :math:`\sqrt r`, ``"jf"``
Jeffreys :math:`1 + r`. Constant factors of the paper's :math:`h(r) = r^2 f''(r)` (e.g. 1/4 for
squared Hellinger, 2 for Neyman) cancel in step 3. The paper's own h(r) table could not be read in
the stored full text (only its opening was reachable), so the table here is the authors' code's; see
docs/coverage_notes.md.

Departures: FastGen's ``"rkl"`` returns a 0-d tensor and then fails (``len()`` of a 0-d tensor,
TypeError); here it is the constant 1 broadcast to ``[B]`` and normalised like the others
(:math:`1/(1+10^{-6})`). FastGen keeps an EMA of the per-bin means across steps (``ratio_ema_rate``,
default 0.0, i.e. this batch's means, which is what is computed here; the EMA is not offered) and
all-reduces the bin statistics and the mean of h across processes (single-process here). Its
arithmetic is float32 for any input dtype; here it is float32 for half/bfloat16 and float64 for
float64 (the golden run promotes FastGen's float32 casts to float64 for the 1e-10 check; its
unmodified float32 run is checked at float32 tolerance). The bin statistics use ``scatter_add``
(FastGen's ``bincount``; the same sums, no host sync on accelerators).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_int, check_real
from gradwise.registry import register

from ._common import check_batch_tensor

__all__ = ["f_distill_weight", "F_DIVERGENCES"]

PAPER = "One-step Diffusion Models with f-Divergence Distribution Matching"
_KW = dict(kind="diffusion-objective", paper=PAPER, year=2025, arxiv="2502.15681",
           code="https://github.com/NVlabs/FastGen")

_H = {
    "rkl": torch.ones_like,
    "kl": lambda r: r,
    "js": lambda r: 1 - 1 / (1 + r),
    "sf": lambda r: 1 / (1 + r),
    "neyman": lambda r: 1 / r.clamp(min=1e-8),
    "sh": torch.sqrt,
    "jf": lambda r: 1 + r,
}
F_DIVERGENCES = tuple(_H)
_EPS = 1e-6  # FastGen's stabilisers of both normalisations


def _pair(name: str, value, *, positive: bool) -> tuple[float, float]:
    """(lower, upper): finite numbers, lower < upper (and 0 < lower with ``positive``)."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    lo, hi = (check_real(name, value[0]), check_real(name, value[1])) if ok else (None, None)
    if not ok or not lo < hi or (positive and not lo > 0):
        raise ValueError(f"Invalid {name}: {value!r} (accepted: a pair (lower, upper) of finite numbers with "
                         f"{'0 < lower < upper' if positive else 'lower < upper'})")
    return lo, hi


@register(**_KW, summary="f-distill weight h(r) of the discriminator's density ratio r = exp(logit) "
                         "(kl js sf neyman sh jf rkl), per-time-bin and batch normalised")
def f_distill_weight(fake_logits: Tensor, t: Tensor | None = None, *, divergence: str = "js",
                     ratio_bounds: tuple[float, float] = (0.1, 20.0), num_bins: int = 10,
                     t_range: tuple[float, float] | None = None) -> Tensor:
    r"""f-distill's per-sample weight ``h`` ``[B]`` for :func:`~gradwise.diffusion.dmd_loss` (``scale=h``).

    ``fake_logits``: the discriminator's logits on the noised generator samples, ``[B]`` or ``[B, K]``
    (averaged over K), detached here. :math:`r = \mathrm{clamp}(e^{\mathrm{clamp}(\ell,-10,10)},
    \text{ratio\_bounds})`; with ``t`` (``[B]`` noise times, needs ``t_range=(t_min, t_max)``) each r is
    divided by its time bin's batch mean (``num_bins`` equal bins of ``t_range``); then
    :math:`h = h(r)/(\mathrm{mean}\,h(r) + 10^{-6})`. ``divergence``: one of ``F_DIVERGENCES``
    ("js" default, the paper's best). Paper: f-distill, arXiv 2502.15681; the h(r) table, reference and
    departures in the module docstring.

    Dtype in = out; no host sync; NaN propagates.

    Example::

        >>> f_distill_weight(torch.zeros(4, 1), divergence="kl")   # r = 1 for all: h = 1 / (1 + 1e-6)
        tensor([1.0000, 1.0000, 1.0000, 1.0000])
    """
    check_batch_tensor("fake_logits", fake_logits)
    if fake_logits.ndim > 2:
        raise ValueError(f"Invalid fake_logits: shape {tuple(fake_logits.shape)} (accepted: [B] or [B, K])")
    divergence = check_choice("divergence", divergence, F_DIVERGENCES)
    lo, hi = _pair("ratio_bounds", ratio_bounds, positive=True)
    num_bins = check_int("num_bins", num_bins, lo=1)
    B = fake_logits.shape[0]
    wd = torch.promote_types(fake_logits.dtype, torch.float32)
    logit = fake_logits.detach().to(wd)
    if logit.ndim == 2:
        logit = logit.mean(1)
    r = logit.clamp(-10.0, 10.0).exp().clamp(lo, hi)
    if t is not None:
        if t_range is None:
            raise ValueError("Invalid t_range: None (accepted: (t_min, t_max) with t_min < t_max when t is given)")
        t_min, t_max = _pair("t_range", t_range, positive=False)
        if not torch.is_tensor(t) or t.ndim != 1 or t.shape[0] != B or t.is_complex() or t.dtype == torch.bool:
            got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"Invalid t: {got} (accepted: a real tensor [B] with B = {B})")
        width = (t_max - t_min) / num_bins
        idx = ((t.detach().to(device=r.device, dtype=torch.float64) - t_min) / width).floor().long()
        idx = idx.clamp(0, num_bins - 1)
        count = torch.zeros(num_bins, dtype=wd, device=r.device).scatter_add_(0, idx, torch.ones_like(r))
        total = torch.zeros(num_bins, dtype=wd, device=r.device).scatter_add_(0, idx, r)
        r = r / ((total / (count + _EPS))[idx] + _EPS)
    h = _H[divergence](r)
    return (h / (h.mean() + _EPS)).to(fake_logits.dtype)

