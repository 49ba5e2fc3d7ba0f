"""APG: adaptive projected guidance, as diffusers' ``AdaptiveProjectedGuidance`` set to the paper's rule."""
from __future__ import annotations

from typing import Any

from gradwise._validate import check_nonneg, check_real
from gradwise.diffusion._diffusers import require_diffusers
from gradwise.registry import register

__all__ = ["adaptive_projected_guidance", "APG_ETA"]

APG_PAPER = "Eliminating Oversaturation and Artifacts of High Guidance Scales in Diffusion Models"
APG_ETA = 0.0  # the paper's down-weighting of the parallel component: dropped altogether


@register(kind="guidance", name="APG", paper=APG_PAPER, year=2024, arxiv="2410.02416",
          code=None,
          summary="CFG whose update is rescaled to a norm threshold, pushed by reverse momentum and stripped of "
                  "its component parallel to the conditional prediction")
def adaptive_projected_guidance(guidance_scale: float = 7.5, *, momentum: float, norm_threshold: float,
                                eta: float = APG_ETA, start: float = 0.0, stop: float = 1.0,
                                norm_dim: int | tuple[int, ...] | None = None) -> Any:
    """Adaptive projected guidance (Sadat, Hilliges, Weber, ICLR 2025, arXiv 2410.02416) as a configured
    ``diffusers.guiders.AdaptiveProjectedGuidance`` (diffusers 0.42; used, not rewritten).

    With conditional and unconditional predictions ``c``, ``u`` (per sample; norms and inner products over
    every non-batch dimension unless ``norm_dim`` says otherwise), guidance scale ``w``, at step ``t``:

    - CFG update ``Δ_t = c - u``;
    - reverse momentum ``m_t = Δ_t + β m_{t-1}`` (``m_{-1} = 0``, ``β = momentum < 0`` pushes away from the
      previous updates), ``Δ_t ← m_t``;
    - rescaling ``Δ_t ← Δ_t · min(1, r / ||Δ_t||)`` (``r = norm_threshold``; ``0`` turns it off);
    - projection onto the conditional prediction: ``Δ_∥ = <Δ, ĉ> ĉ`` with ``ĉ = c / ||c||``,
      ``Δ_⊥ = Δ - Δ_∥``;
    - ``pred = c + (w - 1) (Δ_⊥ + η Δ_∥)``.

    The paper's form ``c + (w - 1) · update`` is diffusers' ``use_original_formulation=True`` with
    ``guidance_scale = w - 1``, which is how the returned guider is configured (so its
    ``guidance_scale`` attribute reads ``w - 1``; ``w = 1`` turns guidance off, one model pass). diffusers'
    default formulation ``u + w · update`` differs from the paper's once the update is projected,
    rescaled or carries momentum, and its default ``eta = 1.0`` keeps the parallel component whole.

    Defaults: ``eta = 0`` (the paper drops the parallel component, which it finds causes the
    oversaturation; its orthogonal component carries the quality gain). ``momentum`` and
    ``norm_threshold`` have no default: the paper tunes them per model, and its text giving them could not
    be read here (docs/coverage_notes.md); pass the values for your model (``momentum=0`` turns momentum
    off, ``norm_threshold=0`` turns rescaling off).

    The momentum buffer belongs to one trajectory: diffusers resets it when ``prepare_inputs`` runs at
    step 0, so call ``set_state(step, ...)`` then ``prepare_inputs`` at every step
    (:func:`~gradwise.diffusion.guided_sampling.guided_prediction` does).
    """
    w = check_real("guidance_scale", guidance_scale)
    momentum = check_real("momentum", momentum)
    norm_threshold = check_nonneg("norm_threshold", norm_threshold)
    eta = check_real("eta", eta)
    guiders = require_diffusers("diffusers.guiders")
    return guiders.AdaptiveProjectedGuidance(
        guidance_scale=w - 1.0, adaptive_projected_guidance_momentum=momentum,
        adaptive_projected_guidance_rescale=norm_threshold, adaptive_projected_guidance_norm_dim=norm_dim,
        eta=eta, use_original_formulation=True, start=start, stop=stop)
