r"""Policy smoothing's certificate: a lower bound on the expected total reward of a policy that adds Gaussian noise
to its observations, valid against any (adaptive) adversary whose perturbations over the episode have total
:math:`\ell_2` norm at most B.

Paper: Kumar, Levine, Feizi, "Policy Smoothing for Provably Robust Reinforcement Learning", arXiv:2106.11420
(ICLR 2022). Its own code is not in the store; the computation here is the policy-smoothing certificate as the
later ReCePS code computes it for its baseline (github.com/mrh996/ReCePS, commit 282fd28,
``Cartpole/cartpole_multiframe_plot_certs.py``: ``get_exact_total``, ``_lower_confidence_bound`` and the
``accum`` loop). Only the paper's abstract was readable here (docs/coverage_notes.md).

With N episode rewards :math:`R_1 \dots R_N` of the smoothed policy (noise :math:`\mathcal N(0, \sigma^2 I)` on
every observation) and rewards in [low, high], thresholds :math:`t_j = \text{low} + j\Delta`,
:math:`\Delta = (\text{high} - \text{low}) / m`, :math:`j = 0 \dots m - 1`:

.. math:: \mathbb E[R_{\text{attacked}}] \ge \text{low} + \Delta \sum_{j=0}^{m-1}
          \Phi\big(\Phi^{-1}(\underline p_j) - B / \sigma\big),
          \qquad \underline p_j = \text{Clopper–Pearson lower bound of } P(R > t_j) \text{ at level } \alpha / m

(the expectation as a sum of tail probabilities, each certified by the adaptive Neyman–Pearson lemma; the
Bonferroni split of :math:`\alpha` over the m thresholds, theirs 0.05 / 200 for Cartpole's integer rewards
0..200). Departure: the counts :math:`\#\{R_i > t_j\}` are used as integers; theirs rebuilds them as
``int(p * 10000.)`` from a float32 fraction, which can drop one.

Golden data: tests/data/policy_smoothing_golden.pt, their functions run on seeded reward samples
(tools/golden/make_policy_smoothing_golden.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_int, check_real
from gradwise.registry import register

__all__ = ["certified_reward_bound"]

PS_PAPER = "Policy Smoothing for Provably Robust Reinforcement Learning"
PS_CODE = "https://github.com/mrh996/ReCePS/blob/282fd28de4316bb1949e82219527dc4056511435/Cartpole/" \
          "cartpole_multiframe_plot_certs.py"


@register(kind="rl-component", paper=PS_PAPER, year=2021, arxiv="2106.11420", code=PS_CODE,
          summary="policy smoothing certificate: certified lower bound on the expected total reward of a "
                  "Gaussian-smoothed policy under an l2 perturbation budget over the episode")
def certified_reward_bound(rewards, *, sigma: float, budget: float, low: float, high: float,
                           num_thresholds: int | None = None, alpha: float = 0.05) -> float:
    r"""The certified lower bound on the smoothed policy's expected total reward under total :math:`\ell_2`
    perturbation ``budget`` (arXiv:2106.11420; module docstring). ``rewards``: the N episode rewards of the
    smoothed policy (noise std ``sigma``), in [``low``, ``high``]; ``num_thresholds`` m (default
    ``high - low`` when that is an integer: one threshold per unit, as theirs); ``alpha``: the total failure
    probability. Returns a float; ``budget=0`` gives the confidence bound of the clean expectation."""
    from scipy.stats import beta as beta_dist, norm  # scipy comes with scikit-learn, a gradwise dependency

    s = check_real("sigma", sigma, 0.0, lo_open=True)
    b = check_real("budget", budget, 0.0)
    lo = check_real("low", low)
    hi = check_real("high", high)
    if not lo < hi:
        raise ValueError(f"Invalid high: {high!r} (accepted: a number above low = {low!r})")
    a = check_real("alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True)
    if num_thresholds is None:
        if abs((hi - lo) - round(hi - lo)) > 1e-9:
            raise ValueError(f"Invalid num_thresholds: None (accepted: an integer >= 1; needed when high - low, "
                             f"{hi - lo}, is not an integer)")
        m = int(round(hi - lo))
    else:
        m = check_int("num_thresholds", num_thresholds, 1)
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    if r.numel() == 0 or not torch.isfinite(r).all():
        raise ValueError("Invalid rewards: (accepted: a non-empty set of finite episode rewards)")
    if (r < lo).any() or (r > hi).any():
        raise ValueError(f"Invalid rewards: values outside [low, high] = [{lo}, {hi}]")
    n = r.numel()
    step = (hi - lo) / m
    thresholds = lo + step * torch.arange(m, dtype=torch.float64)
    counts = (r.unsqueeze(0) > thresholds.unsqueeze(1)).sum(1).tolist()
    level = a / m
    shift = b / s
    total = 0.0
    for c in counts:
        if c == 0:
            continue  # lower bound 0: Phi(-inf) = 0
        p_low = float(beta_dist.ppf(level, c, n - c + 1))
        total += float(norm.cdf(norm.ppf(p_low) - shift))
    return lo + step * total
