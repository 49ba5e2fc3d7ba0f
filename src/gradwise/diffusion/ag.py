"""AG: classifier-free guidance until the conditional and unconditional predictions align, then one pass."""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

from gradwise._validate import check_real
from gradwise.diffusion._diffusers import require_diffusers, subclass_with_config
from gradwise.registry import register

__all__ = ["adaptive_guidance", "adaptive_guidance_class", "prediction_cosine"]

AG_PAPER = "Adaptive Guidance: Training-free Acceleration of Conditional Diffusion Models"


def prediction_cosine(pred_cond: torch.Tensor, pred_uncond: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample's conditional and unconditional predictions, over every non-batch
    dimension, computed in float64; ``[B]`` float64. A zero prediction gives NaN (never counts as aligned)."""
    if pred_cond.shape != pred_uncond.shape or pred_cond.dim() < 1:
        raise ValueError(f"Invalid pred_uncond: shape {tuple(pred_uncond.shape)} (accepted: the shape of "
                         f"pred_cond, {tuple(pred_cond.shape)}, with a batch dimension)")
    c = pred_cond.detach().double().reshape(pred_cond.shape[0], -1)
    u = pred_uncond.detach().double().reshape(pred_uncond.shape[0], -1)
    return (c * u).sum(1) / (c.norm(dim=1) * u.norm(dim=1))


class _AdaptiveGuidanceRule:
    """Adaptive Guidance (Castillo, Kohler, Pérez, Pérez, Pumarola, Ghanem, Arbeláez, Thabet, AAAI 2025,
    arXiv 2312.12487), a diffusers guider (``diffusers.guiders.guider_utils.BaseGuidance``).

    At each step where guidance is on, both passes are run and combined as CFG,
    ``pred = u + w (c - u)`` (``w = guidance_scale``), and ``γ = cos(c, u)`` is measured per sample over
    all non-batch dimensions (:func:`prediction_cosine`). The paper finds that the CFG step becomes
    aligned with the plain conditional step as denoising goes on, so the unconditional pass is wasted:
    once ``γ >= gamma_bar`` (for every sample of the batch, so one batch decision keeps one model pass
    per step), every later step of the trajectory uses the conditional prediction alone (one pass,
    ``num_conditions == 1``). The step at which the threshold is crossed still returns its CFG
    prediction (both passes were already paid for). The switch is reset at step 0 (a new trajectory).

    ``start``/``stop`` (fractions of the steps) bound where CFG may run, as in diffusers' guiders;
    outside it the conditional pass alone is used. ``guidance_scale = 1`` is plain conditional sampling.

    State for inspection: ``cosines`` (the per-step batch minimum of ``γ`` on the steps that ran both
    passes, this trajectory) and ``switch_step`` (the first one-pass step after the switch, or None).

    ``gamma_bar`` has no default: the paper sets it for its model and sampler, and its text could not be
    read here (docs/coverage_notes.md); the issue's and the paper's abstract's description of the rule
    is what this follows. LinearAG (the paper's replacement of early unconditional passes by an affine
    map of past score estimates) is not implemented, for the same reason.
    """

    _input_predictions = ["pred_cond", "pred_uncond"]

    def __init__(self, guidance_scale: float = 7.5, *, gamma_bar: float, start: float = 0.0, stop: float = 1.0,
                 enabled: bool = True):
        guidance_scale = check_real("guidance_scale", guidance_scale)
        gamma_bar = check_real("gamma_bar", gamma_bar, -1.0, 1.0)
        check_real("start", start, 0.0, 1.0, hi_open=True)
        check_real("stop", stop, start, 1.0)
        super().__init__(start, stop, enabled)
        self.guidance_scale = guidance_scale
        self.gamma_bar = gamma_bar
        self.cosines: list[float] = []
        self.switch_step: int | None = None
        self._switched = False

    def _reset_trajectory(self) -> None:
        if self._step == 0:
            self.cosines = []
            self.switch_step = None
            self._switched = False

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        self._reset_trajectory()
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [self._prepare_batch(data, i, name) for i, name in zip(indices, self._input_predictions)]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, str | tuple[str, str]]) -> list[Any]:
        self._reset_trajectory()
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [self._prepare_batch_from_block_state(input_fields, data, i, name)
                for i, name in zip(indices, self._input_predictions)]

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> Any:
        if pred_uncond is None or not self._is_cfg_enabled():
            if self._switched and self.switch_step is None:
                self.switch_step = self._step
            return self._output_type(pred=pred_cond, pred_cond=pred_cond, pred_uncond=pred_uncond)
        pred = pred_uncond + self.guidance_scale * (pred_cond - pred_uncond)
        gamma = float(prediction_cosine(pred_cond, pred_uncond).min())
        self.cosines.append(gamma)
        if gamma >= self.gamma_bar:  # NaN never switches
            self._switched = True
        return self._output_type(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._is_cfg_enabled() else 1

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled or self._switched or math.isclose(self.guidance_scale, 1.0):
            return False
        if self._num_inference_steps is not None:
            lo = int(self._start * self._num_inference_steps)
            hi = int(self._stop * self._num_inference_steps)
            return lo <= self._step < hi
        return True

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "switched": self._switched, "switch_step": self.switch_step}


@functools.cache  # built once, on first use: diffusers is imported only then
def adaptive_guidance_class() -> type:
    """The guider class ``AdaptiveGuidance``, a subclass of ``diffusers.guiders.guider_utils.BaseGuidance``
    (also ``gradwise.diffusion.AdaptiveGuidance``), built on first call; see :func:`adaptive_guidance`."""
    guider_utils = require_diffusers("diffusers.guiders.guider_utils")
    return subclass_with_config(_AdaptiveGuidanceRule, "AdaptiveGuidance", "diffusers.guiders.guider_utils",
                                "BaseGuidance", "gradwise.diffusion", _output_type=guider_utils.GuiderOutput)


@register(kind="guidance", name="AG", paper=AG_PAPER, year=2023, arxiv="2312.12487", code=None,
          summary="CFG until the cosine of the conditional and unconditional predictions reaches gamma_bar, "
                  "then the conditional pass alone (fewer network evaluations)")
def adaptive_guidance(guidance_scale: float = 7.5, *, gamma_bar: float, start: float = 0.0, stop: float = 1.0,
                      enabled: bool = True) -> Any:
    return adaptive_guidance_class()(guidance_scale, gamma_bar=gamma_bar, start=start, stop=stop, enabled=enabled)


adaptive_guidance.__doc__ = ("An :class:`AdaptiveGuidance` guider (a diffusers guider, built on first use so that "
                             "gradwise.diffusion imports without diffusers).\n" + _AdaptiveGuidanceRule.__doc__)
