"""The cached toy teachers: a class-conditional diffusion model of an unequal-weight 2-D mixture, a
class-conditional diffusion model of the 8x8 digits, and the digits classifier.

``tools/diffusion/make_toy_teachers.py`` trains all three with the recipes below (:func:`train_teacher`) and
saves their float32 state dicts with their configurations in ``tests/data/diffusion_toy_teachers.pt``;
:func:`load_teacher` rebuilds one from that file.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from gradwise._validate import check_choice
from gradwise.diffusion.toy.classifier import DigitsClassifier, train_digits_classifier
from gradwise.diffusion.toy.data import digits_8x8, mixture_2d
from gradwise.diffusion.toy.denoisers import EDMDenoiser
from gradwise.diffusion.toy.nets import ToyConv8x8, ToyMLP
from gradwise.diffusion.toy.training import train_denoiser

__all__ = ["TEACHERS", "MIXTURE_TEACHER_WEIGHTS", "TEACHER_FILE", "build_teacher", "train_teacher",
           "load_teacher", "user_cache_file"]

# The unequal-weight mixture of the one-step study: two light modes (3 % and 5 %) that mode-seeking
# objectives drop.
MIXTURE_TEACHER_WEIGHTS = (0.30, 0.20, 0.15, 0.10, 0.10, 0.07, 0.05, 0.03)

# name -> architecture, denoiser and training recipe (denoisers: train_denoiser phases, each a fresh Adam
# with its own learning rate and seed + phase index). Label dropout: 0.5 for the mixture, whose unconditional
# samples (the null label) are what the one-step study distils; 0.2 for the digits (conditional sampling and
# CFG). sigma_data is the data's
# standard deviation per coordinate, measured: 1.3 for the mixture (radius 2, weights above), 0.75 for the
# digits in [-1, 1].
TEACHERS = {
    "mixture": {"net": {"dim": 2, "num_classes": 8, "width": 128, "depth": 3}, "sigma_data": 1.3,
                "data": {"n": 20000, "modes": 8, "weights": MIXTURE_TEACHER_WEIGHTS, "radius": 2.0, "std": 0.05},
                "train": [{"steps": 4000, "lr": 2e-3, "batch_size": 512, "label_dropout": 0.5},
                          {"steps": 2000, "lr": 3e-4, "batch_size": 512, "label_dropout": 0.5}]},
    "digits": {"net": {"num_classes": 10, "channels": 32, "blocks": 2}, "sigma_data": 0.75,
               "data": {"split": "train"},
               "train": [{"steps": 2400, "lr": 3e-3, "batch_size": 64, "label_dropout": 0.2},
                         {"steps": 600, "lr": 3e-4, "batch_size": 64, "label_dropout": 0.2}]},
    "classifier": {"net": {"channels": 32, "feature_dim": 64}, "data": {"split": "train"},
                   "train": {"epochs": 60}},
}

# The cache, in the repository's tests/data (not installed with the package).
TEACHER_FILE = Path(__file__).resolve().parents[4] / "tests" / "data" / "diffusion_toy_teachers.pt"


def build_teacher(name: str) -> nn.Module:
    """A freshly initialised (torch's global RNG) teacher ``name`` of :data:`TEACHERS`: an
    :class:`EDMDenoiser` for ``"mixture"``/``"digits"``, a :class:`DigitsClassifier` for ``"classifier"``."""
    check_choice("name", name, tuple(TEACHERS))
    cfg = TEACHERS[name]
    if name == "classifier":
        return DigitsClassifier(**cfg["net"])
    net = ToyMLP(**cfg["net"]) if name == "mixture" else ToyConv8x8(**cfg["net"])
    return EDMDenoiser(net, sigma_data=cfg["sigma_data"])


def train_teacher(name: str, *, seed: int = 0) -> nn.Module:
    """Train teacher ``name`` from scratch with its recipe in :data:`TEACHERS` (initialisation, data and
    batches from ``seed``); returns it in eval mode."""
    check_choice("name", name, tuple(TEACHERS))
    cfg = TEACHERS[name]
    if name == "classifier":
        x, y = digits_8x8(**cfg["data"])
        return train_digits_classifier(x, y, seed=seed, **cfg["train"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_teacher(name)
    if name == "mixture":
        x, y = mixture_2d(**cfg["data"], generator=torch.Generator().manual_seed(seed))
    else:
        x, y = digits_8x8(**cfg["data"])
    for phase, kwargs in enumerate(cfg["train"]):
        train_denoiser(model, x, y, seed=seed + phase, **kwargs)
    return model.eval()


def user_cache_file() -> Path:
    """Where teachers trained on first use are cached when the repository's file is absent (an installed
    package): ``$GRADWISE_CACHE`` or ``$XDG_CACHE_HOME/gradwise`` (default ``~/.cache/gradwise``), file
    ``diffusion_toy_teachers.pt``."""
    import os

    root = os.environ.get("GRADWISE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "gradwise"
    return Path(root) / "diffusion_toy_teachers.pt"


def load_teacher(name: str, path: str | Path | None = None) -> nn.Module:
    """Teacher ``name`` (``"mixture"``, ``"digits"``, ``"classifier"``) with its cached weights, in eval mode
    with gradients off. ``path`` defaults to :data:`TEACHER_FILE` (the repository's cache), then to
    :func:`user_cache_file`; where neither holds ``name`` (an installed package), it is trained with its recipe
    (:func:`train_teacher`, seed 0; minutes) and saved to :func:`user_cache_file`. A ``path`` given but missing
    raises FileNotFoundError saying how to make it."""
    check_choice("name", name, tuple(TEACHERS))
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no cached toy teachers (make them with "
                                    "`python tools/diffusion/make_toy_teachers.py`)")
        stored = torch.load(file, map_location="cpu", weights_only=True)[name]
    elif TEACHER_FILE.is_file():
        stored = torch.load(TEACHER_FILE, map_location="cpu", weights_only=True)[name]
    else:
        cache = user_cache_file()
        table = torch.load(cache, map_location="cpu", weights_only=True) if cache.is_file() else {}
        if name not in table:
            trained = train_teacher(name)
            table[name] = {"state_dict": {k: v.detach().float().clone() for k, v in trained.state_dict().items()}}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(table, tmp)
            tmp.replace(cache)
        stored = table[name]
    model = build_teacher(name)
    model.load_state_dict(stored["state_dict"])
    return model.eval().requires_grad_(False)

