"""Study ``ntk``: the empirical NTK of finite ReLU networks around its infinite-width limit, at initialisation and
after training, over widths 64-2048 (issue 21, study 4; "Neural Tangent Kernel: Convergence and Generalization in
Neural Networks", Jacot, Gabriel, Hongler, NeurIPS 2018, Section 6.1 and Fig. 1).

Setting (the paper's Fig. 1): :class:`gradwise.diagnostics.NTKMLP` of depth L = 4 (widths [2, n, n, n, 1]), ReLU,
beta = 0.1, NTK parametrisation (N(0, 1) parameters); the kernel Theta(x0, x) for x0 = (1, 0) and x on
``points`` equally spaced points of the unit circle; training: full-batch gradient descent, learning rate 1.0,
``steps`` steps (paper: 200) on the least-squares cost C = 1/(2N) sum_i (f(x_i) - x_i1 x_i2)^2 over ``train``
random N(0, I_2) inputs (the paper: f*(x) = x1 x2 on random N(0, 1) inputs; its N is not stated). float32.

Per run (one seed: every width, each with its own initialisation): ``spread`` = RMS over the circle of
Theta_0(x0, x) - Theta_inf(x0, x), over Theta_inf(x0, x0) (Theta_inf: :func:`gradwise.diagnostics.limit_ntk_relu`),
averaged over ``draws`` initialisations (the paper plots 10);
``drift`` = RMS over the circle of Theta_T(x0, x) - Theta_0(x0, x), over Theta_inf(x0, x0), after training;
``lin gap``: the linearised network (the kernel held at Theta_0: f <- f - lr/N Theta_0(., X)(f(X) - y), the paper's
kernel gradient descent with the initial NTK) against the trained network on the circle and the training inputs:
RMS of f_T - f_lin over RMS of f_T - f_0 (the share of the function's change the linear model misses).
The claim: spread and drift fall like 1/sqrt(n); per seed the study fits log(metric) = a + s log(n) over the widths
and reports the slope s (mean and interval over seeds); -0.5 is the claim.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "WIDTHS", "run_seed", "slope"]

HELP = ("empirical NTK of depth-4 ReLU nets (NTK parametrisation) on the unit circle over widths 64-2048: spread "
        "around the infinite-width limit and drift in training, ~1/sqrt(width)? (Jacot et al. Fig. 1)")
WIDTHS = ("64", "128", "256", "512", "1024", "2048")
DEPTH = 4
BETA = 0.1
LR = 1.0


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1 (initialisation, training inputs)", at_least=1)
    steps: int = option(200, "gradient-descent steps (learning rate 1.0; the paper's Fig. 1: 200)", at_least=1)
    points: int = option(16, "points on the unit circle where Theta(x0, x) is read", at_least=2)
    train: int = option(8, "training inputs drawn from N(0, I_2), target x1 * x2", at_least=1)
    draws: int = option(4, "initialisations per width and seed whose spread is averaged (the first is trained)",
                        at_least=1)
    threads: int = 1


def _circle(n: int, dtype):
    import torch

    ang = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return torch.stack([ang.cos(), ang.sin()], 1).to(dtype)


def slope(widths, values) -> float:
    """Least-squares slope of log(value) on log(width)."""
    xs, ys = [math.log(w) for w in widths], [math.log(max(v, 1e-300)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")


def run_width(cfg: Config, width: int, seed: int) -> dict[str, Any]:
    import torch

    from gradwise.diagnostics import NTKMLP, empirical_ntk, limit_ntk_relu

    g = torch.Generator().manual_seed(143_000 + 1_000 * seed + width)
    model = NTKMLP([2] + [width] * (DEPTH - 1) + [1], beta=BETA, generator=g)
    circle = _circle(cfg.points, torch.float32)
    x_tr = torch.randn(cfg.train, 2, generator=g)
    y_tr = x_tr[:, 0] * x_tr[:, 1]
    z = torch.cat([circle, x_tr])  # where f and the linear model are compared
    lim = limit_ntk_relu(circle[:1].double(), circle.double(), depth=DEPTH, beta=BETA)[0]
    scale = float(lim[0])
    t0 = time.perf_counter()
    theta0 = empirical_ntk(model, z, mode="trace")  # [P + N, P + N]
    with torch.no_grad():
        f0 = model(z)[:, 0]
    f_lin = f0.clone()
    k_zx = theta0[:, cfg.points:]
    n = cfg.train
    for _ in range(cfg.steps):
        loss = 0.5 * ((model(x_tr)[:, 0] - y_tr) ** 2).mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, gr in zip(model.parameters(), grads):
                p -= LR * gr
            f_lin -= LR / n * (k_zx @ (f_lin[cfg.points:] - y_tr))
    theta_t = empirical_ntk(model, circle[:1], circle, mode="trace")[0]
    with torch.no_grad():
        f_t = model(z)[:, 0]
        train_loss = float(0.5 * ((model(x_tr)[:, 0] - y_tr) ** 2).mean())
    row0 = theta0[0, :cfg.points].double()
    rms = lambda v: float(v.double().pow(2).mean().sqrt())  # noqa: E731
    spreads = [rms(row0 - lim) / scale]
    for _ in range(cfg.draws - 1):  # more initialisations, kernel at x0 only (not trained)
        other = NTKMLP([2] + [width] * (DEPTH - 1) + [1], beta=BETA, generator=g)
        spreads.append(rms(empirical_ntk(other, circle[:1], circle, mode="trace")[0].double() - lim) / scale)
    return {"width": str(width), "seed": seed,
            "spread": sum(spreads) / len(spreads), "drift": rms(theta_t.double() - row0) / scale,
            "lin_gap": rms(f_t - f_lin) / max(rms(f_t - f0), 1e-30), "train_loss": train_loss,
            "theta_x0": float(row0[0]), "limit_x0": scale, "wall_s": time.perf_counter() - t0}


def run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """Every selected width on one seed; each row also carries this seed's fitted slopes (spread, drift)."""
    from gradwise.arena.runner import torch_threads

    with torch_threads(run.cfg.threads):
        rows = [run_width(run.cfg, int(w), seed) for w in run.methods]
    widths = [int(r["width"]) for r in rows]
    for key in ("spread", "drift"):
        s = slope(widths, [r[key] for r in rows]) if len(rows) > 1 else float("nan")
        for r in rows:
            r[f"{key}_slope"] = s
    return rows


SUMMARY_KEYS = ("spread", "drift", "lin_gap", "train_loss", "theta_x0", "spread_slope", "drift_slope", "wall_s")


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"ntk: depth-{DEPTH} ReLU NTKMLP (beta {BETA}), Theta(x0, x) on {c.points} points of the unit circle; "
            f"GD lr {LR} x {c.steps} steps on f* = x1 x2 ({c.train} inputs); spread over {c.draws} draw(s); "
            f"{len(run.seeds)} seed(s)")


def _verdict(name: str, m: float, h: float, n: int) -> str:
    if not math.isfinite(m):
        return f"{name}: no slope (one width)"
    lo, hi = m - h, m + h
    shown = -0.7 <= m <= -0.3 and hi < 0
    return (f"{name} ~ width^s: s = {m:.2f} [{lo:.2f}, {hi:.2f}] over {n} seed(s); claim s = -0.5: "
            f"{'SHOWN' if shown else 'NOT SHOWN'} (criterion: mean in [-0.7, -0.3] and interval below 0)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    lines = [f"spread, drift: RMS over the circle, relative to Theta_inf(x0, x0); lin gap: RMS(f_T - f_lin) / "
             f"RMS(f_T - f_0) on circle + training inputs; ranked on spread; {CI_NOTE}",
             "slope s: per seed, least squares of log(metric) on log(width) over the widths run; mean [95% "
             "interval] over seeds"]
    if summary:
        s = summary[0]
        for key in ("spread", "drift"):
            lines.append(_verdict(key, s[f"{key}_slope_mean"], s[f"{key}_slope_ci"], s["runs"]))
    return "\n".join(lines)


STUDY = register_study(Study(
    name="ntk", help=HELP, description=__doc__, config=Config, methods=lambda: WIDTHS,
    select=Selection("widths", "network widths (hidden units per layer)"),
    run_seed=run_seed, summary_keys=SUMMARY_KEYS, rank_on="spread", higher_is_better=False,
    key="width", name_key="width",
    title=_title, notes=_notes,
    columns=(Column("width", lambda s: s["width"], "left"),
             ci_column("spread", "spread", 4),
             ci_column("drift", "drift", 4),
             ci_column("lin gap", "lin_gap", 3),
             ci_column("train loss", "train_loss", 4),
             ci_column("Theta(x0,x0)", "theta_x0", 3),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(), smoke=("--seeds", "1", "--widths", "64,128", "--steps", "2", "--points", "4", "--train", "2",
                       "--draws", "1"),
))
