"""Study ``adaptive-smoothing``: a standard and a PGD-trained digits MLP mixed by their output probabilities with
a fixed alpha (Bai et al., arXiv:2301.12554, :func:`gradwise.robustness.mix_log_probs`) or with a trained mixing
network (:class:`gradwise.robustness.AdaptiveSmoothing`), clean and PGD accuracy of each.

Task: scikit-learn's 8x8 digits, pixels in [0, 1] (1,347 training, 450 test images). Per seed: a ReLU MLP
(64-128-128-10, Adam) trained on clean images (``std``, alpha = 0) and one trained on L-inf PGD examples only
(``rob``, alpha = 1; Madry et al.); the fixed mixtures ``alpha-A``; ``adaptive``: a mixing MLP on (x, both models'
logits) trained with the authors' composite loss on clean (is_adv 0, weight 2) and attacked (is_adv 1, weight 1)
copies of each batch, the attack run through the whole mixture (their trainer's adaptive attack). Every model is
evaluated against L-inf PGD (``pgd_steps`` steps of 2.5 eps / steps, random start, [0, 1] clamp) through the whole
model: both base models and, for ``adaptive``, the mixing network (:func:`gradwise.losses.pgd_attack`).

Claims (issue 21): (1) some mixture beats both ends; (2) the adaptive mixture beats every fixed alpha. Measured on
the trade-off score = (clean accuracy + PGD accuracy) / 2, as paired differences over seeds (notes under the table).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, mean_ci, mean_ci_fields, rank_summaries
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "METHODS", "ALPHAS", "STUDY", "claims"]

HELP = "standard + PGD-trained digits MLPs mixed at fixed alpha or by a mixing network: clean vs PGD accuracy"
ALPHAS = {"std": 0.0, "alpha-0.5": 0.5, "alpha-0.7": 0.7, "alpha-0.8": 0.8, "alpha-0.9": 0.9, "rob": 1.0}
METHODS = (*ALPHAS, "adaptive")


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    eps: float = option(0.2, "L-inf radius of the attacks (pixels in [0, 1])", at_least=1e-6, below=1.0)
    epochs: int = option(20, "epochs of each base model", at_least=1)
    mix_epochs: int = option(15, "epochs of the mixing network", at_least=1)
    pgd_steps: int = option(20, "PGD steps of the evaluation attack", at_least=1)
    train_pgd_steps: int = option(5, "PGD steps of the training attacks (robust model, mixing network)", at_least=1)
    alpha_min: float = option(0.0, "adaptive: the lowest alpha at test time (alpha range [alpha_min, 1]: their "
                              "alpha_bias, alpha_scale = 1 - alpha_min)", at_least=0.0, below=1.0)
    gamma_scale: float = 2.0       # the mixing network's gamma scale (their trainer: 2 while training)
    hidden: int = 128
    lr: float = 1e-3
    batch_size: int = 64
    split_seed: int = 0
    threads: int = 1


def _setup(cfg: Config, methods: tuple[str, ...]) -> Any:
    from gradwise.arena.adaptive_smoothing_runs import load_digits01

    return load_digits01(cfg.split_seed)


def _run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    from gradwise.arena.adaptive_smoothing_runs import run_seed

    rows = run_seed(run.task, run.cfg, run.methods, ALPHAS, seed)
    run.state.setdefault("rows", []).extend(rows)
    return rows


KEYS = ("clean_acc", "pgd_acc", "score", "alpha_clean", "alpha_pgd", "wall_s")


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in run.methods:
        mine = [r for r in rows if r["method"] == m]
        out.append({"method": m, "runs": len(mine), **mean_ci_fields(mine, KEYS)})
    return rank_summaries(out, "score")


def claims(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The two claims as paired per-seed differences of the score (mean, 95% half-width, SHOWN when the interval
    lies above 0). (1) the interior alpha with the best mean score minus the better end of that seed (the best
    alpha is picked on the same seeds: optimistic); (2) ``adaptive`` minus the best fixed alpha of that seed, ends
    included."""
    by = {(r["method"], r["seed"]): r["score"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out: dict[str, Any] = {}
    interior = [m for m in ALPHAS if 0 < ALPHAS[m] < 1 and all((m, s) in by for s in seeds)]
    ends = [m for m in ("std", "rob") if all((m, s) in by for s in seeds)]
    if interior and ends:
        best = max(interior, key=lambda m: sum(by[m, s] for s in seeds))
        d = [by[best, s] - max(by[e, s] for e in ends) for s in seeds]
        out["mixture_vs_ends"] = (best, *mean_ci(d))
    fixed = [m for m in ALPHAS if all((m, s) in by for s in seeds)]
    if fixed and all(("adaptive", s) in by for s in seeds):
        d = [by["adaptive", s] - max(by[m, s] for m in fixed) for s in seeds]
        out["adaptive_vs_fixed"] = (*mean_ci(d),)
    return out


def _verdict(mean: float, half: float) -> str:
    shown = math.isfinite(half) and mean - half > 0
    return f"{mean:+.3f} ± {half:.3f} -> {'SHOWN' if shown else 'NOT SHOWN'}" if math.isfinite(half) else \
        f"{mean:+.3f} (one seed: no interval) -> NOT SHOWN"


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    c = claims(run.state.get("rows", []))
    parts = ["score = (clean acc + PGD acc) / 2, ranked on it; alpha: mean mixing weight of the robust model on "
             "clean / attacked test images"]
    if "mixture_vs_ends" in c:
        best, m, h = c["mixture_vs_ends"]
        parts.append(f"claim 1, a mixture beats both ends: score({best}) - max(score(std), score(rob)), paired over "
                     f"seeds: {_verdict(m, h)} (alpha picked on the same seeds)")
    if "adaptive_vs_fixed" in c:
        m, h = c["adaptive_vs_fixed"]
        parts.append(f"claim 2, adaptive beats fixed alpha: score(adaptive) - the seed's best fixed-alpha score: "
                     f"{_verdict(m, h)}")
    return "; ".join(parts + [CI_NOTE, RANK_NOTE])


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    c = run.cfg
    return (f"adaptive-smoothing: digits MLPs, L-inf eps {c.eps:g} PGD-{c.pgd_steps} through the whole model; base "
            f"models {c.epochs} epochs (robust: PGD-{c.train_pgd_steps} training), mixing network {c.mix_epochs} "
            f"epochs, test-time alpha in [{c.alpha_min:g}, 1]; {c.seeds} seed(s)")


COLUMNS = (
    Column("method", lambda s: s["method"], "left"),
    ci_column("clean acc %", "clean_acc", 1, 100.0),
    ci_column("PGD acc %", "pgd_acc", 1, 100.0),
    ci_column("score %", "score", 1, 100.0),
    Column("alpha clean / PGD", lambda s: f"{s['alpha_clean_mean']:.2f} / {s['alpha_pgd_mean']:.2f}"),
    Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}"),
)

STUDY = register_study(Study(
    name="adaptive-smoothing", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    setup=_setup, run_seed=_run_seed, summarize=_summarize, title=_title, notes=_notes, columns=COLUMNS,
    outputs=(),
    smoke=("--seeds", "1", "--epochs", "1", "--mix-epochs", "1", "--pgd-steps", "2", "--train-pgd-steps", "1"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
