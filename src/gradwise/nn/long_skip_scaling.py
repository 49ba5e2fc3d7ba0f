"""ScaleLong (Huang et al., 2023): scale a UNet's long skip connections, by a constant per skip (CS) or by a small
learned calibration module (LS), before the decoder merges them."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradwise._validate import check_bool, check_choice, check_int, check_positive
from gradwise.registry import register

__all__ = ["LongSkipScaling", "SkipCalibration"]

MODES = ("none", "sqrt2", "cs", "ls")


class SkipCalibration(nn.Module):
    r"""ScaleLong's LS calibration module: :math:`\zeta(x) = \sigma(W_2\,\mathrm{ReLU}(W_1\,\bar x + b_1) + b_2)`.

    :math:`\bar x` is ``x`` of shape ``[B, F, *rest]`` averaged over ``rest`` (shape ``[B, F]``); the result has
    shape ``[B, F, 1, ..., 1]`` and multiplies the skip. ``W_1`` maps ``F`` to ``F // reduction`` features.
    Both layers keep ``nn.Linear``'s default initialization, as in the authors' UViT (their calibration module is
    built after the model's weight init runs).
    """

    def __init__(self, features: int, reduction: int = 16) -> None:
        super().__init__()
        check_int("features", features, lo=1)
        check_int("reduction", reduction, lo=1)
        hidden = features // reduction
        if hidden < 1:
            raise ValueError(f"Invalid features // reduction: the calibration module needs at least one hidden "
                             f"unit, got features={features} and reduction={reduction}")
        self.layer1 = nn.Linear(features, hidden)
        self.layer2 = nn.Linear(hidden, features)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
        att = torch.sigmoid(self.layer2(torch.relu(self.layer1(pooled))))
        return att.reshape(*att.shape, *([1] * (x.dim() - 2)))


@register(kind="module",
          paper="ScaleLong: Towards More Stable Training of Diffusion Model via Scaling Network Long Skip Connection",
          year=2023, arxiv="2310.13545", code="https://github.com/sail-sg/ScaleLong",
          aliases=("scalelong",),
          summary="scales a UNet's long skip connections by kappa^i (CS) or a learned calibration module (LS)")
class LongSkipScaling(nn.Module):
    r"""Scale the long skip connections of a UNet before the decoder merges them (ScaleLong).

    Paper: Zhongzhan Huang, Pan Zhou, Shuicheng Yan, Liang Lin, "ScaleLong: Towards More Stable Training of
    Diffusion Model via Scaling Network Long Skip Connection", NeurIPS 2023, arXiv:2310.13545.
    Authors' code: https://github.com/sail-sg/ScaleLong @4ca368c (``libs/uvit.py``, ``UViT.forward``).

    Number the ``N = num_skips`` long skips in **encoder order**: skip ``i`` is the output of the ``i``-th
    encoder block, ``i = 0`` the outermost (nearest the input and the output), ``i = N-1`` the deepest (nearest
    the middle block). The decoder block that takes skip ``i`` receives :math:`s_i \cdot x_i` in place of
    :math:`x_i` (then concatenates or adds it as the network does; the coefficient multiplies only the skip):

    * ``"none"``: :math:`s_i = 1` (their ``scalelong=0``);
    * ``"sqrt2"``: :math:`s_i = 1/\sqrt2` for every skip (their ``scalelong=1``, the constant of Imagen/SR3);
    * ``"cs"``: :math:`s_i = \kappa^{i}` (their ``scalelong=2``): their decoder pops the deepest skip first and
      scales it by :math:`\kappa^{N-1}`, so the outermost skip keeps scale 1 and deeper skips shrink;
      ``kappa=0.5`` is their default (they suggest :math:`\kappa \in [0.5, 0.95]`);
    * ``"ls"``: :math:`s_i = \zeta(x_i)` from a :class:`SkipCalibration` module (their ``scalelong=3``), one
      module shared by all skips, or one per skip with ``share=False`` (their ``scalelong=4``; module ``i`` here
      is their ``se[N-1-i]``, since they index by decoder order). ``features`` is the size of dim 1 of the skips.

    The calibration averages the skip over every dim after the first two and computes one coefficient per entry
    of dim 1. On the authors' UViT features ``[B, L, D]`` that is their code exactly: the mean over the embedding
    dim, one coefficient per token (``features`` = number of tokens, including the time/label tokens). On a
    convolutional UNet's ``[B, C, H, W]`` it gives one coefficient per channel (a squeeze-excitation over
    channels); that case is not in their code, which only has the UViT.

    Departures: none in what is computed. The integer mode names replace their ``scalelong`` integers.

    Example::

        >>> scaling = LongSkipScaling(num_skips=3, mode="cs", kappa=0.5)
        >>> skips = [enc(x) for enc in encoder]             # encoder order
        >>> skips = scaling(skips)                          # skip i times 0.5**i
        >>> for i, dec in reversed(list(enumerate(decoder))):
        ...     h = dec(torch.cat([h, skips[i]], dim=-1))
        >>> # or one skip at a time: dec(torch.cat([h, scaling(skip, index=i)], dim=-1))
    """

    def __init__(self, num_skips: int, features: int | None = None, mode: str = "cs", kappa: float = 0.5,
                 reduction: int = 16, share: bool = True) -> None:
        super().__init__()
        self.num_skips = check_int("num_skips", num_skips, lo=1)
        self.mode = check_choice("mode", mode, MODES)
        self.kappa = check_positive("kappa", kappa)
        self.share = check_bool("share", share)
        self.calibration: nn.ModuleList | None = None
        if mode == "ls":
            if features is None:
                raise ValueError("Invalid features: mode='ls' needs the size of dim 1 of the skip features "
                                 "(tokens for [B, L, D], channels for [B, C, H, W]), got None")
            n = 1 if share else num_skips
            self.calibration = nn.ModuleList(SkipCalibration(features, reduction) for _ in range(n))
        self.features = features

    def coefficient(self, index: int) -> float:
        """The constant coefficient of skip ``index`` (encoder order) for modes "none", "sqrt2" and "cs"."""
        if self.mode == "ls":
            raise ValueError("coefficient: mode='ls' computes its coefficients from the features; call the module")
        index = self._check_index(index)
        if self.mode == "none":
            return 1.0
        if self.mode == "sqrt2":
            return 2 ** -0.5
        return self.kappa ** index

    def _check_index(self, index: int) -> int:
        return check_int("index", index, lo=0, hi=self.num_skips - 1)

    def _scale(self, x: Tensor, index: int) -> Tensor:
        if self.mode == "ls":
            if x.dim() < 2 or x.shape[1] != self.features:
                raise ValueError(f"Invalid skip {index}: mode='ls' expects shape [B, {self.features}, ...] "
                                 f"(features={self.features}), got {tuple(x.shape)}")
            module = self.calibration[0 if self.share else index]
            return x * module(x)
        c = self.coefficient(index)
        return x if c == 1.0 else x * c

    def forward(self, skips: Tensor | Sequence[Tensor], index: int | None = None) -> Tensor | list[Tensor]:
        """Scaled skips: a list in, the list of all ``num_skips`` skips in encoder order, out; or one tensor and
        its encoder-order ``index`` in, that skip scaled out."""
        if isinstance(skips, Tensor):
            if index is None:
                raise ValueError("Invalid index: a single skip tensor needs its encoder-order index "
                                 f"(0 to {self.num_skips - 1}), got None")
            return self._scale(skips, self._check_index(index))
        if index is not None:
            raise ValueError("Invalid index: pass index only with a single skip tensor, not with a list of skips")
        if len(skips) != self.num_skips:
            raise ValueError(f"Invalid skips: expected a list of num_skips={self.num_skips} tensors in encoder "
                             f"order, got {len(skips)}")
        return [self._scale(x, i) for i, x in enumerate(skips)]

    def extra_repr(self) -> str:
        extra = f", kappa={self.kappa}" if self.mode == "cs" else ""
        if self.mode == "ls":
            extra = f", features={self.features}, share={self.share}"
        return f"num_skips={self.num_skips}, mode={self.mode!r}{extra}"
