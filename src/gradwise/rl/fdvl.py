r"""f-DVL: the value loss of f-Dual V Learning, an implicit maximizer :math:`V(s) \approx \max_a Q(s, a)` over
the dataset's actions, with a choice of f-divergence (XQL's Gumbel regression is the reverse-KL member).

Paper: Sikchi, Zheng, Zhang, Niekum, "Dual RL: Unification and New Methods for Reinforcement and Imitation
Learning", arXiv:2302.08560 (ICLR 2024). Authors' code: github.com/hari-sikchi/DVL, commit 9184028
("DVL public release"), ``offline/critic.py`` (JAX): ``chi_square_loss``, ``total_variation_loss``,
``reverse_kl_loss``, used by ``update_v`` as ``loss(q - v, alpha=loss_temp).mean()``. Only the paper's
abstract and introduction were readable here (docs/coverage_notes.md), so the losses below are the code's.

With :math:`d = Q(s, a) - V(s)` (the critic's Q is the target: detach it, as their ``update_v`` only
differentiates the value network) and :math:`\alpha` the temperature (their ``--temp``, default 1):

.. math::
    \ell_{\chi^2}(d) &= \alpha \max\big(d + d^2/4,\ 0\big) - (1 - \alpha)\, d \\
    \ell_{TV}(d) &= \alpha \max(d,\ 0) - (1 - \alpha)\, d \\
    \ell_{KL}(d) &= e^{z - m} - z\, e^{-m} - e^{-m}, \quad z = \min(d / \alpha,\ c),\quad
    m = \operatorname{sg}\big(\max(\max_{\text{batch}} z,\ -1)\big)

The reverse-KL loss is XQL's Gumbel loss :math:`e^z - z - 1` divided by :math:`e^{m}` (a batch-adaptive
step size; ``max_clip`` c, default 7 as their ``--max_clip``, caps the exponent), with the maximum taken
over the first (batch) dimension as their ``jnp.max(z, axis=0)``. ``max_clip`` applies to ``"kl"`` only,
as in their code; ``max_clip=None`` turns the cap off.

Golden data: tests/data/fdvl_golden.pt, their three jnp functions and ``jax.grad`` of the mean run on CPU
jax (tools/golden/make_fdvl_golden.py). The math here runs in the inputs' dtype (float64 in, float64 out;
theirs is float32 JAX).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_real
from gradwise.registry import register
from gradwise.rl._checks import check_float_tensor, check_reduction, check_same_shape, reduce_loss

__all__ = ["fdvl_value_loss"]

FDVL_PAPER = "Dual RL: Unification and New Methods for Reinforcement and Imitation Learning"
FDVL_CODE = "https://github.com/hari-sikchi/DVL/tree/918402875099b341d78a99241158913acd24452e"
DIVERGENCES = ("chi2", "tv", "kl")


@register(kind="rl-objective", paper=FDVL_PAPER, year=2023, arxiv="2302.08560", code=FDVL_CODE,
          summary="f-DVL value loss: chi-square / total-variation implicit maximizers of Q over dataset "
                  "actions, or XQL's max-normalised Gumbel loss (reverse KL)")
def fdvl_value_loss(q: Tensor, v: Tensor, *, f: str = "chi2", temperature: float = 1.0,
                    max_clip: float | None = 7.0, reduction: str = "mean") -> Tensor:
    r"""f-DVL's value loss of ``d = q - v`` (arXiv:2302.08560; math in the module docstring).

    ``q``: the critic's values at the dataset's actions (detach them; for twin critics their min),
    ``v``: the value network's output, same shape, batch first. ``f``: ``"chi2"`` (their default),
    ``"tv"`` or ``"kl"`` (XQL). ``temperature`` :math:`\alpha > 0`; ``max_clip``: the cap on
    :math:`d/\alpha` for ``"kl"`` (None: none). ``reduction``: ``"mean"`` (theirs), ``"sum"``, ``"none"``.
    NaN in the inputs propagates.
    """
    check_choice("f", f, DIVERGENCES)
    alpha = check_real("temperature", temperature, 0.0, lo_open=True)
    if max_clip is not None:
        max_clip = check_real("max_clip", max_clip)
    check_reduction(reduction)
    check_float_tensor("q", q, min_dim=1)
    check_float_tensor("v", v, min_dim=1)
    check_same_shape(q, v, "q", "v")
    if q.shape[0] == 0:
        raise ValueError("Invalid q: an empty batch (accepted: at least one row)")
    d = q - v
    if f == "chi2":
        loss = alpha * torch.clamp_min(d + d * d / 4, 0.0) - (1.0 - alpha) * d
    elif f == "tv":
        loss = alpha * torch.clamp_min(d, 0.0) - (1.0 - alpha) * d
    else:
        z = d / alpha
        if max_clip is not None:
            z = torch.clamp_max(z, max_clip)
        m = torch.clamp_min(z.detach().amax(dim=0), -1.0)
        # where(m < -1, -1, m) as theirs: clamp_min gives -1 for m < -1 and keeps NaN (theirs keeps NaN too)
        scale = torch.exp(-m)
        loss = torch.exp(z - m) - z * scale - scale
    return reduce_loss(loss, reduction)
