r"""AdAdaGrad's adaptive batch size in a training loop: a controller, a growing batch sampler, micro-batches.

Paper: Tim Tsz-Kit Lau, Han Liu, Mladen Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient
Methods", arXiv 2402.11215 (2024). Authors' code: github.com/timlautk/AdAdaGrad, commit
cc126fba4b57c8ea1ffcd5ff5d30dc8891bf9f17 (``main.py``, the training loop; ``tests.py``, the tests, which are
:func:`gradwise.schedules.norm_test` and its siblings here).

What is taken from their training loop (``main.py@cc126fba``):

* the test runs every ``test_interval`` iterations (``iter_num % test_interval == 0``, ``iter_num`` counted
  from 0, so the first iteration is tested; their default interval is 1), and only while the current batch size
  is below the maximum (``last_global_batch_size < max_global_batch_size``): once capped, no per-sample
  gradients are computed;
* the new batch size is the test's ``math.ceil(max(B, b))`` capped with ``min(., max_batch_size)``; it never
  shrinks (the test's max with ``B``; here also a max with the controller's current size, which is the same
  when the per-sample gradients are those of the whole current batch);
* the ``"augmented"`` test is their ``ip+orth``: the larger of the inner product and the orthogonality
  suggestions, ``threshold=(theta, nu)``;
* nothing is rescaled when the batch grows: the learning rate comes from its own schedule (per iteration or
  per sample) and the test's ``eta`` / ``theta`` / ``nu`` stay fixed. Their defaults are ``eta = theta = 0.1``.

Departures: (1) their loop also rounds the global batch up to ``micro_batch_size * world_size *
accumulation_steps`` (so the size can land a little above the ceiling); :func:`accumulation_chunks` here splits
the exact batch size into near-equal micro-batches instead; (2) their distributed and accumulated
(micro-batch by micro-batch) test variants are not here: give the controller the per-sample gradients of the
whole batch (or of a sub-batch, which the tests accept, at the price of a noisier estimate); (3) their
stagewise and linear ramp-ups are not here.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from gradwise._validate import check_bool, check_choice, check_int, check_positive
from gradwise.schedules.adaptive_batch_size import (inner_product_test, norm_test, orthogonality_test,
                                                    per_sample_grads)

__all__ = ["AdaptiveBatchSize", "GrowingBatchSampler", "accumulation_chunks"]

TESTS = ("norm", "inner_product", "orthogonality", "augmented")


def _batch_of(grads: Sequence[Tensor] | Mapping[str, Tensor]) -> int:
    """The batch dimension of the first per-sample gradient (2 when it cannot be read: the test then says why)."""
    items = list(grads.values()) if isinstance(grads, Mapping) else list(grads) if isinstance(grads, Sequence) else []
    first = items[0] if items else None
    return int(first.shape[0]) if isinstance(first, Tensor) and first.dim() >= 1 else 2


class AdaptiveBatchSize:
    r"""AdAdaGrad's batch-size controller: a test on per-sample gradients says how large the next batch is.

    ``test``: ``"norm"`` (threshold ``eta``), ``"inner_product"`` (``theta``), ``"orthogonality"`` (``nu``) or
    ``"augmented"`` (``threshold=(theta, nu)``, the larger of the two suggestions, the authors' ``ip+orth``).
    ``initial``: the first batch size; ``max_batch_size``: the cap (``>= initial``); ``test_interval``: test
    every that many calls of :meth:`update` (the first call is tested).

    Call :meth:`update` once per training iteration, after the step, with the per-sample gradients of that
    iteration's batch (or the model, loss and batch to compute them with
    :func:`gradwise.schedules.per_sample_grads`); :attr:`batch_size` is then the size of the next batch.
    :attr:`due` says whether the coming :meth:`update` will test, so the per-sample gradients need only be
    computed then. The batch size grows monotonically: ``min(max_batch_size, max(batch_size, ceil(test)))``.
    Follows the training loop of the authors' code (github.com/timlautk/AdAdaGrad, ``main.py`` at commit
    cc126fba4b57c8ea1ffcd5ff5d30dc8891bf9f17); Lau, Liu and Kolar, AdAdaGrad, arXiv 2402.11215. See the module
    docstring for what is followed and what departs.

    Example::

        ctrl = AdaptiveBatchSize("norm", 0.1, initial=32, max_batch_size=4096)
        loader = DataLoader(ds, batch_sampler=GrowingBatchSampler(len(ds), ctrl))
        for x, y in loader:
            loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
            if ctrl.due:
                ctrl.update(model=model, loss_fn=loss_fn, inputs=x, targets=y)
            else:
                ctrl.update()
    """

    def __init__(self, test: str = "norm", threshold: float | tuple[float, float] = 0.1, *, initial: int,
                 max_batch_size: int, test_interval: int = 1) -> None:
        self.test = check_choice("test", test, TESTS)
        if test == "augmented":
            if not isinstance(threshold, (tuple, list)) or len(threshold) != 2:
                raise ValueError(f"Invalid threshold: {threshold!r} (accepted: a pair (theta, nu) of numbers > 0 "
                                 "for test='augmented')")
            self.threshold: float | tuple[float, float] = (check_positive("threshold[0]", threshold[0]),
                                                           check_positive("threshold[1]", threshold[1]))
        else:
            self.threshold = check_positive("threshold", threshold)
        self.initial = check_int("initial", initial, lo=1)
        self.max_batch_size = check_int("max_batch_size", max_batch_size, lo=initial)
        self.test_interval = check_int("test_interval", test_interval, lo=1)
        self.batch_size = initial
        self.steps = 0
        self.last_suggestion: float | None = None

    @property
    def due(self) -> bool:
        """Whether the next :meth:`update` runs the test (on the interval, and below the cap)."""
        return self.steps % self.test_interval == 0 and self.batch_size < self.max_batch_size

    def suggest(self, grads: Sequence[Tensor] | Mapping[str, Tensor]) -> float:
        """The chosen test's suggestion ``max(B, b)`` before the ceiling; changes no state."""
        if self.test == "norm":
            return norm_test(grads, self.threshold)
        if self.test == "inner_product":
            return inner_product_test(grads, self.threshold)
        if self.test == "orthogonality":
            return orthogonality_test(grads, self.threshold)
        theta, nu = self.threshold
        return max(inner_product_test(grads, theta), orthogonality_test(grads, nu))

    def update(self, grads: Sequence[Tensor] | Mapping[str, Tensor] | None = None, *,
               model: nn.Module | None = None, loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
               inputs: Tensor | None = None, targets: Tensor | None = None) -> int:
        """Count one iteration; when :attr:`due`, run the test and grow :attr:`batch_size`. Returns it.

        Give either ``grads`` (per-sample gradients, ``[B, *param_shape]`` tensors) or ``model``, ``loss_fn``,
        ``inputs`` and ``targets``; neither is needed when the call is not due (and both are ignored then).
        A batch of one sample (the remainder at the end of an epoch) has no sample variance: the due test is
        skipped and the size kept (the call still counts as an iteration).
        """
        model_args = (model, loss_fn, inputs, targets)
        if grads is not None and any(a is not None for a in model_args):
            raise ValueError("Invalid arguments: give either grads or model/loss_fn/inputs/targets, not both")
        due = self.due
        self.steps += 1
        if not due:
            return self.batch_size
        if grads is None:
            if any(a is None for a in model_args):
                raise ValueError("Invalid arguments: the test is due, so give grads (per-sample gradients) or "
                                 "all of model, loss_fn, inputs and targets")
            if isinstance(inputs, Tensor) and inputs.dim() >= 1 and inputs.shape[0] < 2:
                return self.batch_size  # one sample has no variance: the test is skipped (see update's docstring)
            grads = per_sample_grads(model, loss_fn, inputs, targets)
        elif _batch_of(grads) < 2:
            return self.batch_size
        suggestion = self.suggest(grads)
        self.last_suggestion = suggestion
        self.batch_size = min(self.max_batch_size, max(self.batch_size, math.ceil(suggestion)))
        return self.batch_size

    def state_dict(self) -> dict[str, Any]:
        """The state that changes in training: ``batch_size``, ``steps``, ``last_suggestion``."""
        return {"batch_size": self.batch_size, "steps": self.steps, "last_suggestion": self.last_suggestion}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the batch size must lie in ``[initial, max_batch_size]``."""
        if not isinstance(state, Mapping) or set(state) != {"batch_size", "steps", "last_suggestion"}:
            raise ValueError(f"Invalid state: {state!r} (accepted: a mapping with keys batch_size, steps, "
                             "last_suggestion, as state_dict() gives)")
        batch = check_int("state['batch_size']", state["batch_size"], lo=self.initial, hi=self.max_batch_size)
        steps = check_int("state['steps']", state["steps"], lo=0)
        last = state["last_suggestion"]
        if last is not None:
            last = check_positive("state['last_suggestion']", last)
        self.batch_size, self.steps, self.last_suggestion = batch, steps, last

    def __repr__(self) -> str:
        return (f"AdaptiveBatchSize(test={self.test!r}, threshold={self.threshold!r}, batch_size={self.batch_size}, "
                f"max_batch_size={self.max_batch_size}, test_interval={self.test_interval}, steps={self.steps})")


class GrowingBatchSampler(Sampler[list[int]]):
    r"""Batches of indices whose size is the controller's ``batch_size``, read afresh at each batch.

    ``data_len``: the dataset's length; ``controller``: an :class:`AdaptiveBatchSize` (anything with an integer
    ``batch_size`` attribute); ``generator``: a ``torch.Generator`` for the per-epoch shuffle (each iteration
    over the sampler is an epoch and draws a new permutation; without one a seed is drawn from torch's global
    generator, as ``RandomSampler`` does); ``drop_last``: leave out a last batch smaller than the current size
    (otherwise every index comes once per epoch). Use as ``DataLoader(ds, batch_sampler=sampler)``. With
    ``num_workers > 0`` the loader reads indices ahead (``prefetch_factor`` batches per worker), so a new size
    takes effect after those. ``len()`` is the number of batches at the current size (an estimate, since the
    size may grow within the epoch). For AdAdaGrad (Lau et al., arXiv 2402.11215); the authors' code
    (github.com/timlautk/AdAdaGrad, ``main.py``@cc126fba) rebuilds its DataLoader instead when the size changes.
    """

    def __init__(self, data_len: int, controller: Any, *, generator: torch.Generator | None = None,
                 drop_last: bool = False) -> None:
        self.data_len = check_int("data_len", data_len, lo=1)
        if not hasattr(controller, "batch_size"):
            raise ValueError(f"Invalid controller: {type(controller).__name__} (accepted: an AdaptiveBatchSize or "
                             "any object with an integer batch_size attribute)")
        self.controller = controller
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"Invalid generator: {generator!r} (accepted: a torch.Generator or None)")
        self.generator = generator
        self.drop_last = check_bool("drop_last", drop_last)

    def _current(self) -> int:
        return check_int("controller.batch_size", self.controller.batch_size, lo=1)

    def __iter__(self) -> Iterator[list[int]]:
        gen = self.generator
        if gen is None:
            gen = torch.Generator()
            gen.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        perm = torch.randperm(self.data_len, generator=gen).tolist()
        pos = 0
        while pos < self.data_len:
            size = self._current()
            if self.drop_last and pos + size > self.data_len:
                return
            yield perm[pos:pos + size]
            pos += size

    def __len__(self) -> int:
        size = self._current()
        return self.data_len // size if self.drop_last else -(-self.data_len // size)


def accumulation_chunks(batch_size: int, max_micro_batch: int) -> list[int]:
    r"""Micro-batch sizes for gradient accumulation: ``ceil(batch_size / max_micro_batch)`` near-equal parts.

    The sizes sum to ``batch_size``, each is ``<= max_micro_batch``, and they differ by at most one (the larger
    first). With a mean-reduced loss, scaling each micro-batch's loss by ``micro / batch_size`` makes the
    accumulated gradient the full batch's gradient::

        opt.zero_grad()
        start = 0
        for micro in accumulation_chunks(len(x), max_micro_batch):
            xb, yb = x[start:start + micro], y[start:start + micro]
            (loss_fn(model(xb), yb) * (micro / len(x))).backward()
            start += micro
        opt.step()

    For AdAdaGrad's growing batches (Lau et al., arXiv 2402.11215). The authors' loop
    (github.com/timlautk/AdAdaGrad, ``main.py``@cc126fba) uses equal micro-batches and rounds the global batch
    up to a multiple of them, with each loss divided by the number of steps; this split keeps the exact size.
    """
    batch_size = check_int("batch_size", batch_size, lo=1)
    max_micro_batch = check_int("max_micro_batch", max_micro_batch, lo=1)
    n = -(-batch_size // max_micro_batch)
    base, extra = divmod(batch_size, n)
    return [base + 1] * extra + [base] * (n - extra)
