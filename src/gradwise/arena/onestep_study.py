"""Study ``one-step``: distilling a 2-D diffusion teacher of an unequal-weight mixture into a one-step generator
(issue 18's ``one-step`` arena).

The teacher is the cached mixture teacher (:func:`gradwise.diffusion.toy.load_teacher`, 8 Gaussians of std 0.05
on a circle of radius 2 with weights 0.30 0.20 0.15 0.10 0.10 0.07 0.05 0.03), used unconditionally (its null
label). Each method starts a generator and a fake score network from copies of the teacher and trains them
with DMD2's alternating loop (tianweiy/DMD2 @ 8d8fa55; details and departures in
:mod:`gradwise.arena.onestep_runs`) for ``gen_steps`` generator updates, ``ratio`` fake-score updates each.
Methods (:data:`gradwise.arena.onestep_runs.METHODS`):

* ``dmd``: distribution matching (reverse KL), 5 fake-score updates per generator update, one step;
* ``dmd-ratio1``: the same with 1 fake-score update per generator update (DMD's original rule);
* ``f-js``, ``f-kl``: f-distill (NVlabs/FastGen @ 34f30e8): the DMD update weighted per sample by
  h(r) of the Jensen-Shannon / forward-KL divergence, r from a discriminator of noised real vs generated samples
  (:func:`gradwise.diffusion.f_distill_weight`; no GAN term in the generator loss, so the divergence is the only
  change from ``dmd``);
* ``dmd-gan``: DMD2: ``dmd`` plus the non-saturating GAN loss on real mixture samples (weight ``gan_weight``);
* ``dmd-4step``: DMD2's few-step generator (4 levels, backward simulation).

Measured on ``eval_n`` samples from fixed noise against ``eval_n`` samples of the true mixture: the energy
distance (ranked, lower first), mode recall (a mode counts when its share of samples within 0.5 of its centre is
at least half its weight; the modes are 1.53 apart), and for the two light modes (weights 0.05, 0.03): their
recall and their mass (share of samples within 0.5 of them over their weight; 1 = full weight). Stability: the sample std of the energy distance over the
second half of ``checkpoints`` evaluations during training, and a divergence count (final energy distance above
``diverge_ed`` or not finite). The teacher's own samples (EDM Heun, 18 levels, 35 NFE) are an unranked reference.

SIM (``sim_loss``) is not in gradwise (its paper's text could not be read), so SIM vs DMD is not tested.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "NAMES"]

HELP = ("one-step distillation of a 2-D unequal-weight mixture teacher: DMD (reverse KL), f-distill JS / forward "
        "KL, DMD2 fake:generator ratio 1 vs 5, + GAN on real data, 4 steps vs 1")
NAMES = ("dmd", "dmd-ratio1", "f-js", "f-kl", "dmd-gan", "dmd-4step")  # onestep_runs.METHODS' keys (no torch here)
TEACHER = "teacher (35 NFE)"


@dataclass(frozen=True)
class Config:
    seeds: int = option(5, "seeds 0..N-1 (the issue's 5)", at_least=1)
    gen_steps: int = option(150, "generator updates per run", at_least=1)
    batch_size: int = option(64, "batch size of every update", at_least=2)
    gen_lr: float = option(5e-4, "generator AdamW learning rate", at_least=1e-8)
    fake_lr: float = option(5e-4, "fake score and discriminator AdamW learning rate", at_least=1e-8)
    gan_weight: float = option(0.1, "dmd-gan: weight of the GAN term in the generator loss", at_least=0.0)
    eval_n: int = option(2000, "samples evaluated (and true-mixture samples compared with)", at_least=16)
    checkpoints: int = option(10, "energy-distance evaluations during training (stability)", at_least=2)
    diverge_ed: float = 1.0
    teacher_steps: int = 18
    threads: int = 1


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    from gradwise.diffusion.toy import load_teacher

    return load_teacher("mixture")


def _seed_setup(run: Run, seed: int) -> tuple[Any, dict[str, Any]]:
    import torch

    from gradwise.arena.onestep_runs import mixture_reference, teacher_row

    t0 = time.perf_counter()
    ref = mixture_reference(run.cfg.eval_n, 1_000_000 + seed)
    noise = torch.randn(run.cfg.eval_n, 2, generator=torch.Generator().manual_seed(2_000_000 + seed))
    row = teacher_row(run.task, noise, ref, run.cfg.teacher_steps)
    return (ref, noise), dict(method=TEACHER, seed=seed, **row, wall_s=time.perf_counter() - t0)


def _run_one(run: Run, method: str, seed: int, shared: Any) -> dict[str, Any]:
    from gradwise.arena.onestep_runs import METHODS, run_method

    t0 = time.perf_counter()
    ref, noise = shared
    out = run_method(METHODS[method], run.task, seed, run.cfg, ref, noise)
    return dict(method=method, seed=seed, **out, wall_s=time.perf_counter() - t0)


KEYS = ("ed", "light_mass", "light_recall", "recall", "ed_tail_sd", "diverged", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows
    from gradwise.arena.stats import mean_ci_fields

    out = summarize_rows(STUDY, rows, run.methods, KEYS)
    for s in out:
        s["nfe"] = next(r["nfe"] for r in rows if r["method"] == s["method"])
        s["diverged_count"] = sum(r["diverged"] for r in rows if r["method"] == s["method"])
    if run.references:
        ref = {"method": TEACHER, "runs": len(run.references), "rank": None, "tied": False,
               **mean_ci_fields(run.references, ("ed", "light_mass", "light_recall", "recall")),
               "nfe": run.references[0]["nfe"], "diverged_count": None}
        out.append(ref)
    return out


def _opt(key: str, digits: int, scale: float = 1.0) -> Column:
    def cell(s: dict[str, Any]) -> str:
        if s.get(key + "_mean") is None:
            return "—"
        return fmt_ci(s[key + "_mean"], s[key + "_ci"], digits, scale=scale)
    return Column(key.replace("_", " "), cell)


COLUMNS = (
    Column("method", lambda s: s["method"], "left"),
    ci_column("energy dist x100", "ed", 2, scale=100),
    ci_column("light-mode mass", "light_mass", 2),
    ci_column("light-mode recall", "light_recall", 2),
    ci_column("mode recall", "recall", 2),
    _opt("ed_tail_sd", 2, 100),
    Column("diverged", lambda s: "—" if s["diverged_count"] is None else f"{s['diverged_count']:.0f}/{s['runs']}"),
    Column("NFE", lambda s: str(s["nfe"])),
)


def _paired(rows: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, float] | None:
    """Mean and 95% interval over seeds of ``key`` of ``a`` minus ``b`` (same seed)."""
    by = {(r["method"], r["seed"]): r[key] for r in rows}
    diffs = [by[(a, s)] - by[(b, s)] for (m, s) in by if m == a and (b, s) in by]
    return mean_ci(diffs) if diffs else None


def _verdict(d: tuple[float, float] | None, sign: int) -> str:
    """SHOWN when the interval of the paired difference lies on the claimed side of 0 (``sign`` +1: above)."""
    if d is None:
        return "not run"
    m, h = d
    if h != h or h == float("inf"):
        return "one seed: no interval"
    if sign * m - h > 0:
        return "SHOWN"
    return "NOT SHOWN (interval includes 0)" if m - h <= 0 <= m + h else "NOT SHOWN (opposite sign)"


def _claims(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    out = []

    def line(text: str, a: str, b: str, key: str, sign: int, digits: int = 3, scale: float = 1.0) -> None:
        if a in run.methods and b in run.methods:
            d = _paired(rows, a, b, key)
            out.append(f"{text}: {a} - {b} {key} = {fmt_ci(d[0], d[1], digits, scale=scale)} -> {_verdict(d, sign)}")

    line("light modes kept by f-distill JS vs DMD (reverse KL)", "f-js", "dmd", "light_mass", +1)
    line("light modes kept by f-distill forward KL vs DMD", "f-kl", "dmd", "light_mass", +1)
    line("DMD2 ratio 5 more stable than ratio 1 (late energy-distance std)", "dmd", "dmd-ratio1", "ed_tail_sd", -1,
         2, 100)
    line("GAN on real data beats teacher-bound DMD (energy distance x100)", "dmd-gan", "dmd", "ed", -1, 2, 100)
    line("4 generator steps beat 1 (energy distance x100)", "dmd-4step", "dmd", "ed", -1, 2, 100)
    out.append("SIM vs DMD: not tested (sim_loss is not in gradwise: SIM's text could not be read)")
    return out


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"one-step: 2-D mixture (weights .30-.03) teacher -> generator, DMD2 loop, {c.gen_steps} generator updates, "
            f"batch {c.batch_size}, AdamW {c.gen_lr:g}/{c.fake_lr:g}, GAN weight {c.gan_weight:g}; {c.eval_n} samples; "
            f"{c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    rows = run.state.get("rows", [])
    lines = ["energy distance to the true mixture (x100, ranked, lower first); light modes: the 0.05 and 0.03 modes "
             "(mass: share of samples within 0.5 of them over their weight); ed tail sd: std (x100) of the energy "
             f"distance over the second half of {run.cfg.checkpoints} checkpoints; diverged: final energy distance > "
             f"{run.cfg.diverge_ed:g}; teacher: EDM Heun, {run.cfg.teacher_steps} levels, unranked; paired "
             f"differences per seed below; {CI_NOTE}; {RANK_NOTE}"]
    lines += _claims(run, rows)
    return "\n".join(lines)


def _summarize_keep(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    run.state["rows"] = rows
    return _summarize(run, rows)


def _record(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "ed_curve"}


def _json_extra(run: Run, summary: list[dict[str, Any]]) -> dict[str, Any]:
    rows = run.state.get("rows", [])
    return {"ed_curves": {f"{r['method']}/{r['seed']}": r["ed_curve"] for r in rows},
            "claims": _claims(run, rows), "not_tested": ["sim"]}


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], summary: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradwise.arena.report import curve_styles, wrap_title

    styles = curve_styles(run.methods)
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for m in run.methods:
        curves = [r["ed_curve"] for r in rows if r["method"] == m]
        if not curves:
            continue
        mean = [sum(c) / len(c) for c in zip(*curves)]
        xs = [(i + 1) * run.cfg.gen_steps / len(mean) for i in range(len(mean))]
        ax.plot(xs, mean, color=styles[m]["color"], ls=styles[m]["ls"], marker=styles[m]["marker"] or "o", label=m)
    ax.set(xlabel="generator updates", ylabel="energy distance to the mixture (mean over seeds)", yscale="log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(wrap_title(title, 110), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="one-step", help=HELP, description=__doc__, config=Config, methods=lambda: NAMES,
    setup=_setup, seed_setup=_seed_setup, seed_setup_label="teacher", seeds_outer=True, run_one=_run_one,
    summarize=_summarize_keep, rank_on="ed", higher_is_better=False, title=_title, notes=_notes, columns=COLUMNS,
    record=_record, json_extra=_json_extra,
    write_files=lambda out, run, rows, summary, title: _plot(out / "one-step.png", run, rows, summary, title),
    outputs=("one-step.png",),
    smoke=("--seeds", "1", "--gen-steps", "1", "--eval-n", "64", "--checkpoints", "2", "--batch-size", "16"),
))
