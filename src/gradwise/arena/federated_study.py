"""Study ``federated``: FedAvg against the seed strategies under label skew and unknown participation.

Flower's Simulation Engine (flwr 1.42, Message API, Ray backend; :func:`gradwise.federated.run_digits_simulation`)
runs ``clients`` simulated clients on scikit-learn's digits (1,347 training images split among them by
:func:`~gradwise.federated.partition.dirichlet_partition`, 450 test images held by the server), each round
training the MLP 64-32-10 for ``local_epochs`` of local SGD (``lr``, batch 32) on its share, for ``rounds``
rounds from the same initial model. Settings, each over the same seeds:

* label skew: Dirichlet ``alpha_strong`` (0.1: most clients hold one to four classes) and ``alpha_mild``
  (1.0);
* participation: ``full`` (every client every round) and ``unknown``: client ``n`` takes part in a round
  with its own probability ``p_n``, which no strategy is told, drawn as FedAU's experiments draw it
  (:func:`~gradwise.federated.participation.label_participation_probabilities`: a
  Dirichlet(``participation_alpha``) multiplier per class, so that the clients holding the favoured classes show up often and the others rarely, down to
  ``participation_min``; mean about ``participation_mean``), fixed per seed; the draws of a round are the
  same for every method (:func:`~gradwise.federated.participation.with_participation`).

Methods (:data:`STRATEGIES`, name -> factory; each with its defaults, ``fraction_train=1.0`` so that
participation is the environment's, no client-side evaluation): ``FedAvg`` (Flower's, weighting by
examples), ``FedAU`` (its online participation-interval weights), ``FedLD`` (margin-control loss and
principal-gradient aggregation), ``FedSpeed`` (prox-correction with ascent-perturbed local gradients),
``FedHyper`` (hypergradient global and local learning rates), ``FedFix`` (asynchronous clients on a
virtual clock, the authors' F-80 speeds; a round is one window of half the slowest client's time, so the slow
clients are aggregated every other round, with weights ``ceil(tau / delta)``), ``FedLEx`` (an exploration
round builds the guidance matrix that scales the clients' later gradients) and ``FL-curriculum`` (the
federated curriculum: clients train on loss-ordered data grown by a linear pacing, and the server trains the
easiest clients first). Every method in every setting of one seed
runs in the same simulation, one after another (one Ray start, which costs seconds; the clients are told
the split to train on per strategy).

Reported: the global model's test accuracy after the last round per setting (mean and 95% interval over
seeds) and its mean over the four settings (the rank), the first round at which it reaches ``target`` (mean
over the seeds that did), the paired gain over FedAvg per setting (in the notes), and the accuracy after
every round (the plot). FedAU's claim is a better model than FedAvg's under unknown heterogeneous
participation; FedLD's, FedSpeed's and FedHyper's, a better one under label skew.

Runs are repeatable for a seed: the clients' minibatches are seeded by (seed, round, partition), and the
server app orders nodes by partition (Flower draws node ids at random and returns replies as they
arrive; :func:`~gradwise.federated.simulation.digits_server_app`). Under ``--ray`` each seed's task runs its
simulation in a Python process of its own, with its own local Ray, and gives the serial rows.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradwise.arena.stats import CI_NOTE, RANK_NOTE, fmt_ci, mean_ci
from gradwise.arena.study import Column, Run, Selection, Study, ci_column, option, register_study

__all__ = ["HELP", "Config", "STRATEGIES", "PARTICIPATION", "SKEWS", "StrategyFactory", "fedavg_kwargs",
           "setting_keys", "participation_probabilities", "run_seed", "STUDY"]

HELP = ("digits on Flower's Simulation Engine: FedAvg vs FedAU, FedLD, FedSpeed, FedHyper, FedFix, FedLEx and "
        "the federated curriculum under label skew and unknown participation")


@dataclass(frozen=True)
class Config:
    seeds: int = option(3, "seeds 0..N-1 (data split, model init, participation)", at_least=1)
    clients: int = option(10, "simulated clients", at_least=2)
    rounds: int = option(15, "federated rounds", at_least=1)
    alpha_strong: float = option(0.1, "Dirichlet alpha of the strong label skew", at_least=1e-3)
    alpha_mild: float = option(1.0, "Dirichlet alpha of the mild label skew", at_least=1e-3)
    participation_mean: float = option(0.3, "unknown participation: mean probability (FedAU's rule)",
                                       at_least=0.01, below=1.0001)
    participation_min: float = option(0.05, "unknown participation: the rarest clients' probability",
                                      at_least=0.0, below=1.0001)
    participation_alpha: float = option(0.1, "unknown participation: Dirichlet alpha of the per-class "
                                        "multipliers", at_least=1e-3)
    lr: float = option(0.1, "clients' local SGD learning rate", at_least=1e-6)
    local_epochs: int = option(2, "local epochs per round", at_least=1)
    target: float = option(0.8, "test accuracy whose first round is reported", at_least=0.0, below=1.0)
    batch_size: int = 32
    hidden: int = 32
    threads: int = 1
    sim_cpus: int = 2  # the simulation's Ray: clients trained at once (results do not depend on it)


# A strategy factory: (config, FedAvg keyword arguments every method gets) -> a Flower (Message API) strategy.
StrategyFactory = Callable[[Config, dict[str, Any]], Any]


def fedavg_kwargs(cfg: Config) -> dict[str, Any]:
    """What every strategy gets: all clients asked each round (participation is the environment's), no
    client-side evaluation, start once every client is connected, aggregate whatever replies came."""
    return {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_available_nodes": cfg.clients,
            "min_train_nodes": 1}


def _fedavg(cfg: Config, kw: dict[str, Any]) -> Any:
    from flwr.serverapp.strategy import FedAvg

    return FedAvg(**kw)


def _fedau(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedau_strategy

    return fedau_strategy(**kw)


def _fedld(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedld_strategy

    return fedld_strategy(**kw)


def _fedspeed(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedspeed_strategy

    return fedspeed_strategy(**kw)


def _fedhyper(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedhyper_strategy

    return fedhyper_strategy(**kw)


def _fedfix(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedfix_strategy, linear_compute_times

    # the authors' F-80 speeds (client times 1.0 down to 0.2) and a window of half the slowest time: a
    # round is one window, so the slow half of the clients is aggregated every other round
    return fedfix_strategy(delta=0.5, compute_times=linear_compute_times(cfg.clients, 80.0), **kw)


def _fedlex(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import fedlex_strategy

    return fedlex_strategy(**kw)


def _curriculum(cfg: Config, kw: dict[str, Any]) -> Any:
    from gradwise.federated import curriculum_strategy

    # every client may take part each round (as for the others); the client curriculum then decides
    # which of them train: the easiest 40% first, all of them from 20% of the run on (authors' defaults)
    return curriculum_strategy(clients_per_round=cfg.clients, **kw)


# The methods, in the leaderboard's default order: a new strategy is one entry here.
STRATEGIES: dict[str, StrategyFactory] = {
    "FedAvg": _fedavg, "FedAU": _fedau, "FedLD": _fedld, "FedSpeed": _fedspeed, "FedHyper": _fedhyper,
    "FedFix": _fedfix, "FedLEx": _fedlex, "FL-curriculum": _curriculum,
}
SKEWS = ("strong", "mild")
PARTICIPATION = ("full", "unknown")


def setting_keys() -> list[str]:
    """``strong-full``, ``strong-unknown``, ``mild-full``, ``mild-unknown``: the suffixes of a row's keys."""
    return [f"{skew}-{part}" for skew in SKEWS for part in PARTICIPATION]


def _alpha(cfg: Config, skew: str) -> float:
    return cfg.alpha_strong if skew == "strong" else cfg.alpha_mild


@functools.lru_cache(maxsize=8)
def _label_fractions(clients: int, alpha: float, seed: int):
    import numpy as np

    from gradwise.federated.digits import DigitsTask

    task = DigitsTask(clients, alpha, seed)
    y = task.y_train.numpy()
    counts = np.stack([np.bincount(y[p], minlength=10) for p in task.parts]).astype(np.float64)
    fractions = counts / counts.sum(1, keepdims=True)
    fractions.flags.writeable = False  # shared by the cache
    return fractions


def participation_probabilities(cfg: Config, alpha: float, seed: int):
    """The clients' unknown participation probabilities for ``seed`` (in partition order): FedAU's rule on
    the label fractions of the seed's Dirichlet(``alpha``) split."""
    from gradwise.federated.participation import label_participation_probabilities

    return label_participation_probabilities(_label_fractions(cfg.clients, alpha, seed), cfg.participation_mean,
                                             cfg.participation_min, cfg.participation_alpha, seed)


def _first_at(curve: list[float], target: float) -> int | None:
    return next((r for r, a in enumerate(curve) if r > 0 and a >= target), None)


def _ray_running() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _run_seed_in_subprocess(run: Run, seed: int) -> list[dict[str, Any]]:
    """:func:`run_seed` in a fresh Python process with its own local Ray. Inside a Ray task (``--ray``) Flower
    would put its client actors on the task's cluster, whose CPUs the study's tasks hold (a deadlock), and
    shut that Ray down at the end; a process of its own does neither. The rows are the same."""
    import dataclasses
    import json
    import os
    import subprocess
    import sys
    import tempfile

    # a Ray worker's environment names its cluster (RAY_ADDRESS, RAY_RAYLET_PID, ...): with it, the new Ray's
    # raylet fails at start ("WaitForDashboardAgentPorts"), so the process gets none of it
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONBREAKPOINT"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        job = {"config": dataclasses.asdict(run.cfg), "methods": list(run.methods), "seed": seed, "out": path}
        code = "import sys; from gradwise.arena.federated_study import _subprocess_main; _subprocess_main(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", code, json.dumps(job)], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the simulation of seed {seed} failed in its process:\n{done.stderr[-4000:]}")
        with open(path) as f:
            got = json.load(f)
    for key, value in got["state"].items():
        run.state.setdefault(key, {}).update(value)
    return got["rows"]


def _subprocess_main(job_json: str) -> None:
    import json

    job = json.loads(job_json)
    run = Run(cfg=Config(**job["config"]), task=None, methods=tuple(job["methods"]), seeds=(job["seed"],))
    rows = run_seed(run, job["seed"])
    with open(job["out"], "w") as f:
        json.dump({"rows": rows, "state": run.state}, f)


def run_seed(run: Run, seed: int) -> list[dict[str, Any]]:
    """Every method in every setting for ``seed``, in one simulation (one Ray start): each method under
    both label skews and both participations, one after another; one row per method. Where Ray is already
    running in this process (a ``--ray`` task), the simulation runs in a process of its own."""
    import numpy as np

    if _ray_running():
        return _run_seed_in_subprocess(run, seed)
    from gradwise.federated import run_digits_simulation, with_participation

    cfg = run.cfg
    rows = {m: {"method": m, "seed": seed} for m in run.methods}
    strategies, alphas = {}, {}
    for skew in SKEWS:
        alpha = _alpha(cfg, skew)
        probs = {"full": np.ones(cfg.clients), "unknown": participation_probabilities(cfg, alpha, seed)}
        run.state.setdefault("participation", {})[f"{skew} seed {seed}"] = [float(p) for p in probs["unknown"]]
        for part in PARTICIPATION:
            for m in run.methods:
                name = f"{m}/{skew}-{part}"
                strategies[name] = with_participation(STRATEGIES[m](cfg, fedavg_kwargs(cfg)), probs[part], seed=seed)
                alphas[name] = alpha
    t0 = time.perf_counter()
    runs = run_digits_simulation(strategies, num_clients=cfg.clients, num_rounds=cfg.rounds, alpha=cfg.alpha_strong,
                                 seed=seed, lr=cfg.lr, local_epochs=cfg.local_epochs, batch_size=cfg.batch_size,
                                 hidden=cfg.hidden, num_cpus=cfg.sim_cpus, alphas=alphas)
    wall = time.perf_counter() - t0
    for name, fed in runs.items():
        m, key = name.split("/")
        rows[m][f"acc_{key}"] = fed.accuracy[-1]
        rows[m][f"round_{key}"] = _first_at(fed.accuracy, cfg.target)
        rows[m][f"curve_{key}"] = list(fed.accuracy)
    for row in rows.values():
        row["acc_avg"] = float(np.mean([row[f"acc_{k}"] for k in setting_keys()]))
        row["wall_s"] = wall / len(rows)  # the simulation's time (Ray's start included), shared equally
    return list(rows.values())


def _summarize(run: Run, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The driver's summary plus, per setting, the rounds to target (over the seeds that reached it) and
    the paired gain over FedAvg (mean and 95% interval over seeds)."""
    from gradwise.arena.driver import summarize_rows

    keys = ("acc_avg", *(f"acc_{k}" for k in setting_keys()), "wall_s")
    out = summarize_rows(STUDY, rows, run.methods, keys)
    base = {r["seed"]: r for r in rows if r["method"] == "FedAvg"}
    for s in out:
        mine = [r for r in rows if r["method"] == s["method"]]
        for k in setting_keys():
            hit = [r[f"round_{k}"] for r in mine if r[f"round_{k}"] is not None]
            s[f"round_{k}_mean"] = sum(hit) / len(hit) if hit else None
            s[f"round_{k}_reached"] = f"{len(hit)}/{len(mine)}"
            gains = [r[f"acc_{k}"] - base[r["seed"]][f"acc_{k}"] for r in mine if r["seed"] in base]
            s[f"gain_{k}_mean"], s[f"gain_{k}_ci"] = mean_ci(gains) if gains else (math.nan, math.nan)
    return out


def _label(cfg: Config, key: str) -> str:
    skew, part = key.split("-")
    return f"α={_alpha(cfg, skew):g} {part}"


def _rounds_cell(key: str) -> Callable[[dict[str, Any]], str]:
    def cell(s: dict[str, Any]) -> str:
        mean = s[f"round_{key}_mean"]
        return f"never ({s[f'round_{key}_reached']})" if mean is None else f"{mean:.1f} ({s[f'round_{key}_reached']})"
    return cell


def _columns(run: Run) -> tuple[Column, ...]:
    cfg = run.cfg
    return (Column("method", lambda s: s["method"], "left"), ci_column("mean acc", "acc_avg", 3),
            *(ci_column(_label(cfg, k), f"acc_{k}", 3) for k in setting_keys()),
            *(Column(f"to {cfg.target:g}, {_label(cfg, k)}", _rounds_cell(k)) for k in setting_keys()))


def _title(run: Run, rows: list[Any]) -> str:
    c = run.cfg
    return (f"federated: digits, {c.clients} Flower clients, MLP 64-{c.hidden}-10, {c.rounds} rounds x {c.local_epochs} "
            f"local epochs (SGD lr {c.lr:g}); label skew Dirichlet α={c.alpha_strong:g} / {c.alpha_mild:g}; "
            f"participation full / unknown (FedAU's rule, mean {c.participation_mean:g}, min "
            f"{c.participation_min:g}); {c.seeds} seed(s)")


def _notes(run: Run, summary: list[dict[str, Any]]) -> str:
    lines = [f"test accuracy of the global model after round {run.cfg.rounds}; mean acc: over the four settings "
             f"(ranked on it); to {run.cfg.target:g}: first round at that test accuracy, mean over the seeds that "
             f"reached it (how many); {CI_NOTE}; {RANK_NOTE}"]
    if any(s["method"] == "FedAvg" for s in summary):
        lines.append("paired gain over FedAvg in final test accuracy (same seed; mean ± 95% interval over seeds):")
        for k in setting_keys():
            cells = [f"{s['method']} {fmt_ci(s[f'gain_{k}_mean'], s[f'gain_{k}_ci'], 3)}" for s in summary
                     if s["method"] != "FedAvg"]
            lines.append(f"  {_label(run.cfg, k)}: " + "; ".join(cells))
    return "\n".join(lines)


def _plot(path: Path, run: Run, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gradwise.arena.report import curve_styles, wrap_title

    keys = setting_keys()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.2), sharey=True)
    styles = curve_styles(run.methods)
    for ax, k in zip(axes, keys):
        for m in run.methods:
            mine = [r for r in rows if r["method"] == m]
            if not mine:
                continue
            acc = np.array([r[f"curve_{k}"] for r in mine]).mean(0)
            st = styles[m]
            ax.plot(np.arange(len(acc)), acc, color=st["color"], ls=st["ls"], marker=st["marker"], ms=3,
                    lw=1.3, label=m)
        ax.axhline(run.cfg.target, color="grey", lw=0.8, ls=":")
        ax.set(title=_label(run.cfg, k), xlabel="round")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(wrap_title(title, 150), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STUDY = register_study(Study(
    name="federated", help=HELP, description=__doc__, config=Config, methods=lambda: tuple(STRATEGIES),
    select=Selection("methods", "strategy names", ignore_case=True),
    run_seed=run_seed, summarize=_summarize, rank_on="acc_avg", title=_title, notes=_notes, columns=_columns,
    csv_skip=tuple(f"curve_{k}" for k in setting_keys()),
    json_extra=lambda run, summary: {"participation_probabilities": run.state.get("participation", {})},
    write_files=lambda out, run, rows, summary, title: _plot(out / "federated_curves.png", run, rows, title),
    outputs=("federated_curves.png",),
    smoke=("--seeds", "1", "--clients", "3", "--rounds", "1", "--local-epochs", "1", "--methods", "FedAvg,FedAU"),
))
