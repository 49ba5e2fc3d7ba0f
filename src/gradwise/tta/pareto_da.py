"""ParetoDA: a Pareto descent direction over the domain-adaptation objectives, guided by held-out target data.

Follows ``tools/epo_lp_dna.py`` (``EPO_LP``), ``tools/TCM_loss.py`` (``TCM``), ``rho_pred`` of
``dalib/modules/cls_domaindiscri.py`` and the training step of ``examples/DANN+ParetoDA.py`` in
github.com/BIT-DA/ParetoDA at commit 6691766. Unlike the other ``gradwise.tta`` modules this is a
train-time method (unsupervised domain adaptation, source labels at hand): it decides how the gradients of
several objectives are combined into the one written to the shared parameters' ``.grad``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from gradwise._validate import check_bool, check_int, check_real, is_real
from gradwise.registry import register

__all__ = ["ParetoDA", "ParetoSolution", "epo_lp_weights", "pareto_direction", "mutual_information",
           "refine_target_logits", "target_surrogate_loss", "DEFAULT_EPS"]

PAPER = "Pareto Domain Adaptation"
CODE = "https://github.com/BIT-DA/ParetoDA"
DEFAULT_EPS = 1e-3  # EPO_LP(m, eps=1e-3): the held-out loss below which the dominance LP is solved
_LOG_EPS = 1e-6  # TCM: log(mean softmax + 1e-6)
MOVES = ("bal", "dom", "fallback")


class ParetoSolution(NamedTuple):
    """What :func:`pareto_direction` found: ``weights`` (m,) float64 on the CPU (None where the LP is
    infeasible), ``direction`` ``G.T @ weights`` (None likewise) and ``move``: ``"bal"`` (the balance LP,
    held-out loss above ``eps``), ``"dom"`` (the dominance LP) or ``"fallback"`` (infeasible)."""

    weights: torch.Tensor | None
    direction: torch.Tensor | None
    move: str


def _host(name: str, x: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: {type(x).__name__} (accepted: a real tensor or array)") from None
    if (shape is not None and a.shape != shape) or not np.isfinite(a).all():
        raise ValueError(f"Invalid {name}: shape {a.shape}{'' if np.isfinite(a).all() else ', not finite'} "
                         f"(accepted: finite values of shape {shape})")
    return a


def epo_lp_weights(gram: Any, val_dots: Any, val_loss: float, *, eps: float = DEFAULT_EPS,
                   relax: bool = False) -> tuple[np.ndarray | None, str]:
    r"""The ParetoDA weights ``alpha`` on the simplex from the objectives' gradient inner products, by one
    small linear program (the authors' ``EPO_LP.get_alpha``; Pareto Domain Adaptation, arXiv 2112.04137).

    ``gram`` is ``C = G Gᵀ`` (m x m) for the objectives' gradients ``G`` (m x n), ``val_dots`` is
    ``a = G g_v`` (m) for the gradient ``g_v`` of the target surrogate on held-out target data, and
    ``val_loss`` that surrogate's value. With ``d = Gᵀ alpha`` (so ``Cα = G d`` and ``α·a = d·g_v``):

    - ``val_loss > eps``, the balance LP: maximise ``α·a`` (descent on the held-out loss) over the
      simplex, subject to ``(Cα)_j >= rhs_j`` with ``rhs_j = a_j`` for every objective whose gradient does
      not descend the held-out loss (``a_j <= 0``: it may rise no faster than along ``g_v``), ``rhs = 0``
      for the most aligned one ``j* = argmax a`` (it must not rise) and no constraint for the other aligned
      ones. With no aligned objective every ``rhs_j = 0``;
    - otherwise the dominance LP: maximise ``Σ_j (Cα)_j`` subject to ``Cα >= 0`` (no objective rises) and,
      unless ``relax``, ``α·a >= min(max_j a_j, 0)``.

    Returns ``(alpha, move)``: ``alpha`` a float64 numpy array, ``move`` ``"bal"`` or ``"dom"``; ``alpha``
    is None where the LP is infeasible (the authors' script then uses its preference vector). Solved with
    ``scipy.optimize.linprog`` (HiGHS) on the host; theirs uses cvxpy with GLPK. Where the optimum is not
    unique (a degenerate LP) either solver may return a different optimal vertex.
    """
    C = _host("gram", gram)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 1:
        raise ValueError(f"Invalid gram: shape {C.shape} (accepted: a square m x m matrix, m >= 1)")
    m = C.shape[0]
    a = _host("val_dots", val_dots, (m,))
    if not is_real(val_loss) or not math.isfinite(float(val_loss)):
        raise ValueError(f"Invalid val_loss: {val_loss!r} (accepted: a finite number)")
    eps = check_real("eps", eps)
    relax = check_bool("relax", relax)
    if float(val_loss) > eps:
        move, c = "bal", -a
        aligned = a > 0
        if aligned.any():
            rhs = a.copy()
            rhs[aligned] = -np.inf
            rhs[a == a.max()] = 0.0
        else:
            rhs = np.zeros(m)
        rows = np.isfinite(rhs)
        A_ub, b_ub = -C[rows], -rhs[rows]
    else:
        move, c = "dom", -C.sum(0)
        A_ub, b_ub = -C, np.zeros(m)
        if not relax:
            A_ub = np.vstack([A_ub, -a[None]])
            b_ub = np.append(b_ub, -min(a.max(), 0.0))
    from scipy.optimize import linprog  # scipy comes with scikit-learn, a dependency

    res = linprog(c, A_ub=A_ub if len(A_ub) else None, b_ub=b_ub if len(b_ub) else None,
                  A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m, method="highs")
    if res.status != 0:
        return None, move
    alpha = np.clip(res.x, 0.0, None)
    return alpha / alpha.sum(), move


def pareto_direction(grads: torch.Tensor, val_grad: torch.Tensor, val_loss: torch.Tensor | float, *,
                     eps: float = DEFAULT_EPS, relax: bool = False) -> ParetoSolution:
    """ParetoDA's direction ``d = Gᵀ alpha`` for per-objective gradients ``grads`` (``G``, m x n) and the
    held-out surrogate's gradient ``val_grad`` (n) and value ``val_loss`` (arXiv 2112.04137; weights by
    :func:`epo_lp_weights`). ``C = G Gᵀ`` and ``G g_v`` are computed on ``grads``' device and dtype and
    copied to the host together with ``val_loss`` in one transfer, the one sync the LP needs."""
    if not isinstance(grads, torch.Tensor) or grads.dim() != 2 or grads.shape[0] < 1 \
            or not grads.is_floating_point():
        raise ValueError(f"Invalid grads: {getattr(grads, 'shape', type(grads).__name__)} (accepted: a floating "
                         "tensor m x n, one flattened gradient per objective)")
    m, n = grads.shape
    if not isinstance(val_grad, torch.Tensor) or val_grad.shape != (n,):
        raise ValueError(f"Invalid val_grad: {getattr(val_grad, 'shape', type(val_grad).__name__)} (accepted: a "
                         f"tensor of shape ({n},), the held-out loss's flattened gradient)")
    if isinstance(val_loss, torch.Tensor):
        if val_loss.numel() != 1:
            raise ValueError(f"Invalid val_loss: shape {tuple(val_loss.shape)} (accepted: a scalar)")
        val_loss = val_loss.detach().reshape(1).to(grads)
    elif is_real(val_loss):
        val_loss = torch.tensor([float(val_loss)], dtype=grads.dtype, device=grads.device)
    else:
        raise ValueError(f"Invalid val_loss: {val_loss!r} (accepted: a scalar tensor or a number)")
    val_grad = val_grad.detach().to(grads)
    g = grads.detach()
    host = torch.cat([(g @ g.T).reshape(-1), g @ val_grad, val_loss]).to("cpu", torch.float64).numpy()
    alpha, move = epo_lp_weights(host[:m * m].reshape(m, m), host[m * m:m * m + m], float(host[-1]), eps=eps,
                                 relax=relax)
    if alpha is None:
        return ParetoSolution(None, None, "fallback")
    w = torch.from_numpy(alpha)
    return ParetoSolution(w, w.to(g) @ g, move)


def mutual_information(logits: torch.Tensor) -> torch.Tensor:
    r"""The batch's mutual information between inputs and predicted classes, ``H(p̄) − mean_i H(p_i)`` with
    ``p_i = softmax(logits_i)`` and ``p̄ = mean_i p_i`` (the authors' ``TCM``; ParetoDA's target surrogate is
    its negative, :func:`target_surrogate_loss`; arXiv 2112.04137). As theirs, ``H(p̄)`` uses
    ``log(p̄ + 1e-6)``; ``H(p_i)`` uses ``log_softmax`` (theirs ``log(softmax)``, NaN where a probability
    underflows to 0; equal elsewhere up to rounding)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] < 1 \
            or not logits.is_floating_point():
        raise ValueError(f"Invalid logits: {getattr(logits, 'shape', type(logits).__name__)} (accepted: a "
                         "floating tensor N x K, N >= 1)")
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    mean_p = p.mean(0)
    marginal = -(mean_p * torch.log(mean_p + _LOG_EPS)).sum()
    conditional = -(p * logp).sum() / logits.shape[0]
    return marginal - conditional


def refine_target_logits(logits: torch.Tensor, domain_logits: torch.Tensor, *, target_index: int = 0) -> torch.Tensor:
    """ParetoDA's target-prediction refinement (arXiv 2112.04137; the authors' ``rho_pred``): each class's
    logit is multiplied by the probability, from that class's domain discriminator, that the sample is a
    target sample: ``logits[:, c] * softmax(domain_logits[:, c, :])[target_index]``. ``domain_logits`` is
    N x K x D (D domains; the authors' D = 2 with the target at index 0) and is detached, as theirs."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"Invalid logits: {getattr(logits, 'shape', type(logits).__name__)} (accepted: N x K)")
    if not isinstance(domain_logits, torch.Tensor) or domain_logits.dim() != 3 \
            or domain_logits.shape[:2] != logits.shape or domain_logits.shape[2] < 2:
        raise ValueError(f"Invalid domain_logits: {getattr(domain_logits, 'shape', type(domain_logits).__name__)} "
                         f"(accepted: N x K x D with N x K = {tuple(logits.shape)}, D >= 2 domains)")
    target_index = check_int("target_index", target_index, 0, domain_logits.shape[2] - 1)
    return logits * torch.softmax(domain_logits.detach(), dim=2)[:, :, target_index]


def target_surrogate_loss(logits: torch.Tensor, domain_logits: torch.Tensor | None = None, *,
                          target_index: int = 0) -> torch.Tensor:
    """ParetoDA's target surrogate, ``−mutual_information`` of the target predictions, refined by the
    class-wise domain discriminators when ``domain_logits`` is given (the authors' ``-1 * TCM(rho_t)``;
    arXiv 2112.04137). Use it on the training target batch as one objective and on a held-out target batch
    as :class:`ParetoDA`'s ``val_loss``."""
    if domain_logits is not None:
        logits = refine_target_logits(logits, domain_logits, target_index=target_index)
    return -mutual_information(logits)


def _params(params: Any) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params) if isinstance(params, Iterable) else params
    if not isinstance(params, list) or not params or not all(isinstance(p, torch.Tensor) and p.requires_grad
                                                             and p.is_floating_point() for p in params):
        raise ValueError(f"Invalid params: {type(params).__name__} (accepted: a non-empty iterable of floating "
                         "tensors that require grad, the parameters the objectives share)")
    return params


def _scalar(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.numel() != 1 or not t.requires_grad:
        raise ValueError(f"Invalid {name}: {type(t).__name__ if not isinstance(t, torch.Tensor) else tuple(t.shape)}"
                         " (accepted: a scalar tensor that requires grad)")
    return t.reshape(())


@register(kind="training-helper", paper=PAPER, year=2021, arxiv="2112.04137", code=CODE, aliases=("pareto-da",),
          summary="writes to the shared parameters' .grad a Pareto descent direction over the source and target-"
                  "surrogate objectives, picked by an LP guided by held-out target data")
class ParetoDA:
    r"""ParetoDA (Lv, Liang, Gong, Li, Liu, Li, Liu, Wang; NeurIPS 2021, arXiv 2112.04137): the shared
    parameters move along a direction that is a convex combination of the objectives' gradients, chosen by a
    linear program so that no objective is traded off blindly, and guided towards the target domain by the
    gradient of a target surrogate on held-out (unlabeled) target data. ::

        pareto = ParetoDA(backbone.parameters())
        losses = [F.cross_entropy(y_s, labels_s), domain_adv(f_s, f_t), target_surrogate_loss(y_t, cd_t)]
        val = target_surrogate_loss(y_t_val, cd_t_val)                      # held-out target batch
        opt.zero_grad()
        weights = pareto.backward(losses, val, retain_graph=True)           # backbone .grad = the direction
        (losses[0] + losses[1] + cd_loss).backward(inputs=head_params)      # the rest as usual
        opt.step()

    Math (the authors' code: the stored text of the paper reachable here was its abstract and
    introduction, which name the surrogate, the Bayes refinement with domain labels and the dynamic
    preference from the held-out gradient, but not their formulas). With ``g_j = ∇L_j`` over ``params``
    stacked in ``G`` (m x n) and ``g_v = ∇L_val``, the weights ``alpha`` on the simplex come from
    :func:`epo_lp_weights` (the balance LP while ``L_val > eps``, else the dominance LP, see there) and

        params.grad = scale · Σ_j alpha_j g_j,      scale = m by default (the authors' ``3 * alpha``).

    Where the LP is infeasible the weights are ``preference`` (default all ones, the authors' ``--pref1..3``)
    and ``move`` is ``"fallback"``. The objectives of the paper are the source cross-entropy, the domain
    alignment loss (DANN's) and the target surrogate :func:`target_surrogate_loss` on the training target
    batch; the held-out loss is the same surrogate on a held-out split of the target training data. Any
    m >= 1 scalar losses are accepted.

    Cost: m + 1 backward passes (``torch.autograd.grad``, ``.grad`` fields of other tensors untouched), an
    m x n matrix of gradients, and one host transfer of ``G Gᵀ``, ``G g_v`` and ``L_val`` for the LP.
    ``retain_graph`` applies to the last pass (set it True to backpropagate other losses of the same graph
    afterwards). ``accumulate=True`` adds the direction to existing ``.grad`` instead of replacing it.

    Defaults as the authors: ``eps = 1e-3``, ``relax = False``, ``preference = ones``, ``scale = m``.
    Departures from their code: the LP is solved by scipy's HiGHS, not cvxpy/GLPK (the same optimum wherever
    it is unique, checked on their outputs; at a degenerate LP any optimal vertex may come back); ``j*`` is
    ``argmax G g_v`` (theirs argmax of ``mean(G * g_v, axis=1)``, the same vector divided by n); the
    direction is ``Gᵀ alpha`` from the gradients already taken, where their script runs the forward pass a
    second time and backpropagates ``Σ 3 alpha_j L_j`` (the same gradient when the forward is deterministic);
    a parameter one objective does not reach gets a zero gradient from it (theirs concatenates only the
    gradients that exist, which misaligns ``G``'s columns). Their script then backpropagates
    ``L_S + L_D + L_cd`` without zeroing the backbone, so the backbone steps along the direction **plus**
    ``∇(L_S + L_D)``; to reproduce that call ``backward(..., retain_graph=True)`` and then
    ``(L_S + L_D).backward()``.
    """

    def __init__(self, params: Iterable[torch.Tensor] | torch.Tensor, *, eps: float = DEFAULT_EPS,
                 relax: bool = False, preference: Sequence[float] | None = None, scale: float | None = None):
        self.params = _params(params)
        self.eps = check_real("eps", eps)
        self.relax = check_bool("relax", relax)
        if preference is not None:
            if isinstance(preference, torch.Tensor):
                preference = preference.tolist()
            if isinstance(preference, (str, bytes)) or not isinstance(preference, Sequence) or not preference \
                    or not all(is_real(v) and math.isfinite(v) and v >= 0 for v in preference):
                raise ValueError(f"Invalid preference: {preference!r} (accepted: None or a sequence of finite "
                                 "numbers >= 0, one per objective)")
            preference = [float(v) for v in preference]
        self.preference = preference
        if scale is not None and (not is_real(scale) or not math.isfinite(scale) or scale <= 0):
            raise ValueError(f"Invalid scale: {scale!r} (accepted: None for the number of objectives, or a "
                             "finite number > 0)")
        self.scale = None if scale is None else float(scale)
        self.last_move: str | None = None
        self.last_weights: torch.Tensor | None = None
        self.counts = {k: 0 for k in MOVES}

    def _grads(self, loss: torch.Tensor, retain: bool) -> torch.Tensor:
        gs = torch.autograd.grad(loss, self.params, retain_graph=retain, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(self.params, gs)])

    def backward(self, losses: Sequence[torch.Tensor], val_loss: torch.Tensor, *, retain_graph: bool = False,
                 accumulate: bool = False) -> torch.Tensor:
        """Write ParetoDA's direction into ``params``' ``.grad``; returns the weights used (m, float64, CPU),
        before ``scale``. ``losses``: the m >= 1 scalar objectives; ``val_loss``: the held-out surrogate."""
        if isinstance(losses, torch.Tensor) or not isinstance(losses, Sequence) or not losses:
            raise ValueError(f"Invalid losses: {type(losses).__name__} (accepted: a non-empty sequence of scalar "
                             "tensors, one per objective)")
        losses = [_scalar(f"losses[{i}]", t) for i, t in enumerate(losses)]
        val_loss = _scalar("val_loss", val_loss)
        retain_graph, accumulate = check_bool("retain_graph", retain_graph), check_bool("accumulate", accumulate)
        m = len(losses)
        if self.preference is not None and len(self.preference) != m:
            raise ValueError(f"Invalid preference: {len(self.preference)} values for {m} losses (accepted: one "
                             "value per objective)")
        G = torch.stack([self._grads(t, True) for t in losses])
        g_val = self._grads(val_loss, retain_graph)
        sol = pareto_direction(G, g_val, val_loss, eps=self.eps, relax=self.relax)
        weights, direction = sol.weights, sol.direction
        if weights is None:
            weights = torch.tensor(self.preference or [1.0] * m, dtype=torch.float64)
            direction = weights.to(G) @ G
        direction = direction * (m if self.scale is None else self.scale)
        with torch.no_grad():
            offset = 0
            for p in self.params:
                d = direction[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if accumulate and p.grad is not None:
                    p.grad.add_(d)
                else:
                    p.grad = d.clone()
        self.last_move, self.last_weights = sol.move, weights
        self.counts[sol.move] += 1
        return weights

    def state_dict(self) -> dict[str, Any]:
        """The settings and the record of past moves (no tensors of the model)."""
        return {"eps": self.eps, "relax": self.relax, "preference": self.preference, "scale": self.scale,
                "last_move": self.last_move, "last_weights": self.last_weights, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"eps", "relax", "preference", "scale", "last_move", "last_weights", "counts"}
        if not isinstance(state, dict) or set(state) != keys or set(state["counts"]) != set(MOVES):
            raise ValueError(f"Invalid state: {sorted(state) if isinstance(state, dict) else type(state).__name__} "
                             f"(accepted: a ParetoDA.state_dict(), keys {sorted(keys)})")
        probe = ParetoDA(self.params, eps=state["eps"], relax=state["relax"], preference=state["preference"],
                         scale=state["scale"])  # checks the settings before anything is written
        self.eps, self.relax, self.preference, self.scale = probe.eps, probe.relax, probe.preference, probe.scale
        self.last_move, self.last_weights = state["last_move"], state["last_weights"]
        self.counts = {k: int(v) for k, v in state["counts"].items()}
