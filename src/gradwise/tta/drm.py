"""DRM: one classifier head per source domain plus a shared one, and test-time steering among them.

Paper: "Domain-Specific Risk Minimization for Out-of-Distribution Generalization" (Zhang, Wang, Liang,
Zhang, Yu, Wang, Tao, Xie; KDD 2023, arXiv 2208.08661). Authors' code: github.com/yfzhang114/AdaNPC at
commit 6fc8256 (the KDD version names it): ``domainbed/algorithms.py``'s ``DRM`` (training and plain
inference) and ``domainbed/adapt_algorithms.py``'s ``DRM`` / ``DRMFull.entropy_predict_label_drm`` (test-time
adaptation, ``label='drm'``), with the hyperparameter grid of ``unsupervised_adaptation.py``. Only the
abstract and third-party summaries of the paper were readable in the stored text, so every formula below
is the authors' code, checked against it in float64 (``tests/tta/test_drm.py``).

The math. A featurizer ``f`` and ``D + 1`` heads ``h_0 .. h_{D-1}`` (one per source domain) and ``h_D``
(shared by all domains); ``H(l) = -Σ_c softmax(l)_c log softmax(l)_c``.

Training (their ``DRM.update``, one minibatch ``(x_i, y_i)`` per source domain ``i``, the featurizer run
on each domain's minibatch separately)::

    L = (1/D) Σ_i ½ [ CE(h_i(f(x_i)), y_i) + CE(h_D(f(x_i)), y_i) ]                          (drm_loss)

Plain inference (their ``DRM.forward``): the logits of the head whose batch-mean entropy
``mean_b H(h_j(f(x))_b)`` is lowest (the first such head on ties).

Test-time steering (their adapted ``DRM``, ``label='drm'``), on a batch ``x`` with ``z = f(x)`` computed by
the featurizer in eval mode without gradients (their feature cache), ``l_j = h_j(z)``, ``p_j =
softmax(l_j)`` and ``e_{j,b} = H(l_{j,b})`` for ``j = 0..D``::

    gamma <  0:  q_b = p_{j*,b},  j* = argmin_j e_{j,b}                     (per-sample head selection)
    gamma >= 0:  w_{j,b} = e_{j,b}^(-gamma) / Σ_{k=0..D} e_{k,b}^(-gamma),   q_b = Σ_{j<D} w_{j,b} p_{j,b}
    (conf_b, ŷ_b) = max / argmax_c softmax(q_b)_c,  S = {b : conf_b >= beta}
    L_adapt = Σ_{j=0..D} CE(l_j[S], ŷ[S])     (mean over S per head; one optimizer step if L_adapt > 0)

``q`` (computed before the step) is returned: class scores, a probability vector per sample when ``gamma <
0``. As in the authors' code the ``gamma >= 0`` weights are normalized over all ``D + 1`` heads but only the
``D`` domain heads are summed, so ``q`` then sums to less than 1; and the confidence is the softmax *of the
scores* ``q``, which lies in ``[1/C, e/(e + C - 1)]``: ``beta <= 1/C`` pseudo-labels every sample, ``beta``
above ``e/(e + C - 1)`` none (their grid: 0.1, 0.25, 0.75, 1.1).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_int, check_positive, check_real
from gradwise.registry import register
from gradwise.tta._common import adapt_forward, softmax_entropy

__all__ = ["DRMNet", "drm_loss", "DRM", "DRM_LR"]

PAPER = "Domain-Specific Risk Minimization for Out-of-Distribution Generalization"
CODE = "https://github.com/yfzhang114/AdaNPC"
# hparams_registry.py: DomainBed's lr for ResNet-50 (5e-5) times the adaptation's alpha (grid 0.1, 1, 10: 1 here)
DRM_LR = 5e-5


class DRMNet(nn.Module):
    """A featurizer and ``D + 1`` heads: ``heads[0..D-1]`` one per source domain, ``heads[D]`` shared.

    ``forward(x)`` is the authors' plain inference: the logits of the head with the lowest batch-mean
    prediction entropy (module docstring). Train it with :func:`drm_loss`; adapt it with :class:`DRM`.
    """

    def __init__(self, featurizer: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        if not isinstance(featurizer, nn.Module):
            raise TypeError(f"Invalid featurizer: {type(featurizer).__name__} (accepted: a torch.nn.Module "
                            "mapping inputs to features)")
        if isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList) or \
                not isinstance(heads, (Sequence, nn.ModuleList)) or len(heads) < 2 \
                or not all(isinstance(h, nn.Module) for h in heads):
            raise ValueError(f"Invalid heads: {type(heads).__name__} (accepted: a sequence of at least 2 "
                             "nn.Modules, one head per source domain followed by the shared head)")
        self.featurizer = featurizer
        self.heads = nn.ModuleList(heads)

    @property
    def num_domains(self) -> int:
        """The number of source domains ``D`` (the heads less the shared one)."""
        return len(self.heads) - 1

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The logits of every head on features ``z``, stacked: ``[D + 1, B, C]``."""
        return torch.stack([h(z) for h in self.heads])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head_logits(self.featurizer(x))
        mean_entropy = torch.stack([softmax_entropy(lj).mean() for lj in logits])
        return logits[int(mean_entropy.argmin())]  # argmin: the first head on ties, as their strict '<'


def drm_loss(net: DRMNet, minibatches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The DRM training loss on one ``(x_i, y_i)`` minibatch per source domain, in the heads' order:
    ``(1/D) Σ_i ½ [CE(h_i(f(x_i)), y_i) + CE(h_D(f(x_i)), y_i)]`` (their ``DRM.update``; the featurizer
    runs on each domain's minibatch separately, so a BatchNorm in it sees per-domain statistics)."""
    if not isinstance(net, DRMNet):
        raise TypeError(f"Invalid net: {type(net).__name__} (accepted: a DRMNet)")
    if not isinstance(minibatches, Sequence) or len(minibatches) != net.num_domains:
        got = len(minibatches) if isinstance(minibatches, Sequence) else type(minibatches).__name__
        raise ValueError(f"Invalid minibatches: {got} (accepted: a sequence of {net.num_domains} (x, y) pairs, one "
                         "per source domain, in the order of the domain heads)")
    total = None
    for i, pair in enumerate(minibatches):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"Invalid minibatches: item {i} is not an (x, y) pair")
        x, y = pair
        z = net.featurizer(x)
        term = 0.5 * (F.cross_entropy(net.heads[i](z), y) + F.cross_entropy(net.heads[-1](z), y))
        total = term if total is None else total + term
    return total / net.num_domains


@register(kind="test-time-adaptation", paper=PAPER, year=2023, arxiv="2208.08661", code=CODE,
          summary="train one head per source domain plus a shared head; at test time steer among them by "
                  "prediction entropy and retrain the heads on the steered pseudo-labels")
class DRM(nn.Module):
    """DRM test-time steering (Zhang et al., KDD 2023, arXiv 2208.08661; authors' code
    github.com/yfzhang114/AdaNPC @6fc8256, ``domainbed/adapt_algorithms.py``'s ``DRM``, ``label='drm'``).

    Paper: "Domain-Specific Risk Minimization for Out-of-Distribution Generalization". Wraps a trained
    :class:`DRMNet`. ``forward(x)`` (``steps`` times; ``episodic`` resets first; gradients enabled also
    under ``torch.no_grad()``) computes the features in eval mode without gradients (the featurizer's mode
    is restored), steers among the heads, pseudo-labels the confident samples and takes one optimizer step
    on the heads, and returns the class scores ``q`` computed before that step (module docstring).

    Defaults: ``optimizer=None`` is ``Adam(lr=lr, weight_decay=0)`` over the heads' parameters only (their
    adapted ``DRM.configure_model_optimizer``; the featurizer is never changed), ``lr = 5e-5`` (DomainBed's
    ResNet-50 learning rate times ``alpha = 1``), ``steps = 1``, ``beta = 0.1`` and ``gamma = -1``. The
    authors give no single setting: ``unsupervised_adaptation.py`` sweeps ``alpha`` in {0.1, 1, 10},
    ``step`` in {1, 3}, ``beta`` in {0.1, 0.25, 0.75, 1.1} and ``gamma`` in {-1, 0, 0.5, 1, 5}; the defaults
    here are a point of that grid (``gamma = -1``: per-sample selection of the lowest-entropy head;
    ``beta = 0.1``: every sample pseudo-labelled for up to 10 classes), not a setting the paper states.

    ``reset()`` restores the heads and the optimizer state saved at construction (their
    ``load_model_and_optimizer``). ``state_dict()`` holds the network and, as extra state, the optimizer
    state, so a wrapper built the same way continues identically. ``num_updates`` counts the steps taken.
    A batch needs at least 2 samples (the tta wrappers' shared batch check).

    Departures from the authors' code: only ``label='drm'`` is built (their ``'own'``, ``'last'`` and
    ``'uniform'`` pseudo-labelling variants are not); the scores are accumulated in the features' dtype
    and device (theirs in ``torch.zeros(...).cuda()``, float32 on the GPU); the featurizer runs under
    ``no_grad`` (theirs on cached features, so the same values); bad input raises ``ValueError`` naming
    the argument.

    Example::

        net = DRMNet(featurizer, [nn.Linear(d, c) for _ in range(num_domains + 1)])
        ...  # train: drm_loss(net, [(x_0, y_0), ..., (x_{D-1}, y_{D-1})]).backward()
        drm = DRM(net)
        with torch.no_grad():
            pred = drm(x_test).argmax(1)
    """

    def __init__(self, net: DRMNet, optimizer: torch.optim.Optimizer | None = None, *, lr: float = DRM_LR,
                 beta: float = 0.1, gamma: float = -1.0, steps: int = 1, episodic: bool = False) -> None:
        super().__init__()
        if not isinstance(net, DRMNet):
            raise TypeError(f"Invalid net: {type(net).__name__} (accepted: a DRMNet, a featurizer with one head "
                            "per source domain and a shared head)")
        lr = check_positive("lr", lr)
        if optimizer is None:
            optimizer = torch.optim.Adam(net.heads.parameters(), lr=lr, weight_decay=0.0)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} (accepted: a torch.optim.Optimizer "
                            "over net.heads' parameters, or None for Adam(lr=lr))")
        self.beta = check_real("beta", beta)
        self.gamma = check_real("gamma", gamma)
        self.steps = check_int("steps", steps, 1)
        self.episodic = check_bool("episodic", episodic)
        self.net = net
        self.optimizer = optimizer
        self.num_updates = 0
        self.net_state = copy.deepcopy(net.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` with the featurizer in eval mode (its mode restored), no gradients."""
        featurizer = self.net.featurizer
        was_training = featurizer.training
        featurizer.eval()
        try:
            with torch.no_grad():
                return featurizer(x)
        finally:
            featurizer.train(was_training)

    def steer(self, logits: torch.Tensor) -> torch.Tensor:
        """The scores ``q`` ``[B, C]`` from the heads' logits ``[D + 1, B, C]`` (module docstring)."""
        probs = logits.softmax(2)
        entropy = -(probs * logits.log_softmax(2)).sum(2)  # [D + 1, B]
        if self.gamma < 0:
            return probs[entropy.argmin(0), torch.arange(logits.shape[1], device=logits.device)]
        weight = F.normalize(1.0 / entropy ** self.gamma, p=1, dim=0)
        return (weight[:-1, :, None] * probs[:-1]).sum(0)

    def adapt_step(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net.head_logits(self.features(x))
        with torch.no_grad():
            scores = self.steer(logits)
            confidence, pseudo = scores.softmax(1).max(1)
            keep = confidence >= self.beta
        loss = sum(F.cross_entropy(lj[keep], pseudo[keep]) for lj in logits)
        if bool(keep.any()) and bool(loss > 0):  # theirs: a step when the summed loss is > 0 (one host sync)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.num_updates += 1
        self.net.heads.zero_grad(set_to_none=True)
        return scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adapt_forward(self, x)

    def reset(self) -> None:
        """Restore the heads and the optimizer state saved at construction."""
        self.net.load_state_dict(self.net_state, strict=True)
        self.optimizer.load_state_dict(self.optimizer_state)

    def get_extra_state(self) -> dict[str, Any]:
        # a copy: the optimizer's state_dict holds its live buffers, which load_state_dict would share
        return copy.deepcopy({"optimizer": self.optimizer.state_dict(), "num_updates": self.num_updates})

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = state["num_updates"]

    def extra_repr(self) -> str:
        return f"num_domains={self.net.num_domains}, beta={self.beta}, gamma={self.gamma}, steps={self.steps}"
