"""AMCL: multi-head contrastive loss with pair-adaptive, head-wise temperatures and their regularizer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise.losses._common import LossModule, reduce_loss
from gradwise.registry import register

__all__ = ["amcl_loss", "AMCLLoss", "AMCLTemperature"]

_NEGATIVES = ("max", "logsumexp")


def _check_views(z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
    for name, z in (("z1", z1), ("z2", z2)):
        if not torch.is_tensor(z) or not z.is_floating_point():
            raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [H, N, D] or [N, D], got "
                             f"{type(z).__name__ if not torch.is_tensor(z) else z.dtype}")
        if z.dim() not in (2, 3):
            raise ValueError(f"Invalid {name}: expected shape [H, N, D] (heads, batch, dim) or [N, D], got "
                             f"{tuple(z.shape)}")
    if z2.shape != z1.shape:
        raise ValueError(f"Invalid z2: expected the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z1.dim() == 2:
        z1, z2 = z1[None], z2[None]
    if z1.shape[1] < 2:
        raise ValueError(f"Invalid z1: need a batch of at least 2 pairs to have negatives, got {z1.shape[1]}")
    return z1, z2


def _omega(tau: Tensor, dim: float) -> Tensor:
    """The temperature regularizer ``Omega(tau) = 1/tau + (d/2) log tau`` (Gaussian negative log-likelihood)."""
    return 1.0 / tau + 0.5 * dim * torch.log(tau)


@register(kind="loss", paper="Adaptive Multi-head Contrastive Learning", year=2024, arxiv="2310.05615",
          code="https://github.com/LeiWangR/cl",
          summary="AMCL: sum over projection heads of a contrastive loss with per-pair temperatures, regularized")
def amcl_loss(z1: Tensor, z2: Tensor, tau: Tensor | float, *, beta: float = 0.1, negatives: str = "max",
              omega_dim: float | None = None, reduction: str = "mean", validate: bool = True) -> Tensor:
    r"""Adaptive Multi-head Contrastive Learning loss (Wang et al., ECCV 2024, arXiv 2310.05615), SimCLR form.

    Paper: "Adaptive Multi-head Contrastive Learning". Authors' code:
    https://github.com/LeiWangR/cl (``src/amcl_components/adaptive_temperature.py``
    and ``AMCLSimCLRModel`` in ``src/models.py``). That code does not run as
    released (``nn.ModuleList`` of ``nn.Parameter``; ``scaled_sim.size(1)`` of
    a 1-D tensor) and its training step has no negatives, so this function
    follows the paper's loss (its Table 2, eq. 2.1, shown in the repository's
    README) and takes from the code the temperature network, the bounds and
    the regularizer's form and weight. No golden values: nothing of the
    authors' loss runs.

    Inputs: the ``C`` projection heads' features of the two views,
    ``z1, z2`` of shape ``[C, N, D]`` (``[N, D]`` is one head), and the
    temperatures ``tau`` of every pair, shape broadcastable to
    ``[C, 2N, 2N]`` (rows: anchors, columns: candidates, both in the order
    ``[view 1; view 2]``), e.g. from :class:`AMCLTemperature`, or one float.
    Each of the ``2N`` views is an anchor; with ``s^c`` the cosine similarity
    in head ``c``, ``i+`` the other view of the anchor's image and ``n`` over
    the ``2N - 2`` views of the other images (SimCLR's negatives):

    .. math::

        \ell_i = \sum_{c=1}^{C} \Big( -\frac{s^c_{i,i+}}{\tau^c_{i,i+}}
                 + \frac{s^c_{i,n^*}}{\tau^c_{i,n^*}}
                 + \beta\,\Omega(\tau^c_{i,i+}) - \beta\,\Omega(\tau^c_{i,n^*}) \Big),
        \qquad n^* = \arg\max_n s^c_{i,n},

    .. math::

        \Omega(\tau) = \frac{1}{\tau} + \frac{d}{2} \log \tau .

    ``Omega`` is the negative log-likelihood of an isotropic Gaussian with
    variance ``tau`` in ``d`` dimensions for ``||z_i - z_j||^2 = 2 - 2s``
    (the paper's MLE view: temperature = variance): with ``beta = 1`` the
    positive term ``(1 - s)/tau + (d/2) log tau`` is minimized by the ML
    variance ``tau = 2(1 - s)/d``. The loss per image is the mean of its two
    anchors' ``l_i``; ``reduction`` over the ``N`` images.

    Options and choices where the paper is open:

    * ``negatives="max"`` (default) is eq. 2.1 as printed: the hardest
      negative ``n*`` (largest similarity) with its own temperature.
      ``negatives="logsumexp"`` puts ``log sum_{j != i} exp(s_ij / tau_ij)``
      (positive included: SimCLR's NT-Xent with per-pair temperatures) in
      place of the hardest-negative term; with one head and a constant
      ``tau`` it is exactly NT-Xent. The regularizer uses ``n*`` in both.
    * ``omega_dim`` is ``d`` in ``Omega``; default ``D``, the heads' feature
      size (the code writes ``scaled_sim.size(1) / 2``, which fails on its
      1-D similarities; the Gaussian likelihood has ``d/2``).
    * ``beta = 0.1`` is the code's default. With ``beta < 1`` the positive
      term is not bounded below in ``tau`` when ``s > beta``; the
      temperatures stay finite only through their range (the code's
      sigmoid onto ``[1e-5, 2]``, as in :class:`AMCLTemperature`).
    * Heads are summed (eq. 2.1), not averaged. Features are L2-normalized
      here; ``tau`` should be computed from the unnormalized features, as in
      the code's temperature network.

    Example::

        >>> temp = AMCLTemperature(dim=128, num_heads=3)
        >>> z1, z2 = heads(encoder(view1)), heads(encoder(view2))       # [3, N, 128] each
        >>> loss = amcl_loss(z1, z2, temp(z1, z2), beta=0.1)
    """
    z1, z2 = _check_views(z1, z2)
    if negatives not in _NEGATIVES:
        raise ValueError(f"Invalid negatives: {negatives!r} (accepted: 'max' or 'logsumexp')")
    if not (beta >= 0.0 and math.isfinite(beta)):
        raise ValueError(f"Invalid beta: {beta} (accepted: 0 <= beta < inf)")
    C, N, D = z1.shape
    dim = float(D if omega_dim is None else omega_dim)
    if not (dim > 0 and math.isfinite(dim)):
        raise ValueError(f"Invalid omega_dim: {omega_dim} (accepted: None or 0 < omega_dim < inf)")
    cdtype = torch.promote_types(z1.dtype, torch.float32)
    if torch.is_tensor(tau):
        if not tau.is_floating_point():
            raise ValueError(f"Invalid tau: expected a floating-point tensor, got {tau.dtype}")
        try:
            tau = torch.broadcast_to(tau, (C, 2 * N, 2 * N)).to(cdtype)
        except RuntimeError:
            raise ValueError(f"Invalid tau: shape {tuple(tau.shape)} does not broadcast to [C, 2N, 2N] = "
                             f"{[C, 2 * N, 2 * N]}") from None
        if validate and not bool((tau > 0).all() & torch.isfinite(tau).all()):
            raise ValueError("Invalid tau: temperatures must be positive and finite")
    else:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (0.0 < tau < math.inf):
            raise ValueError(f"Invalid tau: {tau!r} (accepted: 0 < tau < inf, or a tensor of temperatures)")
        tau = torch.full((C, 2 * N, 2 * N), float(tau), dtype=cdtype, device=z1.device)

    z = F.normalize(torch.cat([z1, z2], 1).to(cdtype), dim=-1)  # [C, 2N, D]
    sim = z @ z.transpose(1, 2)  # [C, 2N, 2N]
    idx = torch.arange(2 * N, device=z.device)
    pos_idx = (idx + N) % (2 * N)
    eye = idx[:, None] == idx[None, :]
    pos_mask = idx[None, :] == pos_idx[:, None]
    neg_mask = ~(eye | pos_mask)  # [2N, 2N]

    s_pos = sim[:, idx, pos_idx]  # [C, 2N]
    t_pos = tau[:, idx, pos_idx]
    hard = sim.masked_fill(~neg_mask, -math.inf).argmax(-1, keepdim=True)  # [C, 2N, 1]
    s_hard = sim.gather(-1, hard).squeeze(-1)
    t_hard = tau.gather(-1, hard).squeeze(-1)
    if negatives == "max":
        contrast = s_hard / t_hard
    else:
        contrast = torch.logsumexp((sim / tau).masked_fill(eye, -math.inf), dim=-1)
    per_anchor = -s_pos / t_pos + contrast + beta * (_omega(t_pos, dim) - _omega(t_hard, dim))  # [C, 2N]
    per_anchor = per_anchor.sum(0)
    per_image = 0.5 * (per_anchor[:N] + per_anchor[N:])
    return reduce_loss(per_image, reduction).to(z1.dtype)


class AMCLLoss(LossModule):
    """Module twin of :func:`amcl_loss` (AMCL multi-head adaptive-temperature loss); see it for the math.

    ``AMCLLoss(beta=0.1)(z1, z2, tau)``; the temperatures come from an
    :class:`AMCLTemperature` (a separate module, since it has parameters).
    """

    function = amcl_loss


class AMCLTemperature(nn.Module):
    r"""AMCL's pair-adaptive, head-wise temperature network (for :func:`amcl_loss`; arXiv 2310.05615).

    As in the authors' ``AdaptiveTemperature`` (https://github.com/LeiWangR/cl):
    for head ``c`` and a pair of (unnormalized) head features ``z_i, z_j``,

    .. math::

        \tau^c_{ij} = \tau_{min} + (\tau_{max} - \tau_{min})\,
                      \sigma\big(w_2^{c\top} \mathrm{ReLU}(W_1^c [z_i; z_j] + b_1^c) + b_2^c\big),

    a two-layer MLP (``2D -> hidden -> 1``, hidden 128) per head, squashed
    onto ``[tau_min, tau_max] = [1e-5, 2]``. ``shared=True`` uses one MLP for
    all heads (the paper's figure draws one shared MLP; the code has one per
    head, the default here). Layers are initialized as ``nn.Linear``.

    ``forward(z1, z2)`` with ``z1, z2`` of shape ``[C, N, D]`` returns the
    temperatures of all pairs of the ``2N`` views ``[z1; z2]``, shape
    ``[C, 2N, 2N]`` (row: anchor ``i``, column: candidate ``j``), the input
    :func:`amcl_loss` expects. The first layer is split into its ``z_i`` and
    ``z_j`` halves so no ``[.., 2D]`` pair tensor is built; memory is
    ``C * (2N)^2 * hidden`` for the hidden activations.
    """

    def __init__(self, dim: int, num_heads: int = 3, *, hidden: int = 128, tau_min: float = 1e-5,
                 tau_max: float = 2.0, shared: bool = False) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_heads", num_heads), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Invalid {name}: {v!r} (accepted: integer >= 1)")
        if not 0.0 < tau_min < tau_max < math.inf:
            raise ValueError(f"Invalid tau_min: {tau_min} (accepted: 0 < tau_min < tau_max={tau_max} < inf)")
        self.dim, self.num_heads, self.hidden = dim, num_heads, hidden
        self.tau_min, self.tau_max, self.shared = float(tau_min), float(tau_max), shared
        m = 1 if shared else num_heads
        self.w1 = nn.Parameter(torch.empty(m, 2 * dim, hidden))
        self.b1 = nn.Parameter(torch.empty(m, hidden))
        self.w2 = nn.Parameter(torch.empty(m, hidden))
        self.b2 = nn.Parameter(torch.empty(m))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default: uniform in ``+-1/sqrt(fan_in)`` for weights and biases."""
        b1 = 1.0 / math.sqrt(2 * self.dim)
        b2 = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            self.w1.uniform_(-b1, b1)
            self.b1.uniform_(-b1, b1)
            self.w2.uniform_(-b2, b2)
            self.b2.uniform_(-b2, b2)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, hidden={self.hidden}, tau_min={self.tau_min}, "
                f"tau_max={self.tau_max}, shared={self.shared}")

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        z1, z2 = _check_views(z1, z2)
        if z1.shape[0] != self.num_heads or z1.shape[2] != self.dim:
            raise ValueError(f"Invalid z1: expected shape [{self.num_heads}, N, {self.dim}], got {tuple(z1.shape)}")
        z = torch.cat([z1, z2], 1).to(self.w1.dtype)  # [C, 2N, D]
        a = z @ self.w1[:, : self.dim]  # [C, 2N, hidden] (anchor half)
        b = z @ self.w1[:, self.dim:]  # (candidate half)
        h = F.relu(a[:, :, None, :] + b[:, None, :, :] + self.b1[:, None, None, :])  # [C, 2N, 2N, hidden]
        out = (h @ self.w2[:, None, :, None]).squeeze(-1) + self.b2[:, None, None]
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(out)
