r"""The empirical neural tangent kernel of any model, the paper's NTK-parametrised MLP and its infinite-width
ReLU kernel.

Paper: Jacot, Gabriel, Hongler, "Neural Tangent Kernel: Convergence and Generalization in Neural Networks",
arXiv:1806.07572 (NeurIPS 2018). A theory paper: the authors released no code. The empirical kernel follows
PyTorch's NTK tutorial (``torch.func``: ``jacrev`` + ``einsum``, and NTK-vector products), the limit is
checked against neural-tangents (tests/data/ntk_golden.pt, tools/golden/make_ntk_golden.py).

**Empirical NTK.** For a network function :math:`f_\theta: \mathbb{R}^{n_0} \to \mathbb{R}^{O}` with parameters
:math:`\theta \in \mathbb{R}^P`, the NTK (paper, Section 4) is

.. math:: \Theta(x, x')_{ab} = \sum_{p=1}^{P} \partial_{\theta_p} f_{\theta,a}(x)\, \partial_{\theta_p} f_{\theta,b}(x')
          = \big(J(x) J(x')^\top\big)_{ab},

an :math:`O \times O` matrix per pair of inputs. :func:`empirical_ntk` returns it for every pair of a batch
``x1`` [N, ...] and ``x2`` [M, ...]: ``mode="full"`` [N, M, O, O], ``"trace"`` [N, M] (:math:`\sum_a \Theta_{aa}`),
``"diagonal"`` [N, M, O]. ``implementation="jacobian"`` builds per-sample Jacobians with ``vmap(jacrev)`` and
contracts them (time :math:`N O [FP] + N M O^2 P`); ``"ntk-vp"`` never forms a Jacobian: a vector-Jacobian
product at ``x1`` followed by a Jacobian-vector product at ``x2`` per output basis vector (time :math:`N M O [FP]`;
better when :math:`O P` is large next to a forward pass). Under gradient flow on a cost :math:`C`,
:math:`\partial_t f_{\theta(t)} = -\nabla_{\Theta} C`: the kernel says how a step on one input moves the output
on another.

**NTK parametrisation** (paper, Section 2; :class:`NTKMLP`). Layers :math:`0..L` of widths
:math:`n_0, \dots, n_L`, every parameter drawn iid :math:`\mathcal{N}(0, 1)`,

.. math:: \alpha^{(0)} = x, \quad \tilde\alpha^{(\ell+1)} = \tfrac{1}{\sqrt{n_\ell}} W^{(\ell)} \alpha^{(\ell)}
          + \beta b^{(\ell)}, \quad \alpha^{(\ell)} = \sigma(\tilde\alpha^{(\ell)}), \qquad f_\theta = \tilde\alpha^{(L)}.

The factors :math:`1/\sqrt{n_\ell}` make the kernel converge as the widths grow; :math:`\beta` (the paper takes
0.1) balances the bias against the weights.

**Limit** (paper, Proposition 1 and Theorem 1; :func:`limit_ntk_relu`). As :math:`n_1..n_{L-1} \to \infty`,
:math:`\Theta^{(L)} \to \Theta^{(L)}_\infty \otimes \mathrm{Id}_{n_L}` with

.. math:: \Sigma^{(1)}(x,x') = \tfrac{1}{n_0} x^\top x' + \beta^2, \qquad
          \Sigma^{(\ell+1)} = \mathbb{E}_{f \sim \mathcal{N}(0, \Sigma^{(\ell)})}[\sigma(f(x))\sigma(f(x'))] + \beta^2,

.. math:: \Theta^{(1)}_\infty = \Sigma^{(1)}, \qquad
          \Theta^{(\ell+1)}_\infty = \Theta^{(\ell)}_\infty \dot\Sigma^{(\ell+1)} + \Sigma^{(\ell+1)}, \qquad
          \dot\Sigma^{(\ell+1)} = \mathbb{E}[\dot\sigma(f(x))\dot\sigma(f(x'))].

For ReLU the expectations are the arc-cosine kernels (Cho & Saul): with :math:`k = \Sigma(x,x)`,
:math:`k' = \Sigma(x',x')` and :math:`\cos\phi = \Sigma(x,x')/\sqrt{k k'}`,
:math:`\mathbb{E}[\sigma\sigma] = \frac{\sqrt{k k'}}{2\pi}(\sin\phi + (\pi - \phi)\cos\phi)` and
:math:`\mathbb{E}[\dot\sigma\dot\sigma] = \frac{\pi - \phi}{2\pi}`; the diagonal follows
:math:`\Sigma^{(\ell+1)}(x,x) = \Sigma^{(\ell)}(x,x)/2 + \beta^2`.

Departures from the tutorial: parameters that do not require grad are held fixed (left out of :math:`\theta`),
buffers are passed through; ``x2=None`` reuses the Jacobians of ``x1``; the per-parameter contractions are
summed in place instead of stacked (less memory, same numbers up to summation order); ``chunk_size`` bounds the
memory of the vmaps. The model is called on one sample at a time (as the tutorial), so a BatchNorm model must
be in eval mode.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from gradwise._validate import check_choice, check_int, check_real
from gradwise.registry import register

__all__ = ["empirical_ntk", "NTKMLP", "NTKLinear", "limit_ntk_relu"]

PAPER = "Neural Tangent Kernel: Convergence and Generalization in Neural Networks"
ARXIV = "1806.07572"
_MODES = ("full", "trace", "diagonal")
_IMPLEMENTATIONS = ("jacobian", "ntk-vp")
_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda h: h}


def _check_batch(name: str, x) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        got = type(x).__name__ if not isinstance(x, Tensor) else f"shape {tuple(x.shape)}"
        raise ValueError(f"Invalid {name}: {got} (accepted: a tensor [batch, ...] with batch >= 1)")
    return x


def _single(model: nn.Module, buffers: dict):
    def f(params, x):
        out = functional_call(model, (params, buffers) if buffers else params, (x.unsqueeze(0),))
        return out.reshape(-1)  # one sample's output, flattened to [O]
    return f


def _contract(j1: list[Tensor], j2: list[Tensor], expr: str) -> Tensor:
    out = None
    for a, b in zip(j1, j2):
        term = torch.einsum(expr, a, b)
        out = term if out is None else out.add_(term)
    return out


@register(kind="diagnostic", paper=PAPER, year=2018, arxiv=ARXIV, code=None,
          summary="Empirical NTK J(x1) J(x2)^T of any model (torch.func: Jacobian contraction or NTK-vector "
                  "products); full, trace or diagonal.")
def empirical_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, mode: str = "full",
                  implementation: str = "jacobian", chunk_size: int | None = None) -> Tensor:
    """Empirical neural tangent kernel (Jacot, Gabriel, Hongler, arXiv:1806.07572).

    :math:`\\Theta(x, x') = J(x) J(x')^\\top` for every pair of ``x1`` [N, ...] and ``x2`` [M, ...] (``None``: ``x1``
    itself), with :math:`J` the Jacobian of the model's flattened per-sample output [O] with respect to its
    parameters that require grad. ``mode``: ``"full"`` [N, M, O, O], ``"trace"`` [N, M], ``"diagonal"`` [N, M, O].
    ``implementation``: ``"jacobian"`` (``vmap(jacrev)`` + ``einsum``) or ``"ntk-vp"`` (vjp then jvp per output
    basis vector, no Jacobian held). ``chunk_size`` (None: all at once) is passed to the vmaps to bound memory.
    The model is called on one sample at a time and is not changed; the result carries no graph."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: an nn.Module)")
    x1 = _check_batch("x1", x1)
    same = x2 is None
    x2 = x1 if same else _check_batch("x2", x2)
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"Invalid x2: shape {tuple(x2.shape)} (accepted: the same sample shape as x1, "
                         f"{tuple(x1.shape[1:])})")
    mode = check_choice("mode", mode, _MODES)
    implementation = check_choice("implementation", implementation, _IMPLEMENTATIONS)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, lo=1)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("Invalid model: no parameter requires grad (accepted: a model with trainable parameters)")
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    f = _single(model, buffers)
    if implementation == "jacobian":
        return _ntk_jacobian(f, params, x1, x2, same, mode, chunk_size)
    return _ntk_vp(f, params, x1, x2, mode, chunk_size)


def _ntk_jacobian(f, params, x1, x2, same, mode, chunk_size) -> Tensor:
    jac = vmap(jacrev(f), (None, 0), chunk_size=chunk_size)
    j1 = [j.flatten(2) for j in jac(params, x1).values()]  # each [N, O, P_k]
    j2 = j1 if same else [j.flatten(2) for j in jac(params, x2).values()]
    expr = {"full": "naf,mbf->nmab", "trace": "naf,maf->nm", "diagonal": "naf,maf->nma"}[mode]
    return _contract(j1, j2, expr)


def _ntk_vp(f, params, x1, x2, mode, chunk_size) -> Tensor:
    def pair(a, b):
        out, vjp_fn = vjp(lambda p: f(p, a), params)

        def column(vec):  # e_i^T J(a) J(b)^T, i.e. row i of Theta(a, b)
            (cot,) = vjp_fn(vec)
            return jvp(lambda p: f(p, b), (params,), (cot,))[1]

        basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
        return vmap(column)(basis)

    full = vmap(vmap(pair, (None, 0), chunk_size=chunk_size), (0, None), chunk_size=chunk_size)(x1, x2)
    if mode == "full":
        return full
    return full.diagonal(dim1=2, dim2=3).sum(-1) if mode == "trace" else full.diagonal(dim1=2, dim2=3).clone()


class NTKLinear(nn.Module):
    """One layer of the NTK parametrisation (Jacot et al., arXiv:1806.07572, Section 2):
    :math:`y = x W^\\top / \\sqrt{n_{in}} + \\beta b` with ``weight`` [out, in] and ``bias`` [out] drawn iid
    N(0, 1) (``reset_parameters``)."""

    def __init__(self, in_features: int, out_features: int, *, beta: float = 0.1, generator=None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features = check_int("in_features", in_features, lo=1)
        self.out_features = check_int("out_features", out_features, lo=1)
        self.beta = check_real("beta", beta, lo=0.0)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype))
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.weight.normal_(generator=generator)
            self.bias.normal_(generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T / math.sqrt(self.in_features) + self.beta * self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, beta={self.beta:g}"


@register(kind="diagnostic", paper=PAPER, year=2018, arxiv=ARXIV, code=None,
          summary="MLP in the paper's NTK parametrisation: N(0,1) parameters, weights scaled by 1/sqrt(fan_in), "
                  "bias by beta.")
class NTKMLP(nn.Module):
    """Fully connected network in the NTK parametrisation (Jacot, Gabriel, Hongler, arXiv:1806.07572, Section 2).

    ``widths`` = :math:`(n_0, n_1, \\dots, n_L)`: input, hidden and output widths (depth L = ``len(widths) - 1``
    layers, :class:`NTKLinear` each). Every weight and bias is N(0, 1);
    :math:`\\tilde\\alpha^{(\\ell+1)} = W^{(\\ell)}\\alpha^{(\\ell)}/\\sqrt{n_\\ell} + \\beta b^{(\\ell)}`, the
    activation (``"relu"``, ``"tanh"`` or ``"identity"``) after every layer but the last. ``beta`` >= 0 (the
    paper's experiments: 0.1). ``generator`` seeds the initialisation. Forward: [..., n_0] -> [..., n_L]."""

    def __init__(self, widths: Sequence[int], *, activation: str = "relu", beta: float = 0.1,
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) < 2:
            raise ValueError(f"Invalid widths: {widths!r} (accepted: a sequence of >= 2 positive ints, input width "
                             f"first, output width last)")
        self.widths = tuple(check_int("widths", w, lo=1) for w in widths)
        self.activation = check_choice("activation", activation, tuple(_ACTIVATIONS))
        self.beta = check_real("beta", beta, lo=0.0)
        self.layers = nn.ModuleList(NTKLinear(a, b, beta=self.beta, generator=generator, dtype=dtype)
                                    for a, b in zip(self.widths[:-1], self.widths[1:]))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for layer in self.layers:
            layer.reset_parameters(generator)

    def forward(self, x: Tensor) -> Tensor:
        act = _ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


def _relu_expectations(cross: Tensor, d1: Tensor, d2: Tensor) -> tuple[Tensor, Tensor]:
    # E[relu(u) relu(v)] and E[step(u) step(v)] for (u, v) ~ N(0, [[d1, cross], [cross, d2]])
    norm = torch.sqrt(d1[:, None] * d2[None, :])
    cos = torch.where(norm > 0, cross / torch.where(norm > 0, norm, 1.0), 0.0).clamp(-1.0, 1.0)
    phi = torch.arccos(cos)
    e_act = norm / (2 * math.pi) * (torch.sin(phi) + (math.pi - phi) * cos)
    e_der = (math.pi - phi) / (2 * math.pi)
    return e_act, e_der


@register(kind="diagnostic", paper=PAPER, year=2018, arxiv=ARXIV, code=None,
          summary="Infinite-width NTK of a ReLU NTKMLP: the paper's Sigma/Theta recursion with arc-cosine "
                  "expectations.")
def limit_ntk_relu(x1: Tensor, x2: Tensor | None = None, *, depth: int, beta: float = 0.1,
                   return_nngp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Limiting NTK of a ReLU network in the NTK parametrisation (Jacot, Gabriel, Hongler, arXiv:1806.07572,
    Theorem 1).

    :math:`\\Theta^{(L)}_\\infty(x, x')` [N, M] for ``x1`` [N, n_0] and ``x2`` [M, n_0] (``None``: ``x1``), ``depth``
    L >= 1 layers (as ``NTKMLP(widths)`` with ``len(widths) = L + 1``), bias scale ``beta`` >= 0: the recursion
    :math:`\\Theta^{(\\ell+1)} = \\Theta^{(\\ell)} \\dot\\Sigma^{(\\ell+1)} + \\Sigma^{(\\ell+1)}` from
    :math:`\\Theta^{(1)} = \\Sigma^{(1)} = x^\\top x'/n_0 + \\beta^2`, ReLU expectations in closed form (arc-cosine
    kernels). The finite network's kernel is this times the identity over its outputs. ``return_nngp=True`` also
    returns :math:`\\Sigma^{(L)}` (the output covariance at initialisation, Proposition 1) as ``(ntk, nngp)``.
    Computed in the inputs' dtype (use float64 for comparisons); a zero-variance input (x = 0, beta = 0) gets
    :math:`\\dot\\Sigma = 1/4` (as for orthogonal inputs)."""
    if not isinstance(x1, Tensor) or x1.dim() != 2 or x1.shape[0] < 1 or not x1.is_floating_point():
        raise ValueError(f"Invalid x1: {tuple(x1.shape) if isinstance(x1, Tensor) else type(x1).__name__} "
                         f"(accepted: a floating-point tensor [N, n_0])")
    if x2 is None:
        x2 = x1
    elif not isinstance(x2, Tensor) or x2.dim() != 2 or x2.shape[1] != x1.shape[1] or x2.shape[0] < 1:
        raise ValueError(f"Invalid x2: {tuple(x2.shape) if isinstance(x2, Tensor) else type(x2).__name__} "
                         f"(accepted: a tensor [M, n_0] with n_0 = {x1.shape[1]} as x1)")
    depth = check_int("depth", depth, lo=1)
    beta = check_real("beta", beta, lo=0.0)
    x2 = x2.to(x1.dtype)
    n0 = x1.shape[1]
    b2 = beta * beta
    sigma = x1 @ x2.T / n0 + b2
    d1 = (x1 * x1).sum(1) / n0 + b2
    d2 = (x2 * x2).sum(1) / n0 + b2
    theta = sigma
    for _ in range(depth - 1):
        e_act, e_der = _relu_expectations(sigma, d1, d2)
        sigma = e_act + b2
        theta = theta * e_der + sigma
        d1, d2 = d1 / 2 + b2, d2 / 2 + b2
    return (theta, sigma) if return_nngp else theta
