r"""Consistency training from scratch: the iCT loss, with sLCT's options (Cauchy metric, minibatch OT
pairing, scaling-c, the low-noise diffusion loss), and a multistep consistency sampler.

Papers: "Improved Techniques for Training Consistency Models" (iCT; Song & Dhariwal, ICLR 2024, arXiv
2310.14189) and "Improved Training Technique for Latent Consistency Models" (sLCT; Dao et al., ICLR 2025,
arXiv 2502.01441). The pieces (curriculum, noise-level distribution, weights, metrics, OT pairing,
scaling-c) are :mod:`gradwise.diffusion.ict` and :mod:`gradwise.diffusion.slct`; this module puts them
together as the training loops of the references do:

* diffusers ``examples/research_projects/consistency_training/train_cm_ct_unconditional.py`` @ 58eb52c,
  steps 2-7 of its loop (iCT: no official code);
* locuslab/ect @ 4311059 ``training/loss.py`` (``ECMLoss``: the metric on the whole sample);
* quandao10/LCT @ 34661b9 ``models/karras_diffusion.py`` ``consistency_losses`` and ``train_cm_latent.py``
  (sLCT's loss code).

One call, with :math:`\sigma_1 < \dots < \sigma_N` the Karras levels of N = N(step) (the doubling
curriculum), for each sample: an index i ~ p (lognormal, iCT Eq. 10, or uniform) on 1..N-1, one noise
z ~ N(0, I) shared by both ends, and

.. math::

    \mathcal L = \lambda(\sigma_i)\, d\bigl(f_\theta(x + \sigma_{i+1} z, \sigma_{i+1}),\;
    \mathrm{sg}\,f_{\theta^-}(x + \sigma_i z, \sigma_i)\bigr),\qquad \lambda(\sigma_i) = \frac{1}{\sigma_{i+1}-\sigma_i}

with :math:`\theta^- = \theta` (iCT: no EMA teacher) unless ``teacher`` is given (an EMA copy, as the
original consistency training). Dropout: the global RNG state is saved before the student's pass and
restored before the teacher's (diffusers, LCT), so both see the same dropout masks; afterwards it is set
to where the student's pass left it.

sLCT options: ``metric="cauchy"`` (:func:`~gradwise.diffusion.cauchy_loss` on the per-sample mean, LCT's
``"cauchy"``), ``ot=True`` (the noise re-paired to the data by :func:`~gradwise.diffusion.ot_pair` before
anything else), ``c="scaling"`` (:func:`~gradwise.diffusion.slct_scaling_c` with ``c_init`` = iCT's
0.00054 sqrt(d), ``start_scales`` = ``s0``), and ``diffusion_loss_weight`` = w > 0 (LCT uses 5): the EDM
loss :math:`(1/\sigma^2 + 1/\sigma_{data}^2)\,\mathrm{mean}((f_\theta(x + \sigma_{i+1} z, \sigma_{i+1}) - x)^2)`
of the student on the samples whose index counted from :math:`\sigma_{max}` is >= int(0.75 N), i.e. the
lowest quarter of the levels, averaged over that subset and added w times to the batch loss. The
function returns ``[B]``: the subset mean enters as ``w * mask_b * l_b * B / max(#subset, 1)``, so that
``loss.mean()`` is LCT's ``cm_loss + w * diff_loss``; an empty subset gives 0 (LCT's mean is NaN there).

Departures: noise levels and indices are drawn from ``generator`` (``torch.multinomial``), not from the
global RNG (LCT's ``Categorical``, diffusers' ``multinomial``); the draws differ, the distribution is the
same. ``metric="l2"`` (squared l2 summed over the sample, the original consistency training's d) is for
the ablation. LCT's Cauchy/Huber act on the per-sample mean of the squared error, iCT/ECT's Pseudo-Huber on
the sum (defaults of ``distance``; pass ``distance`` to change). Checks (``tests/diffusion/
test_consistency_training.py``): LCT's ``consistency_losses`` run unchanged at 34661b9 around a stub network
(``tests/data/consistency_training_golden.pt``, float64, rel 1e-10: per-sample loss and ``cm + 5 * diff``,
with the noise and indices it drew passed as ``noise``/``index``); the diffusers loop (inside the script's
``main()``) and ECT (a continuous-time t/r mapping) at the equation level: shared noise and dropout state,
stop-grad teacher, the metric on the whole sample.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradwise._validate import check_choice, check_nonneg, check_positive
from gradwise.registry import register

from ._common import check_batch_tensor, default_c
from .ict import (PAPER, ict_discretization_steps, ict_loss_weights, karras_sigmas, lognormal_sigma_probs,
                  pseudo_huber_loss)
from .slct import cauchy_loss, ot_pair, slct_scaling_c

__all__ = ["consistency_training_loss", "consistency_sample"]

METRICS = ("pseudo_huber", "cauchy", "l2")
SIGMA_SAMPLING = ("lognormal", "uniform")
_DEFAULT_DISTANCE = {"pseudo_huber": "sum", "cauchy": "mean"}


def _rng_state(device: torch.device):
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def _resolve_c(c, metric: str, x: Tensor, n: int, s0: int):
    if c is None or metric == "l2":
        return None
    if isinstance(c, str):
        check_choice("c", c, ("scaling",))
        return slct_scaling_c(n, start_scales=s0, c_init=default_c(x))
    return check_positive("c", c)


@register(kind="diffusion-objective", paper=PAPER, year=2023, arxiv="2310.14189", code=None,
          summary="Consistency training loss (iCT: curriculum, lognormal levels, 1/dsigma weights, Pseudo-Huber, "
                  "no-EMA teacher; sLCT options: Cauchy, OT pairs, scaling-c, diffusion loss)")
def consistency_training_loss(denoiser: nn.Module, x: Tensor, *, step: int, total_steps: int, class_labels=None,
                              metric: str = "pseudo_huber", teacher: nn.Module | None = None, ot: bool = False,
                              diffusion_loss_weight: float = 0.0, generator: torch.Generator | None = None,
                              c: float | str | None = None, distance: str | None = None,
                              sigma_sampling: str = "lognormal", s0: int = 10, s1: int = 1280,
                              sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                              p_mean: float = -1.1, p_std: float = 2.0, noise: Tensor | None = None,
                              index: Tensor | None = None) -> Tensor:
    r"""Per-sample consistency training loss ``[B]`` at training step ``step`` of ``total_steps`` (iCT,
    arXiv 2310.14189; sLCT options, arXiv 2502.01441). Formula, references and departures: module docstring.

    denoiser: a consistency function ``f(x, sigma [B], class_labels)`` (e.g.
        :class:`~gradwise.diffusion.toy.ConsistencyDenoiser`), the student; gradients flow into it only.
    x: clean data ``[B, ...]``; class_labels: ``[B]`` or None, passed to both ends.
    metric: ``"pseudo_huber"`` (iCT), ``"cauchy"`` (sLCT), ``"l2"`` (squared l2, original CT).
    teacher: the target network (e.g. an EMA copy), run without gradient; None: the student itself under
        ``no_grad`` (iCT).
    ot: pair the batch's noise with the data by exact minibatch OT (sLCT; a host sync).
    diffusion_loss_weight: w of sLCT's low-noise EDM loss (5 in LCT); 0 turns it off.
    generator: the source of the noise and of the level indices (CPU generator; None: the global RNG).
    c: the metric's scale: None (iCT's 0.00054 sqrt(d)), a number, or ``"scaling"`` (sLCT's schedule).
    distance: ``"sum"``/``"mean"``/``"elementwise"`` (then averaged per sample); default per metric.
    sigma_sampling: ``"lognormal"`` (iCT Eq. 10, p_mean, p_std) or ``"uniform"`` over the N-1 indices.
    s0, s1, sigma_min, sigma_max, rho: the curriculum and the Karras levels (iCT's defaults).
    noise, index: the draws, when given (tests, or a caller's own sampling): the noise ``[B, ...]`` (before
        OT pairing) and the teacher's level index ``[B]`` in 0..N-2 (ascending: teacher at sigmas[index],
        student at sigmas[index + 1]); neither is then drawn from ``generator``.
    """
    check_batch_tensor("x", x)
    if x.ndim < 2:
        raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: a floating-point tensor [B, ...] with "
                         "at least one non-batch dim)")
    if not isinstance(denoiser, nn.Module):
        raise ValueError(f"Invalid denoiser: {type(denoiser).__name__} (accepted: a torch.nn.Module)")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ValueError(f"Invalid teacher: {type(teacher).__name__} (accepted: a torch.nn.Module or None)")
    metric = check_choice("metric", metric, METRICS)
    sigma_sampling = check_choice("sigma_sampling", sigma_sampling, SIGMA_SAMPLING)
    w_diff = check_nonneg("diffusion_loss_weight", diffusion_loss_weight)
    n = ict_discretization_steps(step, total_steps, s0=s0, s1=s1)
    c = _resolve_c(c, metric, x, n, s0)
    if distance is None:
        distance = _DEFAULT_DISTANCE.get(metric, "sum")
    distance = check_choice("distance", distance, ("sum", "mean", "elementwise"))

    b, dev, dt = x.shape[0], x.device, x.dtype
    sigmas = karras_sigmas(n, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    probs = (lognormal_sigma_probs(sigmas, p_mean=p_mean, p_std=p_std) if sigma_sampling == "lognormal"
             else torch.full((n - 1,), 1.0 / (n - 1), dtype=torch.float64))
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, dtype=dt, device="cpu").to(dev)
    elif not torch.is_tensor(noise) or noise.shape != x.shape or noise.dtype != dt:
        raise ValueError(f"Invalid noise: {getattr(noise, 'shape', noise)!r} (accepted: a tensor of x's shape "
                         f"{tuple(x.shape)} and dtype {dt})")
    if index is None:
        idx = torch.multinomial(probs, b, replacement=True, generator=generator)
    elif not torch.is_tensor(index) or index.dtype not in (torch.int32, torch.int64) or index.shape != (b,):
        raise ValueError(f"Invalid index: {getattr(index, 'shape', index)!r} (accepted: an integer tensor [B] = "
                         f"[{b}] with values in 0..N-2 = 0..{n - 2})")
    else:
        idx = index.detach().to("cpu", torch.long)
        if bool(((idx < 0) | (idx > n - 2)).any()):
            raise ValueError(f"Invalid index: values outside 0..N-2 = 0..{n - 2} (N = {n} levels at this step)")
    if ot:
        noise = ot_pair(x, noise)
    sig_t = sigmas[idx].to(device=dev, dtype=dt)          # teacher: sigma_i (lower)
    sig_s = sigmas[idx + 1].to(device=dev, dtype=dt)      # student: sigma_{i+1}
    weight = ict_loss_weights(sigmas)[idx].to(device=dev, dtype=dt)
    view = (-1,) + (1,) * (x.ndim - 1)

    state = _rng_state(dev)
    student = denoiser(x + sig_s.view(view) * noise, sig_s, class_labels)
    after = _rng_state(dev)
    _set_rng_state(dev, state)
    try:
        with torch.no_grad():
            target = (teacher if teacher is not None else denoiser)(x + sig_t.view(view) * noise, sig_t,
                                                                    class_labels).detach()
    finally:
        _set_rng_state(dev, after)

    if metric == "l2":
        d = (student - target).square().flatten(1).sum(1)
    else:
        fn = pseudo_huber_loss if metric == "pseudo_huber" else cauchy_loss
        d = fn(student, target, c=c, distance=distance)
        if distance == "elementwise":
            d = d.flatten(1).mean(1)
    loss = weight * d
    if w_diff > 0:
        sd = float(getattr(denoiser, "sigma_data", 0.5))
        # LCT counts indices from sigma_max: its index of this pair is (n - 2) - idx
        mask = ((n - 2 - idx) >= int(n * 0.75)).to(device=dev, dtype=dt)
        edm = (1.0 / sig_s ** 2 + 1.0 / sd ** 2) * (student - x).square().flatten(1).mean(1)
        loss = loss + (w_diff * b) * mask * edm / mask.sum().clamp(min=1.0)
    return loss


@torch.no_grad()
def consistency_sample(denoiser: nn.Module, noise: Tensor, *, sigmas=(80.0,), class_labels=None,
                       generator: torch.Generator | None = None) -> Tensor:
    r"""Multistep consistency sampling (Song et al. 2023, Algorithm 1): ``x = f(sigmas[0] * noise,
    sigmas[0])``, then for each further level s: ``x = f(x + sqrt(s^2 - sigma_min^2) z, s)``, z ~ N(0, I)
    from ``generator``. ``sigmas`` descending, > ``denoiser.sigma_min``; one level is one-step sampling.
    (A helper for the consistency study, not a method; diffusers' ``CMStochasticIterativeScheduler``
    applies its own preconditioning to raw network outputs, which the toy denoisers already apply.)
    """
    check_batch_tensor("noise", noise)
    levels = [float(s) for s in sigmas]
    if not levels or any(not math.isfinite(s) or s <= 0 for s in levels) or \
            any(a <= b for a, b in zip(levels, levels[1:])):
        raise ValueError(f"Invalid sigmas: {levels!r} (accepted: one or more noise levels > 0, descending)")
    smin = float(getattr(denoiser, "sigma_min", 0.0))
    x = denoiser(noise * levels[0], torch.full((noise.shape[0],), levels[0], dtype=noise.dtype,
                                                device=noise.device), class_labels)
    for s in levels[1:]:
        z = torch.randn(noise.shape, generator=generator, dtype=noise.dtype, device="cpu").to(noise.device)
        x = denoiser(x + math.sqrt(max(s * s - smin * smin, 0.0)) * z,
                     torch.full((noise.shape[0],), s, dtype=noise.dtype, device=noise.device), class_labels)
    return x

