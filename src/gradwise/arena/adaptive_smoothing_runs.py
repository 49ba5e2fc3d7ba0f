"""What one seed of the adaptive-smoothing study trains and measures (the study module holds the report).

Data: scikit-learn's 8x8 digits, pixels scaled to [0, 1] (raw / 16), the arena's 75/25 stratified split
(``random_state`` = split seed). Attacks: L-inf PGD (:func:`gradwise.losses.pgd_attack`, random start, summed
cross-entropy, inputs clamped to [0, 1]) on the whole classifier being evaluated: for a mixture, through both base
models and the mixing network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DigitsData", "load_digits01", "train_classifier", "MixingMLP", "train_mixing_net", "evaluate",
           "fixed_alpha_model", "run_seed"]


@dataclass(frozen=True)
class DigitsData:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits01(split_seed: int = 0) -> DigitsData:
    """Digits with pixels in [0, 1] and the arena's 75/25 stratified split."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=split_seed)
    f = lambda a: torch.from_numpy((a / 16.0).astype(np.float32))  # noqa: E731
    i = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return DigitsData(f(x_tr), i(y_tr), f(x_te), i(y_te))


def _mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def _pgd(model, x: Tensor, y: Tensor, cfg: Any, steps: int, gen: torch.Generator) -> Tensor:
    from gradwise.losses import pgd_attack

    return pgd_attack(model, x, y, eps=cfg.eps, alpha=2.5 * cfg.eps / steps, steps=steps, clamp=(0.0, 1.0),
                      generator=gen)


def train_classifier(data: DigitsData, cfg: Any, seed: int, *, adversarial: bool) -> nn.Module:
    """A ReLU MLP, Adam; ``adversarial``: on PGD examples only (Madry et al.), ``cfg.train_pgd_steps`` steps."""
    torch.manual_seed(seed)
    model = _mlp(cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(10_000 + seed + (1 if adversarial else 0))
    n = data.x_train.shape[0]
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            x, y = data.x_train[idx], data.y_train[idx]
            if adversarial:
                model.eval()
                x = _pgd(model, x, y, cfg, cfg.train_pgd_steps, gen)
                model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class MixingMLP(nn.Module):
    """The study's mixing network: gamma from the input and both models' logits (an adversary detector)."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64 + 20, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, std_logits: Tensor, rob_logits: Tensor) -> Tensor:
        return self.net(torch.cat([x, std_logits, rob_logits], dim=1))


def train_mixing_net(std: nn.Module, rob: nn.Module, data: DigitsData, cfg: Any, seed: int):
    """:class:`gradwise.robustness.AdaptiveSmoothing` with a fresh :class:`MixingMLP`, trained as the authors'
    trainer does: each batch holds the clean images (is_adv 0, weight 2) and the same images attacked through the
    whole mixture in eval mode (is_adv 1, weight 1; eval-time alpha range [alpha_min, 1]);
    :func:`gradwise.robustness.adaptive_smoothing_loss` with their CIFAR-10 constants (bce 1, ce 0.5, prod 0.1),
    Adam on the mixing network only."""
    from gradwise.robustness import AdaptiveSmoothing, adaptive_smoothing_loss

    torch.manual_seed(20_000 + seed)
    mixer = MixingMLP()
    model = AdaptiveSmoothing(std, rob, mixer, gamma_scale=cfg.gamma_scale, alpha_scale=1.0 - cfg.alpha_min,
                              alpha_bias=cfg.alpha_min)
    opt = torch.optim.Adam(mixer.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(30_000 + seed)
    n = data.x_train.shape[0]
    for _ in range(cfg.mix_epochs):
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            x, y = data.x_train[idx], data.y_train[idx]
            model.eval()
            x_adv = _pgd(lambda z: model(z)[0], x, y, cfg, cfg.train_pgd_steps, gen)
            model.train()
            xb, yb = torch.cat([x, x_adv]), torch.cat([y, y])
            is_adv = torch.cat([torch.zeros(len(x)), torch.ones(len(x))])
            out, gammas = model(xb)
            loss = adaptive_smoothing_loss(out, yb, gammas, is_adv, weight=2.0 - is_adv)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def fixed_alpha_model(std: nn.Module, rob: nn.Module, alpha: float):
    """The mixture with a fixed alpha (gamma = logit(alpha); 0 and 1 run one model only)."""
    from gradwise.robustness import AdaptiveSmoothing

    gamma = -math.inf if alpha <= 0 else math.inf if alpha >= 1 else math.log(alpha / (1.0 - alpha))
    return AdaptiveSmoothing(std, rob, gamma=gamma).eval()


def _alphas(model, x: Tensor) -> Tensor:
    """The eval-mode alpha of ``model`` per input."""
    with torch.no_grad():
        _, g = model(x)
    return torch.sigmoid(g) * model.alpha_scale + model.alpha_bias if model.mixing_net is not None \
        else torch.sigmoid(g)


def evaluate(model, data: DigitsData, cfg: Any, seed: int) -> dict[str, float]:
    """Clean and PGD accuracy on the test split (attack through the whole model), mean alpha on each."""
    gen = torch.Generator().manual_seed(40_000 + seed)
    x, y = data.x_test, data.y_test
    x_adv = _pgd(lambda z: model(z)[0], x, y, cfg, cfg.pgd_steps, gen)
    with torch.no_grad():
        clean = float((model(x)[0].argmax(1) == y).float().mean())
        pgd = float((model(x_adv)[0].argmax(1) == y).float().mean())
    return {"clean_acc": clean, "pgd_acc": pgd, "score": 0.5 * (clean + pgd),
            "alpha_clean": float(_alphas(model, x).mean()), "alpha_pgd": float(_alphas(model, x_adv).mean())}


def run_seed(data: DigitsData, cfg: Any, methods: tuple[str, ...], alphas: dict[str, float],
             seed: int) -> list[dict[str, Any]]:
    """Both base models, then each method: a fixed alpha from ``alphas`` or ``"adaptive"``."""
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    std = train_classifier(data, cfg, seed, adversarial=False)
    rob = train_classifier(data, cfg, seed, adversarial=True)
    base_s = time.perf_counter() - t0
    rows = []
    for m in methods:
        t1 = time.perf_counter()
        model = train_mixing_net(std, rob, data, cfg, seed) if m == "adaptive" else fixed_alpha_model(std, rob,
                                                                                                       alphas[m])
        rows.append({"method": m, "seed": seed, **evaluate(model, data, cfg, seed),
                     "wall_s": time.perf_counter() - t1, "base_models_s": base_s})
    return rows
