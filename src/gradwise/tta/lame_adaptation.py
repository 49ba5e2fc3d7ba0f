"""LAME (Boudiaf, Mueller, Ben Ayed & Bertinetto, "Parameter-free Online Test-time Adaptation", CVPR 2022,
arXiv 2201.05718; authors' code github.com/fiveai/LAME, ``src/adaptation/lame.py`` at commit d2e5f63).

LAME adapts a classifier's *outputs*, not its weights: on each unlabeled test batch it replaces the
predicted class probabilities by soft assignments that stay close to them while agreeing with the
assignments of neighbouring points in feature space.

Only the paper's abstract was readable in the stored text; the objective and the solver below follow
the authors' released code, which this module reproduces (golden data from their functions in float64,
``tests/data/lame_golden.pt``).

Objective and solver (authors' ``laplacian_optimization``). With ``p_i`` the model's probabilities,
``a_i = -log(p_i + 1e-10)`` the unary term, ``W`` an ``[N, N]`` affinity and ``lambda`` its weight, the
assignments ``Y`` (rows on the simplex) minimize the Laplacian-regularized likelihood

    E(Y) = sum_i a_i . y_i - lambda sum_ij W_ij y_i . y_j + sum_i y_i . log y_i,

by the concave-convex procedure: linearizing the (concave, for PSD ``W``) pairwise term at the current
``Y`` and minimizing the rest in closed form gives the fixed-point update

    Y^0 = softmax(-A),        Y^{t+1} = softmax(-A + lambda W Y^t)   (row-wise).

After each update their code evaluates ``E_t = sum(A * Y^{t+1} - lambda P_t * Y^{t+1}
+ Y^{t+1} log max(Y^{t+1}, 1e-20))`` with ``P_t = lambda W Y^t`` (so ``lambda^2`` on the pairwise term,
at the *previous* ``Y``, as they write it; the same for their default ``lambda = 1``) and stops at
step ``t >= 2`` when ``|E_t - E_{t-1}| <= 1e-8 |E_{t-1}|``, or after ``max_steps`` updates.

Affinities (authors' ``kNN_affinity``, ``rbf_affinity``, ``linear_affinity``), on the features ``X``:

- ``"knn"``: ``W_ij = 1`` if ``j`` is one of the ``knn`` nearest other points of ``i`` (Euclidean), else
  0; not symmetric.
- ``"rbf"`` (their default): ``W_ij = exp(-|x_i - x_j|^2 / (2 sigma^2))`` with ``sigma`` the mean over
  ``i`` of the distance from ``x_i`` to its ``knn``-th nearest point *counting ``x_i`` itself* (their
  ``topk(knn)`` includes the zero self-distance), i.e. its ``(knn - 1)``-th nearest other point. The
  diagonal stays (self-affinity ``W_ii = 1``): their mask that would remove it is commented out.
- ``"linear"``: ``W = X X^T``.

:func:`lame` L2-normalizes the features before the affinity and optionally symmetrizes it
(``(W + W^T) / 2``), as their ``LAME.run_step`` does; the defaults (``rbf``, ``knn=5``,
``force_symmetry=False``, ``lambda=1``, 100 steps) are theirs (``src/config/defaults.py``).

Departures from the authors' code (none changes a result on their inputs, except where noted):

- ``"knn"`` excludes each point itself explicitly (its distance set to +inf) where they drop the first
  column of ``topk``: the same unless two points coincide, where their tie order decides which one is
  dropped. Its ``W`` has the features' dtype and device (theirs is always float32).
- ``"rbf"``: the denominator ``2 sigma^2`` is clamped at the dtype's smallest normal number, so that
  features whose ``knn`` nearest points all coincide (``sigma = 0``) give the limit kernel (1 where the
  distance is 0, else 0) instead of their NaNs. ``knn=1`` with ``"rbf"`` is refused: it always gives
  ``sigma = 0`` (the point itself).
- Distances use the Gram expansion ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (one matmul; the diagonal set to
  exactly 0) where they subtract all pairs (an ``[N, N, d]`` tensor): 40x faster at N = 256, d = 64,
  equal to 1e-15 in float64; in float32, distances between nearly coinciding points (closer than about
  1e-3 for unit-norm features) carry an absolute error of about 1e-4.
- The energy is computed in closed form, ``-sum_i logsumexp(z_i) + (1 - lambda) sum(Y * P)`` with
  ``z = P - A`` (as ``log Y = z - logsumexp(z)`` and rows of ``Y`` sum to 1), equal to theirs to rounding
  (their ``clip(1e-20)`` changes a term by < 4e-21), in eight small tensor ops per step. On the golden
  cases (float64) every stopping step is theirs; in float32 their 1e-8 relative test needs two energies
  equal to about the last bit, so there the stopping step may differ from theirs by rounding.
- The stopping test reads the energy back to the host each step on CPU, as their ``.item()`` does (free
  there). On an accelerator it is read back only every 10 steps (in float64, as their Python floats;
  float32 on MPS), and the steps between a convergence and that read keep ``Y`` frozen
  (``torch.where``): the same result with up to 9 wasted steps and 10x fewer host syncs.
- Inputs are checked (shapes, an empty batch, ``knn >= 1``, the affinity name) with clear errors.

Cost (``benchmarks/lame_step.py``, docs/benchmarks.md): about 25 small tensor ops plus eight per
solver step, so on a small CNN LAME is 1.3-1.6x the forward pass at N = 64-256 but 3-4x it
at N = 8, where per-op overhead dominates.

:class:`LAME` wraps any classifier: its forward runs the model, takes the features at the input of the
classification head (default: the model's last ``nn.Linear``, captured by a forward hook) and returns
``log Y`` (the log-softmax of the final update's argument, so no ``log(0)``); a head input of more than
2 dims is flattened per row. It changes no weights, needs no gradients and works under
``torch.no_grad``. As the authors' ``NonAdaptiveMethod`` does, it puts the model in eval mode when built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_bool, check_choice, check_int, check_real
from gradwise.registry import register
from gradwise.tta._common import resolve_head

__all__ = ["lame_affinity", "laplacian_optimization", "lame", "LAME"]

PAPER = "Parameter-free Online Test-time Adaptation"
CODE = "https://github.com/fiveai/LAME"
AFFINITIES = ("rbf", "knn", "linear")
_UNARY_EPS = 1e-10  # their -log(p + 1e-10)
_RTOL = 1e-8        # their convergence test |E - E_old| <= 1e-8 |E_old|
_SYNC_EVERY = 10    # accelerators: read the convergence flag back every this many steps


def _check_matrix(name: str, t, rows: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"Invalid {name}: {shape} (accepted: a 2-D floating-point tensor)")
    if t.shape[0] == 0:
        raise ValueError(f"Invalid {name}: an empty batch of shape {tuple(t.shape)} (accepted: at least 1 row)")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"Invalid {name}: {t.shape[0]} rows (accepted: as many rows as the batch, {rows})")
    return t


def _check_knn(knn, affinity: str) -> int:
    # rbf with knn=1: sigma is the distance of each point to itself, always 0
    return check_int("knn", knn, 2 if affinity == "rbf" else 1)


def _sq_distances(x: torch.Tensor) -> torch.Tensor:
    # |x_i|^2 + |x_j|^2 - 2 x_i.x_j: one matmul (their torch.norm(X[None] - X[:, None]) builds [N, N, d]);
    # exact zeros on the diagonal, clamped at 0 off it
    g = x @ x.T
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * g).clamp_min_(0)
    return d2.fill_diagonal_(0)


def lame_affinity(feats: torch.Tensor, affinity: str = "rbf", knn: int = 5) -> torch.Tensor:
    """LAME's ``[N, N]`` affinity of the features ``feats`` ``[N, d]``, used as given (:func:`lame`
    normalizes them first): ``"rbf"`` (Gaussian, bandwidth the mean distance to the ``knn``-th nearest
    point counting the point itself; keeps self-affinity 1), ``"knn"`` (1 for each point's ``knn``
    nearest other points) or ``"linear"`` (``feats @ feats.T``). See the module docstring."""
    affinity = check_choice("affinity", affinity, AFFINITIES)
    knn = _check_knn(knn, affinity)
    x = _check_matrix("feats", feats)
    n = x.shape[0]
    if affinity == "linear":
        return x @ x.T
    d2 = _sq_distances(x)
    if affinity == "knn":
        idx = d2.fill_diagonal_(float("inf")).topk(min(knn, n - 1), dim=-1, largest=False).indices
        return torch.zeros_like(d2).scatter_(-1, idx, 1.0)
    kth = d2.topk(min(knn, n), dim=-1, largest=False).values[:, -1].sqrt()
    denom = (2 * kth.mean().square()).clamp_min(torch.finfo(x.dtype).tiny)
    return torch.exp(-d2 / denom)


def _sync_every(device: torch.device) -> int:
    """How many steps between host reads of the stopping test: each step on CPU (a read is free there)."""
    return 1 if device.type == "cpu" else _SYNC_EVERY


def _step(unary: torch.Tensor, kern: torch.Tensor, y: torch.Tensor, bound_lambda: float):
    """One update and its energy: ``z = lambda W Y - A``, ``Y' = softmax(z)`` and their
    ``sum(A*Y' - lambda*P*Y' + Y' log Y')`` (``P = lambda W Y``), written as ``-sum_i lse(z_i) +
    (1 - lambda) sum(Y'*P)`` since ``log Y' = z - lse(z)`` and rows of ``Y'`` sum to 1: equal to
    rounding (their ``clip(1e-20)`` changes it by < 4e-21 per entry), with ``lse(z_i) = z_i0 - log Y'_i0``
    read off the log-softmax: eight small tensor ops a step when lambda = 1."""
    pairwise = kern @ y
    z = pairwise - unary
    logy = z.log_softmax(-1)
    y = logy.exp()
    e = (logy[:, 0] - z[:, 0]).sum()
    if bound_lambda != 1.0:
        e = e + (1.0 - bound_lambda) * (y * pairwise).sum()
    return z, y, e


def _laplacian_logits(unary: torch.Tensor, kernel: torch.Tensor, bound_lambda: float,
                      max_steps: int) -> torch.Tensor:
    """The argument ``z`` of the last softmax: ``Y = softmax(z)``."""
    z = -unary
    y = z.softmax(-1)
    kern = kernel if bound_lambda == 1.0 else bound_lambda * kernel  # their lambda * (W @ Y), folded
    if _sync_every(unary.device) == 1:
        old = float("inf")
        for i in range(max_steps):
            z, y, e = _step(unary, kern, y, bound_lambda)
            e = e.item()  # their .item(): one host read per step
            if i > 1 and abs(e - old) <= _RTOL * abs(old):
                break
            old = e
        return z
    # accelerators: the same steps, Y frozen once converged, the flag read back every _SYNC_EVERY steps
    edt = torch.float32 if unary.device.type == "mps" else torch.float64  # their Python-float test
    old = torch.full((), float("inf"), dtype=edt, device=unary.device)
    done = torch.zeros((), dtype=torch.bool, device=unary.device)
    for i in range(max_steps):
        z_new, y_new, e = _step(unary, kern, y, bound_lambda)
        e = e.to(edt)
        z, y = torch.where(done, z, z_new), torch.where(done, y, y_new)
        if i > 1:
            done = done | ((e - old).abs() <= _RTOL * old.abs())
        old = torch.where(done, old, e)
        if (i + 1) % _SYNC_EVERY == 0 and bool(done):
            break
    return z


def laplacian_optimization(unary: torch.Tensor, kernel: torch.Tensor, *, bound_lambda: float = 1.0,
                           max_steps: int = 100) -> torch.Tensor:
    """LAME's concave-convex solver: from ``Y = softmax(-unary)``, iterate
    ``Y <- softmax(-unary + bound_lambda * kernel @ Y)`` until the energy's relative change is at most
    1e-8 (from the third step on) or ``max_steps`` updates. ``unary`` is ``[N, K]`` (``-log p``),
    ``kernel`` ``[N, N]``; returns ``Y`` ``[N, K]``. See the module docstring."""
    unary = _check_matrix("unary", unary)
    kernel = _check_matrix("kernel", kernel, unary.shape[0])
    if kernel.shape[1] != unary.shape[0]:
        raise ValueError(f"Invalid kernel: shape {tuple(kernel.shape)} (accepted: [N, N] with N = "
                         f"{unary.shape[0]}, the rows of unary)")
    bound_lambda = check_real("bound_lambda", bound_lambda)
    max_steps = check_int("max_steps", max_steps, 0)
    return _laplacian_logits(unary, kernel, bound_lambda, max_steps).softmax(-1)


def _lame_logits(probs, feats, affinity, knn, force_symmetry, bound_lambda, max_steps) -> torch.Tensor:
    affinity = check_choice("affinity", affinity, AFFINITIES)
    knn = _check_knn(knn, affinity)
    force_symmetry = check_bool("force_symmetry", force_symmetry)
    bound_lambda = check_real("bound_lambda", bound_lambda)
    max_steps = check_int("max_steps", max_steps, 0)
    probs = _check_matrix("probs", probs)
    feats = _check_matrix("feats", feats)
    if feats.shape[0] != probs.shape[0]:
        raise ValueError(f"Invalid feats: {feats.shape[0]} rows (accepted: one row per row of probs, "
                         f"{probs.shape[0]})")
    unary = -(probs + _UNARY_EPS).log()
    kernel = lame_affinity(F.normalize(feats, p=2, dim=-1), affinity, knn).to(unary.dtype)
    if force_symmetry:
        kernel = 0.5 * (kernel + kernel.T)
    return _laplacian_logits(unary, kernel, bound_lambda, max_steps)


def lame(probs: torch.Tensor, feats: torch.Tensor, *, affinity: str = "rbf", knn: int = 5,
         force_symmetry: bool = False, bound_lambda: float = 1.0, max_steps: int = 100) -> torch.Tensor:
    """LAME's adapted assignments ``Y`` ``[N, K]`` of a batch with class probabilities ``probs`` ``[N, K]``
    and features ``feats`` ``[N, d]``: unary ``-log(probs + 1e-10)``, affinity of the L2-normalized
    features (symmetrized if ``force_symmetry``), then :func:`laplacian_optimization`. As the authors'
    ``LAME.run_step``; see the module docstring."""
    return _lame_logits(probs, feats, affinity, knn, force_symmetry, bound_lambda, max_steps).softmax(-1)


@register(kind="test-time-adaptation", name="LAME", paper=PAPER, year=2022, arxiv="2201.05718", code=CODE,
          summary="LAME: adapts a classifier's outputs (not its weights) to a test batch by "
                  "Laplacian-regularized maximum likelihood over feature-space neighbours")
class LAME(nn.Module):
    """LAME (Boudiaf et al., "Parameter-free Online Test-time Adaptation", CVPR 2022, arXiv 2201.05718;
    authors' code github.com/fiveai/LAME @d2e5f63) around a classifier ``model`` (logits ``[N, K]``).

    ``forward(x)`` returns ``log Y``, the log of :func:`lame`'s assignments for the batch: with
    ``p = softmax(model(x))``, ``A = -log(p + 1e-10)`` and ``W`` the affinity of the L2-normalized input
    of ``head`` (default: the model's last ``nn.Linear``, read by a forward pre-hook; inputs of more than
    2 dims are flattened per row), ``Y`` is the fixed point of ``Y <- softmax(-A + bound_lambda W Y)``
    started at ``p``, which minimizes ``sum A.Y - bound_lambda sum_ij W_ij y_i.y_j + sum Y log Y``
    (details, stopping rule and departures: the module docstring). No weight changes and no
    gradients; the model is put in eval mode, as the authors' ``NonAdaptiveMethod`` does. The other
    arguments are :func:`lame`'s.

    Example::

        adapted = LAME(model)                     # features = input of the last nn.Linear
        with torch.no_grad():
            pred = adapted(x_test).argmax(-1)
    """

    def __init__(self, model: nn.Module, *, head: nn.Module | None = None, affinity: str = "rbf", knn: int = 5,
                 force_symmetry: bool = False, bound_lambda: float = 1.0, max_steps: int = 100):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
        head = resolve_head(model, head)
        self.affinity = check_choice("affinity", affinity, AFFINITIES)
        self.knn = _check_knn(knn, self.affinity)
        self.force_symmetry = check_bool("force_symmetry", force_symmetry)
        self.bound_lambda = check_real("bound_lambda", bound_lambda)
        self.max_steps = check_int("max_steps", max_steps, 0)
        self.model = model
        self._feats: list[torch.Tensor] = []
        self._hook = head.register_forward_pre_hook(self._capture)
        self.eval()

    def _capture(self, module, args) -> None:
        self._feats.append(args[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._feats.clear()
        try:
            logits = self.model(x)
            if not self._feats:
                raise RuntimeError("LAME: the head was not called during the model's forward, so there are "
                                   "no features (pass head=, the module whose input is the features)")
            feats = self._feats[-1]
        finally:
            self._feats.clear()
        feats = feats.reshape(feats.shape[0], -1) if feats.dim() > 2 else feats
        z = _lame_logits(logits.softmax(-1), feats, self.affinity, self.knn, self.force_symmetry,
                         self.bound_lambda, self.max_steps)
        return z.log_softmax(-1)

    def extra_repr(self) -> str:
        return (f"affinity={self.affinity!r}, knn={self.knn}, force_symmetry={self.force_symmetry}, "
                f"bound_lambda={self.bound_lambda}, max_steps={self.max_steps}")
