r"""Ctrl-U: the reward loss of single-step denoised samples, weighted by the reward model's uncertainty.

Paper: Zhang, Gao, Jiang, Zhao, Zheng, "Ctrl-U: Robust Conditional Image Generation via Uncertainty-aware
Reward Modeling", ICLR 2025, arXiv 2410.11236. Only the paper's opening (abstract, Fig. 2 caption) could be
read in the stored text, so the loss follows the authors' code, grenoble-zhang/Ctrl-U @ 704d51d,
``train/ctrlu-reward.py`` (the "Rewarding" block; their comment says it is "consistent with the effect of
eq.4 in the paper"), whose arithmetic ``tests/diffusion/test_ctrl_u.py`` checks in float64 (rel 1e-10,
``tests/data/reward_tuning_golden.pt``).

As ControlNet++ (:func:`gradwise.diffusion.single_step_reward_loss`), a training image is disturbed with a
small noise (ladder index :math:`i \le i_{max}`) and denoised in one step; Ctrl-U does it twice with the
*same* noise, at indices :math:`i` and :math:`i + \Delta` (``add_index``, the authors' ``--add_timestep`` = 1,
clamped to the ladder), and reads the reward model's disagreement on the two predictions as its uncertainty:

.. math::

    U = s_u \sum_c p^{(2)}_c \bigl(\log p^{(2)}_c - \log p^{(1)}_c\bigr),\qquad
    \ell = s_r \,\mathrm{mean}\bigl(-R(\hat x_0^{(1)}, c)\, e^{-U}\bigr) + \mathrm{mean}(U),

:math:`p^{(k)} = \mathrm{softmax}` of the reward model's logits on :math:`\hat x_0^{(k)}` over dim 1
(``logits_fn``; ``torch.nn.KLDivLoss(log_softmax(primary), softmax(auxiliary))`` summed over classes),
:math:`s_u` = ``u_scale``, the means over the non-batch dims (pixels). Rewards the model is unsure of get
weight :math:`e^{-U} < 1`; the :math:`+U` term keeps U from growing without bound. Only the first pass is
rewarded; gradients flow through both passes and through U (the authors do not detach it).

Returns ``[B]``; the authors' scalar is its mean over the rewarded samples with ``reward_scale`` their
``grad_scale`` (0.1 for ADE20K, warmed up linearly over ``--linear_reward_scale_steps``), added to the
diffusion loss. Defaults: ``u_scale=1`` (their training scripts; argparse default 0.1), ``add_index=1``,
``sigma_max`` is the caller's (their scripts reward :math:`t \le 400`: ``ladder[400]`` = 1.1644).
Departures: the reward model and its preprocessing are ``reward_fn``/``logits_fn``; ``reward_fn(x, y)``
returns the reward (their loss, negated), per sample ``[B]`` or per pixel ``[B, ...]`` matching U.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradwise._validate import check_int, check_real
from gradwise.registry import register

from ._common import check_batch_tensor, check_reward, draw_noisy, ladder_top

__all__ = ["uncertainty_weighted_reward_loss"]

PAPER = "Ctrl-U: Robust Conditional Image Generation via Uncertainty-aware Reward Modeling"
CODE = "https://github.com/grenoble-zhang/Ctrl-U"


@register(kind="diffusion-objective", name="Ctrl-U", paper=PAPER, year=2025, arxiv="2410.11236", code=CODE,
          summary="Ctrl-U: two single-step denoisings (t, t+1, same noise); U = KL of the reward model's two "
                  "predictions; loss = mean(-reward * exp(-U)) + mean(U)")
def uncertainty_weighted_reward_loss(denoiser: Callable[..., Tensor], reward_fn: Callable[[Tensor, Tensor], Tensor],
                                     x0: Tensor, y, *, generator: torch.Generator | None = None,
                                     logits_fn: Callable[[Tensor], Tensor] | None = None, sigma_max: float = 1.1644,
                                     u_scale: float = 1.0, reward_scale: float = 1.0, add_index: int = 1,
                                     ladder: Tensor | None = None, index: Tensor | None = None,
                                     noise: Tensor | None = None) -> Tensor:
    r"""Ctrl-U's uncertainty-weighted reward loss per sample ``[B]`` (Zhang et al., ICLR 2025, arXiv 2410.11236;
    authors' code grenoble-zhang/Ctrl-U @ 704d51d, see the module docstring).

    ``denoiser(x, sigma [B], y) -> x0_hat``; ``reward_fn(x0_hat, y)`` the reward (``[B]`` or per pixel);
    ``logits_fn(x0_hat) -> [B, C, ...]`` the reward model's class logits, whose two predictions give U
    (required: U is a divergence between class distributions). ``index``/``noise`` replace the draws
    (indices of the first pass; the second is ``index + add_index``, clamped). Bad input: ValueError.
    """
    check_batch_tensor("x0", x0)
    for name, fn in (("denoiser", denoiser), ("reward_fn", reward_fn), ("logits_fn", logits_fn)):
        if not callable(fn):
            raise ValueError(f"Invalid {name}: {type(fn).__name__} (accepted: a callable; logits_fn(x) returns "
                             "the reward model's class logits [B, C, ...])")
    u_scale = check_real("u_scale", u_scale, 0.0)
    reward_scale = check_real("reward_scale", reward_scale, 0.0)
    add_index = check_int("add_index", add_index, 0)
    ladder, hi = ladder_top(ladder, sigma_max)
    index, noise = draw_noisy(x0, hi, generator, index, noise)
    both = torch.cat([index, (index + add_index).clamp(max=ladder.numel() - 1)])
    sigma = ladder.to(device=x0.device, dtype=x0.dtype)[both]
    b = x0.shape[0]
    x_noisy = torch.cat([x0, x0]) + sigma.reshape((-1,) + (1,) * (x0.ndim - 1)) * torch.cat([noise, noise])
    y2 = torch.cat([y, y]) if torch.is_tensor(y) else y
    x0_hat = denoiser(x_noisy, sigma, y2)
    logits = check_reward("logits_fn", logits_fn(x0_hat), 2 * b)
    if logits.ndim < 2:
        raise ValueError(f"Invalid logits_fn: its output has shape {tuple(logits.shape)} (accepted: class logits "
                         "[B, C, ...])")
    log_p1 = logits[:b].log_softmax(1)
    log_p2 = logits[b:].log_softmax(1)
    u = u_scale * (log_p2.exp() * (log_p2 - log_p1)).sum(1)
    r = check_reward("reward_fn", reward_fn(x0_hat[:b], y), b)
    if r.ndim > 1 and r.shape != u.shape:
        raise ValueError(f"Invalid reward_fn: its output has shape {tuple(r.shape)} (accepted: [B] or the "
                         f"uncertainty's shape {tuple(u.shape)})")
    weighted = -r.reshape(r.shape + (1,) * (u.ndim - r.ndim)) * torch.exp(-u)
    dims = tuple(range(1, u.ndim))
    if dims:
        weighted, u = weighted.mean(dims), u.mean(dims)
    return reward_scale * weighted + u
