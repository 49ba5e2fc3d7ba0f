"""What the test-time adaptation wrappers share: BatchNorm set-up, the entropy, and the wrapper base.

Follows ``tent.py`` of github.com/mr-eggplant/EATA at commit f739b36 (``configure_model``,
``collect_params``, ``copy_model_and_optimizer``, the ``Tent``/``EATA`` module shell), widened from
``nn.BatchNorm2d`` to every ``_BatchNorm`` (1d, 2d, 3d, SyncBatchNorm).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from gradwise._validate import check_bool, check_int

__all__ = ["configure_bn", "bn_parameters", "named_bn_parameters", "softmax_entropy", "check_batch",
           "adapt_forward", "inner_module", "resolve_head", "TTAWrapper", "DEFAULT_LR", "DEFAULT_MOMENTUM"]

# The authors' main.py builds SGD(params, 0.00025, momentum=0.9) for Tent, ETA and EATA alike.
DEFAULT_LR = 2.5e-4
DEFAULT_MOMENTUM = 0.9
# torch's base of BatchNorm1d/2d/3d and SyncBatchNorm (not InstanceNorm, which has no batch statistics)
BATCHNORM = nn.modules.batchnorm._BatchNorm


def inner_module(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper compiles (``_orig_mod``), else ``model``: parameter names
    are taken from it, so a compiled and a plain model name their parameters alike."""
    return getattr(model, "_orig_mod", model)


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = [(n, m) for n, m in inner_module(model).named_modules() if isinstance(m, BATCHNORM)]
    if not found:
        raise ValueError(f"Invalid model: {type(model).__name__} has no BatchNorm layer (accepted: a model "
                         "with at least one affine nn.BatchNorm1d/2d/3d, whose weight and bias are adapted)")
    plain = [n or "<model>" for n, m in found if not m.affine]
    if plain:
        raise ValueError(f"Invalid model: BatchNorm layer(s) {plain} have affine=False, so there is nothing "
                         "to adapt (accepted: BatchNorm layers built with affine=True)")
    return found


def configure_bn(model: nn.Module) -> nn.Module:
    """Set ``model`` up for test-time adaptation, in place, and return it.

    As the authors' ``configure_model``: train mode; every parameter frozen except the affine weight and
    bias of each BatchNorm layer; each BatchNorm normalizes with the current batch's statistics in train
    and eval mode alike (``track_running_stats=False``, running mean and variance dropped). Every
    ``_BatchNorm`` is configured, not only ``BatchNorm2d``. Raises ``ValueError`` for a model with no
    BatchNorm or with a BatchNorm built with ``affine=False``.
    """
    bns = _batchnorms(model)
    model.train()
    model.requires_grad_(False)
    for _, m in bns:
        m.requires_grad_(True)
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
    return model


def named_bn_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of each BatchNorm weight and bias, in module order (the authors'
    ``collect_params``); names are those of the uncompiled model."""
    return [(f"{n}.{pn}" if n else pn, p) for n, m in _batchnorms(model)
            for pn, p in m.named_parameters(recurse=False) if pn in ("weight", "bias")]


def bn_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The BatchNorm affine weights and biases of ``model``: what the wrappers' optimizer updates."""
    return [p for _, p in named_bn_parameters(model)]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row entropy of ``softmax(logits)`` over dim 1: ``-sum_c p_c log p_c``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def check_batch(x: Any) -> None:
    """A tensor batch of at least 2 samples: BatchNorm's batch statistics of one sample are not an
    estimate (and ``BatchNorm1d`` refuses them), and an empty batch has none."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"Invalid x: {type(x).__name__} (accepted: a tensor batch, samples along dim 0)")
    if x.shape[0] < 2:
        raise ValueError(f"Invalid x: a batch of {x.shape[0]} sample(s) (accepted: at least 2 samples, since "
                         "every BatchNorm normalizes with the test batch's own statistics)")


def adapt_forward(wrapper: nn.Module, x: Any) -> torch.Tensor:
    """The ``forward`` of an adapting wrapper (one with ``steps``, ``episodic``, ``reset()`` and
    ``adapt_step(x)``): check the batch, reset first when episodic, run ``adapt_step`` ``steps`` times with
    gradients enabled and return the last step's output, detached. Refused under
    ``torch.inference_mode()``; a tensor made under it is cloned."""
    check_batch(x)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{type(wrapper).__name__} adapts on every call, which torch.inference_mode() "
                           "forbids: call it under torch.no_grad() instead (it enables gradients itself)")
    if x.is_inference():  # made under inference_mode: autograd may not save it, a copy it may
        x = x.clone()
    if wrapper.episodic:
        wrapper.reset()
    with torch.enable_grad():
        for _ in range(wrapper.steps):
            outputs = wrapper.adapt_step(x)
    return outputs.detach()


def resolve_head(model: nn.Module, head: nn.Module | None) -> nn.Module:
    """The module whose input is the features: ``head``, checked to be a submodule of ``model``, or by
    default the model's last ``nn.Linear`` (the classifier of most models)."""
    if head is None:
        linears = [m for m in inner_module(model).modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("Invalid head: None and the model has no nn.Linear (accepted: the submodule whose "
                             "input is the features, e.g. model.fc)")
        return linears[-1]
    if not isinstance(head, nn.Module) or not any(m is head for m in inner_module(model).modules()):
        raise ValueError("Invalid head: not a submodule of model (accepted: the module whose input is the "
                         "features, e.g. model.fc)")
    return head


class TTAWrapper(nn.Module):
    """Base of the adapting wrappers: the authors' ``Tent``/``EATA`` module shell.

    ``forward(x)`` checks the batch, resets first when ``episodic``, then runs :meth:`adapt_step`
    ``steps`` times with gradients enabled (also under ``torch.no_grad()``) and returns the last step's
    logits, detached: those computed *before* that step's update. Subclasses implement
    :meth:`adapt_step` and may add counters to :meth:`extra_counters`.

    ``num_skipped`` counts steps whose logits were not all finite: those steps change nothing.
    ``state_dict()`` holds the model's tensors plus, as extra state, the optimizer state and the counters,
    so a wrapper built the same way and loaded from it continues identically.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, steps: int,
                 episodic: bool) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
        self.steps = check_int("steps", steps, 1)
        self.episodic = check_bool("episodic", episodic)
        self.model = configure_bn(model)
        if optimizer is None:
            optimizer = torch.optim.SGD(bn_parameters(model), lr=DEFAULT_LR, momentum=DEFAULT_MOMENTUM)
        elif not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Invalid optimizer: {type(optimizer).__name__} (accepted: a torch.optim.Optimizer "
                            "over bn_parameters(model), or None for SGD(lr=2.5e-4, momentum=0.9))")
        self.optimizer = optimizer
        self.num_skipped = 0
        # what reset() restores (the authors' copy_model_and_optimizer)
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adapt_forward(self, x)

    def adapt_step(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset(self) -> None:
        """Restore the weights and the optimizer state saved when the wrapper was built."""
        self.model.load_state_dict(self.model_state, strict=True)
        self.optimizer.load_state_dict(self.optimizer_state)

    def extra_counters(self) -> dict[str, Any]:
        """The running state a subclass keeps beyond the model and optimizer."""
        return {"num_skipped": self.num_skipped}

    def get_extra_state(self) -> dict[str, Any]:
        # a copy: the optimizer's state_dict holds its live buffers, which load_state_dict would share
        return copy.deepcopy({"optimizer": self.optimizer.state_dict(), "counters": self.extra_counters()})

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for k, v in state["counters"].items():
            setattr(self, k, v)
