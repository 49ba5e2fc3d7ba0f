"""The names that left ``gradwise.losses`` for their own family (issue 9) still import from the old paths,
with a DeprecationWarning naming the new path, and are the very objects of the new path.

``OLD`` is the public surface of gradwise 0.1 as released (each old module's ``__all__``), written out
here on purpose: the table the shims read (``gradwise.losses._moved.MOVED``) must keep serving all of it.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import gradwise.losses
from gradwise.losses._moved import MOVED

OLD = {
    "calibration": ["expected_calibration_error", "adaptive_calibration_error", "classwise_calibration_error",
                    "reliability_bins", "TemperatureScaler"],
    "correctness_aware": ["CorrectnessAwareCalibrator", "transformation_features",
                          "fit_correctness_aware_calibrator"],
    "tcm": ["opis"],
    "loss_reweighting": ["loss_reweighting_weights", "reweighted_loss", "ReweightedLoss", "REWEIGHT_STRATEGIES"],
    "temperature_sampling": ["temperature_probabilities", "class_weights", "cooldown_temperature",
                             "TemperatureSampler"],
    "hard_samples": ["select_hard_samples"],
    "dbpm": ["dbpm_weights", "DBPM"],
    "multi_sample_dropout": ["MultiSampleDropout"],
}
NEW_FAMILY = {"expected_calibration_error": "metrics", "adaptive_calibration_error": "metrics",
              "classwise_calibration_error": "metrics", "reliability_bins": "metrics", "opis": "metrics",
              "TemperatureScaler": "calibration", "CorrectnessAwareCalibrator": "calibration",
              "transformation_features": "calibration", "fit_correctness_aware_calibrator": "calibration",
              "cooldown_temperature": "schedules", "MultiSampleDropout": "nn"}
CASES = [(module, name) for module, names in OLD.items() for name in names]


def _new(name: str):
    family = NEW_FAMILY.get(name, "data_weighting")
    return getattr(importlib.import_module(f"gradwise.{family}"), name), f"gradwise.{family}."


@pytest.mark.parametrize("module, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_old_module_path_warns_and_gives_the_new_object(module, name):
    new, prefix = _new(name)
    old_module = importlib.import_module(f"gradwise.losses.{module}")
    with pytest.warns(DeprecationWarning, match=rf"gradwise\.losses\.{module}\.{name} is deprecated; import from "
                                                rf"{prefix.replace('.', '[.]')}\w+ .*after version 0\.2"):
        old = getattr(old_module, name)
    assert old is new


@pytest.mark.parametrize("module, name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_old_package_path_warns_and_gives_the_new_object(module, name):
    new, _ = _new(name)
    with pytest.warns(DeprecationWarning, match=rf"gradwise\.losses\.{name} is deprecated; import from gradwise\."):
        exec(f"from gradwise.losses import {name} as old", namespace := {})  # the statement users wrote
    assert namespace["old"] is new


def test_the_shim_table_serves_exactly_the_old_names():
    assert {m: sorted(t) for m, t in MOVED.items()} == {m: sorted(n) for m, n in OLD.items()}


def test_moved_names_are_not_exported_twice_and_importing_the_package_does_not_warn():
    moved = {n for names in OLD.values() for n in names}
    assert not moved & set(gradwise.losses.__all__)
    assert len(gradwise.losses.__all__) == len(set(gradwise.losses.__all__))
    # a fresh interpreter: importing every family (and listing the registry) touches no deprecated path
    code = "import gradwise.registry as r; r.methods(); import gradwise.losses, gradwise.metrics"
    subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], check=True)


def test_names_that_stayed_do_not_warn_and_unknown_names_still_fail():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from gradwise.losses.correctness_aware import correctness_aware_loss  # noqa: F401
        from gradwise.losses.tcm import tcm_loss  # noqa: F401
    with pytest.raises(ImportError):
        exec("from gradwise.losses import no_such_loss", {})
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module("gradwise.losses.calibration").no_such_name  # noqa: B018
