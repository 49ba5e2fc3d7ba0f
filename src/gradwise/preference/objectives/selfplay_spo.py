"""SPO: the self-play win-rate reward of the minimaximalist approach (Swamy et al., 2024)."""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise.registry import register

__all__ = ["spo_win_rate_reward"]


@register(kind="preference", paper="A Minimaximalist Approach to Reinforcement Learning from Human Feedback",
          year=2024, arxiv="2401.04056", code=None,
          summary="SPO: reward of a sample = its win rate against the policy's other samples under a preference function")
def spo_win_rate_reward(prefs: Tensor, *, include_self: bool = False) -> Tensor:
    r"""Self-Play Preference Optimization reward: each sample's win rate among the policy's own samples.

    Paper: Swamy, Dann, Kidambi, Wu, Agarwal, "A Minimaximalist Approach to Reinforcement Learning from Human
    Feedback", 2024, arXiv 2401.04056 (ICML 2024). Authors' code: none released.

    SPO finds the minimax winner of the preference game by self-play with a single agent: sample N
    trajectories from the current policy for the same context, compare them pairwise with the preference
    function ``P``, and give each the fraction of the others it beats::

        r(y_i) = 1/(N-1) * sum_{j != i} P(y_i > y_j)

    then run any RL algorithm on ``r``. This is the sample estimate of SPO's reward
    ``r_t(x, y) = E_{y'~pi_t}[P(y > y' | x)]`` (the policy's win rate against itself). With a skew-symmetric
    preference in ``[-1, 1]`` (``P(a, b) = -P(b, a)``, ties 0) the reward is ``2 r - 1``, an affine change
    that only rescales the RL problem. Input:
    ``prefs [..., N, N]`` with ``prefs[..., i, j] = P(y_i > y_j)`` in [0, 1] (hard 0/1 comparisons or
    probabilities; the diagonal is ignored unless ``include_self``, which adds ``P(y_i > y_i)`` and divides by
    N). Returns ``[..., N]``. State: none (the current policy supplies the samples; no reward model, no
    previous iterate). Choice: self-comparisons excluded by default, so a sample's reward is its win rate
    against its N-1 opponents (the unbiased leave-one-out estimate of the expectation above).

    Sources: the definition ``r_t(x, y) = E_{y'~pi_t}[P(y > y' | x)]`` is checked against the restatement of
    SPO in the DNO paper (Rosset et al., arXiv 2404.03715, Sec. 2.2, Eq. 4 (i)), whose DNO-Prct estimates it
    from K samples as the average over the other samples (Sec. 4), as here. The SPO paper's own text
    (its practical algorithm, e.g. whether opponents come from a queue of recent trajectories, and how
    ties are scored) could not be read: the search corpora hold its abstract and third-party summaries
    only, and no code was released. Searched again (session 3, second pass): exact-string search of the
    code index for "Minimaximalist" and meaning searches for SPO's practical algorithm (queue of
    trajectories, win-rate reward) find only paper lists and citations.

    Example::

        >>> P = torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])
        >>> spo_win_rate_reward(P)
        tensor([1.0000, 0.5000, 0.0000])
    """
    if not torch.is_tensor(prefs) or not prefs.is_floating_point() or prefs.dim() < 2 \
            or prefs.shape[-1] != prefs.shape[-2]:
        raise ValueError("Invalid prefs: expected a floating-point tensor of shape [..., N, N]")
    n = prefs.shape[-1]
    if include_self:
        return prefs.mean(-1)
    if n < 2:
        raise ValueError("Invalid prefs: need N >= 2 samples when include_self=False")
    diag = torch.diagonal(prefs, dim1=-2, dim2=-1)
    return (prefs.sum(-1) - diag) / (n - 1)
