"""Pieces every objective shares: input validation, reductions, the Module twin.

Validation raises ``ValueError`` naming the argument and what is accepted,
before torch would fail deep inside a kernel. Checking label ranges needs the
labels' min and max on the host (one sync); pass ``validate=False`` to the
functions that accept it to skip that in a hot loop once inputs are trusted.
"""
from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["REDUCTIONS", "check_reduction", "check_logits_target", "check_label_range", "check_same_shape",
           "check_probabilities", "reduce_loss", "prepare_logits_target", "upcast", "LossModule",
           "keyword_parameters", "describe_arguments", "INT_DTYPES", "check_embeddings_labels",
           "NAN_FOR_INF_EMBEDDING", "NAN_FOR_INF_STUDENT_LOGPROB"]

REDUCTIONS = ("mean", "sum", "none")
#: The integer dtypes accepted for labels and indices.
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

# Why a loss gives NaN where torch's cross entropy would not: the reasons the records' documented departures
# (``info["reliability"]["expected"]``, read by tests/losses/test_reliability.py) share.
NAN_FOR_INF_EMBEDDING = "-inf is no embedding: normalizing or measuring distances to it is NaN"
NAN_FOR_INF_STUDENT_LOGPROB = ("the KL divergence to a student log-probability of -inf where the teacher has mass "
                               "is +inf")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"Invalid reduction: {reduction!r} (accepted: 'mean', 'sum' or 'none')")


def check_logits_target(logits: Tensor, target: Tensor, ignore_index: int | None = None, *,
                        name: str = "logits", target_name: str = "target", validate: bool = True) -> None:
    """``logits`` [N, C] floating; ``target`` [N] integer class indices in [0, C) or ``ignore_index``."""
    if not torch.is_tensor(logits) or not logits.is_floating_point():
        raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [N, C], got "
                         f"{type(logits).__name__ if not torch.is_tensor(logits) else logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"Invalid {name}: expected shape [N, C], got {tuple(logits.shape)}")
    if not torch.is_tensor(target) or target.dtype not in INT_DTYPES:
        raise ValueError(f"Invalid {target_name}: expected an integer tensor of class indices of shape [N], got "
                         f"{type(target).__name__ if not torch.is_tensor(target) else target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(f"Invalid {target_name}: expected shape [{logits.shape[0]}] to match {name} "
                         f"{tuple(logits.shape)}, got {tuple(target.shape)}")
    if validate:
        check_label_range(target, logits.shape[1], ignore_index, name=target_name)


def check_label_range(target: Tensor, num_classes: int, ignore_index: int | None = None, *,
                      name: str = "target") -> None:
    """Integer ``target`` in ``[0, num_classes)`` or ``ignore_index``: one host sync (min and max read together)."""
    if not target.numel():
        return
    t = target.long()
    if ignore_index is None:
        lo, hi = t.min(), t.max()
    else:
        kept = t != ignore_index
        lo = torch.where(kept, t, torch.zeros((), dtype=t.dtype, device=t.device)).min()
        hi = torch.where(kept, t, torch.full((), -1, dtype=t.dtype, device=t.device)).max()
    lo, hi = torch.stack([lo, hi]).tolist()
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        extra = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(f"Invalid {name}: label {bad} out of range (accepted: 0 <= label < {num_classes}{extra})")


def check_embeddings_labels(embeddings: Tensor, labels: Tensor, *, name: str = "embeddings",
                            labels_name: str = "labels", min_n: int = 1) -> None:
    """``embeddings`` [N, D] floating, ``labels`` [N] integer class ids (no range check: ids are arbitrary)."""
    if not torch.is_tensor(embeddings) or not embeddings.is_floating_point():
        raise ValueError(f"Invalid {name}: expected a floating-point tensor of shape [N, D], got "
                         f"{type(embeddings).__name__ if not torch.is_tensor(embeddings) else embeddings.dtype}")
    if embeddings.dim() != 2:
        raise ValueError(f"Invalid {name}: expected shape [N, D], got {tuple(embeddings.shape)}")
    if embeddings.shape[0] < min_n:
        raise ValueError(f"Invalid {name}: expected at least {min_n} rows, got {embeddings.shape[0]}")
    if not torch.is_tensor(labels) or labels.dtype not in INT_DTYPES:
        raise ValueError(f"Invalid {labels_name}: expected an integer tensor of class ids of shape [N], got "
                         f"{type(labels).__name__ if not torch.is_tensor(labels) else labels.dtype}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"Invalid {labels_name}: expected shape [{embeddings.shape[0]}] to match {name} "
                         f"{tuple(embeddings.shape)}, got {tuple(labels.shape)}")


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"Invalid {name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_probabilities(p: Tensor, name: str, dim: int = -1, atol: float = 1e-3) -> None:
    """Non-negative and summing to 1 along ``dim`` (one host sync)."""
    if not p.is_floating_point():
        raise ValueError(f"Invalid {name}: expected floating-point probabilities, got {p.dtype}")
    if p.numel() and (bool((p < 0).any()) or not torch.allclose(p.sum(dim), torch.ones((), dtype=p.dtype,
                                                                                           device=p.device),
                                                                atol=atol)):
        raise ValueError(f"Invalid {name}: expected non-negative rows summing to 1 along dim {dim}")


def reduce_loss(loss: Tensor, reduction: str, mask: Tensor | None = None) -> Tensor:
    """Reduce per-sample losses; ``mask`` (bool, True = keep) excludes ignored samples.

    With ``reduction="none"`` ignored samples get loss 0 (as in
    ``F.cross_entropy``). ``"mean"`` divides by the number of kept samples
    (NaN when there are none, as torch does).
    """
    check_reduction(reduction)
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if mask is None:
        return loss.mean()
    return loss.sum() / mask.sum()


def upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (losses compute in float32 at least and cast the result back)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def prepare_logits_target(logits: Tensor, target: Tensor,
                          ignore_index: int | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Half-precision logits upcast to float32; ignored targets replaced by class 0 (safe to gather)
    and returned as a keep-mask for :func:`reduce_loss` (None when nothing can be ignored)."""
    x = upcast(logits)
    tgt = target.long()
    mask = None
    if ignore_index is not None:
        mask = tgt != ignore_index
        tgt = torch.where(mask, tgt, torch.zeros((), dtype=tgt.dtype, device=tgt.device))
    return x, tgt, mask


def keyword_parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """The keyword-only parameters of a loss function: its hyperparameters (the tensors come before ``*``)."""
    return [p for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]


def describe_arguments(function: Callable[..., Any], exclude: tuple[str, ...] = (), indent: str = "") -> str:
    """A docstring paragraph listing ``function``'s keyword-only hyperparameters with their defaults."""
    params = [p for p in keyword_parameters(function) if p.name not in exclude]
    listed = ", ".join(f"``{p.name}={p.default!r}``" for p in params)
    return textwrap.fill(f"Keyword arguments, with the defaults of :func:`{function.__name__}` (see it for their "
                         f"meaning): {listed}.", width=92, subsequent_indent=indent)


def _keyword_init(cls: type, function: Callable[..., Any]) -> Callable[..., None]:
    """A real ``__init__(self, *, <function's keyword-only parameters with their defaults>)`` for ``cls``.

    Built from the functional twin's signature, so ``inspect.signature``, ``help()`` and IDE call tips
    show the loss's arguments (a ``**kwargs`` init shows none), and the two can never disagree.
    """
    params = keyword_parameters(function)
    names = [p.name for p in params]
    defaults = {p.name: p.default for p in params}
    source = (f"def __init__(self, *, {', '.join(f'{n}=__defaults[{n!r}]' for n in names)}):\n"
              f"    __base(self, {', '.join(f'{n}={n}' for n in names)})\n") if names else \
        "def __init__(self):\n    __base(self)\n"
    namespace: dict[str, Any] = {"__defaults": defaults, "__base": LossModule.__init__}
    exec(source, namespace)  # noqa: S102 - the source is built from parameter names only
    init = namespace["__init__"]
    init.__module__ = cls.__module__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {n: p.annotation for n, p in zip(names, params) if p.annotation is not p.empty}
    init.__annotations__["return"] = "None"
    init.__doc__ = describe_arguments(function)
    return init


class LossModule(nn.Module):
    """The ``nn.Module`` twin of a loss function.

    Subclasses set ``function`` (the functional form) and get an ``__init__``
    taking that function's keyword-only hyperparameters (after the tensors),
    with the same names and defaults, built from its signature when the class
    is defined; ``forward(*tensors)`` calls the function with them. A subclass
    that needs more (a buffer, a parameter) writes its own ``__init__`` with
    explicit keyword arguments and calls ``super().__init__(**hyperparameters)``;
    tests/losses/test_signatures.py checks that every twin matches its function.
    """

    function: Callable[..., Tensor]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        function = cls.__dict__.get("function")
        if function is None:
            return
        if "__init__" not in cls.__dict__:
            cls.__init__ = _keyword_init(cls, function)  # type: ignore[method-assign]
        if cls.__doc__ and "Keyword arguments, with the defaults" not in cls.__doc__:
            exclude = tuple(getattr(cls, "excluded_arguments", ()))
            cls.__doc__ = cls.__doc__.rstrip() + "\n\n    " + describe_arguments(function, exclude, "    ") + "\n"

    def __init__(self, **hyperparameters: Any) -> None:
        """Store the function's keyword-only ``hyperparameters`` (subclasses' ``__init__`` pass them all)."""
        super().__init__()
        function = type(self).function
        allowed = {p.name for p in keyword_parameters(function)}
        unknown = set(hyperparameters) - allowed
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected arguments {sorted(unknown)}; "
                            f"accepted: {sorted(allowed)}")
        self.kwargs = hyperparameters
        if "reduction" in hyperparameters:
            check_reduction(hyperparameters["reduction"])

    def forward(self, *tensors: Tensor) -> Tensor:
        return type(self).function(*tensors, **self.kwargs)

    def extra_repr(self) -> str:
        # only the arguments that differ from the function's defaults, as before signatures were explicit
        defaults = {p.name: p.default for p in keyword_parameters(type(self).function)}
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items()
                         if k not in defaults or not _same(v, defaults[k]))


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for plain values; False where equality is not a plain bool (tensors)."""
    try:
        return a is b or bool(a == b)
    except (TypeError, RuntimeError, ValueError):
        return False
