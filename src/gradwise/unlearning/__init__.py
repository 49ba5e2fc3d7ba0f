"""Machine unlearning: remove what a trained classifier learned from a forget set while keeping what
it learned from the rest (the retain set), cheaper than retraining without the forget set.

Methods act on any ``nn.Module`` classifier in place, fed by iterables of ``(x, y)`` batches (lists or
DataLoaders): SalUn (``saliency_mask`` + ``SalUn``) restricts random-label unlearning to the weights
whose forget-loss gradient is largest; DMM (``subset_masks``, ``fit_datamodels``, ``predict_retrain_outputs``,
``datamodel_matching``) fine-tunes the model to the outputs a datamodel predicts for the model retrained
without the forget set. ``klom`` (with ``margins``) measures unlearning: the KL divergence between the margins of
unlearned models and of retrained ones, per point.

One method per module; each lists its public names in ``__all__`` and this package re-exports them.
"""
from __future__ import annotations

from gradwise._autoexport import export_submodules

__all__: list[str] = export_submodules(__name__, __path__, globals())
