r"""ControlNet++: the efficient reward (consistency feedback) loss on a single-step denoised sample.

Paper: Li, Yang, Kuang, Wu, Wang, Xiao, Chen, "ControlNet++: Improving Conditional Controls with Efficient
Consistency Feedback", ECCV 2024, arXiv 2404.07987. Authors' code: liming-ai/ControlNet_Plus_Plus @ 8ded27a,
``train/reward_control.py`` (the "Rewarding ControlNet" block) and ``train/utils.py`` (``get_reward_loss``),
whose loss arithmetic ``tests/diffusion/test_controlnet_pp.py`` checks in float64 (rel 1e-10,
``tests/data/reward_tuning_golden.pt``).

Sampling the whole chain and back-propagating a reward through it keeps every step's graph. ControlNet++
instead disturbs a training image with a *small* amount of noise (timestep :math:`t \le t_{thre}`), denoises
it in one step, and scores the one-step prediction with the reward model:

.. math::

    x_t = x_0 + \sigma_t\epsilon,\qquad \hat x_0 = D_\theta(x_t, \sigma_t, c),\qquad
    \ell = -R(\hat x_0, c),\quad t \sim \mathcal U\{0, \dots, t_{thre}\}.

In the authors' script the reward is a consistency loss between the condition extracted from the image
(segmentation, depth, edges) and the input condition (cross-entropy, MSE), i.e. :math:`-R`; with
:func:`gradwise.diffusion.toy.classifier_reward` (:math:`\log p(y\mid x)`) this is the cross-entropy of
the class label, their segmentation loss with one "pixel".

Noise levels: the authors draw :math:`t \sim \mathcal U\{0,\dots,999\}` for every sample, train the
diffusion loss on all of them and the reward only on those with :math:`t \le 200` (``timestep_mask``,
``--max_timestep_rewarding``), normalising by their number. Conditioned on the mask, t is uniform on
``0..200``: this function draws exactly that, as an index into ``ladder`` (Stable Diffusion's DDPM noise
levels as EDM sigmas, :func:`gradwise.diffusion._common.sd_sigma_ladder`, by default), keeping the levels
``<= sigma_max`` (``sigma_max = ladder[200]`` = 0.5717 is the authors' threshold). A DDPM step of an
:math:`\epsilon`-model at timestep t, ``DDPMScheduler.step(...).pred_original_sample``, equals
:math:`D(x_t/\sqrt{\bar\alpha_t}, \sigma_t)` of the EDM denoiser :math:`D(x,\sigma) = x -
\sigma\,\epsilon_\theta(\sqrt{\bar\alpha}x, t)`; any EDM denoiser ``denoiser(x, sigma, class_labels)`` works.

Returns the per-sample reward loss ``[B]``; the authors' scalar is its mean, added to the ordinary
diffusion loss (on all timesteps) with weight ``--grad_scale`` (0.5 for canny, 1 by default). Departures:
the reward model and its image preprocessing (VAE decode, resize, normalisation) are the caller's
``reward_fn``; the draw is over the samples that get the reward (the authors waste the others' decode).
Dtype in = out; no host sync (the ladder lives on the host).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradwise.registry import register

from ._common import check_batch_tensor, check_reward, draw_noisy, ladder_top

__all__ = ["single_step_reward_loss"]

PAPER = "ControlNet++: Improving Conditional Controls with Efficient Consistency Feedback"
CODE = "https://github.com/liming-ai/ControlNet_Plus_Plus"


@register(kind="diffusion-objective", name="ControlNet++", paper=PAPER, year=2024, arxiv="2404.07987",
          code=CODE, summary="ControlNet++ efficient reward: disturb x0 with small noise (t <= t_thre), denoise "
                             "in one step, loss = -reward(x0_hat, c)")
def single_step_reward_loss(denoiser: Callable[..., Tensor], reward_fn: Callable[[Tensor, Tensor], Tensor],
                            x0: Tensor, y, *, sigma_max: float, generator: torch.Generator | None = None,
                            ladder: Tensor | None = None, index: Tensor | None = None,
                            noise: Tensor | None = None) -> Tensor:
    r"""ControlNet++'s reward loss on single-step denoised samples, per sample ``[B]`` (Li et al., ECCV 2024,
    arXiv 2404.07987; authors' code liming-ai/ControlNet_Plus_Plus @ 8ded27a, see the module docstring).

    ``denoiser(x, sigma [B], y) -> x0_hat`` (an EDM denoiser); ``reward_fn(x0_hat, y) -> [B]`` (higher is
    better; a ``[B, ...]`` output is averaged per sample, as the authors' per-pixel losses). ``sigma_max``:
    the highest noise level rewarded (the authors' :math:`t_{thre}` = 200 is ``ladder[200]`` = 0.5717 on the
    default ladder). ``index`` (ladder indices ``[B]``) and ``noise`` (:math:`\epsilon`, x0's shape) replace
    the draws when given (to share them, or to replay a draw); otherwise ``generator`` drives them.

    Example::

        >>> loss = single_step_reward_loss(denoiser, reward, x0, y, sigma_max=0.5717)
        >>> (diffusion_loss + 0.5 * loss.mean()).backward()
    """
    check_batch_tensor("x0", x0)
    if not callable(denoiser):
        raise ValueError(f"Invalid denoiser: {type(denoiser).__name__} (accepted: a callable (x, sigma, y) -> x0)")
    if not callable(reward_fn):
        raise ValueError(f"Invalid reward_fn: {type(reward_fn).__name__} (accepted: a callable (x, y) -> [B])")
    ladder, hi = ladder_top(ladder, sigma_max)
    index, noise = draw_noisy(x0, hi, generator, index, noise)
    sigma = ladder.to(device=x0.device, dtype=x0.dtype)[index]
    x0_hat = denoiser(x0 + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * noise, sigma, y)
    r = check_reward("reward_fn", reward_fn(x0_hat, y), x0.shape[0])
    if r.ndim > 1:
        r = r.mean(tuple(range(1, r.ndim)))
    return -r
