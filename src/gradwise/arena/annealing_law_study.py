"""Study ``annealing-law``: does a loss-curve law fitted on one or two schedules predict the others?

Tissue, Wang, Wang, "Scaling Law with Learning Rate Annealing" (arXiv 2408.11029, 2024): the validation
loss at step ``s`` follows ``L(s) = L0 + A * S1^-alpha - C * S2`` (``S1`` the area under the LR curve,
``S2`` the momentum-form annealing area; :class:`gradwise.schedules.AnnealingLaw`), and "fitting only one
or two training curves" predicts the loss at any step under any LR schedule.

Setup: a character-level :class:`gradwise.nn.TransformerLM` (Pre-LN) learns the synthetic language of the
``lr-sensitivity`` study (:func:`~gradwise.arena.lr_sensitivity_study.synthetic_text`) with AdamW under
four schedules that share the peak LR, the linear warm-up, the initialization and the order of the
batches (one seed fixes both), so only the LR after warm-up differs:

* ``constant`` -- the peak LR to the end;
* ``cosine`` -- cosine from the peak down to ``min_lr_fraction`` x peak at the last step;
* ``wsd`` -- warm-up, stable at the peak, then linear decay over the last ``wsd_decay_fraction`` of the
  steps down to ``min_lr_fraction`` x peak;
* ``step`` -- multi-step: x ``step_factor`` (0.316) at 50% and again at 75% of the steps (ending at
  0.1 x peak with the defaults, as cosine and WSD do).

The held-out loss (a fixed set of windows from another seed of the generator) is measured every
``eval_every`` steps. Each law (``--laws``: ``annealing`` by default; ``multi-power``, the Multi-Power Law of Luo
et al. 2025, arXiv 2503.12811, :class:`gradwise.schedules.MultiPowerLaw`, when named) is then fitted, on the measured
points after warm-up, twice: on one curve (``cosine``: a constant curve alone has no annealing, so it
cannot fix ``C``) and on two (``constant`` + ``cosine``, the pair the issue names), and predicts every
schedule. Per fit and schedule the study reports the mean absolute percentage error (MAPE) over the
measured steps after warm-up, the largest absolute error, the signed error at the last step, and per
fit whether the order of the schedules' final losses is predicted (pairs in the right order). A law is
ranked on the MAPE of its two-curve fit over the schedules it did not see.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.lr_sensitivity_study import TextTask, held_out_loss
from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, UsageError, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "SCHEDULES", "FITS", "LAWS", "STUDY", "schedule_lrs", "train_curve",
           "fit_and_predict", "errors", "add_arguments", "run"]

HELP = ("tiny char-level LM under constant, cosine, WSD and step LR schedules: fit the LR-annealing loss law on "
        "one or two curves, predict the others")
SCHEDULES = ("constant", "cosine", "wsd", "step")
# fit name -> the schedules whose curves it is fitted on
FITS: dict[str, tuple[str, ...]] = {"1": ("cosine",), "2": ("constant", "cosine")}
FIT_LABELS = {"1": "cosine", "2": "constant+cosine"}


def _annealing_law(cfg: Any):
    from gradwise.schedules import AnnealingLaw

    return AnnealingLaw(decay=cfg.decay)


def _multi_power_law(cfg: Any):
    from gradwise.schedules import MultiPowerLaw

    return MultiPowerLaw()


# law name -> a factory of an object with fit([(lrs, steps, losses), ...]) and predict(lrs, steps).
# The Multi-Power Law (Luo et al. 2025) is opt-in (--laws annealing,multi-power): its fit (135 L-BFGS-B starts,
# then AdamW) takes about a minute per fit here, against a second for the annealing law.
LAWS: dict[str, Callable[[Any], Any]] = {"annealing": _annealing_law, "multi-power": _multi_power_law}


@dataclass(frozen=True)
class Config:
    steps: int = option(1000, "optimizer steps per schedule", at_least=10)
    eval_every: int = option(20, "measure the held-out loss every N steps", at_least=1)
    peak_lr: float = option(0.03, "peak learning rate, the same for every schedule", at_least=1e-8)
    warmup_steps: int = option(50, "linear warm-up steps, shared by every schedule", at_least=1)
    min_lr_fraction: float = option(0.1, "final LR of cosine and WSD as a fraction of the peak", at_least=0.0,
                                    below=1.0)
    wsd_decay_fraction: float = option(0.2, "WSD's linear decay: the last fraction of the steps", at_least=0.01,
                                       below=1.0)
    step_factor: float = option(0.316, "the step schedule multiplies the LR by this at 50% and 75% of the steps",
                                at_least=1e-6, below=1.0)
    decay: float = option(0.999, "the annealing law's momentum decay lambda of S2", at_least=0.0, below=1.0)
    d_model: int = option(32, "model width", at_least=4)
    n_layers: int = option(2, "transformer blocks", at_least=1)
    seeds: int = option(2, "seeds 0..N-1 (each: its initialization and batch order, shared by the schedules)",
                        at_least=1)
    n_heads: int = 4
    seq_len: int = 32
    batch_size: int = 16
    weight_decay: float = 1e-4   # independent (decoupled from the LR), as in the lr-sensitivity study
    betas: tuple[float, float] = (0.9, 0.95)
    train_chars: int = 200_000
    eval_windows: int = 128
    text_seed: int = 0
    threads: int = 1


CONFIG = Config()


def schedule_lrs(cfg: Config, schedule: str) -> list[float]:
    """The LR of every step ``1..cfg.steps`` of ``schedule`` (the list the law is given, warm-up included)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Invalid schedule: {schedule!r} (accepted: one of {', '.join(SCHEDULES)})")
    T, W, peak = cfg.steps, cfg.warmup_steps, cfg.peak_lr
    floor = cfg.min_lr_fraction * peak
    decay_start = T - max(1, round(cfg.wsd_decay_fraction * T))
    out = []
    for t in range(1, T + 1):
        if t <= W:
            lr = peak * t / W
        elif schedule == "constant":
            lr = peak
        elif schedule == "cosine":
            lr = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
        elif schedule == "wsd":
            lr = peak if t <= decay_start else peak + (floor - peak) * (t - decay_start) / (T - decay_start)
        else:  # step
            lr = peak * cfg.step_factor ** ((t > T // 2) + (t > (3 * T) // 4))
        out.append(lr)
    return out


def _check(cfg: Config) -> Config:
    if cfg.warmup_steps >= cfg.steps // 2:
        raise UsageError(f"--warmup-steps {cfg.warmup_steps} with --steps {cfg.steps} (accepted: fewer warm-up steps "
                         f"than half the steps, < {cfg.steps // 2}: the step schedule drops at 50%)")
    if cfg.steps - max(1, round(cfg.wsd_decay_fraction * cfg.steps)) < cfg.warmup_steps:
        raise UsageError(f"--wsd-decay-fraction {cfg.wsd_decay_fraction:g} (accepted: a decay that starts after the "
                         f"{cfg.warmup_steps} warm-up steps, < {1 - cfg.warmup_steps / cfg.steps:.3g} here)")
    measured = len(_eval_steps(cfg))
    if measured < 8:
        raise UsageError(f"--eval-every {cfg.eval_every} with --steps {cfg.steps} and --warmup-steps "
                         f"{cfg.warmup_steps} measures {measured} points after warm-up (accepted: at least 8, the "
                         "law has 4 parameters)")
    if cfg.d_model % cfg.n_heads:
        raise UsageError(f"--d-model {cfg.d_model} (accepted: a multiple of the {cfg.n_heads} heads)")
    return cfg


def _eval_steps(cfg: Config) -> list[int]:
    """The 1-based steps after warm-up where the held-out loss is measured (the last step always)."""
    steps = [s for s in range(cfg.eval_every, cfg.steps + 1, cfg.eval_every) if s > cfg.warmup_steps]
    return steps if steps and steps[-1] == cfg.steps else [*steps, cfg.steps]


def _setup(cfg: Config, laws: tuple[str, ...]) -> TextTask:
    _check(cfg)
    return TextTask(cfg)


def train_curve(task: TextTask, cfg: Config, lrs: list[float], seed: int) -> dict[int, float]:
    """Train one model with the per-step LRs ``lrs``; its held-out loss at each step of :func:`_eval_steps`
    (``{step: loss}``). The seed fixes the initialization and the batches, the same for every schedule."""
    import torch
    import torch.nn.functional as F

    from gradwise.nn import TransformerLM
    from gradwise.optim import AdamW

    torch.manual_seed(seed)
    model = TransformerLM(len(task.chars), cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.seq_len, norm="pre")
    opt = AdamW(model.parameters(), lr=lrs[0], betas=cfg.betas, weight_decay=cfg.weight_decay,
                independent_weight_decay=True, peak_lr=cfg.peak_lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(task.train) - cfg.seq_len - 1
    at = set(_eval_steps(cfg))
    curve: dict[int, float] = {}
    for step, lr in enumerate(lrs, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        window = torch.stack([task.train[s:s + cfg.seq_len + 1] for s in starts.tolist()])
        loss = F.cross_entropy(model(window[:, :-1]).flatten(0, 1), window[:, 1:].flatten())
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step} (peak LR {cfg.peak_lr:g}): try a lower --peak-lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in at:
            curve[step] = held_out_loss(model, task)
    return curve


def fit_and_predict(law: Any, curves: dict[str, tuple[list[float], list[int], list[float]]],
                    fit_on: tuple[str, ...]) -> dict[str, list[float]]:
    """Fit ``law`` (an object with ``fit([(lrs, steps, losses), ...])`` and ``predict(lrs, steps)``) on the
    curves of ``fit_on`` and return its predicted loss at the measured steps of every schedule of ``curves``
    (``{schedule: (lrs, steps, losses)}``). The one place a law is used: another law with the same two methods
    is one more entry of :data:`LAWS`."""
    law.fit([curves[s] for s in fit_on])
    return {s: [float(v) for v in law.predict(lrs, steps)] for s, (lrs, steps, _) in curves.items()}


def errors(measured: list[float], predicted: list[float]) -> dict[str, float]:
    """MAPE (%), largest absolute error and the signed error at the last point (predicted - measured)."""
    diffs = [p - m for m, p in zip(measured, predicted)]
    return {"mape": 100 * sum(abs(d) / m for d, m in zip(diffs, measured)) / len(diffs),
            "max_abs": max(abs(d) for d in diffs), "final_err": diffs[-1]}


def _pairs_in_order(measured: dict[str, float], predicted: dict[str, float]) -> tuple[int, int]:
    """Pairs of schedules whose order of final loss the prediction gets right, and all pairs."""
    names = list(measured)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    right = sum((measured[a] < measured[b]) == (predicted[a] < predicted[b]) for a, b in pairs)
    return right, len(pairs)


def _train_seed(run: Run, seed: int) -> tuple[dict[str, Any], None]:
    """Every schedule at ``seed`` (shared by the laws): ``{schedule: (lrs, steps, losses)}``."""
    cfg, task = run.cfg, run.task
    t0 = time.perf_counter()
    curves = {}
    for s in SCHEDULES:
        lrs = schedule_lrs(cfg, s)
        curve = train_curve(task, cfg, lrs, seed)
        steps = sorted(curve)
        curves[s] = (lrs, steps, [curve[k] for k in steps])
    run.state[f"train_s_{seed}"] = time.perf_counter() - t0
    return curves, None


def run_one(run: Run, law_name: str, seed: int, curves: dict[str, Any]) -> dict[str, Any]:
    """Fit ``law_name`` on each fit's curves of ``seed`` and score its predictions of every schedule."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {"law": law_name, "seed": seed}
    for s in SCHEDULES:
        row[f"final_{s}"] = curves[s][2][-1]
    predictions: dict[str, dict[str, list[float]]] = {}
    for fit, fit_on in FITS.items():
        law = LAWS[law_name](run.cfg)
        pred = fit_and_predict(law, curves, fit_on)
        predictions[fit] = pred
        for s in SCHEDULES:
            for k, v in errors(curves[s][2], pred[s]).items():
                row[f"{k}_{fit}_{s}"] = v
            row[f"pred_final_{fit}_{s}"] = pred[s][-1]
        unseen = [s for s in SCHEDULES if s not in fit_on]
        row[f"mape_{fit}_unseen"] = sum(row[f"mape_{fit}_{s}"] for s in unseen) / len(unseen)
        right, total = _pairs_in_order({s: row[f"final_{s}"] for s in SCHEDULES},
                                       {s: row[f"pred_final_{fit}_{s}"] for s in SCHEDULES})
        row[f"pairs_{fit}"], row[f"order_ok_{fit}"] = right, float(right == total)
        params = getattr(law, "params", None)
        if isinstance(params, dict):
            row.update({f"{k}_{fit}": float(v) for k, v in params.items()})
    row.update(fit_s=time.perf_counter() - t0, train_s=run.state.get(f"train_s_{seed}", float("nan")),
               steps=curves[SCHEDULES[0]][1], measured={s: curves[s][2] for s in SCHEDULES},
               predicted=predictions)
    return row


def _keys() -> tuple[str, ...]:
    keys = [f"final_{s}" for s in SCHEDULES]
    for fit in FITS:
        keys += [f"mape_{fit}_unseen", f"pairs_{fit}", f"order_ok_{fit}"]
        for s in SCHEDULES:
            keys += [f"{k}_{fit}_{s}" for k in ("mape", "max_abs", "final_err", "pred_final")]
    return (*keys, "train_s", "fit_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    return summarize_rows(STUDY, rows, run.methods, _keys())


def _fmt(x: float, fmt: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, fmt)


def _ci(s: dict[str, Any], key: str, fmt: str) -> str:
    """``mean`` or ``mean ± ci`` (with two seeds or more)."""
    mean, ci = s[key + "_mean"], s.get(key + "_ci")
    if ci is None or not math.isfinite(ci):
        return _fmt(mean, fmt)
    return f"{_fmt(mean, fmt)} ± {_fmt(ci, fmt.lstrip('+'))}"


_COLUMNS = ("law", "fitted on", "schedule", "final loss", "predicted", "MAPE %", "max |err|", "final err",
            "order")


def _columns(run: Run) -> tuple[Column, ...]:
    first = ("2", "unseen (mean)")  # the ranked row: the two-curve fit over the schedules it did not see
    return (Column("law", lambda s: s["law"], "left"),
            Column("fitted on", lambda s: FIT_LABELS[first[0]], "left"),
            Column("schedule", lambda s: first[1], "left"),
            Column("final loss", lambda s: ""), Column("predicted", lambda s: ""),
            Column("MAPE %", lambda s: _ci(s, "mape_2_unseen", ".2f")),
            Column("max |err|", lambda s: ""), Column("final err", lambda s: ""),
            Column("order", lambda s: ""))


def _detail_rows(run: Run, summary: list[dict[str, Any]]) -> list[list[str]]:
    """Per law, fit and schedule: the rows under the ranked rows (a fitted schedule is marked *)."""
    out = []
    for s in summary:
        for fit, fit_on in FITS.items():
            n_pairs = len(SCHEDULES) * (len(SCHEDULES) - 1) // 2
            for i, sched in enumerate(SCHEDULES):
                order = (f"{s[f'pairs_{fit}_mean']:.3g}/{n_pairs} pairs" if i == 0 else "")
                out.append(["", s["law"] if fit == "1" and i == 0 else "", FIT_LABELS[fit] if i == 0 else "",
                            sched + (" *" if sched in fit_on else ""),
                            _ci(s, f"final_{sched}", ".4f"), _ci(s, f"pred_final_{fit}_{sched}", ".4f"),
                            _ci(s, f"mape_{fit}_{sched}", ".2f"), _ci(s, f"max_abs_{fit}_{sched}", ".4f"),
                            _ci(s, f"final_err_{fit}_{sched}", "+.4f"), order])
    return out


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"annealing-law: char-level LM ({cfg.n_layers} layers, d={cfg.d_model}) on a synthetic language, "
            f"{cfg.steps} AdamW steps × batch {cfg.batch_size} × {cfg.seq_len} chars, peak LR {cfg.peak_lr:g}, "
            f"{cfg.warmup_steps} warm-up steps; held-out loss every {cfg.eval_every} steps; law fitted on one or two "
            f"schedules, predicting all four; {cfg.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return ("ranked on the MAPE of the law fitted on constant+cosine over the schedules it did not see (wsd, step); "
            "rows below: each fit (* = a schedule it was fitted on: in-sample error) and schedule: measured and "
            "predicted final held-out loss, MAPE over the measured steps after warm-up, largest |predicted - "
            "measured|, signed error at the last step (predicted - measured), and how many pairs of schedules the "
            f"predicted final losses put in the measured order; cosine and WSD end at {cfg.min_lr_fraction:g} × peak, "
            f"step multiplies by {cfg.step_factor:g} at 50% and 75%; law decay lambda {cfg.decay:g}; {CI_NOTE}")


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.plots import curve_styles, wrap_title

    styles = curve_styles(SCHEDULES)
    fig, axes = plt.subplots(len(run.methods), len(FITS), figsize=(6.5 * len(FITS), 4.6 * len(run.methods)),
                             squeeze=False)
    for li, law in enumerate(run.methods):
        rs = [r for r in rows if r["law"] == law]
        if not rs:
            continue
        steps = rs[0]["steps"]
        for fi, (fit, fit_on) in enumerate(FITS.items()):
            ax = axes[li][fi]
            for s in SCHEDULES:
                st = styles[s]
                meas = np.mean([r["measured"][s] for r in rs], axis=0)
                pred = np.mean([r["predicted"][fit][s] for r in rs], axis=0)
                ax.plot(steps, meas, color=st["color"], marker=st["marker"], ls="none", ms=3,
                        label=f"{s} measured" + (" (fitted)" if s in fit_on else ""))
                ax.plot(steps, pred, color=st["color"], ls="-" if s in fit_on else "--", lw=1.3,
                        label=f"{s} predicted")
            ax.set(xlabel="step", ylabel="held-out loss", yscale="log",
                   title=f"{law} law fitted on {FIT_LABELS[fit]}")
            ax.grid(True, alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=2)
    fig.suptitle(wrap_title(title + " (mean over seeds)", 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="annealing-law", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(LAWS),
    select=Selection("laws", "loss-curve laws", default_text="annealing"), default_methods=lambda: ("annealing",),
    key="law", name_key="law",
    adjust=_check, setup=_setup, seeds_outer=True, seed_setup=_train_seed, seed_setup_label="train 4 schedules",
    run_one=run_one, summarize=_summarize, rank_on="mape_2_unseen", higher_is_better=False,
    title=_title, notes=_notes, columns=_columns, extra_table_rows=_detail_rows,
    csv_skip=("steps", "measured", "predicted"),
    write_files=lambda out, run, rows, summary, title: _plot(out / "annealing_law.png", run, rows, title),
    outputs=("annealing_law.png",),
    smoke=("--steps", "60", "--eval-every", "4", "--warmup-steps", "5", "--d-model", "8", "--n-layers", "1"),
))
# the study's entry points, as the other studies have them
add_arguments, run = STUDY.add_arguments, STUDY.run
