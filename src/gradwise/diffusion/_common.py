"""Checks and reductions shared by the diffusion objectives (tensors in, tensors out).

Every check raises ``ValueError`` naming the argument and what it accepts (the message format of
:mod:`gradwise._validate`). Checks on tensors look at types and shapes only, so a loss never waits for
the device; checks on values (``check_sigmas``) are for schedule helpers that run once per curriculum
stage, not per step.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise._validate import check_choice, check_positive, check_real

__all__ = ["check_batch_tensor", "check_pair", "default_c", "squared_distance", "check_sigmas", "per_sample",
           "DISTANCES", "sd_sigma_ladder", "ladder_top", "draw_noisy", "check_reward"]

# How a per-element penalty becomes a per-sample distance: on the sum or the mean of the squared
# differences over the non-batch dims, or kept per element.
DISTANCES = ("sum", "mean", "elementwise")


def check_batch_tensor(name: str, t) -> Tensor:
    """A floating-point tensor with a batch dim ``[B, ...]``."""
    if not torch.is_tensor(t) or not t.is_floating_point() or t.ndim < 1:
        got = type(t).__name__ if not torch.is_tensor(t) else f"{t.dtype} of shape {tuple(t.shape)}"
        raise ValueError(f"Invalid {name}: {got} (accepted: a floating-point tensor [B, ...])")
    return t


def check_pair(input: Tensor, target: Tensor, input_name: str = "input", target_name: str = "target") -> None:
    """Both floating-point tensors of one shape with a batch dim."""
    check_batch_tensor(input_name, input)
    check_batch_tensor(target_name, target)
    if input.shape != target.shape:
        raise ValueError(f"Invalid {target_name}: shape {tuple(target.shape)} (accepted: the shape of "
                         f"{input_name}, {tuple(input.shape)})")


def default_c(input: Tensor) -> float:
    """iCT's c = 0.00054 * sqrt(d), d the number of entries of one sample (0.00054 * 64 * sqrt(3) on
    CIFAR-10, as the diffusers and Kinyugo ports and LCT's default)."""
    return 0.00054 * math.sqrt(math.prod(input.shape[1:]))


def squared_distance(input: Tensor, target: Tensor, c, distance: str) -> tuple[Tensor, float]:
    """The checks of a robust consistency metric and its two ingredients: the squared difference summed or
    averaged over the non-batch dims (``[B]``) or kept per element, and ``c`` (iCT's default when None)."""
    check_pair(input, target)
    cc = default_c(input) if c is None else check_positive("c", c)
    distance = check_choice("distance", distance, DISTANCES)
    sq = (input - target).square()
    if distance == "elementwise" or sq.ndim == 1:
        return sq, cc
    dims = tuple(range(1, sq.ndim))
    return (sq.sum(dims) if distance == "sum" else sq.mean(dims)), cc


def check_sigmas(sigmas, name: str = "sigmas") -> Tensor:
    """A 1-D floating tensor of at least 2 noise levels, all > 0 and strictly increasing (a host sync:
    call it once per discretization, not per step)."""
    if not torch.is_tensor(sigmas) or not sigmas.is_floating_point() or sigmas.ndim != 1 or sigmas.numel() < 2:
        got = type(sigmas).__name__ if not torch.is_tensor(sigmas) else \
            f"{sigmas.dtype} of shape {tuple(sigmas.shape)}"
        raise ValueError(f"Invalid {name}: {got} (accepted: a 1-D floating-point tensor of >= 2 noise levels)")
    if not bool(((sigmas[0] > 0) & (sigmas[1:] > sigmas[:-1]).all()).item()):
        raise ValueError(f"Invalid {name}: {sigmas.tolist()[:8]}... (accepted: noise levels > 0, strictly "
                         "increasing)")
    return sigmas


def per_sample(name: str, value, like: Tensor, *, positive: bool = True) -> Tensor:
    """``value`` (a number, a 0-d tensor, or a ``[B]`` or ``[B, 1, ...]`` tensor, B = ``like.shape[0]``) shaped to broadcast
    against ``like`` ``[B, ...]``, in ``like``'s dtype and device. With ``positive``, values must be > 0:
    checked for numbers and CPU tensors (no device sync; on an accelerator only types and shapes are)."""
    if not torch.is_tensor(value):
        value = check_positive(name, value) if positive else check_real(name, value)
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    if value.ndim > 1 and value.shape[0] == like.shape[0] and value.numel() == like.shape[0]:
        value = value.reshape(-1)  # [B, 1, ..., 1], as the authors' per-sample sigmas
    if not value.is_floating_point() or value.ndim > 1 or (value.ndim == 1 and value.shape[0] != like.shape[0]):
        raise ValueError(f"Invalid {name}: {value.dtype} tensor of shape {tuple(value.shape)} (accepted: a number, "
                         f"a 0-d tensor or a floating-point tensor [B] or [B, 1, ...] with B = {like.shape[0]})")
    if positive and value.device.type == "cpu" and bool((value <= 0).any()):
        raise ValueError(f"Invalid {name}: values <= 0 (accepted: values > 0)")
    return value.reshape(value.shape + (1,) * (like.ndim - value.ndim)).to(device=like.device, dtype=like.dtype)


def sd_sigma_ladder(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                    beta_end: float = 0.012) -> Tensor:
    """The noise levels of Stable Diffusion's DDPM training schedule as EDM sigmas, ascending ([T] float64).

    diffusers' ``DDPMScheduler(beta_schedule="scaled_linear")`` computes
    ``betas = linspace(beta_start**0.5, beta_end**0.5, T) ** 2`` and ``alphas_cumprod`` in float32;
    timestep t is the noise level sigma_t = sqrt((1 - abar_t) / abar_t) (``x_t / sqrt(abar_t) = x_0 +
    sigma_t eps``). Same float32 arithmetic, then float64, so a draw of timestep t here is the reward
    fine-tuning scripts' (ControlNet++, Ctrl-U) draw of t.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)
    return ((1.0 - abar) / abar).sqrt()


def ladder_top(ladder, sigma_max) -> tuple[Tensor, int]:
    """The noise-level ladder (``sd_sigma_ladder()`` when None; else ascending, > 0, on the host) and the
    index of its highest level <= ``sigma_max`` (ValueError when none is)."""
    ladder = sd_sigma_ladder() if ladder is None else check_sigmas(ladder, "ladder").detach().cpu()
    sigma_max = check_positive("sigma_max", sigma_max)
    hi = int(torch.searchsorted(ladder.to(torch.float64), torch.tensor([sigma_max], dtype=torch.float64),
                                right=True).item()) - 1
    if hi < 0:
        raise ValueError(f"Invalid sigma_max: {sigma_max!r} (accepted: >= the ladder's lowest noise level "
                         f"{float(ladder[0])!r})")
    return ladder, hi


def draw_noisy(x0: Tensor, hi: int, generator, index: Tensor | None,
               noise: Tensor | None) -> tuple[Tensor, Tensor]:
    """Ladder indices ``[B]`` (uniform on 0..hi unless given) and the noise ``eps`` (standard normal in x0's
    dtype unless given) of a perturb-and-denoise reward step."""
    b = x0.shape[0]
    if index is None:
        index = torch.randint(0, hi + 1, (b,), generator=generator, device="cpu").to(x0.device)
    elif not torch.is_tensor(index) or index.dtype not in (torch.int32, torch.int64) or index.shape != (b,):
        got = type(index).__name__ if not torch.is_tensor(index) else f"{index.dtype} of shape {tuple(index.shape)}"
        raise ValueError(f"Invalid index: {got} (accepted: an integer tensor [B] with B = {b})")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
    else:
        check_pair(x0, noise, "x0", "noise")
    return index, noise


def check_reward(name: str, r, b: int) -> Tensor:
    """A reward function's output: a floating tensor with batch dim B."""
    if not torch.is_tensor(r) or not r.is_floating_point() or r.ndim < 1 or r.shape[0] != b:
        got = type(r).__name__ if not torch.is_tensor(r) else f"{r.dtype} of shape {tuple(r.shape)}"
        raise ValueError(f"Invalid {name}: its output is {got} (accepted: a floating-point tensor [B, ...] with "
                         f"B = {b})")
    return r
