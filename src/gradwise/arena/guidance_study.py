"""Study ``guidance``: guidance and fast sampling on the cached digits teacher (issue 18's arena study 3).

The teacher is the cached class-conditional EDM denoiser of the 8x8 digits (``load_teacher("digits")``, label
dropout 0.2, so its null label gives the unconditional prediction); every sample is scored by the cached
digits classifier. Per seed, ``per_class`` samples of each digit from that seed's noise. Three parts
(:mod:`gradwise.arena.guidance_runs`):

* ``scale`` (APG, seed 223): EDM's Euler sampler (``steps`` levels), guided on the denoised prediction by
  diffusers' ``ClassifierFreeGuidance`` and by :func:`gradwise.diffusion.adaptive_projected_guidance`
  (``eta = 0``) at each ``w`` of ``scales``. Measured: accuracy of the intended label, out-of-range mass (mean
  over pixels of ``max(|x| - 1, 0)``; the data: 0), mean sample L2 norm (the test digits': in the notes).
* ``ag`` (AG, seed 239): at ``ag_w``, full CFG vs :class:`gradwise.diffusion.AdaptiveGuidance` vs the
  conditional pass alone, from the same noise: network passes per sample, accuracy, mean RMS distance to
  the full-CFG sample.
* ``solver`` (DC-Solver, seed 83): the teacher as a VP epsilon-model (DDPM linear schedule), CFG at
  ``solver_w``; diffusers' ``UniPCMultistepScheduler`` and :class:`gradwise.diffusion.DCSolverScheduler`
  (ratios fitted per seed and NFE by ``fit_compensation`` on ``fit_per_class`` other samples per digit
  against their 200-step DDIM trajectories) at each NFE of ``solver_nfes`` (NFE = steps; each step is two
  passes under CFG). Measured: mean RMS distance to the 200-step DDIM sample from the same noise.

**Chosen here, not the papers' values** (their text giving them could not be read, docs/coverage_notes.md):
APG's ``momentum`` and ``norm_threshold`` and AG's ``gamma_bar``, by a validation sweep once per run on noise
apart from the seeds' (:func:`~gradwise.arena.guidance_runs.tune_apg`, :func:`~gradwise.arena.guidance_runs.tune_ag`);
the choices are in the notes and ``results.json``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE, fmt_ci, mean_ci
from gradwise.arena.study import Column, Run, Study, option, register_study

__all__ = ["HELP", "Config", "STUDY", "NAMES"]

HELP = ("guidance on the digits teacher: CFG vs APG over w = 1..20 (out-of-range mass, norm, accuracy); "
        "Adaptive Guidance's saved passes; DC-Solver vs UniPC at NFE 5-10")
NAMES = ("CFG", "APG", "AG", "UniPC", "DC-Solver")
PARTS = ("scale", "ag", "solver")


@dataclass(frozen=True)
class Config:
    seeds: int = option(5, "seeds 0..N-1 (sampling noise; DC-Solver's fitting noise)", at_least=1)
    per_class: int = option(20, "samples per digit per seed", at_least=1)
    steps: int = option(20, "EDM Euler steps (scale and ag parts)", at_least=2)
    tune_w: float = option(8.0, "APG sweep: the guidance scale it is tuned at", at_least=1.0)
    ag_w: float = option(4.0, "AG part: the guidance scale", at_least=1.0)
    solver_w: float = option(2.0, "solver part: the CFG scale of the epsilon-model", at_least=1.0)
    fit_per_class: int = option(1, "DC-Solver: fitting samples per digit", at_least=1)
    val_per_class: int = option(10, "validation sweeps: samples per digit", at_least=1)
    reference_steps: int = option(200, "DDIM steps of the reference samples (the authors' 200)", at_least=10)
    scales: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0, 20.0)
    solver_nfes: tuple[int, ...] = (5, 7, 10)
    apg_momenta: tuple[float, ...] = (0.0, -0.5)
    apg_thresholds: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    apg_acc_slack: float = 0.02
    ag_gammas: tuple[float, ...] = (0.99, 0.995, 0.999, 0.9995, 0.9999)
    ag_tolerance: float = 0.25
    threads: int = 1


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    from gradwise.arena import guidance_runs as gr

    task = gr.load_task()
    apg = gr.tune_apg(task, cfg)
    ag = gr.tune_ag(task, cfg)
    return {"task": task, "apg": apg, "ag": ag}


def _family(label: str) -> str:
    return "CFG" if label == "conditional only" else label.split(" ")[0]


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """One row per method and seed (the driver's contract), each holding its settings' rows (``settings``:
    one per guidance scale, NFE or AG arm, keyed by their label in ``method``)."""
    from gradwise.arena import guidance_runs as gr

    t = run.task
    flat = gr.scale_rows(t["task"], run.cfg, seed, t["apg"])
    flat += gr.ag_rows(t["task"], run.cfg, seed, t["ag"]["gamma_bar"])
    flat += gr.solver_rows(t["task"], run.cfg, seed)
    run.state.setdefault("rows", []).extend(flat)
    return [{"method": m, "seed": seed, "settings": [r for r in flat if _family(r["method"]) == m]}
            for m in run.methods]


KEYS = ("acc", "oor", "norm", "nfe", "dist")


def _headlines(cfg: Config) -> dict[str, str]:
    """The one setting per method that carries its rank (the driver ranks one row per method): CFG and APG at
    the scale nearest ``tune_w``, AG at ``ag_w``, the solvers at the smallest NFE. The other settings are shown
    unranked (dimmed)."""
    w = min(cfg.scales, key=lambda v: abs(v - cfg.tune_w))
    nfe = min(cfg.solver_nfes)
    return {f"CFG w={w:g}": "CFG", f"APG w={w:g}": "APG", f"AG w={cfg.ag_w:g}": "AG", f"UniPC NFE={nfe}": "UniPC",
            f"DC-Solver NFE={nfe}": "DC-Solver"}


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci_fields

    flat = [x for r in rows for x in r["settings"]]
    head = _headlines(run.cfg)
    labels = list(dict.fromkeys(r["method"] for r in flat))
    out, rank = [], 0
    for m in labels:
        mine = [r for r in flat if r["method"] == m]
        # a measure a part does not take (the scale part's distance) is NaN in every row: NaN in the summary
        kept = [k for k in KEYS if not all(math.isnan(r[k]) for r in mine)]
        if m in head and head[m] in run.methods:
            rank += 1
        out.append({"method": head.get(m, m), "label": m, "part": mine[0]["part"], "runs": len(mine),
                    "rank": rank if m in head and head[m] in run.methods else None, "tied": False,
                    **{f"{k}_{f}": math.nan for k in KEYS for f in ("mean", "std", "ci")},
                    **mean_ci_fields(mine, kept)})
    return out


def _cell(key: str, digits: int, scale: float = 1.0):
    def cell(s: dict[str, Any]) -> str:
        if math.isnan(s[key + "_mean"]) or (key == "dist" and s["part"] == "ag" and s[key + "_mean"] == 0):
            return "—"
        return fmt_ci(s[key + "_mean"], s[key + "_ci"], digits, scale=scale)
    return cell


COLUMNS = (
    Column("part", lambda s: s["part"], "left"),
    Column("method", lambda s: s["label"], "left"),
    Column("accuracy (%)", _cell("acc", 1, 100)),
    Column("out-of-range mass", _cell("oor", 4)),
    Column("L2 norm", _cell("norm", 2)),
    Column("passes/sample", lambda s: f"{s['nfe_mean']:.1f}"),
    Column("dist to reference", _cell("dist", 4)),
)


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"guidance: digits EDM teacher, {c.per_class} samples per digit per seed, Euler {c.steps} steps; "
            f"CFG/APG at w = {', '.join(f'{w:g}' for w in c.scales)}; AG at w = {c.ag_w:g}; UniPC/DC-Solver at "
            f"NFE {', '.join(map(str, c.solver_nfes))} (CFG {c.solver_w:g}); {c.seeds} seed(s)")


def _paired(rows: list[dict[str, Any]], a: str, b: str, key: str) -> tuple[float, float]:
    """Mean and 95% half-width over seeds of ``a``'s ``key`` minus ``b``'s (same seed, same noise)."""
    by = {(r["method"], r["seed"]): r[key] for r in rows if key in r}
    seeds = sorted({r["seed"] for r in rows if r["method"] == a})
    return mean_ci([by[(a, s)] - by[(b, s)] for s in seeds if (b, s) in by])


def _verdict(diff: tuple[float, float], want_negative: bool) -> str:
    m, h = diff
    if not math.isfinite(h):
        return "(one seed: no interval)"
    shown = (m + h < 0) if want_negative else (m - h > 0)
    return "(SHOWN)" if shown else "(NOT SHOWN)"


def _fmt(diff: tuple[float, float], digits: int = 4, scale: float = 1.0) -> str:
    return fmt_ci(diff[0], diff[1], digits, scale=scale)


def claims(run: Run, rows: list[dict[str, Any]]) -> list[str]:
    """The issue's claims as paired differences over seeds (the verdicts are printed; docs/study_guidance.md
    says why)."""
    c = run.cfg
    out = []
    lo, hi = f"{min(c.scales):g}", f"{max(c.scales):g}"
    names = {r["method"] for r in rows}
    if f"CFG w={hi}" in names:
        for key, what in (("oor", "out-of-range mass"), ("norm", "L2 norm")):
            d = _paired(rows, f"CFG w={hi}", f"CFG w={lo}", key)
            out.append(f"CFG's {what} grows: w={hi} minus w={lo}: {_fmt(d)} {_verdict(d, False)}")
        for w in c.scales[1:]:
            w = f"{w:g}"
            do = _paired(rows, f"APG w={w}", f"CFG w={w}", "oor")
            dn = _paired(rows, f"APG w={w}", f"CFG w={w}", "norm")
            da = _paired(rows, f"APG w={w}", f"CFG w={w}", "acc")
            out.append(f"w={w}: APG minus CFG: out-of-range {_fmt(do)} {_verdict(do, True)}, norm {_fmt(dn, 2)} "
                       f"{_verdict(dn, True)}, accuracy {_fmt(da, 1, 100)} pts")
    ag, full, cond = f"AG w={c.ag_w:g}", f"CFG w={c.ag_w:g} (full)", "conditional only"
    if ag in names:
        saved = [1 - r["nfe"] / next(q["nfe"] for q in rows if q["method"] == full and q["seed"] == r["seed"])
                 for r in rows if r["method"] == ag]
        d = _paired(rows, ag, cond, "dist")
        da = _paired(rows, ag, full, "acc")
        out.append(f"AG saves {_fmt(mean_ci(saved), 1, 100)} % of full CFG's passes (paper: ~25 %); distance to "
                   f"full CFG, AG minus conditional-only: {_fmt(d)} {_verdict(d, True)}; accuracy AG minus full "
                   f"CFG: {_fmt(da, 1, 100)} pts")
    for nfe in c.solver_nfes:
        d = _paired(rows, f"DC-Solver NFE={nfe}", f"UniPC NFE={nfe}", "dist")
        out.append(f"NFE {nfe}: distance to the {c.reference_steps}-step reference, DC-Solver minus UniPC: {_fmt(d)} "
                   f"{_verdict(d, True)}")
    return out


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    t = run.task
    lines = [f"scale: accuracy of the intended label (digits classifier), out-of-range mass (data: 0), L2 norm "
             f"(test digits: {t['task'].data_norm:.2f}); ag: distance = mean RMS to the full-CFG sample; solver: "
             f"distance = mean RMS to the {run.cfg.reference_steps}-step DDIM sample from the same noise; "
             f"rows in run order; the rank column numbers one headline setting per method in run order (the methods "
             f"answer different questions: not a ranking), the other settings dimmed; {CI_NOTE}"]
    if t["apg"] is not None:
        lines.append(f"APG chosen by the validation sweep at w={run.cfg.tune_w:g} (not the paper's values): momentum "
                     f"{t['apg']['momentum']:g}, norm_threshold {t['apg']['norm_threshold']:g}, eta 0")
    lines.append(f"AG chosen by the validation sweep (not the paper's value): gamma_bar {t['ag']['gamma_bar']:g} "
                 f"(cosine of the denoised predictions)")
    lines += claims(run, run.state.get("rows", []))
    return "\n".join(lines)


def _json_extra(run: Run, summary: list[dict[str, Any]]) -> dict[str, Any]:
    t = run.task
    return {"apg_sweep": t["apg"], "ag_sweep": t["ag"], "claims": claims(run, run.state.get("rows", []))}


STUDY = register_study(Study(
    name="guidance", help=HELP, description=__doc__, config=Config, methods=lambda: NAMES,
    setup=_setup, run_seed=_run_seed, summarize=_summarize, rank_on="acc",
    title=_title, notes=_notes, columns=COLUMNS, json_extra=_json_extra, csv_skip=("settings",),
    outputs=(),
    smoke=("--seeds", "1", "--per-class", "1", "--steps", "4", "--val-per-class", "1", "--reference-steps", "10"),
))
