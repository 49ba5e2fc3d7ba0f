"""The annealing-law study: its schedules, its error measures, the fit-and-predict step on curves the law
itself generates, a tiny end-to-end run (table, plot, in-sample fit), refused options, and (slow) the
default run's headline."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from gradwise.arena.annealing_law_study import (CONFIG, FITS, SCHEDULES, STUDY, _pairs_in_order, errors,
                                                fit_and_predict, schedule_lrs)
from gradwise.cli import main
from gradwise.schedules import AnnealingLaw

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--seeds", "1", "--steps", "80", "--eval-every", "4", "--warmup-steps", "8", "--d-model", "16", "--n-layers", "1"]


def test_schedules_share_the_warmup_and_differ_as_named():
    cfg = replace(CONFIG, steps=100, warmup_steps=10, peak_lr=0.02, min_lr_fraction=0.1, wsd_decay_fraction=0.2,
                  step_factor=0.5)
    lrs = {s: schedule_lrs(cfg, s) for s in SCHEDULES}
    assert all(len(v) == 100 for v in lrs.values())
    warm = [0.02 * t / 10 for t in range(1, 11)]
    for s in SCHEDULES:
        assert lrs[s][:10] == pytest.approx(warm)
    assert lrs["constant"][10:] == pytest.approx([0.02] * 90)
    cos = lrs["cosine"]
    assert cos[-1] == pytest.approx(0.002) and all(a >= b for a, b in zip(cos[10:], cos[11:]))
    wsd = lrs["wsd"]  # stable to step 80, then linear down to 0.1 x peak at step 100
    assert wsd[:80] == pytest.approx(warm + [0.02] * 70) and wsd[-1] == pytest.approx(0.002)
    assert wsd[89] == pytest.approx(0.02 + (0.002 - 0.02) * 10 / 20)
    step = lrs["step"]  # x0.5 after step 50, x0.25 after step 75
    assert step[49] == 0.02 and step[50] == pytest.approx(0.01) and step[75] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="^Invalid schedule: 'linear' .*accepted"):
        schedule_lrs(cfg, "linear")


def test_errors_and_order_of_final_losses():
    e = errors([2.0, 1.0, 0.5], [2.2, 1.0, 0.4])
    assert e["mape"] == pytest.approx(100 * (0.1 + 0 + 0.2) / 3)
    assert e["max_abs"] == pytest.approx(0.2) and e["final_err"] == pytest.approx(-0.1)
    measured = {"a": 1.0, "b": 2.0, "c": 3.0}
    assert _pairs_in_order(measured, {"a": 0.5, "b": 0.6, "c": 0.7}) == (3, 3)
    assert _pairs_in_order(measured, {"a": 0.7, "b": 0.6, "c": 0.8}) == (2, 3)


def test_fit_on_law_made_curves_predicts_every_schedule():
    """Curves the law itself generates (plus nothing): fitted on cosine alone or on constant + cosine, the
    study's fit-and-predict step recovers the WSD and step curves it never saw."""
    cfg = replace(CONFIG, steps=400, warmup_steps=20)
    truth = AnnealingLaw(decay=cfg.decay).set_params(L0=1.2, A=0.8, alpha=0.5, C=30.0)
    steps = list(range(40, 401, 10))
    curves = {}
    for s in SCHEDULES:
        lrs = schedule_lrs(cfg, s)
        curves[s] = (lrs, steps, truth.predict(lrs, steps).tolist())
    for fit_on in FITS.values():
        pred = fit_and_predict(AnnealingLaw(decay=cfg.decay), curves, fit_on)
        for s in SCHEDULES:
            assert errors(curves[s][2], pred[s])["mape"] < 0.5, (fit_on, s)
    # the annealing term matters: a law without it (C = 0) misses WSD's final drop
    flat = AnnealingLaw(decay=cfg.decay).set_params(L0=1.2, A=0.8, alpha=0.5, C=0.0)
    assert errors(curves["wsd"][2], flat.predict(curves["wsd"][0], steps).tolist())["max_abs"] > 0.05


def test_tiny_run_writes_the_table_and_plot(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["arena", "annealing-law", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for s in SCHEDULES:
        assert s in printed
    assert "constant+cosine" in printed and "pairs" in printed
    assert (out / "annealing_law.png").read_bytes()[:8] == PNG_MAGIC
    doc = json.loads((out / "results.json").read_text())
    (row,) = doc["runs"]
    assert row["law"] == "annealing" and row["steps"][-1] == 80 and row["steps"][0] > 8
    for fit, fit_on in FITS.items():
        for s in SCHEDULES:
            assert len(row["predicted"][fit][s]) == len(row["measured"][s]) == len(row["steps"])
            assert math.isfinite(row[f"mape_{fit}_{s}"]) and row[f"max_abs_{fit}_{s}"] >= 0
            assert row[f"pred_final_{fit}_{s}"] == pytest.approx(row["predicted"][fit][s][-1])
        for s in fit_on:  # the law describes the curves it was fitted on (in-sample), loosely even when tiny
            assert row[f"mape_{fit}_{s}"] < 5.0, (fit, s)
        assert 0 <= row[f"pairs_{fit}"] <= 6
    unseen = [s for s in SCHEDULES if s not in FITS["2"]]
    assert row["mape_2_unseen"] == pytest.approx(sum(row[f"mape_2_{s}"] for s in unseen) / len(unseen))
    # the LR schedules really differ after warm-up, so the measured curves do
    assert row["measured"]["constant"][-1] != row["measured"]["cosine"][-1]
    (summary,) = doc["summary"]
    assert summary["rank"] == 1 and summary["mape_2_unseen_mean"] == pytest.approx(row["mape_2_unseen"])


@pytest.mark.parametrize("bad, said", [
    (["--warmup-steps", "40", "--steps", "60"], "--warmup-steps 40 with --steps 60"),
    (["--eval-every", "50", "--steps", "100", "--warmup-steps", "5"], "--eval-every 50"),
    (["--wsd-decay-fraction", "0.99", "--steps", "100", "--warmup-steps", "5"], "--wsd-decay-fraction 0.99"),
    (["--d-model", "10"], "--d-model 10"),
])
def test_inconsistent_options_are_refused_before_training(bad, said, tmp_path, capsys):
    assert main(["arena", "annealing-law", *bad, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert said in err and "accepted" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", [["--laws", "nope"], ["--steps", "5"], ["--min-lr-fraction", "1"],
                                 ["--decay", "1.5"], ["--peak-lr", "0"], ["--step-factor", "2"]])
def test_bad_values_are_refused_naming_the_option(bad, capsys):
    with pytest.raises(SystemExit):
        main(["arena", "annealing-law", *bad])
    err = capsys.readouterr().err
    assert bad[0] in err and ("accepted" in err or "expected" in err)


def test_study_is_registered_with_its_smoke_line():
    assert STUDY.name == "annealing-law" and STUDY.methods() == ("annealing", "multi-power")
    assert tuple(STUDY.default_methods()) == ("annealing",)  # the Multi-Power Law's fit is slow: opt-in
    assert "--steps" in STUDY.smoke


@pytest.mark.slow
def test_default_run_headline(tmp_path):
    """At the defaults (what docs/study_annealing_law.md reports), per seed: the law fits the curves it saw
    within 5% MAPE, the two-curve fit orders the four final losses as measured and predicts the unseen
    schedules better than the one-curve fit."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    assert main(["arena", "annealing-law", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert len(rows) == CONFIG.seeds
    for row in rows:
        for fit, fit_on in FITS.items():
            for s in fit_on:
                assert row[f"mape_{fit}_{s}"] < 5.0
        assert row["pairs_2"] == 6
        assert row["mape_2_unseen"] < row["mape_1_unseen"]
