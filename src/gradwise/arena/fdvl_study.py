"""Study ``fdvl``: f-DVL's chi-square and total-variation value losses against XQL's Gumbel loss (f-DVL's
reverse-KL member) over a temperature grid, on a small random MDP with an offline dataset and heavy-tailed
reward noise; counts the runs whose values diverge (non-finite, or beyond ten times the largest possible
return) and measures the value error of the ones that do not.

Task (seeded per run): S states, A actions, each (s, a) moves to one of two random next states; rewards
r(s, a) in [0, 1] plus Student-t noise (2 degrees of freedom, scale ``noise``); no terminal states, discount
0.95. The dataset is ``transitions`` uniformly random transitions. Each method trains, in the authors'
order (``offline/learner.py`` of hari-sikchi/DVL: value, then critic, then Polyak target), a value MLP with
:func:`gradwise.rl.fdvl_value_loss` on the target critic's Q at the dataset actions and a critic MLP with
their Huber (delta 20) TD loss to ``r + 0.95 V(s')``; Adam lr 3e-4, batch 256. The value error is the mean
|V(s) - V*(s)| against value iteration on the true MDP (every action is in the data, so the implicit
maximum is the optimal value).

Methods: ``<f>@<temperature>`` for f in chi2, tv, kl and the temperatures in ``TEMPERATURES``.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE
from gradwise.arena.study import Column, Run, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "CONFIG", "METHODS", "STUDY", "run_one", "make_mdp", "optimal_values"]

HELP = "f-DVL chi-square / TV value losses vs XQL's Gumbel loss: divergence over a temperature grid"
TEMPERATURES = (0.3, 1.0, 3.0)
METHODS = tuple(f"{f}@{t:g}" for f in ("chi2", "tv", "kl") for t in TEMPERATURES)


@dataclass(frozen=True)
class Config:
    states: int = 20
    actions: int = 4
    transitions: int = 5000
    noise: float = option(1.0, "scale of the Student-t (df 2) reward noise", at_least=0.0)
    discount: float = 0.95
    hidden: int = 64
    batch_size: int = 256
    steps: int = option(3000, "updates per run", at_least=1)
    lr: float = 3e-4
    tau: float = 0.005
    seeds: int = option(2, "seeds 0..N-1", at_least=1)
    threads: int = 1


CONFIG = Config()


def make_mdp(cfg: Config, seed: int):
    """Next-state table [S, A], mean rewards [S, A] and an offline dataset (s, a, r, s') of the run's MDP."""
    import torch

    g = torch.Generator().manual_seed(40_000 + seed)
    s_n, a_n = cfg.states, cfg.actions
    options = torch.randint(0, s_n, (s_n, a_n, 2), generator=g)
    mean_r = torch.rand(s_n, a_n, generator=g, dtype=torch.float64)
    s = torch.randint(0, s_n, (cfg.transitions,), generator=g)
    a = torch.randint(0, a_n, (cfg.transitions,), generator=g)
    branch = torch.randint(0, 2, (cfg.transitions,), generator=g)
    s2 = options[s, a, branch]
    t = torch.distributions.StudentT(2.0).sample((cfg.transitions,)) if cfg.noise > 0 else torch.zeros(cfg.transitions)
    r = mean_r[s, a] + cfg.noise * t.to(torch.float64)
    return options, mean_r, (s, a, r, s2)


def optimal_values(options, mean_r, discount: float, iters: int = 3000):
    """Value iteration on the true MDP (each branch with probability 1/2)."""
    import torch

    v = torch.zeros(options.shape[0], dtype=torch.float64)
    for _ in range(iters):
        v = (mean_r + discount * v[options].mean(-1)).amax(1)
    return v


def run_one(cfg: Config, method: str, seed: int) -> dict[str, Any]:
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    from gradwise.rl import fdvl_value_loss

    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    f, temperature = method.split("@")[0], float(method.split("@")[1])
    options, mean_r, (s, a, r, s2) = make_mdp(cfg, seed)
    v_star = optimal_values(options, mean_r, cfg.discount)
    eye = torch.eye(cfg.states)
    torch.manual_seed(seed)

    def net(out):
        return nn.Sequential(nn.Linear(cfg.states, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden),
                             nn.ReLU(), nn.Linear(cfg.hidden, out))

    critic, value = net(cfg.actions), net(1)
    target = copy.deepcopy(critic)
    opt_q, opt_v = (torch.optim.Adam(m.parameters(), lr=cfg.lr) for m in (critic, value))
    gen = torch.Generator().manual_seed(seed)
    limit = 10.0 / (1.0 - cfg.discount) * max(1.0, float(r.abs().max()))
    diverged_at = None
    for step in range(cfg.steps):
        idx = torch.randint(0, cfg.transitions, (cfg.batch_size,), generator=gen)
        xs, xs2, ab, rb = eye[s[idx]], eye[s2[idx]], a[idx], r[idx].float()
        with torch.no_grad():
            q_t = target(xs).gather(1, ab[:, None]).squeeze(1)
        v_loss = fdvl_value_loss(q_t, value(xs).squeeze(1), f=f, temperature=temperature)
        opt_v.zero_grad()
        v_loss.backward()
        opt_v.step()
        with torch.no_grad():
            y = rb + cfg.discount * value(xs2).squeeze(1)
        q_loss = F.huber_loss(critic(xs).gather(1, ab[:, None]).squeeze(1), y, delta=20.0)
        opt_q.zero_grad()
        q_loss.backward()
        opt_q.step()
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), critic.parameters()):
                p_t.lerp_(p, cfg.tau)
            v_all = value(eye).squeeze(1)
        if not (torch.isfinite(v_all).all() and torch.isfinite(q_loss) and v_all.abs().max() <= limit):
            diverged_at = step
            break
    v_err = float((v_all.double() - v_star).abs().mean()) if diverged_at is None else math.nan
    return {"method": method, "f": f, "temperature": temperature, "seed": seed,
            "diverged": 0.0 if diverged_at is None else 1.0,
            "diverged_at": -1 if diverged_at is None else diverged_at,
            "v_error": v_err, "v_star_mean": float(v_star.mean()),
            "v_mean": float(v_all.double().mean()) if diverged_at is None else math.nan,
            "wall_s": time.perf_counter() - t0}


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.stats import mean_ci

    out = []
    for m in run.methods:
        rs = [x for x in rows if x["method"] == m]
        if not rs:
            continue
        ok = [x["v_error"] for x in rs if x["diverged"] == 0.0]
        err = mean_ci(ok) if ok else (math.nan, math.nan)
        out.append({"method": m, "runs": len(rs), "diverged": sum(x["diverged"] for x in rs),
                    "v_error_mean": err[0], "v_error_ci": err[1],
                    "v_mean": statistics.fmean([x["v_mean"] for x in rs if x["diverged"] == 0.0]) if ok else math.nan,
                    "wall_s_mean": statistics.fmean(x["wall_s"] for x in rs)})
    order = sorted(out, key=lambda x: (x["diverged"], math.inf if math.isnan(x["v_error_mean"]) else
                                       x["v_error_mean"]))
    for i, x in enumerate(order):  # plain positions: the divergence count comes first, no interval ties
        x["rank"], x["tied"] = i + 1, False
    return order


def _title(run: Run, rows: list[dict[str, Any]]) -> str:
    cfg = run.cfg
    return (f"fdvl: value losses on a random MDP ({cfg.states} states x {cfg.actions} actions, "
            f"{cfg.transitions} random transitions, Student-t reward noise x{cfg.noise:g}), {cfg.steps} updates, "
            f"{cfg.seeds} seed(s); V* mean {rows[0]['v_star_mean']:.1f}")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    return ("ranked on diverged runs (fewest first), then value error |V - V*| of the runs that did not "
            f"diverge; {CI_NOTE}; diverged: non-finite or |V| beyond 10 x max|r| / (1 - discount)")


def _fmt(x: float, d: int = 2) -> str:
    return "-" if x != x else f"{x:.{d}f}"


STUDY = register_study(Study(
    name="fdvl", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    run_one=lambda run, method, seed, _: run_one(run.cfg, method, seed),
    summarize=_summarize, title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             Column("diverged", lambda s: f"{int(s['diverged'])}/{s['runs']}"),
             Column("|V - V*|", lambda s: _fmt(s["v_error_mean"]) + ("" if s["v_error_ci"] != s["v_error_ci"]
                                                                     else f" ± {s['v_error_ci']:.2f}")),
             Column("mean V", lambda s: _fmt(s["v_mean"], 1)),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.1f}")),
    outputs=(), smoke=("--seeds", "1", "--steps", "5"),
))
add_arguments, run = STUDY.add_arguments, STUDY.run
