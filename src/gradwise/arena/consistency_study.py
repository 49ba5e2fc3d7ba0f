"""Study ``consistency``: consistency training from scratch (iCT, sLCT) on a 2-D 8-Gaussians mixture, on the same
mixture with Student-t outliers, and on class-conditional 8x8 digits.

Each arm trains a fresh consistency model (:class:`~gradwise.diffusion.toy.ConsistencyDenoiser`: a ``ToyMLP`` on 2-D,
a one-block ``ToyConv8x8`` on digits) with :func:`gradwise.diffusion.consistency_training_loss` (iCT's doubling
curriculum from ``s0`` to ``s1`` levels over the run, Karras levels up to ``sigma_max``), Adam, and samples it in one
step (``f(sigma_max z, sigma_max)``) and two (then re-noised to ``mid_sigma``). No teacher network is needed:
consistency training is teacher-free (the digits classifier, a cached toy teacher, gives the digits metrics).

Claims (issue 18, section 6.1; iCT and sLCT): no-EMA teacher beats EMA; Pseudo-Huber beats squared l2; lognormal
beats uniform noise levels; 2 steps beat 1; with Student-t outliers in the data, Cauchy beats Pseudo-Huber, and OT
pairing, the diffusion loss and scaling-c each help the Cauchy loss. Metrics: energy distance to held-out clean
mixture samples (2-D; lower is better), Frechet distance of the classifier's features to the digits test set and
the classifier's accuracy on the conditioning labels (digits). Each claim is a paired difference over seeds (same
data, initialisation and batches per seed), printed with its 95% t-interval under the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradwise.arena.consistency_runs import ARMS, PARTS, make_task, run_one
from gradwise.arena.stats import CI_NOTE, mean_ci, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Selection, Study, fmt_ci, option, register_study

__all__ = ["HELP", "Config", "METHODS", "STUDY", "CLAIMS"]

HELP = "consistency training from scratch: iCT's and sLCT's choices on 2-D mixtures (clean, outliers) and digits"
METHODS = tuple(ARMS)
KEYS = {"mix": ("ed_1", "ed_2"), "out": ("ed_1", "ed_2"), "dig": ("fd_1", "fd_2", "acc_1", "acc_2")}
PRIMARY = {"mix": "ed_2", "out": "ed_2", "dig": "fd_2"}
# (claim, better arm, worse arm, metric, lower is better)
CLAIMS = (
    ("no-EMA teacher beats EMA (2-D)", "ict", "ema", "ed_2", True),
    ("Pseudo-Huber beats squared l2 (2-D)", "ict", "l2", "ed_2", True),
    ("lognormal beats uniform levels (2-D)", "ict", "uniform", "ed_2", True),
    ("2 steps beat 1 (2-D, iCT)", "ict:ed_2", "ict:ed_1", None, True),
    ("Cauchy beats Pseudo-Huber (outliers)", "out-cauchy", "out-huber", "ed_2", True),
    ("OT helps Cauchy (outliers)", "out-cauchy-ot", "out-cauchy", "ed_2", True),
    ("diffusion loss helps Cauchy (outliers)", "out-cauchy-diff", "out-cauchy", "ed_2", True),
    ("scaling-c helps Cauchy (outliers)", "out-cauchy-scalec", "out-cauchy", "ed_2", True),
    ("no-EMA teacher beats EMA (digits, Frechet)", "dig-ict", "dig-ema", "fd_2", True),
    ("Pseudo-Huber beats squared l2 (digits, Frechet)", "dig-ict", "dig-l2", "fd_2", True),
    ("2 steps beat 1 (digits, Frechet)", "dig-ict:fd_2", "dig-ict:fd_1", None, True),
    ("2 steps beat 1 (digits, accuracy)", "dig-ict:acc_2", "dig-ict:acc_1", None, False),
)


@dataclass(frozen=True)
class Config:
    steps: int = option(800, "training steps per 2-D run", at_least=20)
    batch_size: int = option(128, "2-D batch size", at_least=2)
    lr: float = option(2e-3, "2-D Adam learning rate", at_least=1e-6)
    width: int = option(64, "2-D MLP width", at_least=8)
    depth: int = option(2, "2-D MLP residual blocks", at_least=1)
    train_samples: int = option(8000, "2-D training points", at_least=16)
    eval_samples: int = option(1500, "2-D samples for the energy distance", at_least=16)
    outlier_frac: float = option(0.03, "fraction of 2-D training points replaced by outliers (out-* arms)",
                                 at_least=0.0, below=1.0)
    outlier_df: float = option(2.0, "Student-t degrees of freedom of the outliers", at_least=0.1)
    outlier_scale: float = option(2.0, "scale of the outliers", at_least=0.0)
    s0: int = option(10, "first curriculum stage: s0 + 1 levels", at_least=1)
    s1: int = option(160, "last curriculum stage: s1 + 1 levels", at_least=1)
    sigma_max: float = option(80.0, "largest noise level (training and sampling)", at_least=1.0)
    c: float = option(0.0, "robust metrics' scale c (0: iCT's 0.00054 sqrt(d); the scaling-c arm keeps its schedule)",
                      at_least=0.0)
    mid_sigma: float = option(0.8, "second sampling step's noise level", at_least=0.003)
    ema_mu0: float = option(0.9, "EMA arms: mu0 of CT's teacher schedule exp(s0 ln mu0 / N)", at_least=0.0,
                            below=1.0)
    digits_steps: int = option(500, "training steps per digits run", at_least=20)
    digits_batch: int = option(64, "digits batch size", at_least=2)
    digits_lr: float = option(2e-3, "digits Adam learning rate", at_least=1e-6)
    digits_channels: int = option(16, "digits conv channels", at_least=8)
    digits_eval_per_class: int = option(30, "digits samples per class for the metrics", at_least=2)
    seeds: int = option(5, "seeds 0..N-1 (the issue's 5)", at_least=1)
    threads: int = 1


def _check(cfg: Config, methods: tuple[str, ...]):
    from gradwise.arena.study import UsageError

    if cfg.s1 < cfg.s0:
        raise UsageError(f"Invalid --s1: {cfg.s1} (accepted: at least --s0, {cfg.s0})")
    if cfg.mid_sigma >= cfg.sigma_max:
        raise UsageError(f"Invalid --mid-sigma: {cfg.mid_sigma} (accepted: below --sigma-max, {cfg.sigma_max})")
    return make_task(cfg, methods)


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per part, one row per arm (means and intervals of the part's metrics), ranked within the part on its
    primary metric (2-step energy distance or Frechet distance; lower is better)."""
    out = []
    all_keys = ("ed_1", "ed_2", "fd_1", "fd_2", "acc_1", "acc_2", "train_loss", "wall_s")
    for part in PARTS:
        group = []
        for m in (m for m in run.methods if ARMS[m][0] == part):
            rs = [r for r in rows if r["method"] == m]
            s = {"method": m, "part": part, "runs": len(rs)}
            for k in all_keys:
                s.update({f"{k}_mean": None, f"{k}_std": None, f"{k}_ci": None})
            s.update(mean_ci_fields(rs, KEYS[part] + ("train_loss", "wall_s")))
            s["primary_mean"], s["primary_ci"] = s[f"{PRIMARY[part]}_mean"], s[f"{PRIMARY[part]}_ci"]
            group.append(s)
        if group:
            out += rank_summaries(group, "primary", higher_is_better=False)
    return out


def _cell(key: str, digits: int):
    return lambda s: "—" if s.get(f"{key}_mean") is None else fmt_ci(s[f"{key}_mean"], s[f"{key}_ci"], digits)


def claim_rows(rows: list[dict[str, Any]]) -> list[tuple[str, float, float, int, str]]:
    """Each claim of :data:`CLAIMS` whose arms ran: (claim, mean paired difference worse - better (lower-is-better
    metrics) or better - worse (accuracy), 95% half-width, seeds, SHOWN / NOT SHOWN / REVERSED)."""
    by = {(r["method"], r["seed"]): r for r in rows}
    out = []
    for claim, good, bad, metric, lower in CLAIMS:
        gm, gk = good.split(":") if ":" in good else (good, metric)
        bm, bk = bad.split(":") if ":" in bad else (bad, metric)
        seeds = sorted(s for (m, s) in by if m == gm and (bm, s) in by)
        if not seeds:
            continue
        d = [(by[(bm, s)][bk] - by[(gm, s)][gk]) * (1 if lower else -1) for s in seeds]
        mean, half = mean_ci(d)
        if len(d) < 2 or half != half:
            verdict = "one seed"
        else:
            verdict = "SHOWN" if mean - half > 0 else ("REVERSED" if mean + half < 0 else "NOT SHOWN")
        out.append((claim, mean, half, len(d), verdict))
    return out


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"consistency: 2-D 8-Gaussians (MLP {c.width}x{c.depth}, {c.steps} steps x {c.batch_size}; outliers "
            f"{c.outlier_frac:g} Student-t df {c.outlier_df:g} x {c.outlier_scale:g}) and conditional digits (conv "
            f"{c.digits_channels} ch, {c.digits_steps} steps x {c.digits_batch}); curriculum {c.s0}->{c.s1}, "
            f"sigma_max {c.sigma_max:g}, 2-step at {c.mid_sigma:g}; {c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    rows = run.state.get("rows", [])
    lines = [f"ranked within each part on the 2-step energy distance (2-D) or Frechet distance (digits), lower "
             f"is better; {CI_NOTE}", "claims (paired over seeds; difference > 0 favours the claim):"]
    for claim, mean, half, n, verdict in claim_rows(rows):
        lines.append(f"  {claim}: {mean:+.4f} ± {half:.4f} ({n} seeds) {verdict}")
    return "\n".join(lines)


def _run_one(run: Run, method: str, seed: int, _shared) -> dict[str, Any]:
    row = run_one(run.cfg, method, seed, run.task)
    run.state.setdefault("rows", []).append(row)
    return row


def _json_extra(run: Run, summary: list[dict[str, Any]]) -> dict[str, Any]:
    return {"claims": [dict(zip(("claim", "diff_mean", "diff_ci", "seeds", "verdict"), c))
                       for c in claim_rows(run.state.get("rows", []))]}


STUDY = register_study(Study(
    name="consistency", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("methods", "arm names"), setup=_check, run_one=_run_one, summarize=_summarize,
    title=_title, notes=_notes, json_extra=_json_extra,
    columns=(Column("arm", lambda s: s["method"], "left"), Column("part", lambda s: PARTS[s["part"]], "left"),
             Column("ED 1-step", _cell("ed_1", 4)), Column("ED 2-step", _cell("ed_2", 4)),
             Column("Frechet 1-step", _cell("fd_1", 1)), Column("Frechet 2-step", _cell("fd_2", 1)),
             Column("acc 1-step", _cell("acc_1", 3)), Column("acc 2-step", _cell("acc_2", 3)),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(),
    smoke=("--seeds", "1", "--steps", "20", "--digits-steps", "20", "--methods", "ict,out-cauchy-diff,dig-ict",
           "--eval-samples", "64", "--digits-eval-per-class", "3", "--train-samples", "256"),
))
