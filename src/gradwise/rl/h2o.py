r"""H2O's dynamics-aware pieces for hybrid offline (real) and online (simulator) Q-learning: the dynamics ratio
that weights simulated TD errors, the per-state-action dynamics-gap coefficient, and the conservative penalty
that pushes Q down where the simulator's dynamics disagree with the real data.

Paper: Niu, Sharma, Qiu, Li, Zhou, Hu, Zhan, "When to Trust Your Simulator: Dynamics-Aware Hybrid
Offline-and-Online Reinforcement Learning", arXiv:2206.13464 (NeurIPS 2022). Authors' code:
github.com/t6-thu/H2O, commit 7c87f5a, ``SimpleSAC/sim2real_sac.py`` (``Sim2realSAC.train``,
``real_sim_dynacmis_ratio``, ``log_sim_real_dynacmis_ratio``, ``kl_sim_divergence``). Only the paper's abstract
and introduction were readable here (docs/coverage_notes.md); the math is the code's.

**Discriminators.** Two classifiers with two logits each, column 0 "real", column 1 "sim" (their
``train_discriminator`` minimises :math:`-\log p_{\text{real}}[:,0] - \log p_{\text{sim}}[:,1]`):
:math:`D_{sa}(s, a)` and :math:`D_{sas}(s, a, s')`, whose output is added to the :math:`(s, a)` logits before the
softmax, :math:`p_{sas} = \operatorname{softmax}(D_{sas} + D_{sa})`. The dynamics ratio

.. math:: \frac{P_{\mathcal M}(s'|s,a)}{P_{\widehat{\mathcal M}}(s'|s,a)}
          \approx \frac{p_{sas}[0]\; p_{sa}[1]}{p_{sas}[1]\; p_{sa}[0]} = e^{D_{sas}[0] - D_{sas}[1]}

(:func:`h2o_dynamics_ratio`, clipped to ``clip`` = [1e-5, 1] as their ``clip_dynamics_ratio_min/max``) weights
the simulated TD errors, :math:`\frac1B \sum_i w_i (Q(s_i, a_i) - y_i)^2` (:func:`h2o_sim_td_loss`; theirs writes
it as the MSE of :math:`\sqrt{w}\,Q` against :math:`\sqrt{w}\,y`).

**Dynamics gap.** :math:`u(s, a) = \mathbb E_{s'} \log \frac{P_{\widehat{\mathcal M}}(s'|s,a)}{P_{\mathcal M}(s'|s,a)}`
over N next states drawn around the simulated one (theirs: :math:`s' + \mathcal N(0, \sigma^2)` with the data's
standard deviation, N = 10), clipped to [1e-45, 10] (:func:`h2o_sim_coefficient`).

**Penalty** (:func:`h2o_sim_penalty`), with :math:`\omega = u / \sum u` over the simulated batch and temperature
:math:`\tau` (their ``cql_temp``):

.. math:: \text{weight} \cdot \operatorname{clip}\Big(\tau \log \sum_i \exp\big((Q_{\text{sim}, i} + \log\omega_i)
          / \tau\big) - \overline{Q_{\text{real}}},\ -1000,\ 1000\Big)

added to each critic's loss (``weight`` their ``cql_min_q_weight`` 0.01).

Departures: the ratio is computed as :math:`e^{D_{sas}[0] - D_{sas}[1]}`, the same number (the :math:`(s,a)` logits
cancel) without their four softmax probabilities, which underflow to 0/0 for confident discriminators; likewise
the log ratio of :func:`h2o_sim_coefficient`. The ratio and coefficient carry no gradient (theirs are computed
under ``torch.no_grad``). Golden data: tests/data/h2o_golden.pt, their methods and the penalty and weighted-TD
lines of their ``train`` run on fixed discriminators (tools/golden/make_h2o_golden.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from gradwise._validate import check_real
from gradwise.registry import register
from gradwise.rl._checks import check_float_tensor, check_reduction, check_same_shape, reduce_loss

__all__ = ["h2o_dynamics_ratio", "h2o_sim_coefficient", "h2o_sim_penalty", "h2o_sim_td_loss"]

H2O_PAPER = "When to Trust Your Simulator: Dynamics-Aware Hybrid Offline-and-Online Reinforcement Learning"
H2O_CODE = "https://github.com/t6-thu/H2O/tree/7c87f5af2254f000960ab12677f743ca274dae16"


def _check_clip(name: str, clip) -> tuple[float, float] | None:
    if clip is None:
        return None
    if not isinstance(clip, (tuple, list)) or len(clip) != 2:
        raise ValueError(f"Invalid {name}: {clip!r} (accepted: None or a pair (low, high) with low <= high)")
    lo = check_real(f"{name}[0]", clip[0], finite=False)
    hi = check_real(f"{name}[1]", clip[1], finite=False)
    if lo > hi:
        raise ValueError(f"Invalid {name}: {clip!r} (accepted: None or a pair (low, high) with low <= high)")
    return lo, hi


def _check_logits(sa_logits, sas_logits) -> None:
    check_float_tensor("sa_logits", sa_logits)
    check_float_tensor("sas_logits", sas_logits)
    if sa_logits.dim() != 2 or sa_logits.shape[1] != 2:
        raise ValueError(f"Invalid sa_logits: shape {tuple(sa_logits.shape)} (accepted: [B, 2], columns real, sim)")
    if sas_logits.shape[-1:] != (2,) or sas_logits.dim() not in (2, 3) or sas_logits.shape[0] != sa_logits.shape[0]:
        raise ValueError(f"Invalid sas_logits: shape {tuple(sas_logits.shape)} (accepted: [B, 2] or [B, N, 2] "
                         f"with B = {sa_logits.shape[0]}, the rows of sa_logits)")


def _log_real_over_sim(sas_logits: Tensor) -> Tensor:
    # log p_sas[0] - log p_sas[1] - log p_sa[0] + log p_sa[1] with p_sas = softmax(sas + sa): the sa terms cancel
    return sas_logits[..., 0] - sas_logits[..., 1]


@register(kind="rl-component", paper=H2O_PAPER, year=2022, arxiv="2206.13464", code=H2O_CODE,
          summary="H2O: discriminator dynamics ratio weighting simulated TD errors, the dynamics-gap "
                  "coefficient u(s,a), and the u-weighted logsumexp penalty on simulated Q values")
@torch.no_grad()
def h2o_dynamics_ratio(sa_logits: Tensor, sas_logits: Tensor, *, clip=(1e-5, 1.0)) -> Tensor:
    r"""The real-over-sim dynamics ratio :math:`P_{\mathcal M}(s'|s,a) / P_{\widehat{\mathcal M}}(s'|s,a)` of each
    simulated transition, from the two discriminators' logits (``sa_logits`` [B, 2] from :math:`D_{sa}`,
    ``sas_logits`` [B, 2] the raw output of :math:`D_{sas}`, columns real, sim), clipped to ``clip``
    (theirs (1e-5, 1); None: no clip). No gradient. Weight the simulated TD errors with it
    (:func:`h2o_sim_td_loss`; arXiv:2206.13464)."""
    bounds = _check_clip("clip", clip)
    _check_logits(sa_logits, sas_logits)
    if sas_logits.dim() != 2:
        raise ValueError(f"Invalid sas_logits: shape {tuple(sas_logits.shape)} (accepted: [B, 2])")
    ratio = torch.exp(_log_real_over_sim(sas_logits))
    return ratio if bounds is None else torch.clamp(ratio, bounds[0], bounds[1])


@torch.no_grad()
def h2o_sim_coefficient(sa_logits: Tensor, sas_logits: Tensor, *, clip=(1e-45, 10.0)) -> Tensor:
    r"""The dynamics-gap coefficient :math:`u(s,a)`: the mean over N sampled next states of
    :math:`\log P_{\widehat{\mathcal M}}(s'|s,a) / P_{\mathcal M}(s'|s,a)`, clipped to ``clip`` (theirs
    (1e-45, 10)). ``sa_logits`` [B, 2]; ``sas_logits`` [B, N, 2], :math:`D_{sas}` at the N next states of each
    row (their ``kl_sim_divergence`` draws :math:`s' + \mathcal N(0, \sigma^2)`, N = 10). No gradient."""
    bounds = _check_clip("clip", clip)
    _check_logits(sa_logits, sas_logits)
    if sas_logits.dim() != 3 or sas_logits.shape[1] == 0:
        raise ValueError(f"Invalid sas_logits: shape {tuple(sas_logits.shape)} (accepted: [B, N, 2], N >= 1)")
    u = (-_log_real_over_sim(sas_logits)).mean(dim=1)
    return u if bounds is None else torch.clamp(u, bounds[0], bounds[1])


def h2o_sim_td_loss(q_sim: Tensor, td_target: Tensor, ratio: Tensor, *, reduction: str = "mean") -> Tensor:
    r""":math:`w_i (Q_i - y_i)^2` averaged (``reduction`` "mean", theirs; "sum"; "none"), ``w`` from
    :func:`h2o_dynamics_ratio`. ``td_target`` and ``ratio`` are detached here, as theirs."""
    check_reduction(reduction)
    for name, t in (("q_sim", q_sim), ("td_target", td_target), ("ratio", ratio)):
        check_float_tensor(name, t, min_dim=1)
    check_same_shape(q_sim, td_target, "q_sim", "td_target")
    check_same_shape(q_sim, ratio, "q_sim", "ratio")
    return reduce_loss(ratio.detach() * (q_sim - td_target.detach()).square(), reduction)


def h2o_sim_penalty(q_sim: Tensor, q_real: Tensor, u: Tensor, *, temp: float = 1.0, weight: float = 0.01,
                    clip=(-1000.0, 1000.0)) -> Tensor:
    r"""H2O's conservative penalty for one critic: ``weight`` times
    :math:`\tau\,\mathrm{logsumexp}((Q_{\text{sim}} + \log(u/\sum u))/\tau) - \operatorname{mean} Q_{\text{real}}`,
    clipped to ``clip`` (theirs (-1000, 1000); None: no clip). ``q_sim`` [B_sim] (the critic at the simulated
    state-actions), ``q_real`` [B_real] (at the real ones), ``u`` [B_sim] from :func:`h2o_sim_coefficient`
    (detached here), ``temp`` :math:`\tau > 0` (their ``cql_temp`` 1), ``weight`` (their ``cql_min_q_weight``
    0.01). Returns a scalar to add to the critic's loss (arXiv:2206.13464)."""
    tau = check_real("temp", temp, 0.0, lo_open=True)
    w = check_real("weight", weight)
    bounds = _check_clip("clip", clip)
    for name, t in (("q_sim", q_sim), ("q_real", q_real), ("u", u)):
        check_float_tensor(name, t, min_dim=1)
        if t.dim() != 1 or t.shape[0] == 0:
            raise ValueError(f"Invalid {name}: shape {tuple(t.shape)} (accepted: a non-empty [B] vector)")
    check_same_shape(q_sim, u, "q_sim", "u")
    u = u.detach()
    log_omega = torch.log(u / u.sum())
    gap = torch.logsumexp((q_sim + log_omega) / tau, dim=0) * tau
    diff = gap - q_real.mean()
    if bounds is not None:
        diff = torch.clamp(diff, bounds[0], bounds[1])
    return diff * w
