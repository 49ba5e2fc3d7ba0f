"""Test-time adaptation: wrappers that adapt a trained model with BatchNorm on unlabeled test batches.

A wrapper changes the model it wraps in place (every ``_BatchNorm`` layer, 1d/2d/3d, normalizes with the
test batch's statistics and its affine weight and bias become the only trainable parameters, see
:func:`configure_bn`). Calling it on a batch adapts on that batch, even under ``torch.no_grad()``, and
returns the logits computed *before* that batch's update, as the authors' code does; ``reset()`` puts the
weights and the optimizer state back. RMT adapts every parameter of a student towards a mean teacher
(symmetric cross-entropy, contrast to source prototypes) and predicts with both. Two methods change no weight: LAME corrects a batch's predictions
with a Laplacian over the batch's features, and AdaNPC votes among the nearest features of a memory that
grows with confident test samples (both read the features at the classifier head's input). RWS is not a
wrapper: it patches a clean model's weights once with robust weight signatures (:func:`weight_signature`,
:func:`patch`, registered as ``rws_patch``).
ParetoDA is train-time (domain adaptation with labeled source data): :class:`ParetoDA` writes to the shared
parameters' ``.grad`` a Pareto descent direction over the source and target-surrogate objectives.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())

# the BatchNorm helpers live in the shared module; users import them from the package
from gradwise.tta._common import bn_parameters, configure_bn  # noqa: E402

__all__ += ["configure_bn", "bn_parameters"]
