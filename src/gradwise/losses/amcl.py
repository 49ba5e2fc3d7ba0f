"""AMCL: multi-head contrastive loss with pair-adaptive, head-wise temperatures and their regularizer."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_choice, check_int, check_nonneg, check_positive, check_real
from gradwise.losses._common import NAN_FOR_INF_EMBEDDING, LossModule, reduce_loss
from gradwise.registry import register

__all__ = ["amcl_loss", "AMCLLoss", "AMCLTemperature"]

_NEGATIVES = ("max", "topk", "logsumexp")
_FORMS = ("dot", "concat")
_CODE = "https://github.com/LeiWangR/cl"


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
          code=_CODE,
          summary="AMCL: sum over projection heads of a contrastive loss with per-pair temperatures, regularized",
          info={"reliability": {"inputs": ("x", "other"), "labels": "none", "kwargs": {"tau": 0.5, "topk": 2},
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_EMBEDDING)}}})
def amcl_loss(z1: Tensor, z2: Tensor, tau: Tensor | float, *, beta: float = 1e-4, negatives: str = "topk",
              topk: int = 100, omega_dim: float | None = None, reduction: str = "mean",
              validate: bool = True) -> Tensor:
    r"""Adaptive Multi-head Contrastive Learning loss (Wang et al., ECCV 2024, arXiv 2310.05615), SimCLR form.

    Paper: "Adaptive Multi-head Contrastive Learning", Lei Wang, Piotr
    Koniusz, Tom Gedeon, Liang Zheng. Authors' code:
    https://github.com/LeiWangR/cl. Two releases: the first
    (``src/amcl_components/adaptive_temperature.py``, ``src/models.py``,
    2024) does not run; the v2.0 release (commit 755799db, ``amcl/losses.py``
    ``AMCLNTXentLoss``/``TemperatureHead``) runs and cites the paper's
    equations (2.1), (3) and (5).

    Checked against: eq. (2.1) as printed in the paper's Table 2 (reproduced
    in the repository's README); the v2.0 release's ``AMCLNTXentLoss``, run on
    random inputs (golden values in ``tests/data/amcl_golden.pt``, loss and
    gradients, ``negatives="topk"`` with :class:`AMCLTemperature`). The paper's
    own text beyond Table 2 was not readable here; what the v2.0 code says of
    eqs. (3) and (5) is taken from its docstrings.

    Inputs: the ``C`` projection heads' features of the two views,
    ``z1, z2`` of shape ``[C, N, D]`` (``[N, D]`` is one head), and the
    temperatures ``tau`` of every pair, shape broadcastable to
    ``[C, 2N, 2N]`` (rows: anchors, columns: candidates, both in the order
    ``[view 1; view 2]``), e.g. from :class:`AMCLTemperature`, or one float.
    Each of the ``2N`` views is an anchor; with ``s^c`` the cosine similarity
    in head ``c``, ``i+`` the other view of the anchor's image and ``n`` over
    the ``2N - 2`` views of the other images (SimCLR's negatives), eq. (2.1):

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
    anchors' ``l_i``; ``reduction`` over the ``N`` images. (The v2.0 code
    averages the two view directions and sums the heads: the same number.)

    ``negatives``:

    * ``"topk"`` (default, as the authors' released code trains): the
      "practical Top-k approximation" (eq. 5) of the v2.0 code
      (``topk=100``): the ``k = min(topk,
      2N - 2)`` most similar negatives ``K`` replace ``n*``,

      .. math::

          \frac{1}{k}\sum_{n \in K} \frac{s^c_{i,n}}{\tau^c_{i,n}}
          \;\text{ and }\; -\beta \sum_{n \in K} \big(\log\tau^c_{i,n} + 1/\tau^c_{i,n}\big)

      (the negative set's regularizer of the code has no ``d/2``, so
      ``topk=1`` differs from ``"max"`` by ``beta (d/2 - 1) log tau_{n*}``;
      we follow the code here).
    * ``"max"``: eq. (2.1) as printed, the hardest negative ``n*`` with its
      own temperature.
    * ``"logsumexp"`` (ours, not in the paper or code): ``log sum_{j != i}
      exp(s_ij / tau_ij)`` (positive included: SimCLR's NT-Xent with per-pair
      temperatures) in place of the hardest-negative term; with one head and a
      constant ``tau`` it is exactly NT-Xent. The regularizer uses ``n*``.

    Other choices: ``omega_dim`` is ``d`` in ``Omega``; default ``D``, the
    heads' feature size, as in the v2.0 code (``proj_dim``). ``beta = 1e-4``
    is the v2.0 code's reference value for SimCLR/MoCo (1e-6 for Barlow
    Twins); the first release used 0.1. With ``beta < 1`` the positive term
    is not bounded below in ``tau`` when ``s > beta``: the temperatures stay
    finite only through their range (``[1e-5, 2]`` in :class:`AMCLTemperature`).
    Heads are summed (eq. 2.1), not averaged. Features are L2-normalized here;
    the temperature network normalizes its own input (``form="dot"``).
    Computation is in float32 at least (the code's choice, since
    ``1/tau`` reaches 1e5); the result has ``z1``'s dtype.

    Example::

        >>> temp = AMCLTemperature(dim=128, num_heads=3)
        >>> z1, z2 = heads(encoder(view1)), heads(encoder(view2))       # [3, N, 128] each
        >>> loss = amcl_loss(z1, z2, temp(z1, z2))          # top-100 negatives, beta = 1e-4
    """
    z1, z2 = _check_views(z1, z2)
    check_choice("negatives", negatives, _NEGATIVES)
    check_int("topk", topk, lo=1)
    check_nonneg("beta", beta)
    C, N, D = z1.shape
    dim = float(D) if omega_dim is None else check_positive("omega_dim", omega_dim)  # None: the embedding size
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
        tau = check_positive("tau", tau)  # or a tensor of temperatures (above)
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
    if negatives == "topk":
        k = min(topk, 2 * N - 2)
        s_top, top = sim.masked_fill(~neg_mask, -math.inf).topk(k, dim=-1)  # [C, 2N, k], only real negatives
        t_top = tau.gather(-1, top)
        contrast = (s_top / t_top).mean(-1)
        reg_neg = (torch.log(t_top) + 1.0 / t_top).sum(-1)
    else:
        hard = sim.masked_fill(~neg_mask, -math.inf).argmax(-1, keepdim=True)  # [C, 2N, 1]
        s_hard = sim.gather(-1, hard).squeeze(-1)
        t_hard = tau.gather(-1, hard).squeeze(-1)
        reg_neg = _omega(t_hard, dim)
        if negatives == "max":
            contrast = s_hard / t_hard
        else:
            contrast = torch.logsumexp((sim / tau).masked_fill(eye, -math.inf), dim=-1)
    per_anchor = -s_pos / t_pos + contrast + beta * (_omega(t_pos, dim) - reg_neg)  # [C, 2N]
    per_anchor = per_anchor.sum(0)
    per_image = 0.5 * (per_anchor[:N] + per_anchor[N:])
    return reduce_loss(per_image, reduction).to(z1.dtype)


class AMCLLoss(LossModule):
    """Module twin of :func:`amcl_loss` (AMCL multi-head adaptive-temperature loss); see it for the math.

    ``AMCLLoss(negatives="topk", topk=100)(z1, z2, tau)``; the temperatures come from an
    :class:`AMCLTemperature` (a separate module, since it has parameters).
    """

    function = amcl_loss


class AMCLTemperature(nn.Module):
    r"""AMCL's pair-adaptive, head-wise temperature network (for :func:`amcl_loss`; arXiv 2310.05615).

    ``form="dot"`` (default): the paper's eq. (3) as the authors' v2.0
    release implements it (``TemperatureHead``, github.com/LeiWangR/cl @
    755799db, ``amcl/losses.py``): a map ``phi`` (``Linear(D, hidden)`` ->
    ReLU -> ``Linear(hidden, D)``) of the L2-normalized head features
    ``zh = z / ||z||``, a pair score ``r_ij = phi(zh_i) . phi(zh_j)`` and the
    bounded inverse sigmoid ``sigma(r) = iota / (1 + exp(r)) + eta``:

    .. math::

        \tau^c_{ij} = \tau_{min} + (\tau_{max} - \tau_{min})\,\sigma\big(-\phi(\hat z^c_i)^\top\phi(\hat z^c_j)\big),

    so a higher score gives a lower temperature; ``tau`` is symmetric in
    ``i, j``. The v2.0 code shares one ``phi`` across the heads (``shared``
    defaults to True here; the paper's figure draws one shared MLP).

    ``form="concat"``: the first release's ``AdaptiveTemperature`` (which
    does not run as released): per head, ``Linear(2D, hidden)`` -> ReLU ->
    ``Linear(hidden, 1)`` on the concatenated, unnormalized pair ``[z_i; z_j]``
    and ``tau = tau_min + (tau_max - tau_min) sigmoid(+out)`` (one MLP per
    head: ``shared`` defaults to False). This was this library's only form
    before the v2.0 release was found.

    Both: ``[tau_min, tau_max] = [1e-5, 2]`` and hidden width 128 (the v2.0
    training script's defaults); layers are initialized as ``nn.Linear``.

    ``forward(z1, z2)`` with ``z1, z2`` of shape ``[C, N, D]`` returns the
    temperatures of all pairs of the ``2N`` views ``[z1; z2]``, shape
    ``[C, 2N, 2N]`` (row: anchor ``i``, column: candidate ``j``), the input
    :func:`amcl_loss` expects. ``"concat"`` splits its first layer into the
    ``z_i`` and ``z_j`` halves (memory ``C (2N)^2 hidden``); ``"dot"`` needs
    only ``C 2N D`` plus the ``[C, 2N, 2N]`` scores.

    Parameters (``m`` = 1 if ``shared`` else ``num_heads``): ``"dot"``:
    ``w1 [m, D, hidden]``, ``b1 [m, hidden]``, ``w2 [m, hidden, D]``,
    ``b2 [m, D]`` (``phi(x) = relu(x w1 + b1) w2 + b2``); ``"concat"``:
    ``w1 [m, 2D, hidden]``, ``b1 [m, hidden]``, ``w2 [m, hidden]``, ``b2 [m]``.
    """

    def __init__(self, dim: int, num_heads: int = 3, *, hidden: int = 128, tau_min: float = 1e-5,
                 tau_max: float = 2.0, form: str = "dot", shared: bool | None = None) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_heads", num_heads), ("hidden", hidden)):
            check_int(name, v, lo=1)
        check_positive("tau_max", tau_max)
        if not 0.0 < check_real("tau_min", tau_min) < tau_max:
            raise ValueError(f"Invalid tau_min: {tau_min} (accepted: 0 < tau_min < tau_max={tau_max} < inf)")
        check_choice("form", form, _FORMS)
        shared = check_bool("shared", form == "dot" if shared is None else shared)  # None: shared for "dot"
        self.dim, self.num_heads, self.hidden = dim, num_heads, hidden
        self.tau_min, self.tau_max, self.form, self.shared = float(tau_min), float(tau_max), form, shared
        m = 1 if shared else num_heads
        if form == "dot":
            self.w1 = nn.Parameter(torch.empty(m, dim, hidden))
            self.b1 = nn.Parameter(torch.empty(m, hidden))
            self.w2 = nn.Parameter(torch.empty(m, hidden, dim))
            self.b2 = nn.Parameter(torch.empty(m, dim))
        else:
            self.w1 = nn.Parameter(torch.empty(m, 2 * dim, hidden))
            self.b1 = nn.Parameter(torch.empty(m, hidden))
            self.w2 = nn.Parameter(torch.empty(m, hidden))
            self.b2 = nn.Parameter(torch.empty(m))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default: uniform in ``+-1/sqrt(fan_in)`` for weights and biases."""
        b1 = 1.0 / math.sqrt(self.w1.shape[1])
        b2 = 1.0 / math.sqrt(self.hidden)
        with torch.no_grad():
            self.w1.uniform_(-b1, b1)
            self.b1.uniform_(-b1, b1)
            self.w2.uniform_(-b2, b2)
            self.b2.uniform_(-b2, b2)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, hidden={self.hidden}, tau_min={self.tau_min}, "
                f"tau_max={self.tau_max}, form={self.form!r}, shared={self.shared}")

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        z1, z2 = _check_views(z1, z2)
        if z1.shape[0] != self.num_heads or z1.shape[2] != self.dim:
            raise ValueError(f"Invalid z1: expected shape [{self.num_heads}, N, {self.dim}], got {tuple(z1.shape)}")
        cdtype = torch.promote_types(self.w1.dtype, torch.float32)
        z = torch.cat([z1, z2], 1).to(cdtype)  # [C, 2N, D]
        w1, b1, w2, b2 = (p.to(cdtype) for p in (self.w1, self.b1, self.w2, self.b2))
        if self.form == "dot":
            p = F.relu(F.normalize(z, dim=-1) @ w1 + b1[:, None, :]) @ w2 + b2[:, None, :]  # [C, 2N, D]
            score = -(p @ p.transpose(1, 2))  # inverse sigmoid: sigma(-r)
        else:
            a = z @ w1[:, : self.dim]  # [C, 2N, hidden] (anchor half)
            b = z @ w1[:, self.dim:]  # (candidate half)
            h = F.relu(a[:, :, None, :] + b[:, None, :, :] + b1[:, None, None, :])  # [C, 2N, 2N, hidden]
            score = (h @ w2[:, None, :, None]).squeeze(-1) + b2[:, None, None]
        return self.tau_min + (self.tau_max - self.tau_min) * torch.sigmoid(score)
