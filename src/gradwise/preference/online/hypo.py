"""HyPO as an online method: DPO on offline pairs plus a reverse-KL term on fresh samples of the
current policy at every step."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gradwise._validate import check_int
from gradwise.preference.objectives.hybrid_hypo import hypo_loss
from gradwise.preference.online.methods import OnlineMethod
from gradwise.preference.online.sampling import response_logps

if TYPE_CHECKING:
    from gradwise.preference.online.loop import OnlinePreferenceLoop

__all__: list[str] = []  # reached through online_method("hypo") and the registry


@torch.no_grad()
def _frozen_logps(loop: "OnlinePreferenceLoop", keeps: Sequence[str], pairs: Sequence[Mapping]) -> dict[str, Tensor]:
    """Log-probs of every pair's chosen and rejected response under each kept frozen model, and the pairs'
    oracle numbers."""
    prompts = [p["prompt"] for p in pairs]
    out = {}
    models = {"ref": loop.ref_model, "prev": loop.prev, "prev2": loop.prev2}
    for key in keeps:
        m = models[key]
        if m is None:  # pi_{t-1} before the second iteration: the loss does not read it
            continue
        for side in ("chosen", "rejected"):
            out[f"{key}_{side}"] = response_logps(m, prompts, [p[side] for p in pairs], pad_token_id=loop.pad_token_id)
    for key in ("pref", "chosen_win_rate", "rejected_win_rate"):
        out[key] = torch.tensor([float(p.get(key, 0.5)) for p in pairs])
    return out


class HyPO(OnlineMethod):
    """HyPO (``lam``, ``beta=0.1``, ``samples=1``): :func:`hypo_loss` on the loop's ``offline_pairs`` plus
    ``samples`` fresh samples per prompt of the *current* policy at every step for the KL term
    (``samples >= 2``: leave-one-out baseline, the RLOO estimator the paper names)."""

    name = "hypo"

    def __init__(self, *, lam: float, beta: float = 0.1, samples: int = 1) -> None:
        k = check_int("samples", samples, lo=1)
        super().__init__("hypo", ("ref",), None, kind="hypo", hyperparameters={"lam": lam, "beta": beta, "samples": k})

    def check(self, loop: "OnlinePreferenceLoop") -> None:
        if not loop.offline_pairs:
            raise ValueError("Invalid offline_pairs: HyPO needs offline preference pairs")

    def make_pairs(self, loop: "OnlinePreferenceLoop") -> list[dict]:
        return loop.offline_pairs

    def prepare(self, loop: "OnlinePreferenceLoop", pairs: list[dict]) -> None:
        # pi_ref does not move: its log-probs of the offline pairs are computed once per loop
        if "hypo_frozen" not in loop.method_state:
            loop.method_state["hypo_frozen"] = _frozen_logps(loop, self.keeps, pairs)

    def step(self, loop: "OnlinePreferenceLoop", pairs: list[dict], indices: list[int]) -> tuple[float, int]:
        hp = self.hyperparameters
        frozen = loop.method_state["hypo_frozen"]
        batch = [pairs[i] for i in indices]
        prompts = [p["prompt"] for p in batch]
        k = hp.get("samples", 1)
        online = [y for ys in loop.sample(loop.policy, prompts, k) for y in ys]  # y ~ current policy, k per prompt
        on_prompts = [p for p in prompts for _ in range(k)]
        with torch.no_grad():
            ref_on = response_logps(loop.ref_model, on_prompts, online, pad_token_id=loop.pad_token_id)
        lp = response_logps(loop.policy, prompts * 2 + on_prompts,
                            [p["chosen"] for p in batch] + [p["rejected"] for p in batch] + online,
                            pad_token_id=loop.pad_token_id)
        b = len(batch)
        it = torch.tensor(indices)
        pol_on, ref_on = (lp[2 * b:], ref_on) if k == 1 else (lp[2 * b:].view(b, k), ref_on.view(b, k))
        loss = hypo_loss(lp[:b], lp[b:2 * b], frozen["ref_chosen"][it], frozen["ref_rejected"][it],
                         pol_on, ref_on, beta=hp["beta"], lam=hp["lam"]).mean()
        loop.apply_loss(loss)
        return float(loss.detach()), 0
