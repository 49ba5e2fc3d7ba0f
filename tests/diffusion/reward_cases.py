"""Stand-ins shared by the reward fine-tuning tests: the toy epsilon-model, VAE-less decode and per-pixel
reward model of tools/golden/make_reward_tuning_golden.py, as an EDM denoiser and reward functions."""
from pathlib import Path

import torch
import torch.nn.functional as F

from gradwise.diffusion._common import sd_sigma_ladder

GOLDEN = torch.load(Path(__file__).parents[1] / "data" / "reward_tuning_golden.pt", weights_only=True)
LADDER = sd_sigma_ladder()
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eps_model(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1)
    return torch.tanh(torch.einsum("bchw,cd->bdhw", x, GOLDEN["eps_w"])) * 0.8 + 0.1 * x + t / 1000.0


def denoiser(x, sigma, y=None):
    """D(x, sigma) = x - sigma eps(sqrt(abar) x, t): the DDPM epsilon-model as an EDM denoiser."""
    t = (LADDER.reshape(1, -1) - sigma.reshape(-1, 1)).abs().argmin(1)
    abar = GOLDEN["alphas_cumprod"][t].reshape(-1, 1, 1, 1)
    return x - sigma.reshape(-1, 1, 1, 1) * eps_model(x * abar.sqrt(), t)


def logits_fn(x):
    image = (x / 2 + 0.5).clamp(0, 1)
    image = (image - torch.tensor(MEAN, dtype=x.dtype).reshape(1, -1, 1, 1)) / torch.tensor(STD, dtype=x.dtype).reshape(1, -1, 1, 1)
    return torch.einsum("bchw,cn->bnhw", image, GOLDEN["rew_r"]) + GOLDEN["rew_c"].reshape(1, -1, 1, 1)


def reward_fn(x, labels):
    """Per-pixel reward: minus the segmentation cross-entropy ([B, H, W])."""
    return -F.cross_entropy(logits_fn(x), labels, reduction="none")
