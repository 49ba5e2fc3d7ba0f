r"""DMD2: the tensor pieces of improved distribution matching distillation (one-step generators).

Paper: "Improved Distribution Matching Distillation for Fast Image Synthesis", Tianwei Yin, Michaël
Gharbi, Taesung Park, Richard Zhang, Eli Shechtman, Fredo Durand, William T. Freeman, NeurIPS 2024,
arXiv 2405.14867. Checked against the authors' tianweiy/DMD2 @ 8d8fa55 ``main/edm/edm_guidance.py``
(``EDMGuidance``), run on seeded tensors (float64, rel 1e-10, ``tests/diffusion/test_dmd2.py`` on
``tests/data/dmd2_golden.pt``, made by ``tools/golden/make_dmd2_golden.py``); the ``.mean()`` of each
per-sample loss here is the authors' scalar, and its gradient theirs.

With ``x`` the generator's sample, :math:`\hat x_{real}`, :math:`\hat x_{fake}` the teacher's and the
fake (online) score network's x0-predictions at :math:`x_t = x + \sigma\epsilon`:

* distribution matching (``dmd_loss``, ``compute_distribution_matching_loss``):
  :math:`g = (\hat x_{fake} - \hat x_{real})\,s / (\mathrm{mean}|x - \hat x_{real}| + \varepsilon)`
  (the per-sample normaliser of DMD), loss :math:`\tfrac12\,\mathrm{mean}((x - \mathrm{sg}[x - g])^2)`,
  whose gradient in ``x`` is :math:`g/D` per sample (D entries). DMD2 is ``scale=None, eps=0``;
  NVlabs/FastGen's ``variational_score_distillation_loss`` (@34f30e8, ``common_loss.py``; f-distill's
  generator loss) is ``scale=h`` (:func:`~gradwise.diffusion.f_distill_weight`), ``eps=1e-6``;
* fake-score loss (``fake_score_loss``, ``compute_loss_fake``): EDM/Karras-weighted denoising,
  :math:`(\sigma^{-2} + \sigma_{data}^{-2})\,\mathrm{mean}((\hat x_{fake} - \mathrm{sg}[x])^2)`; the
  paper trains the fake score 5 steps per generator step (two time-scale update rule);
* non-saturating GAN on a classifier head over the fake score's bottleneck
  (``compute_generator_clean_cls_loss``, ``compute_guidance_clean_cls_loss``):
  generator :math:`\mathrm{softplus}(-\ell_{fake})`, discriminator
  :math:`\mathrm{softplus}(\ell_{fake}) + \mathrm{softplus}(-\ell_{real})`.

Sampling the noise level, the noise, the networks and the backward simulation of the multi-step
generator are the caller's; these functions take the predictions.

Departures: DMD2 applies ``torch.nan_to_num`` to g (its normaliser is 0 only when ``x`` equals the
teacher's prediction exactly); here NaN and inf propagate (a NaN input must not turn into a zero or a
huge finite gradient), and ``eps > 0`` (FastGen's 1e-6) keeps g finite. FastGen computes the normaliser
in float32 whatever the input dtype; here it is computed in float32 for half/bfloat16 inputs and in
float64 for float64 inputs (the golden run promotes FastGen's float32 casts to float64 for the 1e-10
check, and its unmodified float32 run is checked at float32 tolerance). The predictions are detached
(the authors compute them under ``no_grad``), and so is ``x`` in ``fake_score_loss`` (the authors
detach the generator's sample there). Logits may be ``[B]`` or ``[B, ...]`` (averaged over the
non-batch dims, so the mean is the authors' ``.mean()`` of their ``[B, 1]``); the discriminator's real
and fake logits must have one shape (FastGen averages the two batches separately, which equals this
when they do).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_nonneg, check_positive
from gradwise.registry import register

from ._common import check_batch_tensor, check_pair, per_sample

__all__ = ["dmd_loss", "fake_score_loss", "gan_generator_loss", "gan_discriminator_loss"]

PAPER = "Improved Distribution Matching Distillation for Fast Image Synthesis"
_KW = dict(kind="diffusion-objective", paper=PAPER, year=2024, arxiv="2405.14867",
           code="https://github.com/tianweiy/DMD2")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16 (as FastGen's weights), else the dtype itself."""
    return torch.promote_types(dtype, torch.float32)


def _sample_mean(t: Tensor) -> Tensor:
    return t if t.ndim == 1 else t.mean(1) if t.ndim == 2 else t.flatten(1).mean(1)


@register(**_KW, summary="DMD2 distribution matching: 0.5 mean((x - sg[x - g])^2), g = (fake_x0 - real_x0) s / "
                         "(mean|x - real_x0| + eps); gradient g / D")
def dmd_loss(x: Tensor, pred_real_x0: Tensor, pred_fake_x0: Tensor, *, scale=None, eps: float = 0.0) -> Tensor:
    r"""DMD2's distribution-matching loss per sample ``[B]``; its gradient in ``x`` is the DMD update.

    :math:`g = (\hat x_{fake} - \hat x_{real})\,s/(\mathrm{mean}|x - \hat x_{real}| + \varepsilon)`,
    loss :math:`\tfrac12\,\mathrm{mean}((x - \mathrm{sg}[x - g])^2)` over the non-batch dims (value
    :math:`\tfrac12\mathrm{mean}(g^2)`, gradient :math:`g/D`). ``pred_real_x0``/``pred_fake_x0``: the
    teacher's and the fake score's x0-predictions at the noised ``x`` (detached here). ``scale``: None,
    a number or a ``[B]`` tensor multiplying the weight (f-distill's h); ``eps``: added to the
    normaliser (FastGen's VSD uses 1e-6). Paper: DMD2, arXiv 2405.14867; reference and departures in
    the module docstring.

    Dtype in = out; no host sync; NaN and inf propagate.

    Example::

        >>> x = torch.tensor([[1.0, 3.0]], requires_grad=True)
        >>> dmd_loss(x, torch.zeros(1, 2), torch.ones(1, 2))   # g = (1 - 0) / mean(|x|) = 0.5
        tensor([0.1250], grad_fn=<MulBackward0>)
    """
    check_pair(x, pred_real_x0, "x", "pred_real_x0")
    check_pair(x, pred_fake_x0, "x", "pred_fake_x0")
    eps = check_nonneg("eps", eps)
    xf = x.reshape(x.shape[0], -1)
    with torch.no_grad():
        real = pred_real_x0.reshape(xf.shape)
        wd = _work_dtype(x.dtype)
        norm = (xf.to(wd) - real.to(wd)).abs_().mean(1, keepdim=True)
        if eps:
            norm += eps
        w = norm.reciprocal_()
        if scale is not None:
            w *= per_sample("scale", scale, w)
        target = (pred_fake_x0.reshape(xf.shape) - real).mul_(w.to(x.dtype)).neg_().add_(xf)  # x - g
    return 0.5 * F.mse_loss(xf, target, reduction="none").mean(1)


@register(**_KW, summary="DMD2 fake-score denoising loss (sigma^-2 + sigma_data^-2) mean((fake_x0 - sg[x])^2)")
def fake_score_loss(pred_x0: Tensor, x: Tensor, sigma, *, sigma_data: float = 0.5) -> Tensor:
    r"""DMD2's loss for the fake (online) score network, per sample ``[B]``.

    :math:`(\sigma^{-2} + \sigma_{data}^{-2})\,\mathrm{mean}((\hat x_0 - \mathrm{sg}[x])^2)` over the
    non-batch dims, with ``pred_x0`` the fake score's x0-prediction at :math:`x + \sigma\epsilon` and
    ``x`` the generator's sample (detached: no gradient to the generator). ``sigma``: a number or a
    ``[B]`` (or ``[B, 1, ...]``) tensor of noise levels > 0 (checked for numbers and CPU tensors);
    ``sigma_data`` > 0. Paper: DMD2, arXiv 2405.14867 (``compute_loss_fake``).

    Dtype in = out; no host sync; NaN and inf propagate.

    Example::

        >>> fake_score_loss(torch.ones(1, 2), torch.zeros(1, 2), 1.0, sigma_data=1.0)
        tensor([2.])
    """
    check_pair(pred_x0, x, "pred_x0", "x")
    sd = check_positive("sigma_data", sigma_data)
    pf = pred_x0.reshape(pred_x0.shape[0], -1)
    s = per_sample("sigma", sigma, pf)
    w = s.pow(-2) + 1.0 / (sd * sd)
    return (w * F.mse_loss(pf, x.detach().reshape(pf.shape), reduction="none")).mean(1)


@register(**_KW, summary="DMD2 non-saturating GAN generator loss softplus(-fake_logits)")
def gan_generator_loss(fake_logits: Tensor) -> Tensor:
    r"""The generator's non-saturating GAN loss :math:`\mathrm{softplus}(-\ell_{fake})` per sample
    ``[B]`` (averaged over the non-batch dims of ``[B, ...]`` logits). Paper: DMD2, arXiv 2405.14867
    (``compute_generator_clean_cls_loss``; FastGen's ``gan_loss_generator``).

    Example::

        >>> gan_generator_loss(torch.zeros(2, 1))
        tensor([0.6931, 0.6931])
    """
    check_batch_tensor("fake_logits", fake_logits)
    return _sample_mean(F.softplus(-fake_logits))


@register(**_KW, summary="DMD2 GAN discriminator loss softplus(fake_logits) + softplus(-real_logits)")
def gan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    r"""The discriminator's GAN loss :math:`\mathrm{softplus}(\ell_{fake}) + \mathrm{softplus}(-\ell_{real})`
    per sample ``[B]`` (real and fake logits of one shape ``[B]`` or ``[B, ...]``; averaged over the
    non-batch dims). Pass detached generator samples' logits as the authors do. Paper: DMD2, arXiv
    2405.14867 (``compute_guidance_clean_cls_loss``; FastGen's ``gan_loss_discriminator``).

    Example::

        >>> gan_discriminator_loss(torch.zeros(1), torch.zeros(1))
        tensor([1.3863])
    """
    check_pair(real_logits, fake_logits, "real_logits", "fake_logits")
    return _sample_mean(F.softplus(fake_logits) + F.softplus(-real_logits))
