"""What moved out of ``gradwise.losses`` when the folders became families (issue 9), and where to.

The one table the deprecated paths read: ``gradwise.losses.<old module>.<name>`` and
``gradwise.losses.<name>`` keep working through :func:`gradwise._deprecation.moved_names`, with a
``DeprecationWarning`` naming the new module. Remove after version 0.2.
"""
from __future__ import annotations

__all__ = ["MOVED", "SHIMS", "moved_from_package"]

_ECE = "gradwise.metrics.calibration_error"
_WEIGHTING = "gradwise.data_weighting"

#: old module of gradwise.losses -> {public name: the module it lives in now}
MOVED: dict[str, dict[str, str]] = {
    "calibration": {**dict.fromkeys(("expected_calibration_error", "adaptive_calibration_error",
                                     "classwise_calibration_error", "reliability_bins"), _ECE),
                    "TemperatureScaler": "gradwise.calibration.temperature_scaling"},
    "correctness_aware": dict.fromkeys(("CorrectnessAwareCalibrator", "transformation_features",
                                        "fit_correctness_aware_calibrator"), "gradwise.calibration.correctness_aware"),
    "tcm": {"opis": "gradwise.metrics.threshold_consistency"},
    "loss_reweighting": dict.fromkeys(("loss_reweighting_weights", "reweighted_loss", "ReweightedLoss",
                                       "REWEIGHT_STRATEGIES"), f"{_WEIGHTING}.loss_reweighting"),
    "temperature_sampling": {**dict.fromkeys(("temperature_probabilities", "class_weights", "TemperatureSampler"),
                                             f"{_WEIGHTING}.temperature_sampling"),
                             "cooldown_temperature": "gradwise.schedules.cooldown"},
    "hard_samples": {"select_hard_samples": f"{_WEIGHTING}.hard_samples"},
    "dbpm": dict.fromkeys(("dbpm_weights", "DBPM"), f"{_WEIGHTING}.dbpm"),
    "multi_sample_dropout": {"MultiSampleDropout": "gradwise.nn.multi_sample_dropout"},
}

#: old modules that hold nothing but the deprecated names (the others keep the loss that stayed)
SHIMS: tuple[str, ...] = ("calibration", "loss_reweighting", "temperature_sampling", "hard_samples", "dbpm",
                          "multi_sample_dropout")


def moved_from_package() -> dict[str, str]:
    """Every moved name -> its new module, for ``from gradwise.losses import <moved name>``."""
    return {name: new for table in MOVED.values() for name, new in table.items()}
