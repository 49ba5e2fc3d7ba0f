"""EnsLoss (Dai, 2024/2025): each minibatch trains with a freshly drawn random
convex, classification-calibrated loss, given directly by its loss-derivative.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_real
from gradwise.losses._common import LossModule, check_logits_target, check_reduction, reduce_loss
from gradwise.registry import register

__all__ = ["ensloss", "EnsLoss", "ensloss_ovr", "EnsLossOVR", "ensloss_derivatives"]

PAPER = "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification"
CODE = "https://github.com/statmlben/ensLoss"
EPS = 1e-6            # the authors' final shift: every derivative strictly negative
MAX_SLOPE = 1.0       # the authors' clip: derivatives >= -1


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Invalid generator: expected a torch.Generator or None, got {type(generator).__name__}")


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _bc_inv(e: Tensor, lam: float) -> Tensor:
    """Inverse Box-Cox transform: ``exp(e)`` for ``lam = 0``, else ``(1 + lam e)_+^(1/lam)``.

    Written as ``exp(log1p(lam e) / lam)`` so small ``|lam|`` tends to ``exp(e)``
    continuously; where ``1 + lam e <= 0`` it is 0 for ``lam > 0`` and +inf for
    ``lam < 0`` (as ``0 ** (1/lam)`` gives in the authors' code).
    """
    if lam == 0.0:
        return torch.exp(e)
    base = 1.0 + lam * e
    inside = torch.exp(torch.log1p(torch.where(base > 0, lam * e, torch.zeros_like(e))) / lam)
    edge = torch.full((), 0.0 if lam > 0 else math.inf, dtype=e.dtype, device=e.device)
    return torch.where(base > 0, inside, edge)


def _draw(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``n`` standard normal draws in float32, from ``generator`` (its device) or the default generator."""
    if generator is not None:
        return torch.randn(n, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    return torch.randn(n, device=device, dtype=torch.float32)


def _derivatives(z: Tensor, e: Tensor, lam: float, tail: bool, keep: Tensor | None = None) -> Tensor:
    """The authors' construction on flat margins ``z`` [M] from normal draws ``e`` [M] (detached).

    ``keep`` [M] (bool): only the kept margins and draws take part, as if the
    others were removed first; the others get 0. Done without a host sync:
    left-out margins and draws become NaN, which ``torch.sort`` puts last.
    """
    d = -_bc_inv(e, lam)
    if keep is not None:
        nan = torch.full((), math.nan, dtype=z.dtype, device=z.device)
        z = torch.where(keep, z, nan)
        d = torch.where(keep, d, nan.to(d.dtype))
    d = torch.sort(d).values.clamp_min(-MAX_SLOPE).to(z.dtype)      # ascending: steepest first
    order = torch.sort(z, stable=True).indices                      # smallest margin first
    g = torch.empty_like(z).scatter_(0, order, d)                   # rank matching: g non-decreasing in z
    if tail:
        g = g * z.clamp_min(1.0).reciprocal()                       # z > 1: g / z (superlinear tail)
    g = g - EPS
    return g if keep is None else torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))


def _check_noise(noise: Tensor | None, shape: tuple[int, ...]) -> None:
    if noise is not None and (not torch.is_tensor(noise) or not noise.is_floating_point()
                              or tuple(noise.shape) != shape):
        raise ValueError(f"Invalid noise: expected a floating-point tensor of shape {list(shape)} (the normal "
                         f"draws), got {tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__}")


def ensloss_derivatives(margins: Tensor, *, lam: float = 0.0, tail: bool = True,
                        generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
    r"""The random calibrated loss-derivatives EnsLoss draws for a batch of margins.

    ``margins`` [M] (``z_i = y_i f(x_i)``); returns ``g`` [M] (detached, the
    margins' dtype, float32 for half inputs) with ``g_i = phi'(z_i)`` for this
    batch's random loss ``phi``: ``-1 - 1e-6 <= g_i < 0``, and ``g`` is
    non-decreasing in ``z``. ``noise`` [M] supplies the standard normal draws
    (the drawn parameters) instead of ``generator``. See :func:`ensloss`.
    """
    if not torch.is_tensor(margins) or not margins.is_floating_point() or margins.dim() != 1:
        raise ValueError("Invalid margins: expected a 1-D floating-point tensor")
    lam = check_real("lam", lam)  # 0 = lognormal, the authors' default
    _check_generator(generator)
    _check_noise(noise, tuple(margins.shape))
    z = margins.detach().to(_work_dtype(margins))
    e = _draw(z.numel(), generator, z.device) if noise is None else noise.detach().to(z.device)
    return _derivatives(z, e, lam, tail)


def _signed_target(target: Tensor, n: int, validate: bool) -> Tensor:
    """Targets in {0, 1} or {-1, +1} (integer, bool or float), shape [N] or [N, 1] -> float signs [N]."""
    if not torch.is_tensor(target) or target.is_complex():
        raise ValueError(f"Invalid target: expected a tensor of labels in {{0, 1}} or {{-1, +1}}, got "
                         f"{type(target).__name__}")
    if target.numel() != n or target.dim() > 2 or (target.dim() == 2 and target.shape[1] != 1):
        raise ValueError(f"Invalid target: expected shape [{n}] or [{n}, 1] to match scores, got "
                         f"{tuple(target.shape)}")
    t = target.reshape(-1)
    if validate and t.numel():
        pos, zero, neg = (t == 1), (t == 0), (t == -1)
        bad, has0, hasm1 = torch.stack([(~(pos | zero | neg)).any(), zero.any(), neg.any()]).tolist()
        if bad or (has0 and hasm1):
            raise ValueError("Invalid target: labels must all be in {0, 1} or all in {-1, +1}")
    return t > 0


def _check_scores(scores: Tensor) -> None:
    if not torch.is_tensor(scores) or not scores.is_floating_point():
        raise ValueError(f"Invalid scores: expected a floating-point tensor of shape [N] or [N, 1], got "
                         f"{type(scores).__name__ if not torch.is_tensor(scores) else scores.dtype}")
    if scores.dim() not in (1, 2) or (scores.dim() == 2 and scores.shape[1] != 1):
        raise ValueError(f"Invalid scores: expected shape [N] or [N, 1], got {tuple(scores.shape)}")


@register(kind="loss", paper=PAPER, year=2024, arxiv="2409.00908", code=CODE,
          summary="EnsLoss: per batch a random convex calibrated loss-derivative (sorted lognormal draws) "
                  "on the margins y f(x); binary",
          info={"reliability": {"inputs": ("scores", "labels"), "labels": "binary", "seeded": True, "expected": {
              "label_float": ("finite", "float labels -1.0/+1.0 are read exactly; any other value is refused")}}})
def ensloss(scores: Tensor, target: Tensor, *, lam: float = 0.0, tail: bool = True,
            generator: torch.Generator | None = None, noise: Tensor | None = None, reduction: str = "mean",
            validate: bool = True) -> Tensor:
    r"""EnsLoss, binary classification (Dai, 2024): a random calibrated loss per minibatch.

    Paper: "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing
    Overfitting in Classification", Ben Dai, arXiv:2409.00908 (2024; ICML 2025).
    Authors' code: https://github.com/statmlben/ensLoss (``losses.py``, class
    ``ensLoss``; ``train.py``). This function follows that code (commit
    051d87d of ``losses.py``, the repository's newest file version);
    golden values in ``tests/data/ensloss_golden.pt`` come from running it
    (``tools/golden/make_ensloss_golden.py``).

    Idea: a convex loss ``phi`` is classification-calibrated iff
    ``phi'(0) < 0`` (Bartlett et al., 2006), and SGD sees ``phi`` only
    through ``phi'``; so instead of a fixed surrogate, every minibatch draws a
    random non-decreasing, negative loss-derivative and uses it ("doubly
    stochastic" gradients: random samples and random calibrated losses).

    Math (``scores`` ``f`` [N], labels ``y in {-1, +1}``, margins ``z_i = y_i f_i``).
    For each call (one minibatch)::

        e_1..e_N ~ N(0, 1) iid                         (float32; ``generator``, or ``noise``)
        d_j  = -BoxCox^{-1}(e_j; lam)                  lam = 0: -exp(e_j) (lognormal); else -(1 + lam e_j)_+^(1/lam)
        d_(1) <= ... <= d_(N)                          sorted, then clipped: max(d_(j), -1)
        g_i  = d_(rank of z_i among the batch's margins)     smallest margin gets the steepest slope
        g_i  = g_i / z_i  if z_i > 1                   superlinear tail (optional, ``tail``)
        g_i  = g_i - 1e-6
        loss_i = g_i * z_i                             g_i detached: d loss_i / d f_i = g_i y_i

    so ``g`` is a non-decreasing function of ``z`` (a convex loss), strictly
    negative (calibrated: ``phi'(0) < 0``; also non-increasing), with slopes in
    ``[-1 - 1e-6, -1e-6)``. The returned value is this linearization, not the
    value of a loss ``phi``: it has the right gradient, but is not a quantity
    to monitor (it is negative for correctly classified samples).

    Targets: ``{0, 1}`` (as the authors' code, which maps ``2 t - 1``) or
    ``{-1, +1}``; integer, bool or float; shape [N] or [N, 1] like ``scores``.
    ``1`` is the positive class in both codings (mixing 0 and -1 is rejected).

    Choices and departures from the authors' code:

    * ``generator`` (a ``torch.Generator``; its device is where the draws are
      made) replaces their global ``torch.randn``; with ``generator=None`` the
      default generator of ``scores``' device is used, so after
      ``torch.manual_seed(s)`` on CPU the draws are the authors' exactly.
      ``noise`` [N] passes the normal draws themselves (the drawn parameters).
    * ``lam`` is the Box-Cox parameter; their class fixes ``lam = 0``, and
      their trainer redraws it uniformly in ``[-1, 1)`` every
      ``ensLoss_per_epochs`` epochs, which all their experiment scripts switch
      off (``-1``). Computed as ``exp(log1p(lam e) / lam)``, continuous as
      ``lam -> 0``.
    * ties between margins get their derivatives in index order (stable sort);
      their ``torch.sort`` leaves that order unspecified.
    * their code moves the derivatives to ``"cuda"``; here they stay on
      ``scores``' device. Their unused ``dist``/``period`` attributes are left
      out.
    * the paper's full text was not available to check the construction
      against it; this follows the released code.
    * ``reduction`` in {'mean', 'sum', 'none'} (theirs: mean). Half precision
      is computed in float32 and cast back. ``validate=False`` skips the label
      check (one host sync).

    The authors' method is binary only (their CIFAR experiments use the 45
    class pairs); :func:`ensloss_ovr` is a one-vs-rest extension (ours).

    Example::

        >>> f, y = torch.randn(32, requires_grad=True), torch.randint(0, 2, (32,))
        >>> ensloss(f, y, generator=torch.Generator().manual_seed(0)).backward()
    """
    _check_scores(scores)
    lam = check_real("lam", lam)  # 0 = lognormal, the authors' default
    _check_generator(generator)
    check_reduction(reduction)
    n = scores.shape[0]
    pos = _signed_target(target, n, validate)
    _check_noise(noise, (n,))
    s = scores.reshape(-1).to(_work_dtype(scores))
    z = torch.where(pos, s, -s)
    e = _draw(n, generator, s.device) if noise is None else noise.detach().to(s.device)
    g = _derivatives(z.detach(), e, lam, tail)
    return reduce_loss(g * z, reduction).to(scores.dtype)


class EnsLoss(LossModule):
    """Module twin of :func:`ensloss` (arXiv:2409.00908; see it for the construction).

    ``EnsLoss(generator=torch.Generator().manual_seed(0))(scores, target)``: the
    stored generator advances on every call, so each minibatch draws a new loss.
    """

    function = ensloss


@register(kind="loss", paper=PAPER, year=2024, arxiv="2409.00908", code=CODE,
          summary="EnsLoss one-vs-rest for K classes (our extension): one random calibrated loss per batch "
                  "applied to all N*K binary margins",
          info={"reliability": {"ignore_index": True, "seeded": True, "expected": {
              "neg_inf_other_class": ("nan", "the -inf class is a one-vs-rest margin of +inf, where the sampled "
                                             "surrogates are unbounded")}}})
def ensloss_ovr(logits: Tensor, target: Tensor, *, lam: float = 0.0, tail: bool = True,
                generator: torch.Generator | None = None, noise: Tensor | None = None, reduction: str = "mean",
                ignore_index: int = -100, validate: bool = True) -> Tensor:
    r"""EnsLoss for multi-class labels by one-vs-rest (our extension; the paper is binary only).

    Paper: "EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing
    Overfitting in Classification", Ben Dai, arXiv:2409.00908; authors' code
    https://github.com/statmlben/ensLoss has no multi-class version (their
    multi-class data sets are split into class pairs). See :func:`ensloss` for
    the binary construction, which this reuses unchanged.

    Math (``logits`` ``f`` [N, K], class ``y_i``): the K one-vs-rest binary
    problems have margins ``z_ik = f_ik`` if ``k = y_i`` else ``-f_ik``. One
    random calibrated loss ``phi`` is drawn per call for all ``N K`` margins
    together (``N K`` normal draws, sorted and rank-matched to the sorted
    margins, as :func:`ensloss` does for ``N``), and::

        loss_i = sum_k g_ik z_ik,   g_ik = phi'(z_ik) (detached)

    i.e. the one-vs-rest risk ``sum_k phi(z_ik)``, summed over classes and
    reduced over samples. Choices: one loss shared by the K problems (not one
    per class), so the K problems see the same surrogate, as in a fixed-loss
    one-vs-rest; the sum over classes (not the mean) keeps each binary
    problem's gradient at the binary scale.

    ``ignore_index`` rows take no part in the draw: ``N K`` normals are drawn
    (row-major, as ``generator`` fills ``[N, K]``; or ``noise`` [N, K]), the
    ignored rows' draws are discarded, and the kept rows' draws and margins
    are sorted and rank-matched among themselves (no host sync); ignored rows
    get loss 0 under ``reduction="none"``.

    Example::

        >>> logits, y = torch.randn(8, 10, requires_grad=True), torch.randint(0, 10, (8,))
        >>> ensloss_ovr(logits, y, generator=torch.Generator().manual_seed(0)).backward()
    """
    lam = check_real("lam", lam)  # 0 = lognormal, the authors' default
    _check_generator(generator)
    check_reduction(reduction)
    check_logits_target(logits, target, ignore_index, validate=validate)
    n, k = logits.shape
    _check_noise(noise, (n, k))
    x = logits.to(_work_dtype(logits))
    tgt = target.long()
    mask = None
    if ignore_index is not None:
        mask = tgt != ignore_index
        tgt = torch.where(mask, tgt, torch.zeros((), dtype=tgt.dtype, device=tgt.device))
    onehot = torch.zeros_like(x, dtype=torch.bool).scatter_(1, tgt[:, None], True)
    z = torch.where(onehot, x, -x)
    e = _draw(n * k, generator, x.device) if noise is None else noise.detach().reshape(-1).to(x.device)
    keep = None if mask is None else mask[:, None].expand(n, k).reshape(-1)
    g = _derivatives(z.detach().reshape(-1), e, lam, tail, keep)
    per = (g.view(n, k) * z).sum(1)
    return reduce_loss(per, reduction, mask).to(logits.dtype)


class EnsLossOVR(LossModule):
    """Module twin of :func:`ensloss_ovr` (arXiv:2409.00908; one-vs-rest, our extension).

    ``EnsLossOVR(generator=torch.Generator().manual_seed(0))(logits, target)``.
    """

    function = ensloss_ovr
