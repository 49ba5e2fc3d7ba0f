"""LR sensitivity of Wortsman et al. (2023): how far, on average over a learning-rate sweep, the final loss is
from the best of the sweep, with diverged runs counted at the loss at initialization."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gradwise._validate import check_real, is_real
from gradwise.registry import register

__all__ = ["lr_sensitivity"]

PAPER = "Small-scale proxies for large-scale Transformer training instabilities"


def _pairs(final_losses_by_lr) -> list[tuple[float, float]]:
    if isinstance(final_losses_by_lr, Mapping):
        items = list(final_losses_by_lr.items())
    elif isinstance(final_losses_by_lr, (tuple, list)) and len(final_losses_by_lr) == 2 \
            and all(isinstance(s, (Sequence, Tensor)) and not isinstance(s, str) for s in final_losses_by_lr):
        lrs, losses = (s.tolist() if torch.is_tensor(s) else list(s) for s in final_losses_by_lr)
        if len(lrs) != len(losses):
            raise ValueError(f"Invalid final_losses_by_lr: {len(lrs)} learning rates but {len(losses)} losses "
                             "(accepted: equal lengths)")
        items = list(zip(lrs, losses))
    else:
        raise ValueError(f"Invalid final_losses_by_lr: {type(final_losses_by_lr).__name__} (accepted: a mapping "
                         "learning rate -> final loss, or a pair (learning rates, final losses))")
    out = []
    for lr, loss in items:
        lr = lr.item() if torch.is_tensor(lr) else lr
        loss = loss.item() if torch.is_tensor(loss) else loss
        if not is_real(lr) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"Invalid final_losses_by_lr: learning rate {lr!r} (accepted: finite numbers > 0)")
        if isinstance(loss, bool) or not isinstance(loss, (int, float)):
            raise ValueError(f"Invalid final_losses_by_lr: loss {loss!r} at lr={lr} (accepted: real numbers; NaN "
                             "or inf for a diverged run)")
        out.append((float(lr), float(loss)))
    if len({lr for lr, _ in out}) != len(out):
        raise ValueError("Invalid final_losses_by_lr: a learning rate appears twice (accepted: distinct rates)")
    return sorted(out)


@register(kind="metric", paper=PAPER, year=2023, arxiv="2309.14322", code=None,
          summary="mean over an LR sweep of min(final loss, initial loss) minus the sweep's best final loss")
def lr_sensitivity(final_losses_by_lr, *, initial_loss: float,
                   lr_range: tuple[float, float] | None = None) -> Tensor:
    r"""Learning-rate sensitivity (Wortsman et al., 2023, arXiv 2309.14322, §2.2); lower is flatter.

    Paper: "Small-scale proxies for large-scale Transformer training
    instabilities". No official code for it (the authors' NanoDO,
    https://github.com/google-deepmind/nanodo, trains the models but has no
    sensitivity computation).

    Math (``A(eta)`` the model trained at learning rate ``eta``, ``l`` its
    final loss, ``l_0`` the loss at initialization)::

        LR sensitivity = E_{eta in [a, b]} [ min(l(A(eta)), l_0) - l* ],   l* = min_{eta in [a, b]} l(A(eta))

    The cap at ``l_0`` makes a diverged run (NaN or inf loss) count as no
    progress at all, so the metric stays finite. The paper sweeps learning
    rates spaced evenly in log scale from ``a = 3e-4`` to ``b = 3e-1``; the
    expectation is the mean over the sweep's runs, each run weighing the same
    (an expectation over ``log eta`` when the grid is log-spaced, as the
    paper's is; pass such a grid).

    Args:
        final_losses_by_lr: ``{lr: final loss}``, or a pair
            ``(learning rates, final losses)`` (sequences or 1-D tensors);
            a NaN or inf loss is a diverged run (counted as ``initial_loss``).
        initial_loss: ``l_0``, the loss of the model at initialization
            (finite; for a language model about ``log(vocab size)``).
        lr_range: ``(a, b)`` to keep only rates with ``a <= lr <= b``
            (default: every rate given).

    Checked against: the formula as §2.2 states it, quoted (with the
    ``l_0`` cap and the ``[a, b] = [3e-4, 3e-1]`` range) by secondary sources;
    the paper's own HTML text was not readable in this project's search
    store (only page openings; checked again for issue 10: the stored
    introduction confirms "LR sensitivity measures the deviation from
    optimal performance when varying LR across orders of magnitude", the
    §2.2 formula itself is not in the store), so the tests transcribe it.

    Returns a 0-dim float64 tensor (0 when every run reaches the same loss).
    Where it departs from the paper: the best loss ``l*`` is taken over the
    capped losses, which changes nothing unless every run is worse than
    ``l_0`` (then the metric is 0, where the paper's formula would be negative).

    Example::

        >>> lr_sensitivity({1e-3: 3.1, 1e-2: 2.9, 1e-1: float("nan")}, initial_loss=10.4)
        tensor(2.5667, dtype=torch.float64)
    """
    l0 = check_real("initial_loss", initial_loss)
    pairs = _pairs(final_losses_by_lr)
    if lr_range is not None:
        if not isinstance(lr_range, (tuple, list)) or len(lr_range) != 2:
            raise ValueError(f"Invalid lr_range: {lr_range!r} (accepted: a pair (a, b) with 0 < a <= b)")
        a = check_real("lr_range[0]", lr_range[0], 0.0, lo_open=True)
        b = check_real("lr_range[1]", lr_range[1], a)
        pairs = [(lr, loss) for lr, loss in pairs if a <= lr <= b]
    if not pairs:
        raise ValueError("Invalid final_losses_by_lr: no run in lr_range (accepted: at least one learning rate)")
    capped = torch.tensor([loss if math.isfinite(loss) and loss < l0 else l0 for _, loss in pairs],
                          dtype=torch.float64)
    return (capped - capped.min()).mean()
