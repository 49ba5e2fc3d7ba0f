"""Inverse-gap weighting (IGW), the action distribution of SquareCB, as "Contextual Bandits with Online Neural
Regression" (Deb, Ban, Zuo, He, Banerjee, ICLR 2024, arXiv 2312.07145) uses it on a neural regressor's predictions.

Given predicted rewards ``yhat`` [..., K] of the K actions and the greediness ``gamma``, with ``b`` the greedy
action (ties: the lowest index)::

    p(a) = 1 / (mu + gamma (yhat_b - yhat_a))   for a != b,      p(b) = 1 - sum_{a != b} p(a)

(``mu = K`` by default; for predicted *losses* pass ``rewards=False``: b is the argmin and the gap
``yhat_a - yhat_b``). The schedule :func:`squarecb_gamma` is Vowpal Wabbit's ``gamma = gamma_scale *
t^gamma_exponent`` (defaults 10 and 0.5, t = examples learned so far).

Checked against Vowpal Wabbit's ``--cb_explore_adf --squarecb`` (vowpalwabbit==9.11.9,
github.com/VowpalWabbit/vowpal_wabbit ``cb_explore_adf_squarecb.cc``): its probabilities on 48 snapshots of
learning VW runs (K = 2, 4, 10; gamma_scale 1, 10, 100; exponent 0 and 0.5; first-round exact ties) equal this
formula on VW's predicted costs to float32 rounding (``tests/data/squarecb_golden.json``).

Scope: only IGW is built. The paper has no official code, and its method section (the perturbation added to the
network's predictions, the KL-loss variant's own IGW from FastCB, the learning-rate and gamma settings) could not be
read here; docs/coverage_notes.md says what was searched. The arena study ``neucb`` pairs this IGW with an online
MLP trained by square or log (Bernoulli KL) loss, without the perturbation, and says so.
"""
from __future__ import annotations

import math

import torch

from gradwise.registry import register

__all__ = ["igw_probabilities", "squarecb_gamma"]

_PAPER = "Contextual Bandits with Online Neural Regression"


@register(kind="bandit", paper=_PAPER, year=2024, arxiv="2312.07145", code=None,
          summary="Inverse-gap-weighted action distribution over a regressor's predicted rewards (SquareCB's "
                  "exploration), checked against Vowpal Wabbit's --squarecb")
def igw_probabilities(predicted: torch.Tensor, gamma, *, mu: float | None = None,
                      rewards: bool = True) -> torch.Tensor:
    """IGW probabilities [..., K] from ``predicted`` [..., K]: SquareCB's exploration (Foster & Rakhlin 2020,
    arXiv 2002.04926) as used by "Contextual Bandits with Online Neural Regression" (Deb et al., ICLR 2024,
    arXiv 2312.07145; no official code), checked against Vowpal Wabbit's ``--squarecb`` (see the module
    docstring for the formula, what was checked and what is not built).

    ``gamma``: a number >= 0 or a tensor broadcastable to ``predicted[..., 0]`` (one per row); ``mu`` >= K
    (None: K), so that every non-greedy action gets at most 1/K; ``rewards``: True if ``predicted`` are rewards
    (greedy = argmax), False for losses (greedy = argmin). Computed in ``predicted``'s floating dtype.
    """
    p = torch.as_tensor(predicted)
    if not p.is_floating_point():
        p = p.to(torch.get_default_dtype())
    if p.dim() < 1 or p.shape[-1] < 1:
        raise ValueError(f"Invalid predicted: shape {tuple(p.shape)} (accepted: [..., K] with K >= 1 actions)")
    if not torch.isfinite(p).all():
        raise ValueError("Invalid predicted: non-finite entries (accepted: finite predictions)")
    k = p.shape[-1]
    g = torch.as_tensor(gamma, dtype=p.dtype)
    if not torch.isfinite(g).all() or (g < 0).any():
        raise ValueError(f"Invalid gamma: {gamma!r} (accepted: finite values >= 0)")
    try:
        g = torch.broadcast_to(g, p.shape[:-1]).unsqueeze(-1)
    except RuntimeError:
        raise ValueError(f"Invalid gamma: shape {tuple(g.shape)} (accepted: a number or a tensor broadcastable "
                         f"to {tuple(p.shape[:-1])})") from None
    m = float(k) if mu is None else float(mu)
    if not (math.isfinite(m) and m >= k):
        raise ValueError(f"Invalid mu: {mu!r} (accepted: a finite number >= K = {k})")
    best = p.argmax(-1, keepdim=True) if rewards else p.argmin(-1, keepdim=True)
    top = p.gather(-1, best)
    gap = (top - p) if rewards else (p - top)
    probs = 1.0 / (m + g * gap)
    probs = probs.scatter(-1, best, 0.0)
    return probs.scatter(-1, best, 1.0 - probs.sum(-1, keepdim=True))


def squarecb_gamma(t, scale: float = 10.0, exponent: float = 0.5) -> float:
    """Vowpal Wabbit's SquareCB greediness ``scale * t ** exponent`` (``t`` >= 0 examples learned so far)."""
    t = float(t)
    if not (math.isfinite(t) and t >= 0):
        raise ValueError(f"Invalid t: {t!r} (accepted: a finite number >= 0)")
    s, e = float(scale), float(exponent)
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"Invalid scale: {scale!r} (accepted: a finite number >= 0)")
    if not math.isfinite(e):
        raise ValueError(f"Invalid exponent: {exponent!r} (accepted: a finite number)")
    return s * t ** e
