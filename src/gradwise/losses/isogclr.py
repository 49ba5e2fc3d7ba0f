"""iSogCLR: global contrastive loss with individualized, learned temperatures."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_real, check_unit
from gradwise.losses._common import INT_DTYPES, NAN_FOR_INF_EMBEDDING, check_reduction, reduce_loss
from gradwise.registry import register

__all__ = ["ISogCLRLoss"]



def _check_views(z1: Tensor, z2: Tensor, index: Tensor, num_samples: int, validate: bool) -> None:
    for name, z in (("z1", z1), ("z2", z2)):
        if not torch.is_tensor(z) or not z.is_floating_point():
            raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [B, D], got "
                             f"{type(z).__name__ if not torch.is_tensor(z) else z.dtype}")
        if z.dim() != 2:
            raise ValueError(f"Invalid {name}: expected shape [B, D], got {tuple(z.shape)}")
    if z2.shape != z1.shape:
        raise ValueError(f"Invalid z2: expected the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"Invalid z1: need a batch of at least 2 pairs to have negatives, got {z1.shape[0]}")
    if not torch.is_tensor(index) or index.dtype not in INT_DTYPES:
        raise ValueError("Invalid index: expected an integer tensor of dataset indices of shape [B], got "
                         f"{type(index).__name__ if not torch.is_tensor(index) else index.dtype}")
    if index.shape != z1.shape[:1]:
        raise ValueError(f"Invalid index: expected shape [{z1.shape[0]}], got {tuple(index.shape)}")
    if validate:
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= num_samples:
            raise ValueError(f"Invalid index: {lo if lo < 0 else hi} out of range (accepted: 0 <= index < "
                             f"num_samples={num_samples})")


@register(kind="loss",
          paper="Not All Semantics are Created Equal: Contrastive Self-supervised Learning with Automatic "
                "Temperature Individualization",
          year=2023, arxiv="2305.11965", code="https://github.com/zhqiu/contrastive-learning-iSogCLR",
          summary="iSogCLR: robust global contrastive loss with per-sample learned temperatures (stateful)",
          info={"reliability": {"inputs": ("x", "other", "labels"), "labels": "index", "init": {"num_samples": "N"},
                                 "expected": {"neg_inf_other_class": ("nan", NAN_FOR_INF_EMBEDDING)}}})
class ISogCLRLoss(nn.Module):
    r"""iSogCLR (Qiu et al., ICML 2023, arXiv 2305.11965): per-sample temperatures for contrastive learning.

    Paper: "Not All Semantics are Created Equal: Contrastive Self-supervised
    Learning with Automatic Temperature Individualization". Authors' code:
    https://github.com/zhqiu/contrastive-learning-iSogCLR and the maintained
    version in LibAUC (``libauc.losses.GCLoss_v1(enable_isogclr=True)``,
    https://github.com/Optimization-AI/LibAUC). Defaults follow LibAUC's
    ``GCLoss_v1`` (tau=0.1, tau in [0.05, 0.7], rho=0.3, eta=0.01, beta=0.9,
    gamma=0.9), and this module matches it to float64 round-off (golden test).

    Objective (robust global contrastive loss, RGCL). For anchor ``i`` with
    views ``a_i = normalize(z1_i)``, ``b_i = normalize(z2_i)`` and the
    ``2B - 2`` in-batch negatives ``S_i^-`` (the other samples' two views),
    with ``h_i(z) = a_i . z - a_i . b_i``:

    .. math::

        F(w, \tau) = \frac1n \sum_i \tau_i \log \frac{1}{|S_i^-|}\sum_{z \in S_i^-}
                     \exp\big(h_i(z)/\tau_i\big) + \tau_i \rho ,

    symmetrized over the two views. The per-sample temperatures ``tau_i`` are
    minimized jointly with the network (the DRO view: each anchor gets its
    own KL-constrained distribution over negatives with radius ``rho``).

    Stochastic algorithm (per step, for each view; ``l_ij`` cosine logits):

    * moving average of the inner function, one scalar per dataset sample:
      ``u_i <- (1 - gamma) u_i + gamma * mean_{j in S_i^-} exp(l_ij / tau_i)``;
      the stored ``u_i`` is the mean of the two views' values;
    * surrogate loss whose gradient in the network weights is the gradient
      of ``tau_i log u_i``: with ``p_ij = exp(l_ij/tau_i) / u_i`` (detached),
      ``loss_i = -l_ii^+ + mean_{j in S_i^-} p_ij l_ij``; the returned loss is
      the batch mean of the two views' sum (as in the authors' code);
    * temperature step (momentum SGD, projected onto ``[tau_min, tau_max]``):
      ``g_i = log u_i + rho - mean_j p_ij l_ij / tau_i`` (mean of the views),
      ``m_i <- (1 - beta) m_i + beta g_i``, ``tau_i <- clip(tau_i - eta m_i)``.
      The loss of a step uses the temperatures from before that step.

    Choices and departures:

    * ``u`` is stored as ``log_u`` and updated with ``logaddexp`` so no
      ``exp(1/tau)`` is ever formed (LibAUC forms it and can overflow for
      ``tau_min`` below ~0.012 in float32); same values otherwise. LibAUC
      clamps ``u`` at 1e-8 before dividing; with normalized embeddings this
      cannot bind for ``tau >= 0.05``, and in log space it is not needed.
    * ``gamma`` for a sample's first visit is 1 (``u`` starts at the first
      estimate). LibAUC decides this per batch (``gamma = 1`` while the whole
      batch's ``u`` sums to 0, i.e. the first epoch); the authors' repository
      uses ``epoch == 0``. Per sample is the same in the usual
      epoch-by-epoch sampling and does not need the epoch number or a host
      sync. ``first_visit_gamma_one=False`` uses ``gamma`` from the start.
    * ``grad_clip`` (default ``None`` as in LibAUC) clips ``g_i`` to
      ``[-grad_clip, grad_clip]``; the authors' repository uses 3.0.
    * ``learn_tau=False`` freezes the temperatures: this is SogCLR (Yuan et
      al. 2022) with a constant temperature ``tau_init``.
    * Indices in one batch should be distinct (as in the authors' code,
      duplicated indices make the state write undefined: last write wins).

    Args:
        num_samples: size of the training set (length of the state tensors).
        tau_init, tau_min, tau_max: initial temperature and its bounds.
        rho: DRO radius (``>= 0``). eta: step size of the temperatures.
        beta: momentum weight of the new temperature gradient (LibAUC's
            convention: ``m <- (1-beta) m + beta g``).
        gamma: moving-average weight of the new estimate, in ``(0, 1]``.
        reduction: ``'mean'`` (default), ``'sum'`` or ``'none'`` (per anchor).
        validate: check the index range (one host sync per call).
        dtype: dtype of the state (default: torch's default dtype); the
            state buffers also follow ``.to(dtype)`` / ``.double()``.

    Example::

        >>> loss_fn = ISogCLRLoss(num_samples=1000)
        >>> z1, z2 = torch.randn(32, 128, requires_grad=True), torch.randn(32, 128, requires_grad=True)
        >>> index = torch.randperm(1000)[:32]        # dataset indices of the batch
        >>> loss = loss_fn(z1, z2, index); loss.backward()
        >>> loss_fn.tau[index]                       # updated per-sample temperatures
    """

    def __init__(self, num_samples: int, *, tau_init: float = 0.1, tau_min: float = 0.05, tau_max: float = 0.7,
                 rho: float = 0.3, eta: float = 0.01, beta: float = 0.9, gamma: float = 0.9,
                 grad_clip: float | None = None, learn_tau: bool = True, first_visit_gamma_one: bool = True,
                 reduction: str = "mean", validate: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_int("num_samples", num_samples, lo=1)
        check_positive("tau_max", tau_max)
        if not 0.0 < check_real("tau_min", tau_min) <= tau_max:
            raise ValueError(f"Invalid tau_min: {tau_min} (accepted: 0 < tau_min <= tau_max={tau_max})")
        if not tau_min <= check_real("tau_init", tau_init) <= tau_max:
            raise ValueError(f"Invalid tau_init: {tau_init} (accepted: tau_min={tau_min} <= tau_init <= "
                             f"tau_max={tau_max})")
        check_nonneg("rho", rho)
        check_nonneg("eta", eta)
        check_unit("beta", beta)
        check_real("gamma", gamma, 0.0, 1.0, lo_open=True)
        if grad_clip is not None:  # None: no clipping
            check_real("grad_clip", grad_clip, 0.0, lo_open=True, finite=False)
        check_reduction(reduction)
        self.num_samples = num_samples
        self.tau_init, self.tau_min, self.tau_max = float(tau_init), float(tau_min), float(tau_max)
        self.rho, self.eta, self.beta, self.gamma = float(rho), float(eta), float(beta), float(gamma)
        self.grad_clip = grad_clip
        self.learn_tau = learn_tau
        self.first_visit_gamma_one = first_visit_gamma_one
        self.reduction = reduction
        self.validate = validate
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"Invalid dtype: {dtype} (accepted: a floating-point dtype)")
        self.register_buffer("tau", torch.full((num_samples,), float(tau_init), dtype=dtype))
        self.register_buffer("log_u", torch.full((num_samples,), -math.inf, dtype=dtype))
        self.register_buffer("grad_tau", torch.zeros(num_samples, dtype=dtype))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    @property
    def u(self) -> Tensor:
        """The moving averages ``u_i`` (``exp(log_u)``; 0 for samples not seen yet)."""
        return self.log_u.exp()

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, tau_init={self.tau_init}, tau_min={self.tau_min}, "
                f"tau_max={self.tau_max}, rho={self.rho}, eta={self.eta}, beta={self.beta}, gamma={self.gamma}")

    def forward(self, z1: Tensor, z2: Tensor, index: Tensor) -> Tensor:
        _check_views(z1, z2, index, self.num_samples, self.validate)
        index = index.to(device=self.tau.device, dtype=torch.long)
        B = z1.shape[0]
        n_neg = 2 * B - 2
        cdtype = torch.promote_types(z1.dtype, torch.float32)
        a = F.normalize(z1.to(cdtype), dim=1)
        b = F.normalize(z2.to(cdtype), dim=1)
        s_ab = a @ b.T
        # rows: anchors of view a (z1) then of view b (z2); columns: [other view | same view]
        logits = torch.cat([torch.cat([s_ab, a @ a.T], 1), torch.cat([s_ab.T, b @ b.T], 1)], 0)  # [2B, 2B]
        eye = torch.eye(B, dtype=torch.bool, device=z1.device)
        neg = ~torch.cat([eye, eye], 1).repeat(2, 1)  # excludes the positive and the anchor itself
        pos = torch.diagonal(s_ab).repeat(2)

        sdtype = self.tau.dtype
        with torch.no_grad():
            tau = self.tau[index].to(cdtype).repeat(2)[:, None]  # [2B, 1]
            ld = logits.detach() / tau
            lme = torch.logsumexp(ld.masked_fill(~neg, -math.inf), dim=1) - math.log(n_neg)  # log mean exp
            gamma = torch.full((B,), self.gamma, dtype=cdtype, device=z1.device)
            if self.first_visit_gamma_one:
                gamma = torch.where(self.seen[index].to(z1.device), gamma, torch.ones_like(gamma))
            gamma = gamma.repeat(2)
            log_u_old = self.log_u[index].to(device=z1.device, dtype=cdtype).repeat(2)
            log_u = torch.logaddexp(torch.log1p(-gamma) + log_u_old, torch.log(gamma) + lme)  # [2B]
            p = torch.exp(ld - log_u[:, None]).masked_fill(~neg, 0.0)  # detached weights

        per_view = (p * logits.masked_fill(~neg, 0.0)).sum(1) / n_neg - pos  # [2B]
        per_anchor = per_view[:B] + per_view[B:]

        with torch.no_grad():
            new_log_u = torch.logaddexp(log_u[:B], log_u[B:]) - math.log(2.0)
            self.log_u[index] = new_log_u.to(sdtype)
            self.seen[index] = True
            if self.learn_tau:
                g = log_u + self.rho - (p * ld.masked_fill(~neg, 0.0)).sum(1) / n_neg
                g = (g[:B] + g[B:]) / 2
                if self.grad_clip is not None:
                    g = g.clamp(-self.grad_clip, self.grad_clip)
                m = (1.0 - self.beta) * self.grad_tau[index] + self.beta * g.to(sdtype)
                self.grad_tau[index] = m
                self.tau[index] = (self.tau[index] - self.eta * m).clamp(self.tau_min, self.tau_max)

        return reduce_loss(per_anchor, self.reduction).to(z1.dtype)
