"""A digits classifier for rewards and metrics: the reward log p(y|x) of reward fine-tuning, the features of
:func:`~gradwise.diffusion.toy.feature_frechet`, and the accuracy of generated digits.

Its weights are trained by ``tools/diffusion/make_toy_teachers.py`` (:func:`train_digits_classifier` on
:func:`digits_8x8` ``"train"``) and cached in ``tests/data/diffusion_toy_teachers.pt``
(:func:`~gradwise.diffusion.toy.load_teacher` ``("classifier")``); it scores >= 97 % on the ``"test"`` split.
"""
from __future__ import annotations

import torch
from torch import nn

from gradwise._validate import check_int, check_nonneg, check_positive

__all__ = ["DigitsClassifier", "train_digits_classifier", "classifier_reward"]


class DigitsClassifier(nn.Module):
    """A small CNN on ``[B, 1, 8, 8]`` images in [-1, 1]: two 3x3 convs (``channels``), 2x2 max-pool, a 3x3
    conv (``2 channels``), global average pool, then ``features()`` (``feature_dim`` units, SiLU) and a
    linear layer to 10 logits."""

    def __init__(self, channels: int = 32, feature_dim: int = 64):
        super().__init__()
        check_int("channels", channels, 1)
        check_int("feature_dim", feature_dim, 1)
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * channels, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, feature_dim]`` penultimate features."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"Invalid x: shape {tuple(getattr(x, 'shape', ()))} (accepted: [B, 1, 8, 8])")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digits_classifier(x: torch.Tensor, y: torch.Tensor, *, epochs: int = 60, lr: float = 3e-3,
                            weight_decay: float = 1e-4, noise: float = 0.1, batch_size: int = 64,
                            seed: int = 0) -> DigitsClassifier:
    """A :class:`DigitsClassifier` trained with AdamW (cosine learning rate) on ``x [n, 1, 8, 8]``, ``y [n]``,
    with Gaussian pixel noise of std ``noise`` and random 1-pixel shifts as augmentation (so that it also
    scores generated digits, which are never exactly on the data). Initialisation and batches from ``seed``."""
    check_int("epochs", epochs, 1)
    check_positive("lr", lr)
    check_nonneg("weight_decay", weight_decay)
    check_nonneg("noise", noise)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"Invalid y: {getattr(y, 'shape', y)!r} (accepted: [n] labels, n = x.shape[0])")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = DigitsClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = -(-x.shape[0] // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * per_epoch)
    clf.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            xb = x[idx] + noise * torch.randn(x[idx].shape, generator=gen)
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3)).clamp(-1.5, 1.5)
            loss = nn.functional.cross_entropy(clf(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return clf.eval()


def classifier_reward(clf: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(y | x)`` under ``clf`` (log-softmax of its logits), ``[B]`` in the logits' dtype;
    differentiable in ``x`` (the reward of reward fine-tuning)."""
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        raise ValueError(f"Invalid y: {getattr(y, 'shape', y)!r} (accepted: [B] integer labels, "
                         f"B = x.shape[0] = {x.shape[0]})")
    logp = torch.log_softmax(clf(x), dim=-1)
    if bool(((y < 0) | (y >= logp.shape[-1])).any()):
        raise ValueError(f"Invalid y: labels outside 0..{logp.shape[-1] - 1}")
    return logp.gather(1, y.long().unsqueeze(1)).squeeze(1)
