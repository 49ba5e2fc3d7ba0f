"""Training a toy denoiser with EDM's loss, and sampling it with EDM's deterministic Heun sampler.

Loss (Karras et al. 2022, Sec. 5 and Table 1; NVlabs/edm ``training/loss.py`` ``EDMLoss``): per sample
``ln sigma ~ N(p_mean, p_std^2)``, ``n ~ N(0, sigma^2 I)``, loss
``lambda(sigma) ||D(x + n; sigma) - x||^2`` with ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``.
Departure: EDM sums the squared error over pixels and averages over the batch; here it is averaged over
both (a constant factor that Adam does not see). Classifier-free guidance: each label is replaced by the
null label ``num_classes`` with probability ``label_dropout``.
"""
from __future__ import annotations

import torch
from torch import nn

from gradwise._validate import check_int, check_positive, check_real

__all__ = ["train_denoiser", "edm_sample", "edm_sigmas"]


def train_denoiser(denoiser: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, steps: int,
                   lr: float = 1e-3, p_mean: float = -1.2, p_std: float = 1.2, label_dropout: float = 0.1,
                   seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Train ``denoiser`` (an :class:`~gradwise.diffusion.toy.EDMDenoiser`) on ``x [n, ...]`` (labels
    ``y [n]`` for a conditional network) for ``steps`` Adam steps of ``batch_size`` samples drawn with
    replacement. Everything random (batches, sigma, noise, dropped labels) comes from a generator seeded
    with ``seed``; the network's initialisation is the caller's. Returns the ``[steps]`` losses (float32,
    detached); leaves the denoiser in the mode it was in.
    """
    check_int("steps", steps, 1)
    check_positive("lr", lr)
    check_real("p_mean", p_mean)
    check_positive("p_std", p_std)
    check_real("label_dropout", label_dropout, 0.0, 1.0, hi_open=True)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] < 1 or not x.is_floating_point():
        raise ValueError(f"Invalid x: {getattr(x, 'shape', x)!r} (accepted: a floating tensor [n, ...], n >= 1)")
    num_classes = int(getattr(denoiser, "num_classes", 0))
    if (y is None) != (num_classes == 0):
        raise ValueError(f"Invalid y: {'None' if y is None else 'labels'} for a network with num_classes = "
                         f"{num_classes} (accepted: labels [n] for a conditional network, None otherwise)")
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],)
                          or y.is_floating_point() or bool(((y < 0) | (y >= num_classes)).any())):
        raise ValueError(f"Invalid y: {getattr(y, 'shape', y)!r} (accepted: [n] = [{x.shape[0]}] integer "
                         f"labels in 0..{num_classes - 1})")
    sigma_data = float(denoiser.sigma_data)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    view = (-1,) + (1,) * (x.dim() - 1)
    losses = torch.empty(steps, dtype=torch.float32)
    was_training = denoiser.training
    denoiser.train()
    try:
        for step in range(steps):
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen, device=x.device)
            xb = x[idx]
            sigma = (torch.randn(batch_size, generator=gen, device=x.device, dtype=x.dtype) * p_std
                     + p_mean).exp()
            noise = torch.randn(xb.shape, generator=gen, device=x.device, dtype=x.dtype)
            labels = None
            if y is not None:
                drop = torch.rand(batch_size, generator=gen, device=x.device) < label_dropout
                labels = torch.where(drop, torch.full_like(y[idx], num_classes), y[idx])
            weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
            denoised = denoiser(xb + sigma.view(view) * noise, sigma, labels)
            loss = (weight.view(view) * (denoised - xb) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = loss.detach()
    finally:
        denoiser.train(was_training)
    return losses


def edm_sigmas(steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """EDM's sampling levels (Eq. 5), descending: ``steps`` levels from ``sigma_max`` to ``sigma_min``, then 0."""
    check_int("steps", steps, 2)
    check_positive("sigma_min", sigma_min)
    check_positive("sigma_max", sigma_max)
    if not sigma_min < sigma_max:
        raise ValueError(f"Invalid sigma_min: {sigma_min} (accepted: sigma_min < sigma_max = {sigma_max})")
    check_positive("rho", rho)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    levels = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([levels, levels.new_zeros(1)]).to(dtype)


@torch.no_grad()
def edm_sample(denoiser: nn.Module, noise: torch.Tensor, *, steps: int = 18, class_labels=None,
               guidance_scale: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0) -> torch.Tensor:
    """EDM's deterministic sampler (Algorithm 1: Heun's method, Euler on the last step) from
    ``x_0 = sigma_max * noise`` through :func:`edm_sigmas` (``2 * steps - 1`` network evaluations, twice that
    with guidance).

    guidance_scale: classifier-free guidance ``D_u + w (D_c - D_u)`` (``D_u`` at the null label) when
        ``!= 1`` (a conditional denoiser and ``class_labels`` needed).
    """
    check_real("guidance_scale", guidance_scale)
    if guidance_scale != 1.0 and (class_labels is None or int(getattr(denoiser, "num_classes", 0)) == 0):
        raise ValueError(f"Invalid guidance_scale: {guidance_scale} (accepted: 1.0 unless class_labels are "
                         "given to a conditional denoiser)")
    sigmas = edm_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho).tolist()

    def d(x, s):
        cond = denoiser(x, s, class_labels)
        if guidance_scale == 1.0:
            return cond
        uncond = denoiser(x, s, None)
        return uncond + guidance_scale * (cond - uncond)

    x = noise * sigmas[0]
    for cur, nxt in zip(sigmas[:-1], sigmas[1:]):
        slope = (x - d(x, cur)) / cur
        x_next = x + (nxt - cur) * slope
        if nxt > 0:
            x_next = x + (nxt - cur) * 0.5 * (slope + (x_next - d(x_next, nxt)) / nxt)
        x = x_next
    return x
