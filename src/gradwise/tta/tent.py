"""Tent: test-time entropy minimization over the BatchNorm affine parameters."""
from __future__ import annotations

import torch
from torch import nn

from gradwise.registry import register
from gradwise.tta._common import TTAWrapper, softmax_entropy

__all__ = ["Tent"]


@register(kind="test-time-adaptation", paper="Tent: Fully Test-Time Adaptation by Entropy Minimization",
          year=2021, arxiv="2006.10726", code="https://github.com/mr-eggplant/EATA", seed=False,
          summary="adapt BatchNorm affine parameters on each unlabeled test batch by minimizing prediction entropy")
class Tent(TTAWrapper):
    """Tent (Wang, Shelhamer, Liu, Olshausen, Darrell; ICLR 2021, arXiv 2006.10726).

    Paper: "Tent: Fully Test-Time Adaptation by Entropy Minimization". Checked step by step against
    ``tent.py`` of github.com/mr-eggplant/EATA at commit f739b36 (the copy of Tent that EATA's authors run
    as their baseline; Tent's own repository is github.com/DequanWang/tent). Only the paper's abstract and
    introduction were readable in the stored text, so the update follows that code.

    The model is configured in place by :func:`configure_bn`: every BatchNorm normalizes with the test
    batch's statistics and only its affine weight and bias ``θ`` are trained. Each call on an unlabeled
    batch ``x`` (``steps`` times) computes the logits ``f_θ(x)`` and takes one optimizer step on the mean
    prediction entropy

        L(θ) = (1/N) Σ_i H(softmax(f_θ(x_i))),   H(p) = -Σ_c p_c log p_c,

    and returns the logits computed before that step, detached. ``optimizer=None`` means
    ``SGD(bn_parameters(model), lr=2.5e-4, momentum=0.9)`` as in the authors' ``main.py``; a given optimizer
    should hold :func:`bn_parameters` of the model. ``episodic=True`` resets before every batch.
    ``reset()`` restores the weights and the optimizer state saved at construction.

    Departures from the authors' code: every ``_BatchNorm`` (1d/2d/3d) is adapted, not only
    ``BatchNorm2d``; the returned logits are detached (theirs carry a freed graph); a batch of fewer than
    2 samples and a model without affine BatchNorm raise ``ValueError``; a step whose logits are not all
    finite is skipped (no update) and counted in ``num_skipped``, which costs one host sync per step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, steps: int = 1,
                 episodic: bool = False) -> None:
        super().__init__(model, optimizer, steps=steps, episodic=episodic)

    def adapt_step(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(x)
        if not bool(torch.isfinite(outputs).all()):  # the one host sync: skip a non-finite step
            self.num_skipped += 1
            return outputs
        softmax_entropy(outputs).mean(0).backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return outputs
