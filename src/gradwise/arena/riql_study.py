"""Study ``riql``: IQL and its robust variants on Pendulum-v1 "medium-replay" data, clean and under the
authors' random reward and dynamics corruption (issue 19, study 1; "Towards Robust Offline Reinforcement
Learning under Diverse Data Corruption", Yang et al., ICLR 2024).

Data: :func:`gradwise.rl.data.collect` ``("Pendulum-v1", "medium-replay", n_steps=data_steps, seed=0)``, the
replay buffer of a ``data_steps``-step SAC run (cached; 20k steps took 1,264 s on the loaded 2-core machine
the first time). Each seed corrupts it with :func:`gradwise.rl.corrupt_transitions` (rate ``rate``,
scale 1; the same corrupted data for every variant of a seed): ``reward`` (a picked row's reward becomes
U(-1, 1) x 30) and ``dynamics`` (a picked row's next observation moves by U(-1, 1) x its column's std).

Training: :mod:`gradwise.arena.riql_runs`, the authors' update order on :mod:`gradwise.rl`'s losses; the three
datasets of a (variant, seed) train together as three independent members of one batched model (their own
networks, batches and optimiser state). Evaluation: the final deterministic actor's mean return over
``episodes`` episodes of the clean environment (200 steps each; returns from about -1500 to 0).

Methods (:data:`gradwise.arena.riql_runs.VARIANTS`): ``IQL`` (the authors' IQL.py: twin Q, min, MSE),
``IQL+Huber``, ``IQL+quantile`` (5 critics, 0.25-quantile), ``RIQL`` (5 critics, 0.25-quantile, Huber,
normalised observations).

Claims checked (paired over seeds, 95% t-intervals): (1) IQL degrades most under dynamics corruption: its
clean - dynamics drop is above zero and above its clean - reward drop; (2) RIQL recovers most of the clean
return under dynamics corruption: RIQL - IQL on dynamics-corrupted data is above zero and at least half of
IQL's drop; (3) RIQL does not hurt clean data: the interval of RIQL - IQL on clean data is not all below zero.

The issue's budget (5 seeds x 30k updates) is ``--seeds 5 --steps 30000``; the defaults are smaller so that a
run stays near five minutes on a shared 2-core CPU (docs/study_riql.md gives the measured costs).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STUDY", "METHODS", "CORRUPTIONS", "load_task", "run_one", "claims"]

HELP = ("RIQL vs IQL, +Huber, +quantile on Pendulum medium-replay data, clean and under random reward and "
        "dynamics corruption: return on the clean environment")
METHODS = ("IQL", "IQL+Huber", "IQL+quantile", "RIQL")
CORRUPTIONS = ("clean", "reward", "dynamics")
ENV = "Pendulum-v1"
MAX_ACTION = 2.0
EVAL_SEED = 42  # their eval_seed


@dataclass(frozen=True)
class Config:
    seeds: int = option(2, "seeds 0..N-1 (corruption draws, network init, batches)", at_least=1)
    steps: int = option(1000, "updates per run (the issue's budget: 30000)", at_least=1)
    data_steps: int = option(20_000, "SAC steps whose replay buffer is the dataset (buffers of at most 1000 "
                                     "steps are SAC's uniform-random warm-up: not cached)", at_least=2)
    rate: float = option(0.3, "fraction of rows corrupted", at_least=0.0, below=1.0)
    episodes: int = option(5, "evaluation episodes per run", at_least=1)
    scale: float = 1.0
    hidden: int = 64
    batch_size: int = 256
    lr: float = 3e-4
    threads: int = 1


def load_task(cfg: Config, methods: tuple[str, ...]) -> dict[str, Any]:
    """The clean medium-replay dataset (float32 tensors)."""
    from gradwise.rl.data import collect

    return collect(ENV, "medium-replay", n_steps=cfg.data_steps, seed=0,
                   cache_dir=False if cfg.data_steps <= 1000 else None)


def _member_data(cfg: Config, data: dict[str, Any], seed: int, normalize: bool):
    """The three datasets of a seed (clean, reward-, dynamics-corrupted) stacked ``[3, N, ...]``, actions in
    [-1, 1], observations normalised per dataset when ``normalize``; and each one's mean and std ``[3, obs]``."""
    import torch

    from gradwise.rl import corrupt_transitions, normalize_observations

    sets, means, stds = [], [], []
    for i, kind in enumerate(CORRUPTIONS):
        d = dict(data)
        if kind != "clean":
            g = torch.Generator().manual_seed(213_000 + 10 * seed + i)
            d, _ = corrupt_transitions(d, kind, rate=cfg.rate, scale=cfg.scale, generator=g)
        if normalize:
            d["obs"], d["next_obs"], mean, std = normalize_observations(d["obs"], d["next_obs"])
        else:
            mean, std = torch.zeros(d["obs"].shape[1]), torch.ones(d["obs"].shape[1])
        d["action"] = d["action"] / MAX_ACTION
        sets.append(d)
        means.append(mean)
        stds.append(std)
    stacked = {k: torch.stack([s[k].float() for s in sets]) for k in ("obs", "action", "reward", "next_obs", "done")}
    return stacked, torch.stack(means).float(), torch.stack(stds).float()


def run_one(cfg: Config, data: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    """One variant and seed on the three datasets; the row: each dataset's final clean-environment return."""
    import torch

    from gradwise.arena.riql_runs import VARIANTS, evaluate, make_agent, train_step
    from gradwise.arena.runner import torch_threads

    if method not in VARIANTS:
        raise ValueError(f"Invalid method: {method!r} (accepted: {', '.join(METHODS)})")
    var = VARIANTS[method]
    t0 = time.perf_counter()
    with torch_threads(cfg.threads):
        d, mean, std = _member_data(cfg, data, seed, var.normalize)
        m, n = d["reward"].shape
        torch.manual_seed(seed)
        agent = make_agent(var, d["obs"].shape[-1], d["action"].shape[-1], members=m, hidden=cfg.hidden,
                           lr=cfg.lr, steps=cfg.steps)
        g = torch.Generator().manual_seed(seed)
        rows = torch.arange(m)[:, None]
        for _ in range(cfg.steps):
            idx = torch.randint(0, n, (m, cfg.batch_size), generator=g)
            train_step(agent, d["obs"][rows, idx], d["action"][rows, idx], d["reward"][rows, idx],
                       d["next_obs"][rows, idx], d["done"][rows, idx])
        train_s = time.perf_counter() - t0
        returns = evaluate(agent, ENV, cfg.episodes, EVAL_SEED, MAX_ACTION, mean, std)
    out = {"method": method, "seed": seed, **dict(zip(CORRUPTIONS, returns))}
    out["drop_reward"], out["drop_dynamics"] = out["clean"] - out["reward"], out["clean"] - out["dynamics"]
    out["ms_per_step"] = 1000 * train_s / cfg.steps / m  # per member: one agent's update
    out["wall_s"] = time.perf_counter() - t0
    return out


SUMMARY_KEYS = ("clean", "reward", "dynamics", "drop_reward", "drop_dynamics", "ms_per_step", "wall_s")


def _paired(rows: list[dict[str, Any]], a: str, b: str, key_a: str, key_b: str) -> tuple[float, float] | None:
    """Mean and 95% half-width over seeds of ``rows[a][key_a] - rows[b][key_b]`` (paired by seed)."""
    from gradwise.arena.stats import mean_ci

    by = {(r["method"], r["seed"]): r for r in rows}
    seeds = sorted({s for (m, s) in by if m == a} & {s for (m, s) in by if m == b})
    if not seeds:
        return None
    return mean_ci([by[a, s][key_a] - by[b, s][key_b] for s in seeds])


def claims(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The study's three claims as (claim, SHOWN / NOT SHOWN / NOT RUN, the numbers)."""
    def fmt(x):
        return f"{x[0]:.0f} ± {x[1]:.0f}" if math.isfinite(x[1]) else f"{x[0]:.0f} ± -"

    def lo(x):
        return x[0] - x[1] if math.isfinite(x[1]) else -math.inf

    def hi(x):
        return x[0] + x[1] if math.isfinite(x[1]) else math.inf

    out = []
    drop_dyn = _paired(rows, "IQL", "IQL", "clean", "dynamics")
    dyn_vs_rew = _paired(rows, "IQL", "IQL", "reward", "dynamics")
    if drop_dyn and dyn_vs_rew:
        ok = lo(drop_dyn) > 0 and lo(dyn_vs_rew) > 0
        out.append(("IQL degrades most under dynamics corruption", "SHOWN" if ok else "NOT SHOWN",
                    f"IQL clean - dynamics {fmt(drop_dyn)}; (clean - dynamics) - (clean - reward) "
                    f"{fmt(dyn_vs_rew)}"))
    else:
        out.append(("IQL degrades most under dynamics corruption", "NOT RUN", "needs IQL"))
    gain = _paired(rows, "RIQL", "IQL", "dynamics", "dynamics")
    if gain and drop_dyn:
        ok = lo(gain) > 0 and gain[0] >= 0.5 * drop_dyn[0] > 0
        out.append(("RIQL recovers most of the clean return under dynamics corruption", "SHOWN" if ok else "NOT SHOWN",
                    f"RIQL - IQL on dynamics {fmt(gain)} vs IQL's drop {drop_dyn[0]:.0f}"))
    else:
        out.append(("RIQL recovers most of the clean return under dynamics corruption", "NOT RUN", "needs IQL, RIQL"))
    clean = _paired(rows, "RIQL", "IQL", "clean", "clean")
    if clean:
        out.append(("RIQL does not hurt clean data", "SHOWN" if hi(clean) >= 0 else "NOT SHOWN",
                    f"RIQL - IQL on clean {fmt(clean)}"))
    else:
        out.append(("RIQL does not hurt clean data", "NOT RUN", "needs IQL, RIQL"))
    return out


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gradwise.arena.driver import summarize_rows

    run.state["claims"] = claims(rows)
    return summarize_rows(STUDY, rows, run.methods)


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"riql: {ENV} medium-replay ({c.data_steps:,} SAC steps), clean / reward / dynamics corruption "
            f"(rate {c.rate:g}, scale {c.scale:g}), {c.steps:,} updates x {len(run.seeds)} seed(s); "
            f"return of the final actor on the clean env ({c.episodes} episodes)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    lines = [f"ranked on the return after dynamics corruption; drop = clean - corrupted return of the same seed; "
             f"ms/step: one agent's update (three train batched); {CI_NOTE}; {RANK_NOTE}"]
    lines += [f"claim: {c}: {verdict} ({numbers})" for c, verdict, numbers in run.state.get("claims", ())]
    return "\n".join(lines)


STUDY = register_study(Study(
    name="riql", help=HELP, description=__doc__, config=Config, methods=lambda: METHODS,
    select=Selection("methods", "variant names"), setup=load_task,
    run_one=lambda run, method, seed, _: run_one(run.cfg, run.task, method, seed),
    summary_keys=SUMMARY_KEYS, rank_on="dynamics", summarize=_summarize,
    title=_title, notes=_notes,
    columns=(Column("method", lambda s: s["method"], "left"),
             ci_column("clean", "clean", 0), ci_column("reward corr.", "reward", 0),
             ci_column("dynamics corr.", "dynamics", 0), ci_column("drop: dynamics", "drop_dynamics", 0),
             Column("ms/step", lambda s: f"{s['ms_per_step_mean']:.1f}"),
             Column("s/run", lambda s: f"{s['wall_s_mean']:.0f}")),
    outputs=(), smoke=("--seeds", "1", "--steps", "3", "--data-steps", "300", "--episodes", "1"),
))
