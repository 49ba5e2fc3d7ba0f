"""Arena tasks: small problems built from data that ships inside a package.

The digits task uses scikit-learn's bundled ``load_digits`` (1,797 8x8 images,
10 classes; nothing is downloaded). The train/test split is stratified and
fixed by ``split_seed``, independent of the run seed, so every optimizer and
every seed sees the same data. Features are standardized with statistics of the
training portion only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Task", "digits", "mlp"]


@dataclass(frozen=True)
class Task:
    """A supervised classification problem held as float32/int64 tensors.

    ``x_eval``/``y_eval`` are the held-out split: the test split for studies,
    the validation split (carved from the training split) for LR sweeps.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_eval: torch.Tensor
    y_eval: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def digits(*, eval_split: str = "test", test_fraction: float = 0.25, val_fraction: float = 0.2,
           split_seed: int = 0) -> Task:
    """The digits task.

    eval_split: ``"test"`` holds out ``test_fraction`` of the data; ``"val"``
        holds out the same test split, then carves ``val_fraction`` of the
        remaining training data into a validation split and evaluates on it
        (for choosing hyperparameters without looking at the test split).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if eval_split not in ("test", "val"):
        raise ValueError(f"eval_split must be 'test' or 'val', got {eval_split!r}")
    x, y = load_digits(return_X_y=True)
    x_tr, x_ev, y_tr, y_ev = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=split_seed)
    if eval_split == "val":
        x_tr, x_ev, y_tr, y_ev = train_test_split(x_tr, y_tr, test_size=val_fraction, stratify=y_tr,
                                                  random_state=split_seed)
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # some border pixels are always 0

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    def i64(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return Task(name=f"digits/{eval_split}", x_train=f32(x_tr), y_train=i64(y_tr), x_eval=f32(x_ev),
                y_eval=i64(y_ev), num_classes=10)


def mlp(num_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 128)) -> nn.Sequential:
    """A GELU multilayer perceptron; initialized from torch's global RNG (seed it first)."""
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
