"""Per-layer hidden-state statistics across depth: the diagnostic of Peri-LN (Kim et al. 2025) for variance growth."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HiddenStateProbe", "hidden_state_stats", "HIDDEN_STATE_STATS"]

#: The statistics :class:`HiddenStateProbe` records, in order.
HIDDEN_STATE_STATS = ("variance", "abs_mean", "norm")


def _stats(x: Tensor) -> dict[str, float]:
    x = x.detach().float()
    return {"variance": x.var(unbiased=False).item(), "abs_mean": x.abs().mean().item(),
            "norm": torch.linalg.vector_norm(x, dim=-1).mean().item()}


class HiddenStateProbe:
    r"""Record statistics of the hidden states :math:`x_0, x_1, \dots, x_L` flowing through ``blocks``.

    The diagnostic of Kim et al., "Peri-LN: Revisiting Layer Normalization in the Transformer
    Architecture", arXiv 2502.02732 (2025) (no official code released): the variance and the
    magnitude of the residual stream at each depth, which grow with depth under Pre-LN (its
    "massive activations") and stay balanced under Peri-LN. :math:`x_0` is the input of the first
    block (the embedding, after its norm if any) and :math:`x_l` the output of block :math:`l`.

    For each :math:`x_l` of shape ``[..., d]`` (all its elements :math:`x_{l,i}`, :math:`N` of them):

    * ``variance``: :math:`\frac1N\sum_i (x_{l,i} - \bar x_l)^2`, over all elements (batch, positions
      and features) at once;
    * ``abs_mean``: :math:`\frac1N\sum_i |x_{l,i}|`, the absolute magnitude;
    * ``norm``: the mean over tokens of the per-token L2 norm :math:`\|x_{l,t,:}\|_2`.

    Used as a context manager around forward passes (forward hooks, removed on exit); each pass
    appends one row per statistic: ``probe.history[stat]`` is a list of rows of length ``L + 1``,
    ``probe.last()`` the last row of each as a tensor. Recording reads the tensors only (no autograd
    graph, no change to the outputs). Departure: the paper plots these over training for models of
    up to 3.2B parameters; which elements it averages over is not spelled out beyond "hidden state
    variance", so the probe reports all three statistics (the paper's method and appendix sections were not readable
    in this project's search store; its abstract and overviews state the claim: Pre-LN's hidden-state
    variance grows with depth, "massive activations", Peri-LN's grows far less).

    Example::

        >>> with HiddenStateProbe(lm.blocks) as probe:
        ...     lm(ids)
        >>> probe.last()["variance"]       # tensor of L + 1 variances, x_0 ... x_L
    """

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise ValueError(f"Invalid blocks: {blocks!r} (accepted: a non-empty sequence of nn.Module)")
        self.blocks = blocks
        self.history: dict[str, list[list[float]]] = {s: [] for s in HIDDEN_STATE_STATS}
        self._row: list[dict[str, float]] = []
        self._handles: list = []

    def _on_input(self, module: nn.Module, args: tuple) -> None:
        self._row = [_stats(args[0])]

    def _on_output(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self._row.append(_stats(out))
        if module is self.blocks[-1]:
            for s in HIDDEN_STATE_STATS:
                self.history[s].append([r[s] for r in self._row])
            self._row = []

    def __enter__(self) -> HiddenStateProbe:
        self._handles.append(self.blocks[0].register_forward_pre_hook(self._on_input))
        self._handles += [b.register_forward_hook(self._on_output) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def last(self) -> dict[str, Tensor]:
        """The last recorded pass: ``{stat: tensor of L + 1 values}``."""
        if not self.history["variance"]:
            raise RuntimeError("HiddenStateProbe has recorded no forward pass yet")
        return {s: torch.tensor(self.history[s][-1], dtype=torch.float64) for s in HIDDEN_STATE_STATS}


@torch.no_grad()
def hidden_state_stats(model: nn.Module, ids: Tensor) -> dict[str, Tensor]:
    """One forward pass of ``model`` (anything with a ``blocks`` list, as :class:`~gradwise.nn.TransformerLM`)
    on ``ids`` in eval mode, returning :class:`HiddenStateProbe`'s statistics of :math:`x_0 \\dots x_L`
    (Kim et al., Peri-LN, arXiv 2502.02732). The model's training mode is restored afterwards."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"Invalid model: {type(model).__name__} has no `blocks` (accepted: a model with a "
                         "sequence of blocks in `model.blocks`, such as gradwise.nn.TransformerLM)")
    was_training = model.training
    model.eval()
    try:
        with HiddenStateProbe(blocks) as probe:
            model(ids)
    finally:
        model.train(was_training)
    return probe.last()
