"""``gradwise schedules fit`` and ``gradwise schedules predict``: the loss-curve laws from the command line.

The parser lives in :mod:`gradwise.cli`; this module holds the work (reading and checking the CSVs, fitting,
writing params.json / predictions / plots, the printed table). A user mistake raises :class:`CurveInputError`,
whose message names the file, column or option and what is accepted; the CLI prints it on one line and exits 2.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CurveInputError", "LAWS", "SCHEDULES", "read_losses_csv", "make_schedule", "fit_command",
           "predict_command"]

LAWS = ("annealing", "multi-power")
SCHEDULES = ("constant", "cosine", "wsd", "step")
LOSS_COLUMNS = ("run", "step", "lr", "loss")


class CurveInputError(ValueError):
    """A bad CSV, params file or option of ``gradwise schedules``."""


@dataclass
class Run:
    name: str
    lrs: np.ndarray                       # lrs[i]: the LR of step i + 1
    losses: np.ndarray                    # NaN where not measured
    measured: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.measured = np.flatnonzero(~np.isnan(self.losses)) + 1  # 1-based steps with a loss


# --------------------------------------------------------------------------- reading

def _number(path: str, line: int, column: str, text: str, *, allow_empty: bool = False) -> float:
    text = text.strip()
    if allow_empty and text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise CurveInputError(f"{path} line {line}: column {column!r} has {text!r} (accepted: a number"
                              + (", or empty where not measured)" if allow_empty else ")")) from None
    if not math.isfinite(value):
        raise CurveInputError(f"{path} line {line}: column {column!r} has {text!r} (accepted: a finite number)")
    return value


def _rows(path: str, needed: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    if not os.path.isfile(path):
        raise CurveInputError(f"{path}: no such file (accepted: a CSV file with header {','.join(needed)})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in needed if c not in header]
        if missing:
            raise CurveInputError(f"{path}: missing column(s) {', '.join(missing)} (accepted: a header with "
                                  f"{','.join(needed)}; found {','.join(header) or 'no header'})")
        rows = [(i + 2, {k.strip(): (v or "") for k, v in r.items() if k is not None})
                for i, r in enumerate(reader)]
    if not rows:
        raise CurveInputError(f"{path}: no data rows (accepted: one row per step)")
    return rows


def _contiguous(path: str, what: str, steps: list[int]) -> np.ndarray:
    order = np.argsort(steps, kind="stable")
    s = np.asarray(steps)[order]
    expected = np.arange(1, len(s) + 1)
    if not np.array_equal(s, expected):
        bad = int(np.flatnonzero(s != expected)[0])
        raise CurveInputError(f"{path}: {what} steps are not 1..T contiguous (step {int(expected[bad])} is "
                              f"{'missing' if s[bad] > expected[bad] else 'repeated or < 1'}; accepted: one row "
                              f"for every step 1, 2, ..., T, in any order)")
    return order


def _step(path: str, line: int, text: str) -> int:
    value = _number(path, line, "step", text)
    if value != int(value):
        raise CurveInputError(f"{path} line {line}: column 'step' has {text.strip()!r} (accepted: an integer >= 1)")
    return int(value)


def read_losses_csv(path: str) -> dict[str, Run]:
    """Runs of a ``run,step,lr,loss`` CSV (steps 1..T contiguous per run; ``loss`` may be empty)."""
    by_run: dict[str, list[tuple[int, float, float]]] = {}
    for line, r in _rows(path, LOSS_COLUMNS):
        name = r["run"].strip()
        if not name:
            raise CurveInputError(f"{path} line {line}: column 'run' is empty (accepted: a run name)")
        lr = _number(path, line, "lr", r["lr"])
        if lr < 0:
            raise CurveInputError(f"{path} line {line}: column 'lr' has {lr!r} (accepted: a learning rate >= 0)")
        loss = _number(path, line, "loss", r["loss"], allow_empty=True)
        if not math.isnan(loss) and loss <= 0:
            raise CurveInputError(f"{path} line {line}: column 'loss' has {loss!r} (accepted: a loss > 0, or "
                                  f"empty)")
        by_run.setdefault(name, []).append((_step(path, line, r["step"]), lr, loss))
    runs = {}
    for name, rows in by_run.items():
        order = _contiguous(path, f"run {name!r}:", [s for s, _, _ in rows])
        arr = np.asarray(rows, dtype=np.float64)[order]
        runs[name] = Run(name, arr[:, 1].copy(), arr[:, 2].copy())
    return runs


def read_schedule_csv(path: str) -> np.ndarray:
    """The LRs of a ``step,lr`` CSV (steps 1..T contiguous)."""
    steps, lrs = [], []
    for line, r in _rows(path, ("step", "lr")):
        steps.append(_step(path, line, r["step"]))
        lr = _number(path, line, "lr", r["lr"])
        if lr < 0:
            raise CurveInputError(f"{path} line {line}: column 'lr' has {lr!r} (accepted: a learning rate >= 0)")
        lrs.append(lr)
    return np.asarray(lrs)[_contiguous(path, "the schedule's", steps)]


def make_schedule(kind: str, steps: int, peak_lr: float, final_lr: float | None = None,
                  decay_fraction: float = 0.2) -> np.ndarray:
    """A per-step schedule: ``constant`` (``peak_lr``), ``cosine`` (from ``peak_lr`` to ``final_lr``), ``wsd``
    (constant, then linear decay to ``final_lr`` over the last ``decay_fraction`` of the steps) or ``step``
    (``peak_lr``, then ``final_lr`` for the last ``decay_fraction``). ``final_lr`` defaults to ``peak_lr / 10``."""
    final = peak_lr / 10 if final_lr is None else final_lr
    i = np.arange(steps, dtype=np.float64)
    if kind == "constant":
        return np.full(steps, peak_lr)
    if kind == "cosine":
        return final + 0.5 * (peak_lr - final) * (1 + np.cos(np.pi * i / max(steps - 1, 1)))
    n_decay = int(round(decay_fraction * steps))
    start = steps - n_decay
    if kind == "wsd":
        frac = (i - start + 1) / max(n_decay, 1)
        return np.where(i < start, peak_lr, peak_lr + (final - peak_lr) * frac)
    if kind == "step":
        return np.where(i < start, peak_lr, final)
    raise CurveInputError(f"--schedule {kind!r} (accepted: {', '.join(SCHEDULES)})")


# --------------------------------------------------------------------------- laws and outputs

def _law(name: str, decay: float | None, params: dict[str, float] | None = None):
    from gradwise.schedules import AnnealingLaw, MultiPowerLaw

    law = AnnealingLaw(decay=0.999 if decay is None else decay) if name == "annealing" else MultiPowerLaw()
    if params is not None:
        law.set_params(**params)
    return law


def _predict_all(law, lrs: np.ndarray) -> np.ndarray:
    """Predictions at every step with a positive LR sum (NaN before: the laws need S1 > 0)."""
    out = np.full(lrs.size, np.nan)
    ok = np.flatnonzero(np.cumsum(lrs) > 0)
    if ok.size:
        out[ok] = law.predict(lrs, ok + 1).numpy()
    return out


def _plot(path: str, curves: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, steps, pred, measured) in enumerate(curves):
        color = f"C{i % 10}"
        shown = np.ones(steps.size, bool)
        if measured is not None and np.any(~np.isnan(measured)):
            m = ~np.isnan(measured)
            ax.plot(steps[m], measured[m], color=color, alpha=0.45, linewidth=1, marker=".", markersize=3,
                    label=f"{label} measured")
            shown = steps >= steps[m][0]  # the laws blow up as S1 -> 0: show predictions where losses are
        else:
            shown = steps >= steps[0] + steps.size // 20
        ax.plot(steps[shown], pred[shown], color=color, linestyle="--", linewidth=1.5, label=f"{label} predicted")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _out_dir(out: str | None) -> str:
    if out is None:
        import time

        out = os.path.join("runs", "schedules-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    return out


def fit_command(path: str, law_name: str, fit_on: str | None, decay: float | None, out: str | None,
                echo=print) -> dict[str, Any]:
    """Fit ``law_name`` on the runs ``fit_on`` (comma-separated; all by default) of a losses CSV, predict every
    run, write params.json, predictions.csv and fit.png under ``out``, print the per-run table; returns a summary."""
    if law_name != "annealing" and decay is not None:
        raise CurveInputError(f"--decay {decay} applies to --law annealing only (the multi-power law has no decay "
                              f"factor)")
    if decay is not None and not 0 <= decay < 1:
        raise CurveInputError(f"--decay {decay} (accepted: 0 <= decay < 1)")
    runs = read_losses_csv(path)
    if fit_on is None:
        names = list(runs)
    else:
        names = [n.strip() for n in fit_on.split(",") if n.strip()]
        unknown = [n for n in names if n not in runs]
        if not names or unknown:
            raise CurveInputError(f"--fit-on {fit_on!r}: unknown run(s) {', '.join(map(repr, unknown)) or '(none)'} "
                                  f"(accepted: comma-separated names among {', '.join(runs)})")
    for n in names:
        if runs[n].measured.size == 0:
            raise CurveInputError(f"--fit-on: run {n!r} has no measured loss (accepted: runs with some 'loss' values)")
    law = _law(law_name, decay)
    curves = [(runs[n].lrs, runs[n].measured, runs[n].losses[runs[n].measured - 1]) for n in names]
    try:
        law.fit(curves)
    except ValueError as err:
        raise CurveInputError(f"{path}: cannot fit the {law_name} law: {err}") from None
    out = _out_dir(out)
    record = {"law": law_name, "params": law.params, "fitted_runs": names, "source": os.path.abspath(path)}
    if law_name == "annealing":
        record["decay"] = law.decay
    with open(os.path.join(out, "params.json"), "w") as f:
        json.dump(record, f, indent=2)
    rows, plot, table = [], [], []
    for name, run in runs.items():
        pred = _predict_all(law, run.lrs)
        steps = np.arange(1, run.lrs.size + 1)
        for s, lr, loss, p in zip(steps, run.lrs, run.losses, pred):
            rows.append((name, int(s), repr(float(lr)), "" if math.isnan(loss) else repr(float(loss)),
                         "" if math.isnan(p) else repr(float(p))))
        m = run.measured - 1
        m = m[~np.isnan(pred[m])]
        if m.size:
            err = pred[m] - run.losses[m]
            table.append((name, "fitted" if name in names else "held out", m.size,
                          100 * float(np.mean(np.abs(err) / run.losses[m])), float(np.max(np.abs(err))),
                          float(err[-1]), int(m[-1] + 1)))
        else:
            table.append((name, "fitted" if name in names else "held out", 0, math.nan, math.nan, math.nan, 0))
        plot.append((name + (" (fitted)" if name in names else ""), steps, pred,
                     np.where(np.isnan(run.losses), np.nan, run.losses)))
    with open(os.path.join(out, "predictions.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "step", "lr", "loss", "predicted"])
        w.writerows(rows)
    _plot(os.path.join(out, "fit.png"), plot, f"{law_name} law fitted on {', '.join(names)}")
    echo(f"{law_name} law fitted on {', '.join(names)}: " + ", ".join(f"{k}={v:.6g}" for k, v in law.params.items()))
    width = max(len("run"), *(len(t[0]) for t in table))
    echo(f"{'run':<{width}}  {'role':<8}  {'points':>6}  {'MAPE %':>8}  {'max |err|':>10}  {'final err':>10}  "
         f"{'at step':>7}")
    for name, role, n, mape, mx, final, at in table:
        echo(f"{name:<{width}}  {role:<8}  {n:>6}  {mape:>8.3f}  {mx:>10.4g}  {final:>+10.4g}  {at:>7}")
    echo(f"wrote {os.path.join(out, 'params.json')}, predictions.csv, fit.png")
    return {"out": out, "params": law.params, "table": table}


def _load_params(path: str, law_option: str | None) -> tuple[str, Any]:
    if not os.path.isfile(path):
        raise CurveInputError(f"{path}: no such file (accepted: the params.json written by gradwise schedules fit)")
    try:
        with open(path) as f:
            record = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CurveInputError(f"{path}: not JSON ({err}; accepted: the params.json written by gradwise schedules "
                              f"fit)") from None
    law_name = record.get("law") if isinstance(record, dict) else None
    if law_name not in LAWS:
        raise CurveInputError(f"{path}: 'law' is {law_name!r} (accepted: one of {', '.join(LAWS)})")
    if law_option is not None and law_option != law_name:
        raise CurveInputError(f"{path}: holds {law_name!r} parameters, not --law {law_option!r} (accepted: a "
                              f"params.json fitted with --law {law_option})")
    names = ("L0", "A", "alpha", "C") if law_name == "annealing" else ("L0", "A", "alpha", "B", "C", "beta", "gamma")
    params = record.get("params")
    if not isinstance(params, dict) or set(params) != set(names) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params.values()):
        raise CurveInputError(f"{path}: 'params' is {params!r} (accepted for the {law_name} law: numbers "
                              f"{', '.join(names)})")
    decay = record.get("decay") if law_name == "annealing" else None
    try:
        return law_name, _law(law_name, decay, params)
    except ValueError as err:
        raise CurveInputError(f"{path}: {err}") from None


def predict_command(params_path: str, *, law: str | None = None, schedule_csv: str | None = None,
                    schedule: str | None = None, steps: int | None = None, peak_lr: float | None = None,
                    final_lr: float | None = None, decay_fraction: float = 0.2, out: str | None = None,
                    echo=print) -> dict[str, Any]:
    """Predict the loss curve of one schedule with the law in ``params_path``; writes predicted.csv/.png."""
    law_name, model = _load_params(params_path, law)
    if (schedule_csv is None) == (schedule is None):
        raise CurveInputError("give exactly one of --schedule-csv FILE or --schedule "
                              f"{{{','.join(SCHEDULES)}}} (with --steps and --peak-lr)")
    if schedule_csv is not None:
        lrs = read_schedule_csv(schedule_csv)
        label = os.path.basename(schedule_csv)
    else:
        if steps is None or peak_lr is None:
            raise CurveInputError(f"--schedule {schedule} needs --steps N and --peak-lr X")
        if steps < 1:
            raise CurveInputError(f"--steps {steps} (accepted: an integer >= 1)")
        if not (math.isfinite(peak_lr) and peak_lr > 0):
            raise CurveInputError(f"--peak-lr {peak_lr} (accepted: a learning rate > 0)")
        if final_lr is not None and not (math.isfinite(final_lr) and 0 <= final_lr):
            raise CurveInputError(f"--final-lr {final_lr} (accepted: a learning rate >= 0)")
        if not 0 <= decay_fraction <= 1:
            raise CurveInputError(f"--decay-fraction {decay_fraction} (accepted: 0 <= F <= 1)")
        lrs = make_schedule(schedule, steps, peak_lr, final_lr, decay_fraction)
        label = schedule
    pred = _predict_all(model, lrs)
    out = _out_dir(out)
    with open(os.path.join(out, "predicted.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "predicted"])
        for s, (lr, p) in enumerate(zip(lrs, pred), start=1):
            w.writerow([s, repr(float(lr)), "" if math.isnan(p) else repr(float(p))])
    steps_axis = np.arange(1, lrs.size + 1)
    _plot(os.path.join(out, "predicted.png"), [(label, steps_axis, pred, None)], f"{law_name} law: {label}")
    echo(f"{law_name} law, {label} schedule of {lrs.size} steps: predicted final loss {pred[-1]:.6g}")
    echo(f"wrote {os.path.join(out, 'predicted.csv')}, predicted.png")
    return {"out": out, "predicted": pred, "lrs": lrs}
