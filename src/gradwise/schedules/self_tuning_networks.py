r"""Self-Tuning Networks: hyperparameter schedules from a structured best-response, trained online.

Paper: Matthew MacKay, Paul Vicol, Jon Lorraine, David Duvenaud, Roger Grosse, "Self-Tuning Networks: Bilevel
Optimization of Hyperparameters using Structured Best-Response Functions", ICLR 2019, arXiv 1903.03088.
Authors' code: github.com/asteroidhouse/self-tuning-networks, commit 3c4204993343b09a413588e063ebcf0cff3d64fd:
``stn_utils/hyperparameter.py`` (perturbation, transforms, entropy), ``cnn/util/hyperparameter.py`` (ranges and
starting values) and ``cnn/hypertrain.py`` (the alternating loop and its defaults). What was readable of the
paper in the search corpus is its abstract and introduction; its method section and Algorithm 1 were not, so
the algorithm below is the authors' code, checked against it step by step in float64 (tools/golden/make_stn_golden.py).

The method: a network built from best-response layers (:class:`gradwise.schedules.HyperLinear`,
:class:`gradwise.schedules.HyperConv2d`) models the weights as a function ``w_phi(lambda)`` of the
hyperparameters. Each hyperparameter is kept unconstrained (``u``) and mapped to its range by ``project``:
``low + (high - low) sigmoid(u)`` for a finite range, ``low + softplus(u)`` / ``high - softplus(u)`` for a
half-line, the identity otherwise; ``floor`` of that for a discrete one. The perturbation scale is
``sigma = softplus(s)``. Alternately,

* ``train_steps`` (T_train, theirs 2) steps of the elementary parameters ``phi`` on training batches, each
  example with its own perturbed hyperparameters ``u + sigma * eps``, ``eps ~ N(0, I)``: the network gets ``u``
  (unconstrained) in its gates and ``project(u)`` as the hyperparameters it applies (dropout rates, augmentation),
  in training mode; loss ``L_train``, stepped by the elementary optimizer (theirs SGD, lr 0.01, momentum 0.9);
* ``valid_steps`` (T_valid, theirs 1) steps of the hyperparameters on validation batches, the network in eval
  mode (dropout off, no augmentation), the hyperparameters unperturbed (or perturbed when the scales are tuned),
  loss ``L_val - tau * H``, ``H = sum log(sigma sqrt(2 pi e))`` the entropy of the perturbation, ``tau =
  entropy_weight`` (theirs 1e-5; their README's CNN command uses 1e-3 with ``--tune_scales``). Their
  hyperparameter optimizer is Adam, lr 3e-3, and so is the scale optimizer when the scales are tuned (off by
  default); the gradient reaches ``u`` only through the network's gates, since dropout and augmentation are off.

The values after each hyperparameter step make the *schedule* (:attr:`SelfTuningTrainer.schedule`).
Departures from their code: (1) the train step draws perturbations for the batch it gets (theirs draws
``batch_size`` rows and cuts them to the batch); (2) the train step does not backpropagate into the
hyperparameters (theirs does, and discards those gradients), and the hyperparameter step takes the gradients of
the hyperparameters alone (theirs also fills the network's gradients, which the next step zeroes); neither
changes a value; (3) a hyperparameter starts exactly at its ``init``: the unconstrained start is the inverse of
the same ``project`` (theirs starts discrete cutout parameters with the inverse for ``(0, 25)`` but projects to
``(0, 24)``); (4) the schedule gets an entry after every hyperparameter step (theirs logs every 50), with the
scales always; (5) their warm-up is in epochs (5), here in steps (``warmup_steps``, 0 by default), and their
learning-rate decay and early stopping are not here.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise._validate import check_bool, check_int, check_nonneg, check_positive, check_real
from gradwise.registry import register

__all__ = ["StnHyperparameter", "StnHyperparameters", "SelfTuningTrainer"]

PAPER = ("Self-Tuning Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response "
         "Functions")
CODE = "https://github.com/asteroidhouse/self-tuning-networks/tree/3c4204993343b09a413588e063ebcf0cff3d64fd"


@dataclass(frozen=True)
class StnHyperparameter:
    """One tuned hyperparameter: its start ``init`` in ``(low, high)`` (bounds may be infinite), the starting
    perturbation scale ``scale`` (theirs 0.5), ``discrete`` (the value used is ``floor``-ed) and ``per_example``
    (each example gets its own perturbation; otherwise the batch shares the first example's, their
    ``minibatch=False``). :meth:`dropout` is the authors' dropout-rate range ``(0, 0.9)``."""

    init: float
    low: float = 0.0
    high: float = 1.0
    scale: float = 0.5
    discrete: bool = False
    per_example: bool = True

    def __post_init__(self) -> None:
        check_real("low", self.low, finite=False)
        check_real("high", self.high, finite=False)
        if not self.low < self.high:
            raise ValueError(f"Invalid low, high: {self.low!r}, {self.high!r} (accepted: low < high)")
        check_real("init", self.init, self.low, self.high, lo_open=True, hi_open=True)
        check_positive("scale", self.scale)
        check_bool("discrete", self.discrete)
        check_bool("per_example", self.per_example)

    @classmethod
    def dropout(cls, init: float = 0.05, scale: float = 0.5) -> "StnHyperparameter":
        """A dropout rate in ``(0, 0.9)`` (the authors' cap, "improves stability"), starting at ``init``
        (theirs 0.05)."""
        return cls(init=init, low=0.0, high=0.9, scale=scale)

    def project(self, u: Tensor) -> Tensor:
        """Unconstrained ``u`` to the range (their ``project``), not floored."""
        lo_inf, hi_inf = math.isinf(self.low), math.isinf(self.high)
        if lo_inf and hi_inf:
            return u
        if lo_inf:
            return self.high - F.softplus(u)
        if hi_inf:
            return self.low + F.softplus(u)
        return (self.high - self.low) * torch.sigmoid(u) + self.low

    def unconstrain(self, value: Tensor) -> Tensor:
        """The inverse of :meth:`project`."""
        lo_inf, hi_inf = math.isinf(self.low), math.isinf(self.high)
        if lo_inf and hi_inf:
            return value
        if lo_inf:
            return torch.log(torch.expm1(self.high - value))
        if hi_inf:
            return torch.log(torch.expm1(value - self.low))
        t = (value - self.low) / (self.high - self.low)
        return torch.log(t) - torch.log(1 - t)


class StnHyperparameters(nn.Module):
    r"""The tuned hyperparameters of a Self-Tuning Network: unconstrained values, perturbation scales, transforms.

    ``specs``: name -> :class:`StnHyperparameter`, in the order of the columns of the hyperparameter tensors.
    Parameters: ``htensor [H]`` (unconstrained values ``u``) and ``hscale [H]`` (``sigma = softplus(hscale)``),
    the authors' names. :meth:`perturb` draws ``u + sigma * eps`` per example, :meth:`constrain` maps rows to the
    values the network applies, :meth:`entropy` is the perturbation's entropy ``sum log(sigma sqrt(2 pi e))``.
    The network's gates get the unconstrained rows themselves (their ``hnet_fcn`` is the identity).
    MacKay et al., Self-Tuning Networks, arXiv 1903.03088; the authors' ``stn_utils/hyperparameter.py``
    (github.com/asteroidhouse/self-tuning-networks@3c42049).

    Example::

        hp = StnHyperparameters({"dropout": StnHyperparameter.dropout(0.05)})
        u = hp.perturb(32)                 # [32, 1]
        rates = hp.constrain(u)[:, 0]      # in (0, 0.9)
    """

    def __init__(self, specs: Mapping[str, StnHyperparameter], *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not isinstance(specs, Mapping) or not specs:
            raise ValueError(f"Invalid specs: {specs!r} (accepted: a non-empty mapping name -> StnHyperparameter)")
        for name, spec in specs.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"Invalid specs: key {name!r} (accepted: non-empty strings)")
            if not isinstance(spec, StnHyperparameter):
                raise TypeError(f"Invalid specs[{name!r}]: {type(spec).__name__} (accepted: a StnHyperparameter)")
        self.specs = dict(specs)
        self.names = tuple(self.specs)
        dtype = dtype or torch.get_default_dtype()
        kw = {"device": device, "dtype": dtype}
        self.htensor = nn.Parameter(torch.stack([s.unconstrain(torch.tensor(float(s.init), **kw))
                                                 for s in self.specs.values()]))
        scales = torch.tensor([s.scale for s in self.specs.values()], **kw)
        self.hscale = nn.Parameter(torch.log(torch.expm1(scales)))
        self.register_buffer("per_example", torch.tensor([s.per_example for s in self.specs.values()],
                                                         device=device), persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """The column of ``name`` in the hyperparameter tensors."""
        if name not in self.specs:
            raise ValueError(f"Invalid name: {name!r} (accepted: one of {', '.join(map(repr, self.names))})")
        return self.names.index(name)

    def scale(self) -> Tensor:
        """The perturbation scales ``sigma = softplus(hscale)``, ``[H]``."""
        return F.softplus(self.hscale)

    def perturb(self, batch_size: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Perturbed unconstrained hyperparameters ``u + sigma * eps``, ``[batch_size, H]`` (their ``perturb``);
        a column that is not ``per_example`` takes its first row's value throughout."""
        check_int("batch_size", batch_size, lo=1)
        noise = torch.randn(batch_size, len(self), generator=generator, dtype=self.htensor.dtype,
                            device=self.htensor.device)
        out = self.htensor + self.scale() * noise
        # no host sync on the flags: where every column is per-example this selects ``out`` itself
        return torch.where(self.per_example, out, out[:1])

    def repeat(self, batch_size: int) -> Tensor:
        """The current unconstrained hyperparameters for every example, ``[batch_size, H]``."""
        check_int("batch_size", batch_size, lo=1)
        return self.htensor.unsqueeze(0).expand(batch_size, len(self))

    def constrain(self, u: Tensor) -> Tensor:
        """Unconstrained rows ``[B, H]`` (or ``[H]``) to the values the network applies (projected, floored when
        discrete; their ``hparam_transform``)."""
        if not isinstance(u, Tensor) or u.dim() not in (1, 2) or u.shape[-1] != len(self):
            raise ValueError(f"Invalid u: {getattr(u, 'shape', u)!r} (accepted: a tensor [B, {len(self)}] or "
                             f"[{len(self)}])")
        cols = []
        for i, spec in enumerate(self.specs.values()):
            v = spec.project(u[..., i])
            cols.append(torch.floor(v) if spec.discrete else v)
        return torch.stack(cols, dim=-1)

    def as_dict(self, values: Tensor) -> dict[str, Tensor]:
        """Columns of ``[B, H]`` values by name."""
        return {name: values[..., i] for i, name in enumerate(self.names)}

    def entropy(self) -> Tensor:
        """Entropy of the Gaussian perturbation, ``sum_i log(sigma_i sqrt(2 pi e))`` (their ``compute_entropy``)."""
        return torch.log(self.scale() * math.sqrt(2 * math.pi * math.e)).sum()

    @torch.no_grad()
    def current(self) -> dict[str, float]:
        """The current values by name (projected, not floored, as their logs), and each scale as ``name_scale``."""
        out: dict[str, float] = {}
        scale = self.scale()
        for i, (name, spec) in enumerate(self.specs.items()):
            out[name] = float(spec.project(self.htensor[i]))
            out[name + "_scale"] = float(scale[i])
        return out


def _batches(source: Iterable[Any], name: str) -> Iterator[Any]:
    """Batches from ``source``, starting over when a re-iterable source (a list, a DataLoader) runs out."""
    if not isinstance(source, Iterable):
        raise TypeError(f"Invalid {name}: {type(source).__name__} (accepted: an iterable of (inputs, targets))")
    if iter(source) is source:  # an iterator: it ends when it ends
        return source
    return _restarting(source, name)


def _restarting(source: Iterable[Any], name: str) -> Iterator[Any]:
    while True:
        empty = True
        for batch in source:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"Invalid {name}: the iterable yields no batch")


@register(kind="schedule", paper=PAPER, year=2019, arxiv="1903.03088", code=CODE,
          summary="Self-Tuning Networks: alternate best-response (hypernetwork-gated) weight steps under "
                  "perturbed hyperparameters and validation steps on the hyperparameters; records their schedule")
class SelfTuningTrainer:
    r"""The Self-Tuning Networks loop: ``train_steps`` steps of the weights, then ``valid_steps`` of the hyperparameters.

    ``model``: a network whose best-response layers take the unconstrained hyperparameters, called as
    ``model(x, hnet_tensor, hvalues)``: ``hnet_tensor [B, H]`` for its :class:`HyperLinear` /
    :class:`HyperConv2d` layers, ``hvalues`` a dict name -> ``[B]`` values to apply (e.g.
    ``per_example_dropout(h, hvalues["dropout"], self.training)``). ``hparams``: a :class:`StnHyperparameters`.
    ``train_data`` / ``val_data``: iterables of ``(inputs, targets)`` (a list or DataLoader starts over when it
    runs out; an iterator ends the run). ``optimizer``: the elementary optimizer, over ``model``'s parameters
    (theirs: SGD, lr 0.01, momentum 0.9). ``hyper_optimizer``: over ``hparams.htensor`` (default theirs, Adam lr
    3e-3); ``scale_optimizer``: over ``hparams.hscale``, only with ``tune_scales=True`` (default Adam lr 3e-3).
    ``entropy_weight``: ``tau`` (theirs 1e-5). ``loss_fn(outputs, targets)``: both losses (cross-entropy).
    ``augment(x, hvalues)``: hyperparameter-driven augmentation, applied to training batches only.

    Train step: per-example perturbed hyperparameters ``u + softplus(s) * eps``, model in train mode, loss
    ``L(model(x, u, project(u)), y)``, one elementary step. Hyperparameter step: model in eval mode, ``u``
    unperturbed (perturbed when ``tune_scales``), loss ``L_val - tau * H(sigma)``, one step of ``u`` (and of ``s``).
    :attr:`schedule` gets the values (and scales) after each hyperparameter step. MacKay et al., Self-Tuning
    Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response Functions, ICLR 2019, arXiv
    1903.03088; follows the authors' ``cnn/hypertrain.py`` (github.com/asteroidhouse/self-tuning-networks
    @3c42049), checked against their code step by step in float64; see the module docstring for the departures.

    Example::

        hp = StnHyperparameters({"dropout": StnHyperparameter.dropout(0.05)})
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        trainer = SelfTuningTrainer(model, hp, train_loader, val_loader, opt)
        trainer.run(1000)                  # 1000 cycles: 2 train steps, 1 hyperparameter step each
        trainer.schedule[-1]["dropout"]
    """

    def __init__(self, model: nn.Module, hparams: StnHyperparameters, train_data: Iterable[Any],
                 val_data: Iterable[Any], optimizer: torch.optim.Optimizer,
                 hyper_optimizer: torch.optim.Optimizer | None = None,
                 scale_optimizer: torch.optim.Optimizer | None = None, *, train_steps: int = 2,
                 valid_steps: int = 1, entropy_weight: float = 1e-5, tune_scales: bool = False,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 augment: Callable[[Tensor, Mapping[str, Tensor]], Tensor] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
        if not isinstance(hparams, StnHyperparameters):
            raise TypeError(f"Invalid hparams: {type(hparams).__name__} (accepted: a StnHyperparameters)")
        for name, opt in (("optimizer", optimizer), ("hyper_optimizer", hyper_optimizer),
                          ("scale_optimizer", scale_optimizer)):
            if opt is not None and not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(f"Invalid {name}: {type(opt).__name__} (accepted: a torch.optim.Optimizer)")
        if optimizer is None:
            raise TypeError("Invalid optimizer: None (accepted: a torch.optim.Optimizer over the model's parameters)")
        hyper_ids = {id(hparams.htensor), id(hparams.hscale)}
        if any(id(p) in hyper_ids for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("Invalid optimizer: it holds the hyperparameters (accepted: the model's parameters "
                             "only; the hyperparameters have their own optimizers)")
        self.model, self.hparams, self.optimizer = model, hparams, optimizer
        self.tune_scales = check_bool("tune_scales", tune_scales)
        self.hyper_optimizer = hyper_optimizer or torch.optim.Adam([hparams.htensor], lr=3e-3)
        if scale_optimizer is not None and not tune_scales:
            raise ValueError("Invalid scale_optimizer: given with tune_scales=False (accepted: None, or an "
                             "optimizer over hparams.hscale with tune_scales=True)")
        self.scale_optimizer = scale_optimizer
        if tune_scales and scale_optimizer is None:
            self.scale_optimizer = torch.optim.Adam([hparams.hscale], lr=3e-3)
        self.train_steps = check_int("train_steps", train_steps, lo=1)
        self.valid_steps = check_int("valid_steps", valid_steps, lo=1)
        self.entropy_weight = check_nonneg("entropy_weight", entropy_weight)
        if not callable(loss_fn):
            raise TypeError(f"Invalid loss_fn: {loss_fn!r} (accepted: a callable (outputs, targets) -> loss)")
        if augment is not None and not callable(augment):
            raise TypeError(f"Invalid augment: {augment!r} (accepted: a callable (x, hvalues) -> x, or None)")
        self.loss_fn, self.augment = loss_fn, augment
        self._train_batches = _batches(train_data, "train_data")
        self._val_batches = _batches(val_data, "val_data")
        self.train_steps_done = 0
        self.valid_steps_done = 0
        self.schedule: list[dict[str, float]] = []

    @staticmethod
    def _split(batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"Invalid batch: {type(batch).__name__} (accepted: a pair (inputs, targets))")
        return batch[0], batch[1]

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One step of the model's parameters on a training batch under perturbed hyperparameters; the loss."""
        was_training = self.model.training
        self.model.train()
        self.optimizer.zero_grad()
        with torch.no_grad():
            u = self.hparams.perturb(x.shape[0])
            hvalues = self.hparams.as_dict(self.hparams.constrain(u))
        if self.augment is not None:
            x = self.augment(x, hvalues)
        loss = self.loss_fn(self.model(x, u, hvalues), y)
        loss.backward()
        self.optimizer.step()
        self.train_steps_done += 1
        self.model.train(was_training)
        return loss.detach()

    def hyper_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One step of the hyperparameters (and scales, when tuned) on a validation batch; the validation loss
        ``L_val - tau * H`` it stepped on. Appends the new values to :attr:`schedule`."""
        was_training = self.model.training
        self.model.eval()
        hp = self.hparams
        u = hp.perturb(x.shape[0]) if self.tune_scales else hp.repeat(x.shape[0])
        hvalues = hp.as_dict(hp.constrain(u))
        loss = self.loss_fn(self.model(x, u, hvalues), y) - self.entropy_weight * hp.entropy()
        tuned = [hp.htensor, hp.hscale] if self.tune_scales else [hp.htensor]
        grads = torch.autograd.grad(loss, tuned, allow_unused=True)
        self.hyper_optimizer.zero_grad()
        if self.scale_optimizer is not None:
            self.scale_optimizer.zero_grad()
        for p, g in zip(tuned, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        self.hyper_optimizer.step()
        if self.tune_scales:
            self.scale_optimizer.step()
        self.valid_steps_done += 1
        self.model.train(was_training)
        entry = {"train_step": float(self.train_steps_done), "valid_step": float(self.valid_steps_done),
                 "val_loss": float(loss.detach())}
        entry.update(hp.current())
        self.schedule.append(entry)
        return loss.detach()

    def step(self) -> dict[str, list[float]]:
        """One cycle: ``train_steps`` training steps, then ``valid_steps`` hyperparameter steps; their losses."""
        train = [float(self.train_step(*self._split(next(self._train_batches)))) for _ in range(self.train_steps)]
        val = [float(self.hyper_step(*self._split(next(self._val_batches)))) for _ in range(self.valid_steps)]
        return {"train_loss": train, "val_loss": val}

    def run(self, cycles: int, *, warmup_steps: int = 0) -> list[dict[str, float]]:
        """``warmup_steps`` training steps alone (perturbed hyperparameters, none tuned), then ``cycles`` cycles;
        stops early when an iterator runs out. Returns :attr:`schedule`."""
        check_int("cycles", cycles, lo=0)
        check_int("warmup_steps", warmup_steps, lo=0)
        try:
            for _ in range(warmup_steps):
                self.train_step(*self._split(next(self._train_batches)))
            for _ in range(cycles):
                self.step()
        except StopIteration:
            pass
        return self.schedule

    def state_dict(self) -> dict[str, Any]:
        """Model, hyperparameters, the three optimizers, step counts and schedule (not the data's position)."""
        return {"model": self.model.state_dict(), "hparams": self.hparams.state_dict(),
                "optimizer": self.optimizer.state_dict(), "hyper_optimizer": self.hyper_optimizer.state_dict(),
                "scale_optimizer": None if self.scale_optimizer is None else self.scale_optimizer.state_dict(),
                "train_steps_done": self.train_steps_done, "valid_steps_done": self.valid_steps_done,
                "schedule": [dict(e) for e in self.schedule]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        keys = {"model", "hparams", "optimizer", "hyper_optimizer", "scale_optimizer", "train_steps_done",
                "valid_steps_done", "schedule"}
        if not isinstance(state, Mapping) or set(state) != keys:
            raise ValueError(f"Invalid state: keys {sorted(state) if isinstance(state, Mapping) else state!r} "
                             f"(accepted: a mapping with keys {', '.join(sorted(keys))}, as state_dict() gives)")
        if (state["scale_optimizer"] is None) != (self.scale_optimizer is None):
            raise ValueError("Invalid state: scale_optimizer state does not match this trainer's tune_scales")
        self.model.load_state_dict(state["model"])
        self.hparams.load_state_dict(state["hparams"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.hyper_optimizer.load_state_dict(state["hyper_optimizer"])
        if self.scale_optimizer is not None:
            self.scale_optimizer.load_state_dict(state["scale_optimizer"])
        self.train_steps_done = check_int("state['train_steps_done']", state["train_steps_done"], lo=0)
        self.valid_steps_done = check_int("state['valid_steps_done']", state["valid_steps_done"], lo=0)
        self.schedule = [dict(e) for e in state["schedule"]]
