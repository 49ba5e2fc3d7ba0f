"""Study ``node-reg``: neural-ODE classifiers on 2-D spirals and circles trained with no regulariser, the global
solver-heuristic regularisers R_E and R_S (Pal et al. 2021, seed 234) and the local ones, unbiased and biased
(Pal et al. 2023, seed 242); reports test accuracy, the test solve's NFE and training cost.

Task (seeded per run): 2-D points of two classes, ``spirals`` (two interleaved arms, one turn) or ``circles``
(radii 0.5 and 1), Gaussian noise; ``train`` points to train on, as many to test. Model: the point padded
with ``aug`` zeros (ANODE's augmentation) flows through ``dy/dt = MLP(y)`` (two softplus layers) from t = 0
to 1 with :func:`gradwise.sciml.solve_ode` (tsit5, rtol 1e-3, atol 1e-6, discrete adjoint), then a linear
head; cross-entropy plus ``lambda * reg``; Adam. Test: one solve of the whole test set without regulariser
(its NFE is the prediction cost; every method's test solve uses the same solver and tolerances).

Methods: ``<dataset>/<mode>`` for dataset in spirals, circles and mode in none, error (R_E), stiffness (R_S),
local, local-biased. Each regulariser has its own weight (``--lam-error``, ``--lam-stiffness``,
``--lam-local``): R_E sums EEst |h| over every step, the local term is one step's EEst * h, R_S sums
eigenvalue estimates, so one weight cannot fit all three.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Study, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "run_one", "make_data"]

HELP = "Neural-ODE solver-heuristic regularisers (R_E, R_S, local): test NFE at equal accuracy"
DATASETS = ("spirals", "circles")
MODES = ("none", "error", "stiffness", "local", "local-biased")
METHODS = tuple(f"{d}/{m}" for d in DATASETS for m in MODES)


@dataclass(frozen=True)
class Config:
    train: int = 512
    noise: float = 0.1
    aug: int = 2
    hidden: int = 32
    batch_size: int = 128
    steps: int = option(200, "training steps per run", at_least=1)
    lr: float = 1e-2
    lam_error: float = option(0.1, "weight of R_E", at_least=0.0)
    lam_stiffness: float = option(0.001, "weight of R_S", at_least=0.0)
    lam_local: float = option(1.0, "weight of the local term (one step's EEst * h)", at_least=0.0)
    rtol: float = 1e-3
    atol: float = 1e-6
    seeds: int = option(3, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()


def make_data(name: str, n: int, noise: float, gen):
    """``n`` points [n, 2] and labels [n] of ``spirals`` or ``circles``."""
    import torch

    lab = torch.randint(0, 2, (n,), generator=gen)
    if name == "spirals":
        s = torch.sqrt(torch.rand(n, generator=gen)) * 2 * math.pi
        r = s / math.pi + 0.2
        ang = s + lab * math.pi
    else:
        r = torch.where(lab == 1, 0.5, 1.0)
        ang = torch.rand(n, generator=gen) * 2 * math.pi
    x = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1)
    return x + noise * torch.randn(n, 2, generator=gen), lab


def run_one(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import torch
    from torch import nn

    from gradwise.sciml import solve_ode

    if method not in METHODS:
        raise ValueError(f"Invalid method: {method!r} (accepted: one of {METHODS})")
    torch.set_num_threads(cfg.threads)
    dataset, mode = method.split("/")
    gen = torch.Generator().manual_seed(50_000 + seed + (0 if dataset == "spirals" else 1000))
    xtr, ytr = make_data(dataset, cfg.train, cfg.noise, gen)
    xte, yte = make_data(dataset, cfg.train, cfg.noise, gen)
    torch.manual_seed(seed)
    d = 2 + cfg.aug
    field = nn.Sequential(nn.Linear(d, cfg.hidden), nn.Softplus(), nn.Linear(cfg.hidden, cfg.hidden), nn.Softplus(),
                          nn.Linear(cfg.hidden, d))
    head = nn.Linear(d, 2)
    opt = torch.optim.Adam([*field.parameters(), *head.parameters()], lr=cfg.lr)
    t = torch.tensor([0.0, 1.0])
    lam = {"none": 0.0, "error": cfg.lam_error, "stiffness": cfg.lam_stiffness, "local": cfg.lam_local,
           "local-biased": cfg.lam_local}[mode]
    reg_mode = None if mode == "none" else mode

    def f(s, y):
        return field(y)

    def pad(x):
        return torch.cat([x, x.new_zeros(x.shape[0], cfg.aug)], 1)

    batches = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    nfe_train = 0
    for _ in range(cfg.steps):
        idx = torch.randint(0, cfg.train, (cfg.batch_size,), generator=batches)
        sol = solve_ode(f, pad(xtr[idx]), t, rtol=cfg.rtol, atol=cfg.atol, regularize=reg_mode, generator=batches)
        loss = nn.functional.cross_entropy(head(sol.ys[-1]), ytr[idx])
        if reg_mode is not None:
            loss = loss + lam * sol.reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        nfe_train += sol.nfe
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        t1 = time.perf_counter()
        sol = solve_ode(f, pad(xte), t, rtol=cfg.rtol, atol=cfg.atol)
        predict_ms = (time.perf_counter() - t1) * 1e3
        acc = float((head(sol.ys[-1]).argmax(1) == yte).float().mean())
    return {"method": method, "dataset": dataset, "mode": mode, "seed": seed, "test_acc": acc,
            "test_nfe": float(sol.nfe), "predict_ms": predict_ms, "train_nfe_per_step": nfe_train / cfg.steps,
            "train_s": train_s}


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci

    base = {(x["dataset"], x["seed"]): x for x in rows if x["mode"] == "none"}
    out = []
    for m in run.methods:
        rs = [x for x in rows if x["method"] == m]
        if not rs:
            continue
        row: dict[str, Any] = {"method": m, "runs": len(rs)}
        for key in ("test_acc", "test_nfe", "train_nfe_per_step", "train_s"):
            row[key + "_mean"], row[key + "_ci"] = mean_ci([x[key] for x in rs])
        ratios = [x["test_nfe"] / base[(x["dataset"], x["seed"])]["test_nfe"] for x in rs
                  if (x["dataset"], x["seed"]) in base]
        row["nfe_ratio_mean"], row["nfe_ratio_ci"] = mean_ci(ratios) if ratios else (math.nan, math.nan)
        tr = [x["train_s"] / base[(x["dataset"], x["seed"])]["train_s"] for x in rs
              if (x["dataset"], x["seed"]) in base]
        row["train_ratio_mean"] = statistics.fmean(tr) if tr else math.nan
        out.append(row)
    for i, x in enumerate(out):  # table order = method order (dataset, then mode); no ranking across datasets
        x["rank"], x["tied"] = i + 1, False
    return out


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"node-reg: neural-ODE classifiers (MLP {2 + cfg.aug}-{cfg.hidden}-{cfg.hidden}-{2 + cfg.aug}, tsit5 "
            f"rtol {cfg.rtol:g}), {cfg.steps} steps, {cfg.seeds} seed(s); lambda E {cfg.lam_error:g}, "
            f"S {cfg.lam_stiffness:g}, local {cfg.lam_local:g}")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("rows in method order, not ranked; acc, NFE: test accuracy and the test solve's NFE; train NFE: per "
            "training step (the local step's included); NFE x = test NFE / the unregularised run's on the same dataset "
            f"and seed; train x = training wall time / the unregularised run's; {CI_NOTE}")


def _ci(s, key: str, d: int) -> str:
    m, c = s[key + "_mean"], s[key + "_ci"]
    if m != m:
        return "-"
    return f"{m:.{d}f}" + ("" if not math.isfinite(c) else f" ± {c:.{d}f}")


STUDY = register_study(Study(
    name="node-reg", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    run_one=lambda run, method, seed, _: run_one(run.cfg, method, seed),
    summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             Column("acc", lambda s: _ci(s, "test_acc", 3)),
             Column("NFE", lambda s: _ci(s, "test_nfe", 1)),
             Column("NFE x", lambda s: _ci(s, "nfe_ratio", 2)),
             Column("train NFE", lambda s: _ci(s, "train_nfe_per_step", 1)),
             Column("train s", lambda s: _ci(s, "train_s", 1)),
             Column("train x", lambda s: "-" if s["train_ratio_mean"] != s["train_ratio_mean"]
                    else f"{s['train_ratio_mean']:.2f}")),
    outputs=(), smoke=("--seeds", "1", "--steps", "2"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
