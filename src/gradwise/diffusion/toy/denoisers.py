"""EDM-preconditioned and consistency denoisers around any network ``net(x_in, c_noise, class_labels)``.

**EDM** (Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022,
arXiv 2206.00364, Table 1 "Ours" column; authors' code NVlabs/edm ``training/networks.py`` ``EDMPrecond``):

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)             c_noise = ln(sigma) / 4

**Consistency** (Song et al., "Consistency Models", ICML 2023, Appendix C; kept by "Improved Techniques for
Training Consistency Models", ICLR 2024; openai/consistency_models ``get_scalings_for_boundary_condition``,
diffusers ``CMStochasticIterativeScheduler.get_scalings_for_boundary_condition``): the same with

    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)

so that f(x, sigma_min) = x exactly (c_skip = 1, c_out = 0). c_in and c_noise are EDM's. Departure: the
authors' consistency code feeds the network 1000 * ln(sigma + 1e-44) / 4 (a time-embedding scale of their
U-Net); here every network gets EDM's c_noise = ln(sigma) / 4.

**Class labels and CFG**: a conditional network (``net.num_classes = C > 0``) embeds labels 0..C; label ``C`` is
the null label of classifier-free guidance, and ``class_labels=None`` means the null label for every sample.
"""
from __future__ import annotations

import torch
from torch import nn

from gradwise._validate import check_nonneg, check_positive

__all__ = ["EDMDenoiser", "ConsistencyDenoiser"]


def _num_classes(net: nn.Module) -> int:
    return int(getattr(net, "num_classes", 0) or 0)


class EDMDenoiser(nn.Module):
    """``D(x; sigma, class_labels) -> x0_hat`` with EDM's preconditioning around ``net``.

    net: a module called as ``net(c_in * x, c_noise [B], class_labels [B] int64 or None)`` returning a tensor
        of ``x``'s shape; ``net.num_classes`` (0 if absent) says whether it takes labels.
    sigma_data: the data's standard deviation (EDM's 0.5 for images in [-1, 1]).
    sigma_min: the smallest noise level the denoiser is used at (kept for samplers and subclasses; EDM's
        scalings do not use it, as ``EDMPrecond``).

    ``forward(x, sigma, class_labels=None)``: ``x`` is ``[B, ...]``; ``sigma`` a positive number, a 0-d tensor
    or a ``[B]`` tensor (one level per sample); the scalings are computed in ``x``'s dtype. Raises ValueError
    naming ``sigma`` for a non-positive level (or one below ``sigma_min``), a shape other than ``()`` or
    ``[B]``; naming ``class_labels`` for a shape other than ``[B]``, labels outside ``0..num_classes`` or
    labels given to an unconditional network. These checks read tensor values (a host sync): this is a CPU
    toy substrate.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5, sigma_min: float = 0.0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(f"Invalid net: {type(net).__name__} (accepted: a torch.nn.Module)")
        self.net = net
        self.sigma_data = check_positive("sigma_data", sigma_data)
        self.sigma_min = check_nonneg("sigma_min", sigma_min)

    @property
    def num_classes(self) -> int:
        """The network's number of classes (0: unconditional); label ``num_classes`` is the null label."""
        return _num_classes(self.net)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in, c_noise)`` at ``sigma`` (a tensor, any shape), each of ``sigma``'s shape."""
        sd2 = self.sigma_data ** 2
        norm = (sigma ** 2 + sd2).sqrt()
        return sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / norm, 1 / norm, sigma.log() / 4

    def _sigma(self, sigma, x: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if s.dim() == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(f"Invalid sigma: shape {tuple(s.shape)} (accepted: a number, a 0-d tensor or "
                             f"a [B] tensor with B = x.shape[0] = {x.shape[0]})")
        bad = s <= 0 if self.sigma_min == 0 else s < self.sigma_min
        if bool(bad.any()):
            floor = "> 0" if self.sigma_min == 0 else f">= sigma_min = {self.sigma_min}"
            raise ValueError(f"Invalid sigma: {s[bad][0].item()} (accepted: noise levels {floor})")
        return s

    def _labels(self, class_labels, batch: int, device: torch.device) -> torch.Tensor | None:
        c = self.num_classes
        if c == 0:
            if class_labels is not None:
                raise ValueError("Invalid class_labels: labels given to an unconditional network "
                                 "(accepted: None when net.num_classes is 0)")
            return None
        if class_labels is None:
            return torch.full((batch,), c, dtype=torch.long, device=device)
        labels = torch.as_tensor(class_labels, device=device)
        if labels.shape != (batch,) or labels.is_floating_point() or labels.is_complex() \
                or bool(((labels < 0) | (labels > c)).any()):
            raise ValueError(f"Invalid class_labels: {labels.dtype} of shape {tuple(labels.shape)} "
                             f"(accepted: [B] = [{batch}] integers in 0..{c}, {c} = the null label)")
        return labels.long()

    def forward(self, x: torch.Tensor, sigma, class_labels=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            raise ValueError(f"Invalid x: {getattr(x, 'shape', x)!r} (accepted: a floating tensor [B, ...])")
        s = self._sigma(sigma, x)
        labels = self._labels(class_labels, x.shape[0], x.device)
        c_skip, c_out, c_in, c_noise = self.scalings(s)
        view = (-1,) + (1,) * (x.dim() - 1)
        out = self.net(c_in.view(view) * x, c_noise, labels)
        return c_skip.view(view) * x + c_out.view(view) * out


class ConsistencyDenoiser(EDMDenoiser):
    """A consistency function ``f(x, sigma) -> x0_hat``: :class:`EDMDenoiser` with the boundary-condition
    scalings (``sigma - sigma_min`` in c_skip and c_out), so ``f(x, sigma_min) = x`` exactly.

    sigma_min: the boundary noise level (consistency models' epsilon, 0.002 as in Song et al.); levels below
        it raise ValueError naming ``sigma``.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__(net, sigma_data=sigma_data, sigma_min=check_positive("sigma_min", sigma_min))

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data ** 2
        norm = (sigma ** 2 + sd2).sqrt()
        shifted = sigma - self.sigma_min
        return sd2 / (shifted ** 2 + sd2), shifted * self.sigma_data / norm, 1 / norm, sigma.log() / 4
