"""EGPO as an online method: extragradient online IPO, fresh samples at every step (no pairs kept
across steps)."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from gradwise.preference.objectives.nash_egpo import egpo_full_step_loss, egpo_half_step_loss
from gradwise.preference.online.methods import OnlineMethod
from gradwise.preference.online.sampling import response_logps

if TYPE_CHECKING:
    from gradwise.preference.online.loop import OnlinePreferenceLoop

__all__: list[str] = []  # reached through online_method("egpo") and the registry


def _preferences(loop: "OnlinePreferenceLoop", prompts: Sequence, ys: Sequence, opponents: Sequence) -> dict:
    """The oracle's ``P(y > y'')`` and ``P(y' > y'')`` of each prompt's two samples against its opponent."""
    p1 = [loop.oracle.prob(x, y[0], o[0]) for x, y, o in zip(prompts, ys, opponents)]
    p2 = [loop.oracle.prob(x, y[1], o[0]) for x, y, o in zip(prompts, ys, opponents)]
    return {"pref": torch.tensor(p1), "pref_prime": torch.tensor(p2)}


class EGPO(OnlineMethod):
    """EGPO (``beta``): at every step two samples ``y, y'`` and an opponent ``y''`` from ``pi_t``, a half step
    (:func:`egpo_half_step_loss`) to ``theta_{t+1/2}``, a new opponent from it, then back to ``theta_t`` (and
    its optimizer state) for the full step (:func:`egpo_full_step_loss`)."""

    name = "egpo"

    def __init__(self, *, beta: float) -> None:
        super().__init__("egpo", ("ref",), None, kind="egpo", hyperparameters={"beta": beta})

    def check(self, loop: "OnlinePreferenceLoop") -> None:
        pass  # needs nothing beyond the loop's prompts and oracle

    def make_pairs(self, loop: "OnlinePreferenceLoop") -> None:
        return None  # every step samples its own

    def prepare(self, loop: "OnlinePreferenceLoop", pairs: None) -> None:
        pass

    def step(self, loop: "OnlinePreferenceLoop", pairs: None, indices: None) -> tuple[float, int]:
        beta = self.hyperparameters["beta"]
        pad = loop.pad_token_id
        idx = torch.randperm(len(loop.prompts), generator=loop.generator)[:loop.batch_size].tolist()
        prompts = [loop.prompts[i] for i in idx]
        ys = loop.sample(loop.policy, prompts, 2)          # y, y' ~ pi_t
        opp = loop.sample(loop.policy, prompts, 1)         # y'' ~ pi_t
        a, b = [y[0] for y in ys], [y[1] for y in ys]
        with torch.no_grad():
            ra = response_logps(loop.ref_model, prompts, a, pad_token_id=pad)
            rb = response_logps(loop.ref_model, prompts, b, pad_token_id=pad)
        pr = _preferences(loop, prompts, ys, opp)
        theta = [p.detach().clone() for p in loop.policy.parameters()]
        opt_state = copy.deepcopy(loop.optimizer.state_dict())
        lp = response_logps(loop.policy, prompts * 2, a + b, pad_token_id=pad)
        half = egpo_half_step_loss(lp[:len(a)], lp[len(a):], ra, rb, pr["pref"], pr["pref_prime"], beta=beta).mean()
        loop.apply_loss(half)                               # theta_{t+1/2}
        opp = loop.sample(loop.policy, prompts, 1)         # y'' ~ pi_{t+1/2}
        pr = _preferences(loop, prompts, ys, opp)
        with torch.no_grad():                               # back to theta_t and its optimizer state
            for p, t in zip(loop.policy.parameters(), theta):
                p.copy_(t)
        loop.optimizer.load_state_dict(opt_state)
        lp = response_logps(loop.policy, prompts * 2, a + b, pad_token_id=pad)
        full = egpo_full_step_loss(lp[:len(a)], lp[len(a):], ra, rb, pr["pref"], pr["pref_prime"], beta=beta).mean()
        loop.apply_loss(full)                               # theta_{t+1}
        return float(full.detach()), len(prompts)
