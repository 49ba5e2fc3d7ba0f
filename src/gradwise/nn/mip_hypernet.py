"""Magnitude Invariant Parametrizations (Ortiz, Guttag and Dalca, 2023): a hypernetwork whose input is encoded to a
constant norm and whose output is an additive change to independent parameters of the target network."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import init

from gradwise._validate import check_bool, check_choice, check_int, check_unit
from gradwise.registry import register

__all__ = ["MIPHyperNet", "magnitude_invariant_encoding"]

ENCODINGS = ("cos|sin", "z|1-z", None)
NONLINEARITIES = ("LeakyReLU", "ReLU", "SiLU", "GELU", "Tanh", "Sigmoid")


def magnitude_invariant_encoding(z: Tensor, mode: str | None = "cos|sin") -> Tensor:
    r"""MIP's input encoding of hypernetwork inputs :math:`z \in [0, 1]^d`, along the last dim.

    * ``"cos|sin"`` (default): :math:`[\cos(\tfrac\pi2 z), \sin(\tfrac\pi2 z)]`; every pair has norm 1, so
      :math:`\lVert E(z)\rVert_2 = \sqrt d` whatever :math:`z` is (the paper's :math:`E_{L_2}`);
    * ``"z|1-z"``: :math:`[z, 1-z]` (constant :math:`L_1` norm :math:`d` for :math:`z \in [0,1]^d`);
    * ``None``: ``z`` unchanged.

    The first ``d`` outputs hold the first half (all cosines), the last ``d`` the second, as hyperlight's
    ``encode_input`` concatenates them. Departure: hyperlight warns when a "cos|sin" input leaves [0, 1];
    that check reads the tensor on the host, so it is left out here (inputs outside [0, 1] are encoded
    all the same, and the norm stays constant, but the map is no longer one-to-one).
    """
    if mode is None:
        return z
    if mode == "cos|sin":
        scaled = z * (math.pi / 2)
        return torch.cat([torch.cos(scaled), torch.sin(scaled)], dim=-1)
    if mode == "z|1-z":
        return torch.cat([z, 1 - z], dim=-1)
    check_choice("mode", mode, ENCODINGS)
    raise AssertionError  # unreachable


def _init_nonlinearity(nonlinearity: str | None) -> str:
    """hyperlight's mapping of an activation name to ``torch.nn.init``'s nonlinearity name."""
    if nonlinearity is None:
        return "linear"
    name = nonlinearity.lower()
    if name == "leakyrelu" or name in ("silu", "gelu"):
        return "leaky_relu"
    return name


def _shapes_of(target: nn.Module | Mapping[str, Sequence[int]], names: Sequence[str] | None) -> dict:
    if isinstance(target, nn.Module):
        params = dict(target.named_parameters())
        if names is not None:
            missing = [n for n in names if n not in params]
            if missing:
                raise ValueError(f"Invalid names: {missing} are not parameters of the target (it has "
                                 f"{list(params)})")
            params = {n: params[n] for n in names}
        shapes = {n: tuple(p.shape) for n, p in params.items()}
    elif isinstance(target, Mapping):
        if names is not None:
            raise ValueError("Invalid names: pass names only with a target nn.Module, not with a dict of shapes")
        shapes = {}
        for n, s in target.items():
            shape = tuple(s)
            if not isinstance(n, str) or not all(isinstance(d, int) and d >= 1 for d in shape):
                raise ValueError(f"Invalid target: expected {{name: shape}} with positive integer sizes, got "
                                 f"{n!r}: {s!r}")
            shapes[n] = shape
    else:
        raise ValueError(f"Invalid target: expected an nn.Module or a dict of {{name: shape}}, got "
                         f"{type(target).__name__}")
    if not shapes:
        raise ValueError("Invalid target: no parameters to predict")
    return shapes


@register(kind="module", paper="Magnitude Invariant Parametrizations Improve Hypernetwork Learning", year=2023,
          arxiv="2304.07645", code="https://github.com/JJGO/hyperlight", aliases=("mip",),
          summary="hypernetwork with constant-norm input encoding and output added to independent parameters")
class MIPHyperNet(nn.Module):
    r"""An MLP hypernetwork that predicts the parameters of a target network, with MIP's two pieces.

    Paper: Jose Javier Gonzalez Ortiz, John Guttag, Adrian V. Dalca, "Magnitude Invariant Parametrizations
    Improve Hypernetwork Learning", ICLR 2024, arXiv:2304.07645. Authors' code: hyperlight,
    https://github.com/JJGO/hyperlight @a3e2108 (``hyperlight/hypernet/model.py``, ``encoding.py``).

    For a hypernetwork input :math:`\gamma \in [0,1]^d` the predicted target parameters are

    .. math:: \theta(\gamma) = \theta_0 + \Delta\theta(\gamma), \qquad
              \Delta\theta(\gamma) = W_{out}\, h_L, \quad h_l = \phi(W_l h_{l-1} + b_l), \quad
              h_0 = E(\gamma),

    with :math:`E` the encoding (:func:`magnitude_invariant_encoding`; ``encoding="cos|sin"`` by default, which
    removes the proportionality between the input's magnitude and the output's) and :math:`\theta_0` the
    **independent parameters** (the residual formulation). As in hyperlight, :math:`\theta_0` is the bias of
    the output layer, so one ``addmm`` computes the sum; :attr:`independent` shows it per target parameter.

    Initialization (hyperlight's defaults): hidden layers Kaiming-normal in fan-out mode for the nonlinearity,
    zero biases; the output layer's rows are initialized per target parameter as separate layers (Kaiming-normal
    fan-out, so each block's scale follows its own size, not the total output size); with ``additive=True``,
    :math:`\theta_0` is initialized as the target network would be: Kaiming-normal (fan-in, LeakyReLU gain) for
    names ending in ``.weight``, zero for names ending in ``.bias`` (and zero for other names, as hyperlight
    leaves them), or the target module's own current values with ``init_from_target=True`` (hyperlight's
    ``HyperNet.from_existing``).
    With ``additive=False`` the output bias starts at zero: a plain hypernetwork that predicts :math:`\theta`
    directly (hyperlight's ``init_independent_weights=False``).

    ``forward(gamma)`` takes ``[d]`` or ``[B, d]`` and returns ``{name: tensor}`` of shape ``shape`` or
    ``[B, *shape]``; run the target with them by ``torch.func.functional_call(target, params, x)`` (unbatched),
    or by :meth:`call_target`.

    Departures from hyperlight: one input tensor instead of named inputs (hyperlight concatenates named inputs
    sorted by name, then encodes; concatenate yours the same way); a ``[B, d]`` input always gives ``[B, *shape]``
    (hyperlight drops the batch dim when ``B == 1``); no host-side range warning in the encoding; a bare
    ``weight`` name (a target that is one layer) gets the Kaiming init like ``.weight`` (hyperlight leaves it
    zero) and a one-dimensional ``.weight`` (a norm layer's scale) starts at one (hyperlight's init raises).

    Example::

        >>> target = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> hyper = MIPHyperNet(target, input_size=1, hidden_sizes=[16, 64])
        >>> params = hyper(torch.tensor([0.3]))            # gamma in [0, 1]
        >>> y = hyper.call_target(target, params, x)
    """

    def __init__(self, target: nn.Module | Mapping[str, Sequence[int]], input_size: int,
                 hidden_sizes: Sequence[int], encoding: str | None = "cos|sin", additive: bool = True,
                 nonlinearity: str = "LeakyReLU", dropout: float = 0.0, names: Sequence[str] | None = None,
                 init_from_target: bool = False) -> None:
        super().__init__()
        self.shapes = _shapes_of(target, names)
        self.input_size = check_int("input_size", input_size, lo=1)
        if not isinstance(hidden_sizes, Sequence) or isinstance(hidden_sizes, str):
            raise ValueError(f"Invalid hidden_sizes: expected a list of positive integers, got {hidden_sizes!r}")
        for i, s in enumerate(hidden_sizes):
            check_int(f"hidden_sizes[{i}]", s, lo=1)
        self.encoding = check_choice("encoding", encoding, ENCODINGS)
        self.additive = check_bool("additive", additive)
        self.nonlinearity = check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
        self.dropout = check_unit("dropout", dropout)
        check_bool("init_from_target", init_from_target)
        if init_from_target and not (additive and isinstance(target, nn.Module)):
            raise ValueError("Invalid init_from_target: it needs additive=True and a target nn.Module")
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        sizes = [input_size * (1 if encoding is None else 2), *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = getattr(nn, nonlinearity)()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(sizes[-1], sum(self.sizes))
        self.reset_parameters(target if init_from_target else None)

    @torch.no_grad()
    def reset_parameters(self, target: nn.Module | None = None) -> None:
        """hyperlight's initialization (see the class docstring); ``target`` gives :math:`\\theta_0` its values."""
        nl = _init_nonlinearity(self.nonlinearity)
        for lin in self.hidden:
            init.kaiming_normal_(lin.weight, nonlinearity=nl, mode="fan_out")
            init.zeros_(lin.bias)
        for rows in self.output.weight.split(self.sizes, dim=0):
            init.kaiming_normal_(rows, nonlinearity=nl, mode="fan_out")
        init.zeros_(self.output.bias)
        if not self.additive:
            return
        values = dict(target.named_parameters()) if target is not None else {}
        for (name, shape), theta0 in zip(self.shapes.items(), self.output.bias.split(self.sizes)):
            if name in values:
                theta0.copy_(values[name].detach().reshape(-1))
            elif name == "weight" or name.endswith(".weight"):
                if len(shape) < 2:  # a norm layer's scale: hyperlight's Kaiming init fails on it
                    theta0.fill_(1.0)
                    continue
                w = torch.empty(shape)
                init.kaiming_normal_(w, nonlinearity="leaky_relu")  # hyperlight: LeakyReLU gain, fan-in
                theta0.copy_(w.reshape(-1))

    @property
    def independent(self) -> dict[str, Tensor]:
        """:math:`\\theta_0` per target parameter (views of the output layer's bias)."""
        return {n: b.view(s) for (n, s), b in zip(self.shapes.items(), self.output.bias.split(self.sizes))}

    def forward(self, gamma: Tensor) -> dict[str, Tensor]:
        if gamma.dim() not in (1, 2) or gamma.shape[-1] != self.input_size:
            raise ValueError(f"Invalid gamma: expected shape [{self.input_size}] or [B, {self.input_size}] "
                             f"(input_size={self.input_size}), got {tuple(gamma.shape)}")
        x = magnitude_invariant_encoding(gamma, self.encoding)
        for lin in self.hidden:
            x = self.drop(self.act(lin(x)))
        flat = self.output(x)
        lead = flat.shape[:-1]
        return {n: t.reshape(*lead, *s) for (n, s), t in zip(self.shapes.items(), flat.split(self.sizes, dim=-1))}

    @staticmethod
    def call_target(target: nn.Module, params: Mapping[str, Tensor], *args, **kwargs):
        """``target(*args, **kwargs)`` with ``params`` in place of its own parameters (unbatched params)."""
        return torch.func.functional_call(target, dict(params), args, kwargs)

    def extra_repr(self) -> str:
        return (f"targets={len(self.shapes)} ({sum(self.sizes)} values), encoding={self.encoding!r}, "
                f"additive={self.additive}")
