r"""sLCT: the Cauchy consistency loss, the adaptive scaling-c schedule and minibatch OT pairing.

Paper: "Improved Training Technique for Latent Consistency Models", Quan Dao, Khanh Doan, Di Liu, Trung
Le, Dimitris Metaxas, ICLR 2025, arXiv 2502.01441. The paper points to quandao10/sLCT, which has no loss
code; the loss code is the same authors' quandao10/LCT, followed at commit 34661b9:

* ``models/karras_diffusion.py`` ``KarrasDenoiser.consistency_losses``: ``loss_norm="cauchy"`` is
  :math:`\log(\tfrac12\,\mathrm{mean}((x-y)^2) + c^2) - 2\log c = \log(1 + \mathrm{mean}((x-y)^2)/(2c^2))`
  (``cauchy_loss(distance="mean")``, the default here), ``"cauchy_new"`` the same per element then
  averaged (``distance="elementwise"``, then ``.mean`` over the non-batch dims);
* ``train_cm_latent.py``: c = 0.00054 sqrt(C H W) unless given; with ``--c_by_loss_std``, once the
  curriculum passes its first stage (N > start_scales + 1), c = exp(-1.15 ln(N - 1) - 0.85)
  (``slct_scaling_c``);
* ``models/optimal_transport.py`` ``OTPlanSampler("exact")``: the exact OT plan (POT's ``emd``) between
  the data and noise minibatches under squared Euclidean cost (``ot_pair``).

Checked against that code run at 34661b9 (float64, rel 1e-10; ``tests/diffusion/test_slct.py`` on
``tests/data/slct_golden.pt``). Only the opening of the paper could be read in the stored text; the
formulas are the code's and issue 18's.

Departures: ``ot_pair`` solves the same assignment with scipy's ``linear_sum_assignment`` (the exact
plan of two uniform minibatches of equal size is a permutation, so the pairs are the same; POT is not
a dependency) and keeps the data order: it returns the noise reordered so that row i is the partner of
``x[i]``, where the authors draw the n pairs of the plan in random order (``replace=False``), which
reorders the data too; a minibatch is exchangeable, so the loss is the same. The authors' cost is
normalised by its maximum, which does not change the assignment. ``cauchy_loss`` computes
:math:`\log(1 + s/(2c^2))` with ``log1p`` rather than the authors' difference of logarithms (equal up to
rounding, and without cancellation when s is small). The authors' ``c`` is a float32 tensor
(``torch.tensor(3.45)``); here it is a Python float.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_int, check_positive
from gradwise.registry import register

from ._common import check_batch_tensor, squared_distance

__all__ = ["cauchy_loss", "slct_scaling_c", "ot_pair"]

PAPER = "Improved Training Technique for Latent Consistency Models"
_KW = dict(kind="diffusion-objective", paper=PAPER, year=2025, arxiv="2502.01441",
           code="https://github.com/quandao10/LCT")


@register(**_KW, summary="Cauchy consistency loss log(1 + mean((x - y)^2) / (2 c^2)), robust to latent "
                         "outliers; per sample or per element")
def cauchy_loss(input: Tensor, target: Tensor, *, c: float | None = None, distance: str = "mean") -> Tensor:
    r"""sLCT's Cauchy loss, per sample ``[B]`` (or per element with ``distance="elementwise"``).

    :math:`\log\bigl(1 + \frac{s}{2c^2}\bigr)` with ``s`` the squared difference averaged over the
    non-batch dims (``"mean"``, the authors' ``"cauchy"``), summed (``"sum"``), or per element
    (``"elementwise"``, the authors' ``"cauchy_new"`` before its mean). ``c=None`` is iCT's
    :math:`0.00054\sqrt{d}` (the authors' default); :func:`slct_scaling_c` gives their schedule. The
    gradient vanishes like 1/s for large s, so outliers pull far less than under Pseudo-Huber. Paper:
    sLCT, arXiv 2502.01441; reference and departures in the module docstring.

    Dtype in = out; no host sync; NaN and inf propagate.

    Example::

        >>> cauchy_loss(torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2), c=0.5)
        tensor([1.0986])
    """
    s, cc = squared_distance(input, target, c, distance)
    return torch.log1p(s * (0.5 / (cc * cc)))


@register(**_KW, summary="sLCT adaptive scaling-c: c = exp(-1.15 ln(N - 1) - 0.85) once N > start_scales + 1")
def slct_scaling_c(num_scales: int, *, start_scales: int = 10, c_init: float) -> float:
    r"""The robust loss scale ``c`` for ``num_scales`` discretization steps N (sLCT's scaling-c).

    ``c_init`` during the first curriculum stage (N <= start_scales + 1); after it
    :math:`c = \exp(-1.15 \ln(N-1) - 0.85)`, which shrinks as N grows (the consistency residuals shrink
    with the step size), as the authors' ``--c_by_loss_std`` (sLCT, arXiv 2502.01441).

    Example::

        >>> round(slct_scaling_c(21, c_init=0.03), 6)
        0.013635
    """
    num_scales = check_int("num_scales", num_scales, lo=2)
    start_scales = check_int("start_scales", start_scales, lo=1)
    c_init = check_positive("c_init", c_init)
    if num_scales > start_scales + 1:
        return math.exp(-1.15 * math.log(float(num_scales - 1)) - 0.85)
    return c_init


@register(**_KW, summary="Minibatch optimal-transport coupling: noise reordered to the exact OT partner "
                         "of each data row (squared Euclidean cost)")
def ot_pair(x: Tensor, noise: Tensor) -> Tensor:
    r"""``noise`` reordered so that row i is ``x[i]``'s partner in the exact OT plan between the two
    minibatches (uniform weights, squared Euclidean cost on the flattened samples).

    The plan of two uniform minibatches of one size is a permutation (Birkhoff), found here by
    ``scipy.optimize.linear_sum_assignment`` in float64 (on minus the dot products, which has the same
    optimal permutation as the squared distances); the pairing is not differentiated
    (the cost is detached) but the returned rows are ``noise``'s, so gradients reach ``noise``. This
    runs on the host (a sync); it prepares a batch, it is not part of a loss. Paper: sLCT, arXiv
    2502.01441 (OT coupling of data and noise).

    Example::

        >>> ot_pair(torch.tensor([[0.0], [10.0]]), torch.tensor([[9.0], [1.0]]))
        tensor([[1.],
                [9.]])
    """
    from scipy.optimize import linear_sum_assignment

    check_batch_tensor("x", x)
    check_batch_tensor("noise", noise)
    if noise.shape[0] != x.shape[0]:
        raise ValueError(f"Invalid noise: batch size {noise.shape[0]} (accepted: x's batch size, {x.shape[0]})")
    a = x.detach().reshape(x.shape[0], -1).double()
    b = noise.detach().reshape(noise.shape[0], -1).double()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"Invalid noise: {b.shape[1]} entries per sample (accepted: as x, {a.shape[1]})")
    # ||a_i - b_j||^2 = ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j, and over a permutation the norms add up to a
    # constant: the plan minimising the squared distances maximises the dot products (and the solver is
    # 2-5x faster on this cost)
    _, cols = linear_sum_assignment((a @ b.T).neg_().cpu().numpy())
    return noise[torch.from_numpy(cols).to(noise.device)]
