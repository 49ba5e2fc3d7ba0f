"""The built-in iterative online methods: sample once per iteration from ``pi_t``, judge, train on
those pairs through the iteration's :class:`~gradwise.preference.trainer.PreferenceTrainer`.

Each is an :class:`~gradwise.preference.online.methods.OnlineMethod` whose ``objective(t)`` gives the
trainer objective of iteration ``t``; its objective's registry record names it (``info["online"]``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gradwise._validate import check_choice
from gradwise.preference.objectives.accel_apo import (apo_dpo_loss, apo_extrapolated_logps,
                                                      apo_extrapolated_parameters)
from gradwise.preference.objectives.dpo import dpo_loss
from gradwise.preference.objectives.nash_dno import dno_loss
from gradwise.preference.objectives.nash_inpo import inpo_loss
from gradwise.preference.online.methods import OnlineMethod
from gradwise.preference.trainer import PreferenceObjective

if TYPE_CHECKING:
    from gradwise.preference.online.loop import OnlinePreferenceLoop

__all__: list[str] = []  # reached through online_method(name) and the registry, not imported by name


class IterativeDPO(OnlineMethod):
    """Iterative (online) DPO: :func:`dpo_loss` against ``pi_ref`` on pairs sampled from ``pi_t``."""

    name = "dpo"

    def __init__(self, *, beta: float = 0.1) -> None:
        obj = PreferenceObjective(dpo_loss, beta=beta)
        super().__init__("dpo", ("ref",), objective=lambda t: obj, hyperparameters={"beta": beta})


class INPO(OnlineMethod):
    """INPO: :func:`inpo_loss` with the frozen ``pi_t`` and ``pi_ref``."""

    name = "inpo"

    def __init__(self, *, eta: float, tau: float) -> None:
        inpo_loss(*(torch.zeros(1),) * 6, eta=eta, tau=tau)  # validate now
        obj = PreferenceObjective(inpo_loss, eta=eta, tau=tau)  # inputs by name: policy_*, prev_*, ref_*
        super().__init__("inpo", ("ref", "prev"), objective=lambda t: obj, hyperparameters={"eta": eta, "tau": tau})


class DNO(OnlineMethod):
    """DNO: :func:`dno_loss` against ``pi_t``; ``soft=True`` passes the win rates among the K samples
    (Algorithm 1), else hard labels (DNO-Prct)."""

    name = "dno"

    def __init__(self, *, eta: float, soft: bool = False) -> None:
        soft = bool(soft)
        dno_loss(*(torch.zeros(1),) * 4, eta=eta)
        obj = PreferenceObjective(dno_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                    "prev_chosen_logps", "prev_rejected_logps"), eta=eta,
                                  example_inputs={"reward_1": "chosen_win_rate", "reward_2": "rejected_win_rate"}
                                  if soft else None)
        super().__init__("dno", ("prev",), objective=lambda t: obj, hyperparameters={"eta": eta, "soft": soft})


def _apo_extrapolated_dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, prev_chosen_logps: Tensor,
                          prev_rejected_logps: Tensor, prev2_chosen_logps: Tensor, prev2_rejected_logps: Tensor,
                          *, alpha: float, beta: float) -> Tensor:
    """APO's loss from its second iteration on: DPO against ``hat pi_t`` extrapolated from ``pi_t``, ``pi_{t-1}``."""
    rc = apo_extrapolated_logps(prev_chosen_logps, prev2_chosen_logps, alpha=alpha)
    rr = apo_extrapolated_logps(prev_rejected_logps, prev2_rejected_logps, alpha=alpha)
    return apo_dpo_loss(policy_chosen_logps, policy_rejected_logps, rc, rr, beta=beta)


class APO(OnlineMethod):
    """APO: :func:`apo_dpo_loss` with reference ``pi_ref`` at iteration 0; after, the extrapolated policy is
    sampler and reference. ``extrapolate="parameters"`` (the paper's experiments): the policy's weights are
    extrapolated at the start of each iteration (:meth:`begin_iteration`); ``"logprobs"``: the reference is
    :func:`apo_extrapolated_logps` of ``pi_t``, ``pi_{t-1}`` (the pairs are sampled from the trained ``pi_t``)."""

    name = "apo"

    def __init__(self, *, alpha: float, beta: float = 0.1, extrapolate: str = "parameters") -> None:
        check_choice("extrapolate", extrapolate, ("parameters", "logprobs"))
        apo_extrapolated_logps(torch.zeros(1), torch.zeros(1), alpha=alpha)
        first = PreferenceObjective(apo_dpo_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                          "ref_chosen_logps", "ref_rejected_logps"), beta=beta)
        hyper = {"alpha": alpha, "beta": beta, "extrapolate": extrapolate}
        if extrapolate == "logprobs":
            later = PreferenceObjective(_apo_extrapolated_dpo, alpha=alpha, beta=beta)
            keeps = ("ref", "prev", "prev2")
        else:
            later = PreferenceObjective(apo_dpo_loss, inputs=("policy_chosen_logps", "policy_rejected_logps",
                                                              "prev_chosen_logps", "prev_rejected_logps"), beta=beta)
            keeps = ("ref", "prev")
        super().__init__("apo", keeps, objective=lambda t: first if t == 0 else later, hyperparameters=hyper)

    def begin_iteration(self, loop: "OnlinePreferenceLoop") -> None:
        """APO's step (3.6) in parameter space (arXiv 2410.06293, Sec. 5.2), with ``extrapolate="parameters"``:
        from the second iteration on, move the policy from its trained weights ``theta_t`` to ``theta_t +
        alpha (theta_t - theta_{t-1})``, the extrapolated policy that samples the next pairs and is their DPO
        reference; training continues from there. The trained weights are remembered for the next
        extrapolation (``theta_0`` = the weights before the first iteration). Only parameters move: buffers
        (e.g. BatchNorm's running statistics, which extrapolation could make negative) stay as trained, and the
        optimizer keeps its state across the jump (the paper does not say)."""
        super().begin_iteration(loop)
        if self.hyperparameters["extrapolate"] != "parameters":
            return
        params = dict(loop.policy.named_parameters())
        trained = {k: v.detach().clone() for k, v in params.items()}
        before = loop.method_state.get("apo_trained")
        if before is not None:
            with torch.no_grad():
                for k, v in apo_extrapolated_parameters(trained, before, alpha=self.hyperparameters["alpha"]).items():
                    params[k].copy_(v)
        loop.method_state["apo_trained"] = trained
