"""torch.optim's own optimizers as the ``optimizers`` study runs them: what a user
would otherwise pick, beside gradwise's methods.

Every factory takes ``(params, lr)`` like an optimizer class, so the runner and
the learning-rate sweep treat them alike. Everything but the learning rate is
torch's default unless said here.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["SGD_MOMENTUM", "MUON_ADAMW_LR", "sgd_momentum", "adafactor", "MuonAdamW", "muon_adamw"]

SGD_MOMENTUM = 0.9
# The AdamW half of Muon+AdamW runs at the AdamW baseline's swept rate (LRS["AdamW"] in
# optimizers_study), so the sweep over Muon+AdamW's one ``lr`` chooses Muon's rate only.
MUON_ADAMW_LR = 0.01


def sgd_momentum(params: Iterable[torch.Tensor], lr: float = 1e-3) -> torch.optim.SGD:
    """``torch.optim.SGD`` with heavy-ball momentum 0.9 (torch's default momentum is 0)."""
    return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)


def adafactor(params: Iterable[torch.Tensor], lr: float = 1e-2) -> torch.optim.Optimizer:
    """``torch.optim.Adafactor`` with its defaults."""
    return torch.optim.Adafactor(params, lr=lr)


class MuonAdamW:
    """``torch.optim.Muon`` on the hidden weight matrices, ``torch.optim.AdamW`` on everything else.

    torch's Muon takes only 2-D parameters, and its documentation says Muon is for the 2-D
    parameters of *hidden* layers, with biases, embeddings (and, as Muon's author
    recommends, the first and last layers) on a standard optimizer such as AdamW. Given
    the parameters of a feed-forward stack in order, the hidden matrices are the 2-D
    parameters other than the first and the last one (for the arena's 64-128-128-10 MLP:
    the 128x128 matrix); a model with fewer than three 2-D parameters has none.

    Only what the arena's runner uses: ``zero_grad``, ``step``, ``param_groups`` and the
    state dicts, delegated to both optimizers.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3, *, adamw_lr: float = MUON_ADAMW_LR,
                 **muon_kwargs: Any) -> None:
        params = list(params)
        mats = [i for i, p in enumerate(params) if p.ndim == 2]
        hidden = set(mats[1:-1])
        muon = [p for i, p in enumerate(params) if i in hidden]
        rest = [p for i, p in enumerate(params) if i not in hidden]
        self.optimizers: list[torch.optim.Optimizer] = []
        if muon:
            self.optimizers.append(torch.optim.Muon(muon, lr=lr, **muon_kwargs))
        if rest:
            self.optimizers.append(torch.optim.AdamW(rest, lr=adamw_lr))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for opt, s in zip(self.optimizers, state, strict=True):
            opt.load_state_dict(s)


def muon_adamw(params: Iterable[torch.Tensor], lr: float = 0.02) -> MuonAdamW:
    """:class:`MuonAdamW`: Muon (torch's defaults but the rate ``lr``) + AdamW (torch's defaults, rate 0.01).

    The default 0.02 is the rate of torch's Muon example and of Muon's author; it
    was not swept (see ``OPT_IN`` in the optimizers study for why).
    """
    return MuonAdamW(params, lr=lr)
