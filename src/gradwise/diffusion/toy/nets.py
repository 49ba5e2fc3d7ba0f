"""Small networks for the toy denoisers: ``net(x_in, c_noise, class_labels) -> F`` of ``x_in``'s shape.

Both embed the noise level ``c_noise`` (EDM's ln(sigma)/4) with fixed sinusoidal features followed by a
linear layer, and a class label with ``nn.Embedding(num_classes + 1, ...)``, row ``num_classes`` being the
null label of classifier-free guidance. ``num_classes=0`` makes the network unconditional (it then accepts
only ``class_labels=None``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gradwise._validate import check_int

__all__ = ["ToyMLP", "ToyConv8x8", "NoiseLabelEmbedding"]


class NoiseLabelEmbedding(nn.Module):
    """``[B] c_noise`` (and ``[B]`` labels) -> ``[B, width]``: sinusoidal features of ``c_noise`` at ``freqs``
    geometric frequencies (1 to 1000, as transformer positions), a linear layer, plus the label's embedding."""

    def __init__(self, width: int, num_classes: int = 0, freqs: int = 16):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 0)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(1000.0), freqs)), persistent=False)
        self.noise = nn.Linear(2 * freqs, width)
        self.label = nn.Embedding(num_classes + 1, width) if num_classes > 0 else None

    def forward(self, c_noise: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs.to(c_noise.dtype)
        emb = self.noise(torch.cat([angles.cos(), angles.sin()], dim=1))
        if self.label is not None:
            labels = class_labels if class_labels is not None else \
                torch.full((c_noise.shape[0],), self.num_classes, dtype=torch.long, device=c_noise.device)
            emb = emb + self.label(labels)
        elif class_labels is not None:
            raise ValueError("Invalid class_labels: labels given to an unconditional network "
                             "(accepted: None when num_classes is 0)")
        return emb


class ToyMLP(nn.Module):
    """An MLP on ``[B, dim]``: input layer, ``depth`` residual blocks ``h + Linear(SiLU(LayerNorm(h) + emb))``
    of ``width`` units, output layer (initialised to zero, so the denoiser starts at ``c_skip x``)."""

    def __init__(self, dim: int, num_classes: int = 0, width: int = 256, depth: int = 3):
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        self.num_classes = check_int("num_classes", num_classes, 0)
        check_int("width", width, 1)
        check_int("depth", depth, 1)
        self.embed = NoiseLabelEmbedding(width, num_classes)
        self.inp = nn.Linear(dim, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: [B, {self.dim}])")
        emb = self.embed(c_noise, class_labels)
        h = self.inp(x)
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(nn.functional.silu(norm(h) + emb))
        return self.out(nn.functional.silu(h))


class ToyConv8x8(nn.Module):
    """A small convolutional net on ``[B, 1, 8, 8]`` images: a 3x3 stem to ``channels``, ``blocks`` residual
    blocks (GroupNorm, + the noise/label embedding per channel, SiLU, 3x3 conv, twice) and a 3x3 output conv
    (initialised to zero). Stays at 8x8 resolution: the images are small enough for 3x3 receptive fields to
    cover them after a few blocks."""

    def __init__(self, num_classes: int = 10, channels: int = 32, blocks: int = 2):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 0)
        check_int("channels", channels, 8)
        check_int("blocks", blocks, 1)
        self.embed = NoiseLabelEmbedding(channels, num_classes)
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.norm1 = nn.ModuleList(nn.GroupNorm(8, channels) for _ in range(blocks))
        self.conv1 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.norm2 = nn.ModuleList(nn.GroupNorm(8, channels) for _ in range(blocks))
        self.conv2 = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(blocks))
        self.out_norm = nn.GroupNorm(8, channels)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor | None = None):
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"Invalid x: shape {tuple(x.shape)} (accepted: [B, 1, 8, 8])")
        emb = self.embed(c_noise, class_labels)[:, :, None, None]
        h = self.stem(x)
        for n1, c1, n2, c2 in zip(self.norm1, self.conv1, self.norm2, self.conv2):
            r = c1(nn.functional.silu(n1(h) + emb))
            h = h + c2(nn.functional.silu(n2(r)))
        return self.out(nn.functional.silu(self.out_norm(h)))
