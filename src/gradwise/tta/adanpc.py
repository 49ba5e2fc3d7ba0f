"""AdaNPC: a k-nearest-neighbour vote over a memory of features that grows with confident test features.

Paper: "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation" (Zhang, Wang, Jin, Yuan, Zhang,
Wang, Jin, Tan; ICML 2023, arXiv 2304.12566). Authors' code: github.com/yfzhang114/AdaNPC at commit 6fc8256
(``domainbed/adapt_algorithms.py``'s ``AdaNPC``, ``domainbed/knn.py``'s ``MomentumQueue``, the set-up and
the hyperparameters in ``unsupervised_adaptation.py``). Only the abstract and third-party summaries of the
paper were readable in the stored text, so the vote, the confidence rule and the defaults follow that code.

The math, with ``n(v) = v / max(||v||, 1e-12)`` and a memory of unit rows ``m_j`` with labels ``y_j``
(built from the source features, ``n(f(x_src))``, and their true labels). For a test feature ``z``:

    s_j = n(z) . m_j                                  (cosine similarity)
    N   = the k indices j with the largest s_j
    w_j = exp(s_j / T) / sum_{i in N} exp(s_i / T)    (j in N; T = temperature)
    p_c = min(1, 1e-5 + sum_{j in N, y_j = c} w_j)    (the returned scores)

The prediction is ``argmax_c p_c``. Then the confidence ``max_c softmax(p)_c`` (the softmax *of the scores*,
as the authors compute it) is compared with ``beta``: each sample with confidence ``>= beta`` appends
``n(z)`` with label ``argmax_c p_c`` to the memory, after the batch's scores are computed. Since
``softmax(p)`` has entries in ``[1/C, e/(e + C - 1)]``, ``beta <= 1/C`` adds every test sample (the
authors' default ``beta = 0.1`` does so for up to 10 classes) and ``beta > 1`` none.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_int, check_real
from gradwise.registry import register
from gradwise.tta._common import resolve_head

__all__ = ["knn_vote", "AdaNPC"]

PAPER = "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation"
CODE = "https://github.com/yfzhang114/AdaNPC"
# the authors' unsupervised_adaptation.py builds AdaNPC with these hyperparameters
DEFAULT_K = 100
DEFAULT_TEMPERATURE = 0.1
DEFAULT_BETA = 0.1
# knn.py adds 1e-5 to every class score and clips at 1
SCORE_FLOOR = 1e-5


def _check_temperature(temperature: Any) -> float:
    return check_real("temperature", temperature, 0.0, lo_open=True)


def _vote(queries: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor, num_classes: int,
          k: int, temperature: float) -> torch.Tensor:
    """The vote of unit-norm ``queries`` over unit-norm ``memory`` rows (no checks: the hot path)."""
    sim, idx = torch.topk(queries @ memory.T, k, dim=1)
    weights = (sim / temperature).softmax(dim=1)
    scores = torch.zeros(queries.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    scores.scatter_add_(1, memory_labels[idx], weights)
    return (scores + SCORE_FLOOR).clamp(max=1.0)


def _check_memory(memory_feats: Any, memory_labels: Any, num_classes: int, k: int) -> None:
    if not isinstance(memory_feats, torch.Tensor) or memory_feats.dim() != 2 or not memory_feats.is_floating_point():
        raise ValueError("Invalid memory_feats: expected a 2-D floating tensor [N, D] of features (got "
                         f"{type(memory_feats).__name__}{tuple(getattr(memory_feats, 'shape', ()))})")
    if memory_feats.shape[0] == 0:
        raise ValueError("Invalid memory_feats: an empty memory (accepted: at least one row, the source "
                         "features the test samples vote over)")
    if not isinstance(memory_labels, torch.Tensor) or memory_labels.dim() != 1 \
            or memory_labels.is_floating_point() or memory_labels.is_complex() or memory_labels.dtype == torch.bool:
        raise ValueError("Invalid memory_labels: expected a 1-D integer tensor of class indices (got "
                         f"{type(memory_labels).__name__}{tuple(getattr(memory_labels, 'shape', ()))})")
    if memory_labels.shape[0] != memory_feats.shape[0]:
        raise ValueError(f"Invalid memory_labels: {memory_labels.shape[0]} labels for {memory_feats.shape[0]} "
                         "memory_feats rows (accepted: one label per row)")
    if bool((memory_labels < 0).any()) or bool((memory_labels >= num_classes).any()):
        raise ValueError(f"Invalid memory_labels: labels outside [0, {num_classes}) (accepted: class indices "
                         f"0 .. num_classes - 1, num_classes = {num_classes})")
    if k > memory_feats.shape[0]:
        raise ValueError(f"Invalid k: {k} neighbours from a memory of {memory_feats.shape[0]} rows (accepted: "
                         "1 <= k <= the number of memory rows)")


def knn_vote(feats: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor, num_classes: int, *,
             k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """AdaNPC's class scores ``[B, num_classes]`` for ``feats`` ``[B, D]`` voting over ``memory`` ``[N, D]``.

    Both are L2-normalized per row; each row of ``feats`` takes its ``k`` most cosine-similar memory rows,
    weights them by the softmax of similarity / ``temperature``, sums the weights per label and returns
    ``min(1, 1e-5 + sum)`` (the module docstring; the authors' ``MomentumQueue.forward``). Among equal
    similarities at the k-th place, ``torch.topk`` picks which rows vote.
    """
    num_classes = check_int("num_classes", num_classes, 1)
    k = check_int("k", k, 1)
    temperature = _check_temperature(temperature)
    _check_memory(memory, memory_labels, num_classes, k)
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.shape[1] != memory.shape[1]:
        raise ValueError(f"Invalid feats: expected [B, {memory.shape[1]}] features, the width of memory (got "
                         f"{type(feats).__name__}{tuple(getattr(feats, 'shape', ()))})")
    return _vote(F.normalize(feats.to(memory.dtype), dim=1), F.normalize(memory, dim=1),
                 memory_labels.to(memory.device, torch.long), num_classes, k, temperature)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


@register(kind="test-time-adaptation", paper=PAPER, year=2023, arxiv="2304.12566", code=CODE,
          summary="predict by a kNN vote over a memory of source features that grows with the features and "
                  "predicted labels of confident test samples")
class AdaNPC(nn.Module):
    """AdaNPC (Zhang et al., ICML 2023, arXiv 2304.12566; authors' code github.com/yfzhang114/AdaNPC @6fc8256).

    Paper: "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation". The classifier head of
    ``model`` is replaced by a k-nearest-neighbour vote over a memory of (feature, label) pairs: the
    features are the input of ``head`` (default: the model's last ``nn.Linear``, read by a forward
    pre-hook; inputs of more than 2 dims are flattened per row), as the authors split a DomainBed model
    into ``featurizer`` and ``classifier``. ``memory_feats`` ``[N, D]`` and ``memory_labels`` ``[N]`` are
    the source (training-domain) features, computed the same way, and their true labels.

    ``forward(x)`` computes the features of the batch (the model in eval mode, as the authors' feature
    cache; the model's train/eval mode is restored afterwards; no gradients), returns their class scores
    ``[B, num_classes]`` (:func:`knn_vote`, values in ``(0, 1]``, the prediction is their argmax), and then
    appends the normalized features and predicted labels of the samples whose ``max softmax(scores) >=
    beta`` to the memory. The math and the meaning of ``beta``: the module docstring. Defaults are the
    authors' (``k=100``, ``temperature=0.1``, ``beta=0.1``, from their ``unsupervised_adaptation.py``).
    ``num_classes=None`` takes the ``out_features`` of the model's last ``nn.Linear``.

    The memory is in the buffers ``memory`` (unit rows) and ``memory_labels``; the first ``num_source``
    rows are the source memory, ``num_added`` counts the test rows. ``reset()`` drops the test rows, as the
    authors' ``AdaNPC.reset``. ``state_dict()`` holds the memory at its current length, and loading it
    resizes the buffers; the model's weights are never changed.

    Departures from the authors' code: the memory is exactly the given source features (their queue keeps
    a first random, unnormalized row labelled 0, made by ``torch.rand`` in ``MomentumQueue.__init__``);
    the vote sums the weights with ``scatter_add_`` (theirs multiplies a one-hot ``[B, k, C]`` tensor);
    bad input raises ``ValueError``: an empty memory, labels that do not match the rows or lie outside
    ``[0, num_classes)``, ``k`` outside ``[1, N]`` (theirs fails inside ``torch.topk``), ``temperature <=
    0``, an empty batch. Appending costs one host sync per call (the size of the confident subset).

    Example::

        adapted = AdaNPC(model, source_feats, source_labels)   # features = input of the last nn.Linear
        pred = adapted(x_test).argmax(1)
    """

    def __init__(self, model: nn.Module, memory_feats: torch.Tensor, memory_labels: torch.Tensor, *,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE, beta: float = DEFAULT_BETA,
                 head: nn.Module | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")
        head = resolve_head(model, head)
        if num_classes is None:
            last = _last_linear(model)
            if last is None:
                raise ValueError("Invalid num_classes: None and the model has no nn.Linear to read it from "
                                 "(accepted: the number of classes, an int >= 1)")
            num_classes = last.out_features
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.k = check_int("k", k, 1)
        self.temperature = _check_temperature(temperature)
        self.beta = check_real("beta", beta)
        _check_memory(memory_feats, memory_labels, self.num_classes, self.k)
        in_features = getattr(head, "in_features", None)
        if isinstance(in_features, int) and memory_feats.shape[1] != in_features:
            raise ValueError(f"Invalid memory_feats: rows of width {memory_feats.shape[1]}, but the head takes "
                             f"{in_features} features (accepted: the head's input, one row per sample)")
        self.model = model
        self.register_buffer("memory", F.normalize(memory_feats.detach(), dim=1).clone())
        self.register_buffer("memory_labels", memory_labels.detach().to(memory_feats.device, torch.long).clone())
        self.num_source = memory_feats.shape[0]
        self._feats: torch.Tensor | None = None
        self._hook = head.register_forward_pre_hook(self._capture)

    @property
    def num_added(self) -> int:
        """Test rows in the memory (since construction or the last ``reset()``)."""
        return self.memory.shape[0] - self.num_source

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._feats = args[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input for batch ``x``, ``[B, D]``, from the model in eval mode (its mode restored)."""
        was_training = self.model.training
        self.model.eval()
        self._feats = None
        try:
            with torch.no_grad():
                self.model(x)
            feats = self._feats
        finally:
            self._feats = None
            self.model.train(was_training)
        if feats is None:
            raise RuntimeError("AdaNPC: the head was not called during the model's forward, so there are no "
                               "features (pass head=, the module whose input is the features)")
        return feats.flatten(1) if feats.dim() > 2 else feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"Invalid x: {type(x).__name__}{tuple(getattr(x, 'shape', ()))} (accepted: a "
                             "tensor batch of at least one sample, samples along dim 0)")
        feats = self.features(x)
        if feats.dim() != 2 or feats.shape[1] != self.memory.shape[1]:
            raise ValueError(f"Invalid x: its features have shape {tuple(feats.shape)}, the memory's rows "
                             f"{self.memory.shape[1]} values (accepted: inputs whose head input matches "
                             "memory_feats)")
        queries = F.normalize(feats.detach().to(self.memory.dtype), dim=1)
        scores = _vote(queries, self.memory, self.memory_labels, self.num_classes, self.k, self.temperature)
        confidence, predicted = scores.softmax(dim=1).max(dim=1)
        keep = confidence >= self.beta
        # boolean indexing sizes the appended block: the one host sync per call
        self.memory = torch.cat([self.memory, queries[keep]])
        self.memory_labels = torch.cat([self.memory_labels, predicted[keep]])
        return scores

    def reset(self) -> None:
        """Drop the test rows: the memory is the source memory again."""
        self.memory = self.memory[: self.num_source].clone()
        self.memory_labels = self.memory_labels[: self.num_source].clone()

    def get_extra_state(self) -> dict[str, Any]:
        return {"num_source": self.num_source}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.num_source = int(state["num_source"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # the memory grows: take the saved length before torch copies into the buffers
        for name in ("memory", "memory_labels"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.empty(saved.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"k={self.k}, temperature={self.temperature}, beta={self.beta}, num_classes={self.num_classes}, "
                f"memory={self.memory.shape[0]} rows ({self.num_source} source)")
