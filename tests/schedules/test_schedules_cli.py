"""`gradwise schedules fit|predict`: outputs, recovered parameters, and one-line errors with exit status 2."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from gradwise.cli import main
from gradwise.schedules import AnnealingLaw, MultiPowerLaw
from gradwise.schedules._cli import make_schedule

PEAK, T = 3e-4, 800
TRUTH = dict(L0=2.4, A=0.55, alpha=0.42, C=1.7)


def _runs():
    return {"const": make_schedule("constant", T, PEAK), "cos": make_schedule("cosine", T, PEAK),
            "wsd": make_schedule("wsd", T, PEAK)}


def _write_losses(path, law, every=10, runs=None):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "lr", "loss"])
        for name, lrs in (runs or _runs()).items():
            pred = np.full(lrs.size, np.nan)
            pred[1:] = law.predict(lrs, np.arange(2, lrs.size + 1)).numpy()  # step 1 may have LR 0 (warm-up)
            for s, lr in enumerate(lrs, start=1):
                w.writerow([name, s, repr(float(lr)), repr(float(pred[s - 1])) if s % every == 0 else ""])
    return path


def _run(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_fit_recovers_the_annealing_law_and_predicts_the_held_out_run(tmp_path, capsys):
    truth = AnnealingLaw().set_params(**TRUTH)
    src = _write_losses(tmp_path / "losses.csv", truth)
    rc, out, err = _run(["schedules", "fit", str(src), "--fit-on", "cos,const", "--out", str(tmp_path / "o")],
                        capsys)
    assert rc == 0, err
    record = json.loads((tmp_path / "o" / "params.json").read_text())
    assert record["law"] == "annealing" and record["fitted_runs"] == ["cos", "const"] and record["decay"] == 0.999
    for k, v in TRUTH.items():
        assert record["params"][k] == pytest.approx(v, rel=1e-3), k
    assert (tmp_path / "o" / "fit.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert len(rows) == 3 * T and set(rows[0]) == {"run", "step", "lr", "loss", "predicted"}
    wsd = [r for r in rows if r["run"] == "wsd"]
    pred = np.array([float(r["predicted"]) for r in wsd])
    np.testing.assert_allclose(pred, truth.predict(_runs()["wsd"]).numpy(), rtol=1e-4)
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in _runs()}
    assert lines["wsd"][1:3] == ["held", "out"] and lines["cos"][1] == "fitted"
    assert int(lines["wsd"][3]) == T // 10 and float(lines["wsd"][4]) < 0.05  # MAPE in percent


def test_predict_from_params_json_matches_the_law(tmp_path, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"law": "annealing", "params": TRUTH, "decay": 0.99}))
    rc, out, err = _run(["schedules", "predict", str(params), "--schedule", "wsd", "--steps", "500", "--peak-lr",
                         "3e-4", "--final-lr", "3e-5", "--decay-fraction", "0.3", "--out", str(tmp_path / "p")],
                        capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "p" / "predicted.csv")))
    lrs = make_schedule("wsd", 500, 3e-4, 3e-5, 0.3)
    np.testing.assert_allclose([float(r["lr"]) for r in rows], lrs, rtol=1e-15)
    want = AnnealingLaw(decay=0.99).set_params(**TRUTH).predict(lrs).numpy()
    np.testing.assert_allclose([float(r["predicted"]) for r in rows], want, rtol=1e-14)
    assert (tmp_path / "p" / "predicted.png").is_file() and f"{want[-1]:.6g}" in out
    # a schedule CSV (any row order) gives the same numbers
    sched = tmp_path / "s.csv"
    sched.write_text("step,lr\n" + "".join(f"{s},{float(lr)!r}\n" for s, lr in reversed(list(enumerate(lrs, 1)))))
    rc, _, err = _run(["schedules", "predict", str(params), "--schedule-csv", str(sched), "--out",
                       str(tmp_path / "q")], capsys)
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "q" / "predicted.csv")))
    np.testing.assert_allclose([float(r["predicted"]) for r in rows], want, rtol=1e-14)


def test_multi_power_fit_and_predict_round_trip(tmp_path, capsys):
    truth = MultiPowerLaw().set_params(2.37474466, 0.65421216, 0.42878731, 523.42464371, 2.02462735, 0.59350493,
                                       0.63472457)
    warm = np.linspace(0, PEAK, 30)
    runs = {k: np.concatenate([warm, make_schedule(k, 400, PEAK, 3e-5)]) for k in ("constant", "cosine", "step")}
    src = _write_losses(tmp_path / "l.csv", truth, every=10, runs=runs)
    rc, out, err = _run(["schedules", "fit", str(src), "--law", "multi-power", "--fit-on", "cosine,constant",
                         "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    record = json.loads((tmp_path / "o" / "params.json").read_text())
    assert record["law"] == "multi-power" and set(record["params"]) == {"L0", "A", "alpha", "B", "C", "beta",
                                                                         "gamma"}
    step_row = next(ln.split() for ln in out.splitlines() if ln.startswith("step "))
    assert step_row[1:3] == ["held", "out"] and float(step_row[4]) < 1.0  # MAPE % on the held-out step run
    rc, _, err = _run(["schedules", "predict", str(tmp_path / "o" / "params.json"), "--law", "multi-power",
                       "--schedule", "constant", "--steps", "100", "--peak-lr", "3e-4", "--out",
                       str(tmp_path / "p")], capsys)
    assert rc == 0, err
    rc, _, err = _run(["schedules", "predict", str(tmp_path / "o" / "params.json"), "--law", "annealing",
                       "--schedule", "constant", "--steps", "100", "--peak-lr", "3e-4"], capsys)
    assert rc == 2 and "multi-power" in err and "--law" in err


def _bad(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("content, expect", [
    (None, "no such file"),
    ("run,step,loss\na,1,2.0\n", "missing column(s) lr"),
    ("run,step,lr,loss\na,1,x,2.0\n", "column 'lr' has 'x'"),
    ("run,step,lr,loss\na,1,0.1,abc\n", "column 'loss' has 'abc'"),
    ("run,step,lr,loss\na,1,0.1,nan\n", "finite"),
    ("run,step,lr,loss\na,1.5,0.1,2\n", "column 'step'"),
    ("run,step,lr,loss\na,1,0.1,2\na,3,0.1,2\n", "step 2 is missing"),
    ("run,step,lr,loss\na,1,0.1,2\na,1,0.1,2\n", "not 1..T contiguous"),
    ("run,step,lr,loss\na,1,-0.1,2\n", "'lr' has -0.1"),
    ("run,step,lr,loss\na,1,0.1,-2\n", "'loss' has -2.0"),
    ("run,step,lr,loss\n", "no data rows"),
    ("run,step,lr,loss\n,1,0.1,2\n", "column 'run' is empty"),
])
def test_fit_input_errors_are_one_line_and_exit_2(tmp_path, capsys, content, expect):
    path = str(tmp_path / "missing.csv") if content is None else _bad(tmp_path, "l.csv", content)
    rc, _, err = _run(["schedules", "fit", path, "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("gradwise schedules fit: error: ") and expect in err, err


def test_fit_option_errors(tmp_path, capsys):
    src = _write_losses(tmp_path / "l.csv", AnnealingLaw().set_params(**TRUTH))
    for argv, expect in ((["--fit-on", "cos,nope"], "unknown run(s) 'nope'"), (["--fit-on", ","], "unknown run"),
                         (["--decay", "1.5"], "--decay 1.5"), (["--law", "multi-power", "--decay", "0.9"],
                                                               "annealing only"),
                         (["--decay", "x"], "invalid float"), (["--law", "nope"], "invalid choice")):
        rc, _, err = _run(["schedules", "fit", str(src), *argv, "--out", str(tmp_path / "o")], capsys)
        assert rc == 2 and err.count("\n") == 1 and expect in err, (argv, err)
    nolosses = _bad(tmp_path, "n.csv", "run,step,lr,loss\na,1,0.1,\na,2,0.1,\nb,1,0.1,2\n")
    rc, _, err = _run(["schedules", "fit", nolosses, "--fit-on", "a"], capsys)
    assert rc == 2 and "no measured loss" in err


def test_predict_errors(tmp_path, capsys):
    good = _bad(tmp_path, "p.json", json.dumps({"law": "annealing", "params": TRUTH}))
    cases = [
        ([str(tmp_path / "none.json"), "--schedule", "constant", "--steps", "5", "--peak-lr", "1"], "no such file"),
        ([_bad(tmp_path, "x.json", "{nope"), "--schedule", "constant", "--steps", "5", "--peak-lr", "1"], "not JSON"),
        ([_bad(tmp_path, "l.json", json.dumps({"law": "other", "params": TRUTH})), "--schedule", "constant",
          "--steps", "5", "--peak-lr", "1"], "'law' is 'other'"),
        ([_bad(tmp_path, "k.json", json.dumps({"law": "multi-power", "params": TRUTH})), "--schedule", "constant",
          "--steps", "5", "--peak-lr", "1"], "accepted for the multi-power law"),
        ([_bad(tmp_path, "v.json", json.dumps({"law": "annealing", "params": {**TRUTH, "alpha": -1}})),
          "--schedule", "constant", "--steps", "5", "--peak-lr", "1"], "alpha"),
        ([good], "exactly one of"),
        ([good, "--schedule", "cosine"], "needs --steps"),
        ([good, "--schedule", "cosine", "--steps", "0", "--peak-lr", "1"], "--steps 0"),
        ([good, "--schedule", "cosine", "--steps", "5", "--peak-lr", "-1"], "--peak-lr -1"),
        ([good, "--schedule", "wsd", "--steps", "5", "--peak-lr", "1", "--decay-fraction", "2"], "--decay-fraction"),
        ([good, "--schedule", "nope"], "invalid choice"),
        ([good, "--schedule-csv", _bad(tmp_path, "s.csv", "step,lr\n1,0.1\n3,0.1\n")], "step 2 is missing"),
        ([good, "--schedule-csv", _bad(tmp_path, "t.csv", "step\n1\n")], "missing column(s) lr"),
    ]
    for argv, expect in cases:
        rc, _, err = _run(["schedules", "predict", *argv, "--out", str(tmp_path / "o")], capsys)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and expect in err, (argv, err)


def test_help_names_the_csv_format(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["schedules", "fit", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "run,step,lr,loss" in out and "empty where it was not measured" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "schedules" in capsys.readouterr().out
