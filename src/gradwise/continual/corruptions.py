r"""Generated image corruptions for domain-shift streams: Gaussian noise, 3x3 smoothing, contrast loss and
rotation, each at severities 1-3 (torch only: the rotation uses ``affine_grid``/``grid_sample``, no
torchvision).

The corruptions are scaled to the images given, so that they mean the same on [0, 1] images, on digits in
[0, 16] and on standardized inputs: ``r`` below is the set's value range ``max(x) - min(x)`` and ``lo`` its
minimum (the background of digit-like images).

* ``"noise"``: :math:`x + \sigma_s r\,\epsilon`, :math:`\epsilon \sim N(0, 1)`, :math:`\sigma_s` =
  0.08, 0.18, 0.38 (severities 1, 3 and 5 of ImageNet-C's Gaussian noise on [0, 1] images);
* ``"smooth"``: a 3x3 box blur (mean of the pixel and its 8 neighbours, edges replicated), applied
  ``s`` times;
* ``"contrast"``: :math:`(x - \bar x) c_s + \bar x` with :math:`\bar x` each image's (and channel's)
  mean and :math:`c_s` = 0.4, 0.2, 0.1;
* ``"rotation"``: rotation about the image centre by :math:`15° \cdot s`, clockwise or anticlockwise
  per image (drawn from the generator), bilinear, the uncovered corners filled with ``lo``;
* ``"clean"``: the images unchanged (a stream's in-distribution domain).

No clipping is applied, since the range of the inputs is not known in general.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise._validate import check_choice, check_int

__all__ = ["CORRUPTIONS", "corrupt"]

CORRUPTIONS = ("clean", "noise", "smooth", "contrast", "rotation")
NOISE_SIGMA = (0.08, 0.18, 0.38)
CONTRAST = (0.4, 0.2, 0.1)
ROTATION_DEG = 15.0


def check_images(x) -> Tensor:
    """A floating tensor [N, C, H, W] or [N, H, W] with at least one image."""
    if not torch.is_tensor(x) or x.dim() not in (3, 4) or not x.is_floating_point() or x.shape[0] == 0 \
            or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"Invalid x: {type(x).__name__}{tuple(x.shape) if torch.is_tensor(x) else ''} (accepted: "
                         "a floating tensor of images [N, C, H, W] or [N, H, W], N >= 1, H and W >= 2)")
    return x


def _box3(x: Tensor) -> Tensor:
    c = x.shape[1]
    kernel = x.new_full((c, 1, 3, 3), 1.0 / 9.0)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def _rotate(x: Tensor, severity: int, lo: Tensor, generator: torch.Generator | None) -> Tensor:
    n = x.shape[0]
    sign = torch.randint(0, 2, (n,), generator=generator).to(x.device, x.dtype) * 2 - 1
    theta = sign * math.radians(ROTATION_DEG * severity)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # affine_grid maps each output pixel to the input position it reads: with this matrix the content
    # turns clockwise on screen (rows grow downwards) when sign is +1.
    mat = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    # zeros padding on x - lo fills the uncovered corners with the background lo
    return F.grid_sample(x - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo


def corrupt(x: Tensor, kind: str, severity: int, *, generator: torch.Generator | None = None,
            value_range: tuple[float, float] | None = None) -> Tensor:
    """``x`` ([N, C, H, W] or [N, H, W], floating) with corruption ``kind`` (one of :data:`CORRUPTIONS`) at
    ``severity`` 1, 2 or 3; a new tensor of the same shape and dtype. ``generator`` (a CPU generator) draws
    the noise and the rotation directions; ``value_range`` is ``(lo, hi)`` of the clean data (default:
    ``x``'s own min and max; pass the whole set's when corrupting it in parts)."""
    x = check_images(x)
    check_choice("kind", kind, CORRUPTIONS)
    severity = check_int("severity", severity, 1, 3)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"Invalid generator: {generator!r} (accepted: None or a torch.Generator)")
    flat = x.dim() == 3
    img = x.unsqueeze(1) if flat else x
    if value_range is None:
        lo, hi = img.amin(), img.amax()
    else:
        if not isinstance(value_range, (tuple, list)) or len(value_range) != 2 \
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value_range) \
                or not value_range[0] <= value_range[1]:
            raise ValueError(f"Invalid value_range: {value_range!r} (accepted: (lo, hi), finite, lo <= hi)")
        lo, hi = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in value_range)
    if kind == "clean":
        out = img.clone()
    elif kind == "noise":
        eps = torch.randn(img.shape, generator=generator, dtype=img.dtype).to(img.device)
        out = img + NOISE_SIGMA[severity - 1] * (hi - lo) * eps
    elif kind == "smooth":
        out = img
        for _ in range(severity):
            out = _box3(out)
    elif kind == "contrast":
        mean = img.mean(dim=(-2, -1), keepdim=True)
        out = (img - mean) * CONTRAST[severity - 1] + mean
    else:
        out = _rotate(img, severity, lo, generator)
    return out.squeeze(1) if flat else out
