r"""PMOE: a Gaussian-mixture (mixture-of-experts) policy head for SAC-style actors and its policy loss, in which
every expert proposes an action, the critic picks the best one, and the mixing weights are regressed onto that
choice (the paper's frequency-approximate gradient for the non-differentiable expert selection).

Paper: Ren, Li, Ding, Pan, Dong, "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement Learning",
arXiv:2104.09122. Code: a co-author's (Zihan Ding) github.com/quantumiracle/Popular-RL-Algorithms, commit
56f0160 ("fix pmoe_ppo"), ``pmoe_sac.py`` (``PolicyNetwork.forward`` / ``evaluate``, ``PMOE_Trainer.update``).
Only the paper's abstract and introduction were readable here (docs/coverage_notes.md); the estimator is the
code's.

**Head** (:class:`GaussianMixtureHead`): K experts, each a tanh-squashed diagonal Gaussian; from features h,
mixing weights :math:`\pi(h) = \operatorname{softmax}(W_\pi h)` (theirs computes them from the raw state: pass
the state as ``mix_input``), means :math:`\mu_k(h)` and log-standard deviations clamped to [-20, 2]. A
reparameterised draw per expert :math:`a_k = c \tanh(\mu_k + \sigma_k \epsilon_k)` (c the action range) with

.. math:: \log p_k(a_k) = \sum_j \Big[\log \mathcal N(\mu_k + \sigma_k\epsilon_k; \mu_k, \sigma_k)
          - \log\big(1 - \tanh^2(\cdot) + 10^{-6}\big) - \log c\Big]_j

(the per-expert density, not the mixture's, as theirs). Acting samples an expert from :math:`\pi`.

**Loss** (:func:`pmoe_policy_loss`), with :math:`Q_k = \min(Q_1, Q_2)(s, a_k)` and
:math:`k^* = \arg\max_k Q_k` per state:

.. math:: \mathcal L = \frac1B \sum_b \big(\alpha \log p_{k^*}(a_{k^*}) - Q_{k^*}\big)
          + \frac{1}{BK} \sum_{b,k} \big(\pi_k - \mathbb 1[k = k^*]\big)^2

The first term trains only the chosen expert (through its action and density); the second moves the mixing
weights towards the experts the critic prefers (the frequency of being best). Golden data:
tests/data/pmoe_golden.pt, their ``evaluate`` and the policy-loss lines of their ``update`` on fixed network
outputs (tools/golden/make_pmoe_golden.py).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradwise._validate import check_int, check_real
from gradwise.registry import register
from gradwise.rl._checks import check_float_tensor, check_same_shape

__all__ = ["GaussianMixtureHead", "pmoe_policy_loss"]

PMOE_PAPER = "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement Learning"
PMOE_CODE = "https://github.com/quantumiracle/Popular-RL-Algorithms/blob/56f0160/pmoe_sac.py"
_LOG_2PI_HALF = 0.5 * math.log(2 * math.pi)


class GaussianMixtureHead(nn.Module):
    r"""K tanh-Gaussian experts and their mixing weights (arXiv:2104.09122; module docstring).
    ``forward(h, mix_input=None) -> (mixing [B, K], mean [B, K, A], log_std [B, K, A])``;
    ``rsample(h, mix_input=None, noise=None) -> (mixing, actions [B, K, A], log_prob [B, K])`` (``noise``: the
    standard normal draws, [B, K, A]); ``act(h, mix_input=None, deterministic=False) -> [B, A]``."""

    def __init__(self, in_features: int, action_dim: int, num_experts: int, *, mix_features: int | None = None,
                 action_range: float = 1.0, log_std_min: float = -20.0, log_std_max: float = 2.0,
                 init_w: float = 3e-3):
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.action_dim = check_int("action_dim", action_dim, 1)
        self.num_experts = check_int("num_experts", num_experts, 1)
        mix_features = self.in_features if mix_features is None else check_int("mix_features", mix_features, 1)
        self.action_range = check_real("action_range", action_range, 0.0, lo_open=True)
        self.log_std_min = check_real("log_std_min", log_std_min)
        self.log_std_max = check_real("log_std_max", log_std_max, self.log_std_min)
        self.mean = nn.Linear(self.in_features, self.action_dim * self.num_experts)
        self.log_std = nn.Linear(self.in_features, self.action_dim * self.num_experts)
        self.mixing = nn.Linear(mix_features, self.num_experts)
        init_w = check_real("init_w", init_w, 0.0)
        for layer in (self.mean, self.log_std):  # theirs: uniform(-3e-3, 3e-3) on the output layers
            nn.init.uniform_(layer.weight, -init_w, init_w)
            nn.init.uniform_(layer.bias, -init_w, init_w)

    def forward(self, h: Tensor, mix_input: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        check_float_tensor("h", h, min_dim=2)
        m = h if mix_input is None else check_float_tensor("mix_input", mix_input, min_dim=2)
        if m.shape[0] != h.shape[0]:
            raise ValueError(f"Invalid mix_input: {m.shape[0]} rows (accepted: the {h.shape[0]} rows of h)")
        b, k = h.shape[0], self.num_experts
        mixing = torch.softmax(self.mixing(m), dim=-1)
        mean = self.mean(h).reshape(b, k, -1)
        log_std = torch.clamp(self.log_std(h), self.log_std_min, self.log_std_max).reshape(b, k, -1)
        return mixing, mean, log_std

    def rsample(self, h: Tensor, mix_input: Tensor | None = None, noise: Tensor | None = None):
        mixing, mean, log_std = self(h, mix_input)
        if noise is None:
            noise = torch.randn_like(mean)
        elif not isinstance(noise, Tensor) or noise.shape != mean.shape:
            raise ValueError(f"Invalid noise: (accepted: a tensor of shape {tuple(mean.shape)})")
        std = log_std.exp()
        pre = mean + std * noise
        squashed = torch.tanh(pre)
        # log N(pre; mean, std) = -((pre - mean) / std)^2 / 2 - log std - log sqrt(2 pi), with (pre - mean)/std
        # computed as theirs (torch's Normal.log_prob on pre), not replaced by the noise
        z = (pre - mean) / std
        log_prob = (-0.5 * z.square() - log_std - _LOG_2PI_HALF
                    - torch.log(1.0 - squashed.square() + 1e-6) - math.log(self.action_range)).sum(-1)
        return mixing, self.action_range * squashed, log_prob

    @torch.no_grad()
    def act(self, h: Tensor, mix_input: Tensor | None = None, deterministic: bool = False,
            generator: torch.Generator | None = None) -> Tensor:
        """One action per row: an expert drawn from the mixing weights, its tanh-mean (deterministic) or a
        draw from it."""
        mixing, mean, log_std = self(h, mix_input)
        pre = mean if deterministic else mean + log_std.exp() * torch.randn(mean.shape, generator=generator,
                                                                            dtype=mean.dtype, device=mean.device)
        k = torch.multinomial(mixing, 1, generator=generator)                      # [B, 1]
        chosen = pre.gather(1, k.unsqueeze(-1).expand(-1, 1, pre.shape[-1])).squeeze(1)
        return self.action_range * torch.tanh(chosen)


@register(kind="rl-objective", paper=PMOE_PAPER, year=2021, arxiv="2104.09122", code=PMOE_CODE,
          summary="PMOE policy loss: the critic's best expert action trains its expert (SAC loss) and the "
                  "mixing weights regress onto the best expert's one-hot")
def pmoe_policy_loss(mixing: Tensor, log_prob: Tensor, q: Tensor, *, alpha: float | Tensor = 1.0) -> Tensor:
    r"""PMOE's SAC policy loss (arXiv:2104.09122; module docstring). ``mixing`` [B, K] (the head's weights),
    ``log_prob`` [B, K] (each expert's log-density of its own reparameterised action), ``q`` [B, K] (the
    critic, min of the twins, at each expert's action), ``alpha`` the entropy temperature (a float or a
    0-dim tensor, detached). Returns a scalar; ties in ``q`` go to the lowest expert index."""
    for name, t in (("mixing", mixing), ("log_prob", log_prob), ("q", q)):
        check_float_tensor(name, t, min_dim=2)
        if t.dim() != 2:
            raise ValueError(f"Invalid {name}: shape {tuple(t.shape)} (accepted: [B, K])")
    check_same_shape(mixing, log_prob, "mixing", "log_prob")
    check_same_shape(mixing, q, "mixing", "q")
    if isinstance(alpha, Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"Invalid alpha: shape {tuple(alpha.shape)} (accepted: a number or a 1-element tensor)")
        alpha = alpha.detach().reshape(())
    else:
        alpha = check_real("alpha", alpha, 0.0)
    best_q, best = q.max(dim=1)
    chosen_log_prob = log_prob.gather(1, best.unsqueeze(1)).squeeze(1)
    onehot = torch.nn.functional.one_hot(best, mixing.shape[1]).to(mixing.dtype)
    return (alpha * chosen_log_prob - best_q).mean() + (mixing - onehot).square().mean()
