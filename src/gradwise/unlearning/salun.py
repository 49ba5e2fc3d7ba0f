"""SalUn: random-label unlearning restricted to the weights most salient for the forget set.

Paper: "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
Classification and Generation", Fan, Liu, Zhang, Wong, Wei, Liu, ICLR 2024, arXiv 2310.12508.
Authors' code: https://github.com/OPTML-Group/Unlearn-Saliency, followed at commit a6e89fd
(``Classification/generate_mask.py``, ``Classification/unlearn/RL.py``). Only the abstract and the
group's summary page of the paper were readable in the stored text, so the formulas below are those
of the authors' code, which ``tests/unlearning/test_salun.py`` checks step by step (float64).

Saliency mask (``saliency_mask``), with the model in eval mode and ``ℓ_b`` the mean cross-entropy of
forget batch ``b``::

    g = | Σ_b ∇_θ (−ℓ_b(θ0)) |                    (summed over the forget batches, then abs)
    m = 1 for the k = ⌊ratio · N⌋ largest entries of g over all N parameter entries (one global ranking)

``ratio`` is the authors' threshold (their ``with_0.5.pt`` is ``ratio=0.5``, the median rule).

Unlearning (``SalUn.fit``): each epoch, every forget batch with labels drawn uniformly from
``{0, ..., num_classes-1}`` (the authors' CIFAR-10/SVHN branch), then every retain batch with its own
labels, one SGD step each on the mean cross-entropy::

    d = ∇ℓ + λ θ;   b ← μ b + d (b = d at the first step);   b ← m ⊙ b;   θ ← θ − η b

so the weights with ``m = 0`` never move from θ0 and their momentum stays 0.

Departures from the authors' code, each with its reason:

* **Tie rule.** The authors rank with ``torch.argsort``, which is not stable on CPU, so among equal
  saliencies the chosen weights are whatever the sort left. Dead ReLUs give many exact zeros, and
  thresholds of 0.7-0.9 then fall inside that tie. Here the ranking is stable: among equal saliencies
  the entry that comes first wins, parameters in ``named_parameters`` order and entries in row-major
  order inside each. Wherever saliencies differ the masks are the authors'.
* **Masked-out weights.** Since a6e89fd the authors let SGD (with weight decay and momentum) move every
  weight and then write θ0 back into the masked-out ones and zero their momentum; before that commit
  weight decay moved them. Here their update is never applied: the momentum is masked before the
  step, which leaves the same parameters and buffers (exactly, not up to rounding) and costs one
  multiply per masked tensor.
* A parameter that gets no gradient from the forget set (unused in the forward) has saliency 0 here;
  in the authors' code its entry stays the integer 0 and their ``torch.abs_`` fails.
* Labels for the forget batches are drawn with ``torch.randint`` on ``generator`` (the global CPU
  generator when None, as the authors'), so a seeded run draws the authors' labels.
* The authors' lr milestones (91, 136) never fire within their 10 unlearning epochs; no schedule here.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from gradwise._validate import check_int, check_nonneg, check_positive, check_range
from gradwise.registry import register

__all__ = ["saliency_mask", "SalUn"]

_PAPER = ("SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image "
          "Classification and Generation")
_CODE = "https://github.com/OPTML-Group/Unlearn-Saliency"


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"Invalid model: {type(model).__name__} (accepted: a torch.nn.Module)")


def saliency_mask(model: nn.Module, forget_batches: Iterable, *, ratio: float = 0.5) -> dict[str, torch.Tensor]:
    """SalUn's weight-saliency mask (arXiv 2310.12508; the authors' ``generate_mask.py``): True for the
    ``⌊ratio·N⌋`` weights with the largest ``|Σ_b ∇(−CE_b)|`` over the forget batches ``(x, y)``, CE_b
    the batch's mean cross-entropy, ranked over the whole model.

    The model runs in eval mode (restored afterwards); its ``.grad`` fields are not touched. Ties are
    broken by position: the entry earlier in ``named_parameters`` order (row-major inside a
    parameter) is kept. Returns a bool tensor per named parameter, shaped like it.
    """
    _check_model(model)
    check_range("ratio", ratio, 0.0, 1.0, lo_open=True)
    named = list(model.named_parameters())
    if not named:
        raise ValueError("Invalid model: it has no parameters (accepted: a model with parameters)")
    trainable = [p for _, p in named if p.requires_grad]
    if not trainable:
        raise ValueError("Invalid model: no parameter requires grad (accepted: a model with trainable parameters)")
    sums: list[torch.Tensor | None] = [None] * len(trainable)
    was_training = model.training
    model.eval()
    n_batches = 0
    try:
        for x, y in forget_batches:
            loss = -F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, trainable, allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    sums[i] = g.detach().clone() if sums[i] is None else sums[i].add_(g)
            n_batches += 1
    finally:
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("Invalid forget_batches: no batch (accepted: at least one (x, y) batch)")
    saliency, it = [], iter(sums)
    for _, p in named:  # frozen or unused parameters: saliency 0
        s = next(it) if p.requires_grad else None
        saliency.append(torch.zeros_like(p).flatten() if s is None else s.abs().flatten())
    flat = torch.cat([s.to(saliency[0].device) for s in saliency])
    if not bool(torch.isfinite(flat).all()):  # one sync, once per mask
        raise ValueError("Invalid forget_batches: the forget-loss gradient is not finite (accepted: batches "
                         "with a finite cross-entropy gradient)")
    k = int(flat.numel() * ratio)  # the authors' int(len * ratio)
    order = torch.argsort(flat, descending=True, stable=True)  # stable: ties keep their position
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[order[:k]] = True
    out, start = {}, 0
    for name, p in named:
        out[name] = chosen[start:start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return out


def _as_bool_mask(name: str, value, param: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"Invalid mask[{name!r}]: {type(value).__name__} (accepted: a tensor shaped like the "
                         f"parameter, {tuple(param.shape)})")
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f"Invalid mask[{name!r}]: shape {tuple(value.shape)} (accepted: the parameter's shape "
                         f"{tuple(param.shape)})")
    if value.dtype != torch.bool:
        if value.is_complex() or not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"Invalid mask[{name!r}]: values other than 0 and 1 (accepted: a bool tensor or "
                             "one of 0s and 1s)")
        value = value != 0
    return value.to(param.device)


@register(kind="unlearning", paper=_PAPER, year=2024, arxiv="2310.12508", code=_CODE,
          summary="Random-label unlearning on the forget set, then the retain set, updating only the "
                  "weights whose forget-loss gradient is largest (saliency mask)")
class SalUn:
    """SalUn unlearning: SGD on random labels for the forget batches, then the retain batches, with
    the weights outside ``mask`` (from :func:`saliency_mask`) kept at their starting values θ0.

    "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
    Classification and Generation" (ICLR 2024), arXiv 2310.12508; authors' code
    https://github.com/OPTML-Group/Unlearn-Saliency (@a6e89fd, ``unlearn/RL.py``). Each step, on the
    mean cross-entropy ℓ of the batch::

        d = ∇ℓ + λ θ;   b ← μ b + d (b = d at first);   b ← m ⊙ b;   θ ← θ − η b

    ``mask=None`` is plain random labelling (every weight moves, m = 1). ``lr`` η, ``momentum`` μ,
    ``weight_decay`` λ are the authors' SGD's (defaults: theirs). The model is changed in place;
    ``.step(x, y)`` is one update with the given labels and returns the loss (detached), ``.fit(...)``
    runs the epochs. The departures from the authors' code are in the module docstring.
    """

    def __init__(self, model: nn.Module, mask: Mapping[str, torch.Tensor] | None, *, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4):
        _check_model(model)
        self.model = model
        self.lr = check_positive("lr", lr)
        check_range("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.momentum = float(momentum)
        self.weight_decay = check_nonneg("weight_decay", weight_decay)
        named = list(model.named_parameters())
        if mask is not None:
            if not isinstance(mask, Mapping):
                raise ValueError(f"Invalid mask: {type(mask).__name__} (accepted: None or a dict of parameter "
                                 "name -> bool tensor, as saliency_mask returns)")
            names = {n for n, _ in named}
            missing, extra = sorted(names - set(mask)), sorted(set(mask) - names)
            if missing or extra:
                raise ValueError(f"Invalid mask: keys do not match the model's parameters (missing: {missing}, "
                                 f"unexpected: {extra}) (accepted: one entry per named parameter)")
        self.names = [n for n, p in named if p.requires_grad]
        self.params = [p for _, p in named if p.requires_grad]
        # float multipliers for the masked tensors; None where every entry is updated (no multiply)
        self._masks: list[torch.Tensor | None] = []
        for n, p in zip(self.names, self.params):
            m = None if mask is None else _as_bool_mask(n, mask[n], p)
            self._masks.append(None if m is None or bool(m.all()) else m.to(p.dtype))
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step on ``cross_entropy(model(x), y)``; masked-out weights do not move."""
        loss = F.cross_entropy(self.model(x), y)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        # torch.optim.SGD skips a parameter without a gradient (no decay, no momentum): so do we
        idx = [i for i, g in enumerate(grads) if g is not None]
        params = [self.params[i] for i in idx]
        d = [grads[i] for i in idx]
        with torch.no_grad():
            if self.weight_decay != 0:  # out of place, as SGD: autograd may hand back expanded tensors
                d = torch._foreach_add(d, params, alpha=self.weight_decay)
            if self.momentum != 0:
                old = [(i, t) for i, t in zip(idx, d) if self.momentum_buffers[i] is not None]
                if old:
                    bufs = [self.momentum_buffers[i] for i, _ in old]
                    torch._foreach_mul_(bufs, self.momentum)
                    torch._foreach_add_(bufs, [t for _, t in old])
                for i, t in zip(idx, d):
                    if self.momentum_buffers[i] is None:
                        self.momentum_buffers[i] = t.clone()
                d = [self.momentum_buffers[i] for i in idx]
            # masked-out entries: momentum 0, no step (as the authors' restore); one foreach over the masked
            # tensors (in place on the momentum buffers, or on d, which is the gradients only with weight decay)
            masked = [k for k, i in enumerate(idx) if self._masks[i] is not None]
            if masked:
                if self.momentum == 0 and self.weight_decay == 0:  # d holds autograd's gradients: do not write
                    d = list(d)
                    for k, t in zip(masked, torch._foreach_mul([d[k] for k in masked],
                                                               [self._masks[idx[k]] for k in masked])):
                        d[k] = t
                else:
                    torch._foreach_mul_([d[k] for k in masked], [self._masks[idx[k]] for k in masked])
            torch._foreach_add_(params, d, alpha=-self.lr)
        return loss.detach()

    def fit(self, forget_batches: Iterable, retain_batches: Iterable, *, num_classes: int, epochs: int = 10,
            generator: torch.Generator | None = None) -> "SalUn":
        """``epochs`` passes, each over the forget batches with labels drawn uniformly from
        ``range(num_classes)`` (on ``generator``; the global one when None), then over the retain
        batches with their labels. Both must be re-iterable (lists, DataLoaders). Returns self."""
        check_int("num_classes", num_classes, 2)
        check_int("epochs", epochs, 1)
        device = generator.device if generator is not None else torch.device("cpu")
        for _ in range(epochs):
            self.model.train()
            n_forget = 0
            for x, y in forget_batches:
                labels = torch.randint(0, num_classes, y.shape, generator=generator, device=device)
                self.step(x, labels.to(y.device))
                n_forget += 1
            if n_forget == 0:
                raise ValueError("Invalid forget_batches: no batch (accepted: at least one (x, y) batch, "
                                 "re-iterable for every epoch)")
            for x, y in retain_batches:
                self.step(x, y)
        return self
