"""The output-scale knob of lazy versus rich training (Kumar, Bordelon, Gershman and Pehlevan, 2023): multiply a
centered model's output by alpha and its learning rate by 1/alpha^2; large alpha trains lazily (a linearized
model, kernel fixed at initialization), small alpha learns features."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradwise._validate import check_bool, check_positive
from gradwise.registry import register

__all__ = ["OutputScale", "output_scale_lr"]


def output_scale_lr(lr: float, alpha: float) -> float:
    r"""The learning rate to pair with output scale ``alpha``: :math:`\eta/\alpha^2`.

    With it, the first-order change of the scaled model's output per step does not depend on :math:`\alpha`
    (the function moves as the kernel at initialization dictates), while the parameters move by
    :math:`O(1/\alpha)`: large :math:`\alpha` is lazy, small is rich. For (S)GD this is the same as dividing
    the loss by :math:`\alpha^2` at learning rate :math:`\eta` (the authors' code does both, in different
    experiments); the authors also divide Adam(W)'s learning rate by :math:`\alpha^2` in their transformer runs.
    """
    check_positive("lr", lr)
    check_positive("alpha", alpha)
    return lr / alpha ** 2


@register(kind="module", paper="Grokking as the Transition from Lazy to Rich Training Dynamics", year=2023,
          arxiv="2310.06110", code=None, aliases=("lazy_rich_scale",),
          summary="centered output scaled by alpha with lr/alpha^2: large alpha lazy (kernel), small alpha rich")
class OutputScale(nn.Module):
    r"""Wrap a model so that its output is :math:`f(x) = \alpha\,(f_\theta(x) - f_{\theta_0}(x))`.

    Paper: Tanishq Kumar, Blake Bordelon, Samuel J. Gershman, Cengiz Pehlevan, "Grokking as the Transition from
    Lazy to Rich Training Dynamics", ICLR 2024, arXiv:2310.06110. The authors' code is the notebook in the
    paper's OpenReview supplementary material (JAX and PyTorch); it is not on GitHub from the authors, and was
    read here from the copy in github.com/giovana-morais/amlds_final_project @567f0e0
    (``grokking-feature-timescales-anon-final.ipynb``). It was not run (it needs JAX and neural-tangents, which
    cannot be installed here), so there is no golden data; the tests check the parametrization's properties.
    Only the paper's abstract could be read (the search tool returns the opening of its pages), so the
    parametrization follows the notebook.

    What the notebook does (its polynomial-regression experiments, Figures 1, 3 and 5): the network output is
    multiplied by the scale :math:`\alpha` (``f = alpha * mean(phi(W @ X.T), axis=0)``), the output at the
    initial parameters is subtracted (``CENTER_LOSS``: ``f(p, X) - f(params_init, X)``) so the scaled model
    starts at zero whatever :math:`\alpha` is, and the squared loss is divided by :math:`\alpha^2` at a fixed
    learning rate (Figure 3), or kept as is with the learning rate :math:`\eta/\alpha^2` (Figures 1, 5; the same
    GD dynamics). Its transformer experiment multiplies the logits by the scale, centers them and divides AdamW's
    learning rate by the scale squared. This wrapper is that output map; pair it with
    :func:`output_scale_lr` (or, for plain GD, multiply the loss by :attr:`loss_scale`,
    :math:`1/\alpha^2`, and keep the learning rate). Large :math:`\alpha` gives lazy training (weights move by
    :math:`O(1/\alpha)`, the tangent kernel stays at its initial value); small :math:`\alpha` gives rich,
    feature-learning training, the regime in which the paper's networks grok after a lazy phase.

    ``center=True`` snapshots the parameters when wrapped (:meth:`recenter` snapshots again) and evaluates the
    wrapped model at them under ``torch.no_grad`` in every forward (a second forward pass; ``center=False``
    skips it, giving :math:`\alpha f_\theta(x)`, the notebook's non-centered variant). The snapshot uses the
    model's current mode and a copy of its buffers (so batch-norm running statistics are updated once per
    call, by the real pass), so the output is zero at the snapshot only for a deterministic model (no
    dropout; batch norm in eval mode or with the same batch).

    Example::

        >>> model = OutputScale(mlp, alpha=10.0)                    # lazy
        >>> opt = torch.optim.SGD(model.parameters(), lr=output_scale_lr(0.5, 10.0))
        >>> loss = F.mse_loss(model(x), y)
    """

    def __init__(self, model: nn.Module, alpha: float = 1.0, center: bool = True) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.alpha = check_positive("alpha", alpha)
        self.center = check_bool("center", center)
        self._names = [n for n, _ in model.named_parameters()]
        self.initial = nn.Module()  # theta_0 as buffers: saved in state_dict, not trained, not in parameters()
        for i, p in enumerate(model.parameters()):
            self.initial.register_buffer(f"p{i}", p.detach().clone())

    @torch.no_grad()
    def recenter(self) -> None:
        """Take the current parameters as :math:`\\theta_0` (the output is zero again at the current point)."""
        for i, p in enumerate(self.model.parameters()):
            getattr(self.initial, f"p{i}").copy_(p)

    @property
    def loss_scale(self) -> float:
        """:math:`1/\\alpha^2`: multiply a squared loss by it to train at an unscaled learning rate (GD)."""
        return 1.0 / self.alpha ** 2

    def initial_parameters(self) -> dict[str, Tensor]:
        """:math:`\\theta_0` by the wrapped model's parameter names."""
        return {n: getattr(self.initial, f"p{i}") for i, n in enumerate(self._names)}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.center:
            return self.model(*args, **kwargs) * self.alpha
        with torch.no_grad():
            # copies of the buffers: the centering pass must not update batch-norm running statistics a second
            # time; it runs first, so both passes see the same buffers
            buffers = {n: b.clone() for n, b in self.model.named_buffers()}
            out0 = torch.func.functional_call(self.model, {**self.initial_parameters(), **buffers}, args, kwargs)
        return (self.model(*args, **kwargs) - out0) * self.alpha

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, center={self.center}"
